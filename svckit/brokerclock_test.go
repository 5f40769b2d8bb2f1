package svckit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/testenv"
)

func eventAt(id, tenant string, ts time.Time) []byte {
	return fmt.Appendf(nil, `{"id":%q,"tenant_id":%q,"feature_type":"api_calls","quantity":"1","timestamp":%q}`,
		id, tenant, ts.UTC().Format(time.RFC3339Nano))
}

// On a real LogAppendTime topic, kafka-go reports the publisher's clock as
// the record time; DecodeRecord judges by the broker's: a host 2 h ahead
// (record CreateTime and event time both 2 h ahead) is refused, events 4
// min ahead of the broker are counted and 6 min ahead are not, whatever
// CreateTime their publisher wrote; and an in-sync stream costs a few
// lookups, not one per event.
func TestDecodeRecordJudgesByTheBrokersClock(t *testing.T) {
	broker := testenv.Kafka(t)
	topic := testenv.Name("clock")
	testenv.CreateTopic(t, broker, topic, 1, "message.timestamp.type", "LogAppendTime")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if tt, err := TimestampType(ctx, []string{broker}, topic); err != nil || tt != "LogAppendTime" {
		t.Fatalf("timestamp type %q, %v", tt, err)
	}
	p := schemas.PartitionFor("acme", 1)
	w := &kafka.Writer{Addr: kafka.TCP(broker), Topic: topic, RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond}
	defer w.Close()
	now := time.Now()
	type rec struct {
		id      string
		created time.Time // the record's CreateTime, from the publisher's clock
		event   time.Time
		want    schemas.Code
	}
	var recs []rec
	for i := range 50 {
		recs = append(recs, rec{fmt.Sprint("sync-", i), now, now, ""})
	}
	recs = append(recs,
		rec{"ahead-2h", now.Add(2 * time.Hour), now.Add(2 * time.Hour), schemas.CodeTimestampTooFarInFuture},
		rec{"ahead-4m", now.Add(2 * time.Hour), now.Add(4 * time.Minute), ""},
		rec{"ahead-6m", now, now.Add(6 * time.Minute), schemas.CodeTimestampTooFarInFuture},
		rec{"ahead-2h-again", now.Add(2 * time.Hour), now.Add(2*time.Hour + time.Second), schemas.CodeTimestampTooFarInFuture},
		rec{"old", now.Add(-48 * time.Hour), now.Add(-48 * time.Hour), ""})
	for i := range 50 {
		recs = append(recs, rec{fmt.Sprint("sync2-", i), now, now.Add(time.Duration(i) * time.Millisecond), ""})
	}
	var msgs []kafka.Message
	for _, r := range recs {
		msgs = append(msgs, kafka.Message{Key: []byte("acme"), Value: eventAt(r.id, "acme", r.event), Time: r.created})
	}
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	rd := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{broker}, Topic: topic, Partition: p, MaxWait: 100 * time.Millisecond})
	defer rd.Close()
	old, in := NewIntake(), NewIntake(WithBrokerClock([]string{broker}, topic))
	for _, r := range recs {
		m, err := rd.ReadMessage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if r.id == "ahead-2h" {
			// The bug this fixes: kafka-go shows the publisher's clock, and
			// the record-time rule accepts an event 2 h ahead.
			if m.Time.Before(now.Add(time.Hour)) {
				t.Fatalf("kafka-go reported %s for a record created 2 h ahead: the broker's time; the record-time rule would be right", m.Time)
			}
			if _, err := old.Decode(m, 1); err != nil {
				t.Fatalf("the record-time rule refused the 2 h ahead event (%v): this test no longer shows the bug", err)
			}
		}
		_, err = in.DecodeRecord(ctx, m, 1)
		var ve *schemas.ValidationError
		switch {
		case r.want == "" && err != nil:
			t.Errorf("%s: refused: %v", r.id, err)
		case r.want != "" && (!errors.As(err, &ve) || ve.Code != r.want):
			t.Errorf("%s: got %v, want %s", r.id, err, r.want)
		}
	}
	// 100 in-sync events, 2 refusals 2 h ahead, one 6 min ahead, one old:
	// a handful of requests.
	if n := in.Lookups(); n > 12 {
		t.Errorf("%d lookups for %d records, want at most 12", n, len(recs))
	}
	t.Logf("%d ListOffsets requests for %d records", in.Lookups(), len(recs))
	// The same verdicts from a reader with no cached answers, later.
	fresh := NewIntake(WithBrokerClock([]string{broker}, topic))
	rd2 := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{broker}, Topic: topic, Partition: p, MaxWait: 100 * time.Millisecond})
	defer rd2.Close()
	for i := len(recs) - 1; i >= 0; i -= 7 { // backwards: no bound helps
		if err := rd2.SetOffset(int64(i)); err != nil {
			t.Fatal(err)
		}
		m, err := rd2.ReadMessage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		_, err = fresh.DecodeRecord(ctx, m, 1)
		if (err == nil) != (recs[i].want == "") {
			t.Errorf("%s read again: %v, want %q", recs[i].id, err, recs[i].want)
		}
	}
}

// Every shared vector, published to a LogAppendTime topic, gets the same
// verdict from DecodeRecord as the vectors say (the Go validator, the JSON
// Schema and the other languages' validators agree on them).
func TestDecodeRecordAgreesWithVectors(t *testing.T) {
	vectors, err := schemas.TestVectors()
	if err != nil {
		t.Fatal(err)
	}
	broker := testenv.Kafka(t)
	topic := testenv.Name("vectors")
	testenv.CreateTopic(t, broker, topic, 1, "message.timestamp.type", "LogAppendTime")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	w := &kafka.Writer{Addr: kafka.TCP(broker), Topic: topic, RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond}
	defer w.Close()
	var msgs []kafka.Message
	for _, v := range vectors {
		var probe struct {
			TenantID string `json:"tenant_id"`
		}
		_ = json.Unmarshal(v.Bytes(), &probe)
		msgs = append(msgs, kafka.Message{Key: []byte(probe.TenantID), Value: v.Bytes()})
	}
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	rd := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{broker}, Topic: topic, Partition: 0, MaxWait: 100 * time.Millisecond})
	defer rd.Close()
	in := NewIntake(WithBrokerClock([]string{broker}, topic))
	for _, v := range vectors {
		m, err := rd.ReadMessage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		_, err = in.DecodeRecord(ctx, m, 1)
		got := "ok"
		var ve *schemas.ValidationError
		switch {
		case errors.As(err, &ve):
			got = ve.Tag()
		case err != nil:
			got = "malformed_json"
		}
		if got != v.Expect {
			t.Errorf("%s: %s, want %s", v.Name, got, v.Expect)
		}
	}
}
