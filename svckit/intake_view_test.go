package svckit

import (
	"context"
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/testenv"
)

// vectorMessages is every shared vector, keyed by its tenant, plus the
// valid ones without a key (misrouted).
func vectorMessages(t *testing.T) []kafka.Message {
	t.Helper()
	vectors, err := schemas.TestVectors()
	if err != nil {
		t.Fatal(err)
	}
	var msgs []kafka.Message
	for _, v := range vectors {
		var probe struct {
			TenantID string `json:"tenant_id"`
		}
		_ = json.Unmarshal(v.Bytes(), &probe)
		msgs = append(msgs, kafka.Message{Key: []byte(probe.TenantID), Value: v.Bytes()})
		if v.Valid() {
			msgs = append(msgs, kafka.Message{Value: v.Bytes()})
		}
	}
	return msgs
}

// DecodeView gives Decode's verdict (the same error, field for field) for
// every vector, routed right or wrong, at several record times; a valid or
// misrouted event has the same tenant.
func TestIntakeDecodeViewAgreesWithDecode(t *testing.T) {
	plain, view := NewIntake(), NewIntake(WithAliasedValues())
	var dst schemas.EventView
	ts := time.Date(2026, 11, 28, 10, 0, 0, 0, time.UTC)
	for _, m := range vectorMessages(t) {
		for _, shift := range []time.Duration{0, -6 * time.Minute, 24 * time.Hour} {
			for p := range 4 {
				m.Partition, m.Time = p, ts.Add(shift)
				e, werr := plain.Decode(m, 4)
				gerr := view.DecodeView(m, 4, &dst)
				if !reflect.DeepEqual(gerr, werr) {
					t.Fatalf("%q on partition %d: view %v, Decode %v", m.Value, p, gerr, werr)
				}
				if _, misrouted := Misrouted(werr); (werr == nil || misrouted) && dst.TenantID != e.TenantID {
					t.Fatalf("%q: tenant %q, want %q", m.Value, dst.TenantID, e.TenantID)
				}
			}
		}
	}
}

// On a real LogAppendTime topic DecodeRecordView gives DecodeRecord's
// verdicts, with the same number of broker lookups: the vectors (keyed
// and keyless), events 2 h, 6 min and 4 min ahead of the broker.
func TestDecodeRecordViewAgreesWithDecodeRecord(t *testing.T) {
	broker := testenv.Kafka(t)
	topic := testenv.Name("view-clock")
	testenv.CreateTopic(t, broker, topic, 1, "message.timestamp.type", "LogAppendTime")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	w := &kafka.Writer{Addr: kafka.TCP(broker), Topic: topic, RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond}
	defer w.Close()
	now := time.Now()
	msgs := vectorMessages(t)
	for i, ahead := range []time.Duration{2 * time.Hour, 6 * time.Minute, 4 * time.Minute, 0, -48 * time.Hour} {
		id := "ahead-" + ahead.String()
		msgs = append(msgs,
			kafka.Message{Key: []byte("acme"), Value: eventAt(id, "acme", now.Add(ahead)), Time: now.Add(time.Duration(i) * time.Hour)},
			kafka.Message{Value: eventAt(id+"-keyless", "acme", now.Add(ahead))})
	}
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	rd := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{broker}, Topic: topic, Partition: 0, MaxWait: 100 * time.Millisecond})
	defer rd.Close()
	plain, view := NewIntake(WithBrokerClock([]string{broker}, topic)), NewIntake(WithBrokerClock([]string{broker}, topic), WithAliasedValues())
	var dst schemas.EventView
	refused := 0
	for range msgs {
		m, err := rd.ReadMessage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		e, werr := plain.DecodeRecord(ctx, m, 1)
		gerr := view.DecodeRecordView(ctx, m, 1, &dst)
		if !reflect.DeepEqual(gerr, werr) {
			t.Fatalf("offset %d %q: view %v, DecodeRecord %v", m.Offset, m.Value, gerr, werr)
		}
		if werr == nil && (dst.ID != e.ID || !dst.Timestamp.Equal(e.Timestamp) || !dst.Quantity.Decimal().Equal(e.Quantity)) {
			t.Fatalf("offset %d: values differ: %+v vs %+v", m.Offset, dst, e)
		}
		if werr != nil {
			refused++
		}
	}
	if plain.Lookups() != view.Lookups() {
		t.Errorf("lookups: view %d, DecodeRecord %d", view.Lookups(), plain.Lookups())
	}
	t.Logf("%d records, %d refused or misrouted, %d lookups each", len(msgs), refused, view.Lookups())
}
