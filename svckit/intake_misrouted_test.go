package svckit

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/testenv"
)

// A misrouted record (no key) whose event is 2 h ahead of the broker's
// append time is refused as too far in the future, like a well-routed one,
// instead of being re-routed: its copy, appended later (consumer lag),
// would be judged against a later time. One 1 min ahead is still
// misrouted (re-routed). Before the fix DecodeRecord returned key_mismatch
// for both.
func TestDecodeRecordJudgesAMisroutedRecordsOwnTime(t *testing.T) {
	broker := testenv.Kafka(t)
	topic := testenv.Name("misrouted-future")
	testenv.CreateTopic(t, broker, topic, 1, "message.timestamp.type", "LogAppendTime")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	w := &kafka.Writer{Addr: kafka.TCP(broker), Topic: topic, RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond}
	defer w.Close()
	now := time.Now()
	if err := w.WriteMessages(ctx,
		kafka.Message{Value: eventAt("ahead-2h", "acme", now.Add(2*time.Hour))},
		kafka.Message{Value: eventAt("ahead-1m", "acme", now.Add(time.Minute))}); err != nil {
		t.Fatal(err)
	}
	rd := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{broker}, Topic: topic, Partition: 0, MaxWait: 100 * time.Millisecond})
	defer rd.Close()
	in := NewIntake(WithBrokerClock([]string{broker}, topic))
	for _, want := range []schemas.Code{schemas.CodeTimestampTooFarInFuture, schemas.CodeKeyMismatch} {
		m, err := rd.ReadMessage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		_, err = in.DecodeRecord(ctx, m, 1)
		var ve *schemas.ValidationError
		if !errors.As(err, &ve) || ve.Code != want {
			t.Fatalf("offset %d: %v, want %s", m.Offset, err, want)
		}
	}
}
