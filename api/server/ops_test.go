package server_test

import (
	"context"
	"fmt"
	"slices"
	"testing"

	"github.com/segmentio/kafka-go"

	"github.com/usagemeter/usagemeter/api/server"
	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/testenv"
)

func TestOpsLagAndDLQTags(t *testing.T) {
	broker := testenv.Kafka(t)
	events, dlq := testenv.Name("events"), testenv.Name("dlq")
	testenv.CreateTopic(t, broker, events, 3)
	testenv.CreateTopic(t, broker, dlq, 2)
	client := &kafka.Client{Addr: kafka.TCP(broker)}
	ctx := context.Background()
	produce := func(topic string, part int, recs ...kafka.Record) {
		t.Helper()
		res, err := client.Produce(ctx, &kafka.ProduceRequest{Topic: topic, Partition: part, RequiredAcks: kafka.RequireAll,
			Records: kafka.NewRecordReader(recs...)})
		if err == nil && res.Error != nil {
			err = res.Error
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	var evs []kafka.Record
	for i := 0; i < 10; i++ {
		evs = append(evs, kafka.Record{Value: kafka.NewBytes([]byte(fmt.Sprint(i)))})
	}
	produce(events, 0, evs...)
	produce(events, 2, evs[:3]...)
	tagged := func(tag string) kafka.Record {
		r := kafka.Record{Value: kafka.NewBytes([]byte("x"))}
		if tag != "" {
			r.Headers = []kafka.Header{{Key: schemas.HeaderError, Value: []byte(tag)}}
		}
		return r
	}
	produce(dlq, 0, tagged("invalid_quantity"), tagged("missing_field:tenant_id"), tagged("invalid_quantity"))
	produce(dlq, 1, tagged("invalid_quantity"), tagged(""), tagged("missing_field:tenant_id"))

	// group A committed 6 of partition 0's 10 and all of 1 and 2: lag 4.
	// group B committed nothing: lag 13, from the first offsets.
	groupA, groupB := testenv.Name("ga"), testenv.Name("gb")
	res, err := client.OffsetCommit(ctx, &kafka.OffsetCommitRequest{GroupID: groupA, GenerationID: -1,
		Topics: map[string][]kafka.OffsetCommit{events: {{Partition: 0, Offset: 6}, {Partition: 1, Offset: 0}, {Partition: 2, Offset: 3}}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, ps := range res.Topics {
		for _, p := range ps {
			if p.Error != nil {
				t.Fatal(p.Error)
			}
		}
	}
	o := &server.Ops{Client: client, EventsTopic: events, DLQTopic: dlq, Groups: []string{groupA, groupB}, DLQScan: 1000}
	lags, err := o.Lag(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := []server.GroupLag{{Group: groupA, Lag: 4, Committed: true}, {Group: groupB, Lag: 13}}; !slices.Equal(lags, want) {
		t.Fatalf("lag %+v, want %+v", lags, want)
	}
	d, err := o.DLQCounts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []server.TagCount{{"invalid_quantity", 3}, {"missing_field:tenant_id", 2}, {"(none)", 1}}
	if !slices.Equal(d.Tags, want) || d.Scanned != 6 || d.Total != 6 {
		t.Fatalf("dlq %+v, want %+v of 6", d, want)
	}
	// Scanning only the newest record of each partition says so.
	o.DLQScan = 1
	if d, err = o.DLQCounts(ctx); err != nil || d.Scanned != 2 || d.Total != 6 {
		t.Fatalf("bounded scan: %+v %v", d, err)
	}
}
