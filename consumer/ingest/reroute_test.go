package ingest

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/segmentio/kafka-go"

	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/testenv"
)

// A keyless, valid event whose record is just under the broker's size
// limit (large headers): its re-routed copy adds a key and two headers and
// is refused for good. The original goes to the DLQ (here, too large for
// the DLQ topic as well, on to dead_letters) tagged reroute_too_large, and
// every partition keeps moving and commits to its end. Before the fix the
// copy was retried for ever and nothing was committed.
func TestOversizedRerouteCopyGoesToTheDLQ(t *testing.T) {
	e := newEnv(t, "")
	ctx := context.Background()
	now := time.Now().UTC().Format(time.RFC3339Nano)
	val := func(id, tenant string) []byte {
		return fmt.Appendf(nil, `{"id":%q,"tenant_id":%q,"feature_type":"api_calls","quantity":"1","timestamp":%q}`, id, tenant, now)
	}
	// Largest header the broker accepts for this record, found on a scratch topic.
	scratch := testenv.Name("scratch")
	testenv.CreateTopic(t, e.broker, scratch, 1)
	sw := &kafka.Writer{Addr: kafka.TCP(e.broker), Topic: scratch, BatchBytes: 4 << 20, BatchTimeout: time.Millisecond, MaxAttempts: 1, RequiredAcks: kafka.RequireAll}
	defer sw.Close()
	lo, hi := 1_000_000, 1_048_576
	for hi-lo > 1 {
		mid := (lo + hi) / 2
		err := sw.WriteMessages(ctx, kafka.Message{Value: val("big", "acme"), Headers: []kafka.Header{{Key: "x", Value: []byte(strings.Repeat("a", mid))}}})
		if err == nil {
			lo = mid
		} else {
			hi = mid
		}
	}
	t.Logf("largest accepted header: %d bytes", lo)
	w := &kafka.Writer{Addr: kafka.TCP(e.broker), Topic: e.cfg.Topic, Balancer: &kafka.RoundRobin{}, BatchBytes: 4 << 20, BatchTimeout: time.Millisecond, RequiredAcks: kafka.RequireAll}
	defer w.Close()
	// Keyless: misrouted (key_mismatch), so the consumer re-routes them;
	// the small one's copy fits and is counted.
	if err := w.WriteMessages(ctx,
		kafka.Message{Value: val("big", "acme"), Headers: []kafka.Header{{Key: "x", Value: []byte(strings.Repeat("a", lo))}}},
		kafka.Message{Value: val("small", "acme")}); err != nil {
		t.Fatal(err)
	}
	// As usage-consumer runs: with the dead_letters fallback.
	c, err := New(e.cfg, e.store, e.log, WithDeadLetterFallback(e.store.Conn()))
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(runCtx) }()
	t.Cleanup(func() { cancel(); <-done })

	kw := e.rawWriter()
	for i := range 20 {
		tenant := fmt.Sprintf("t%d", i)
		if err := kw.WriteMessages(ctx, kafka.Message{Key: []byte(tenant), Value: val(fmt.Sprintf("ok-%d", i), tenant)}); err != nil {
			t.Fatal(err)
		}
	}
	testenv.Eventually(t, 30*time.Second, "20 valid events and the small re-routed one written", func() (bool, error) {
		n, err := testenv.CountRows(ctx, e.store.Conn(), "FROM usage_events FINAL WHERE id LIKE 'ok-%' OR id = 'small'")
		return n == 21, err
	})
	testenv.Eventually(t, 30*time.Second, "the oversized original in dead_letters, tagged reroute_too_large", func() (bool, error) {
		n, err := testenv.CountRows(ctx, e.store.Conn(), "FROM dead_letters FINAL WHERE target_topic = ? AND has(header_values, ?) AND position(message_value, '\"id\":\"big\"') > 0",
			e.cfg.DLQTopic, string(schemas.CodeRerouteTooLarge))
		return n == 1, err
	})
	if n := e.count("FROM usage_events FINAL WHERE id = 'big'"); n != 0 {
		t.Fatalf("%d raw rows for the refused event, want 0", n)
	}
	if got := testutil.ToFloat64(c.m.rerouteTooLarge); got != 1 {
		t.Fatalf("usage_consumer_reroute_too_large_total %v, want 1", got)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	done <- nil
	assertCommittedToEnd(t, e)
}
