package ingest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/segmentio/kafka-go"

	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/svckit"
	"github.com/usagemeter/usagemeter/testenv"
)

// fixedPartition sends every message to one partition, as a publisher with
// another partitioner (librdkafka's CRC32) may.
type fixedPartition int

func (p fixedPartition) Balance(kafka.Message, ...int) int { return int(p) }

func eventJSON(id, tenant string) []byte {
	return fmt.Appendf(nil, `{"id":%q,"tenant_id":%q,"feature_type":"api_calls","quantity":"2","timestamp":%q}`,
		id, tenant, time.Now().UTC().Add(-time.Minute).Format(time.RFC3339Nano))
}

// misrouted publishes, for tenant acme, 20 correctly routed events and 8
// each from a keyless publisher, one keying by another tenant and one with
// another partitioner (the right key on the wrong partition, as CRC32
// does), and returns the misrouted ids with the tag each breaks.
func misrouted(t *testing.T, e *env) map[string]schemas.Code {
	t.Helper()
	ctx := context.Background()
	right := schemas.PartitionFor("acme", 4)
	writers := map[string]*kafka.Writer{
		"keyed":     {Addr: kafka.TCP(e.broker), Topic: e.cfg.Topic, Balancer: kafka.Murmur2Balancer{}, BatchTimeout: time.Millisecond},
		"keyless":   {Addr: kafka.TCP(e.broker), Topic: e.cfg.Topic, Balancer: &kafka.RoundRobin{}, BatchTimeout: time.Millisecond},
		"wrong key": {Addr: kafka.TCP(e.broker), Topic: e.cfg.Topic, Balancer: fixedPartition(right), BatchTimeout: time.Millisecond},
		"crc32":     {Addr: kafka.TCP(e.broker), Topic: e.cfg.Topic, Balancer: fixedPartition((right + 1) % 4), BatchTimeout: time.Millisecond},
	}
	for _, w := range writers {
		t.Cleanup(func() { _ = w.Close() })
	}
	want := map[string]schemas.Code{}
	for i := range 20 {
		id := fmt.Sprintf("ok-%d", i)
		if err := writers["keyed"].WriteMessages(ctx, kafka.Message{Key: []byte("acme"), Value: eventJSON(id, "acme")}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 8 {
		for name, key := range map[string][]byte{"keyless": nil, "wrong key": []byte("globex"), "crc32": []byte("acme")} {
			id := fmt.Sprintf("%s-%d", strings.ReplaceAll(name, " ", "-"), i)
			m := kafka.Message{Key: key, Value: eventJSON(id, "acme")}
			want[id] = schemas.CodeKeyMismatch
			if name == "crc32" {
				want[id] = schemas.CodeWrongPartition
				m.Headers = []kafka.Header{{Key: svckit.HeaderPublisher, Value: []byte("billing-worker")}}
			}
			if err := writers[name].WriteMessages(ctx, m); err != nil {
				t.Fatal(err)
			}
		}
	}
	return want
}

// readTopic reads every message of the 4 partitions of topic up to their
// current end.
func readTopic(t *testing.T, broker, topic string) []kafka.Message {
	t.Helper()
	var out []kafka.Message
	for part, end := range testenv.EndOffsets(t, broker, topic, 4) {
		if end == 0 {
			continue
		}
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{broker}, Topic: topic, Partition: part, MaxWait: 100 * time.Millisecond})
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		for {
			m, err := r.ReadMessage(ctx)
			if err != nil {
				t.Fatalf("read %s/%d: %v", topic, part, err)
			}
			out = append(out, m)
			if m.Offset+1 >= end {
				break
			}
		}
		cancel()
		_ = r.Close()
	}
	return out
}

// copies returns the re-routed copies in the events topic, by the id of
// their event, after checking each is where the routing rule says, keyed
// by the tenant, with the original's bytes and where it came from.
func copies(t *testing.T, e *env, want map[string]schemas.Code) map[string]int {
	t.Helper()
	right := schemas.PartitionFor("acme", 4)
	originals := map[string][]byte{}
	for _, m := range readTopic(t, e.broker, e.cfg.Topic) {
		if !svckit.Rerouted(m) {
			originals[string(m.Value)] = m.Value
		}
	}
	n := map[string]int{}
	for _, m := range readTopic(t, e.broker, e.cfg.Topic) {
		if !svckit.Rerouted(m) {
			continue
		}
		id := idOf(m.Value)
		h := testenv.Headers(m)
		if _, ok := want[id]; !ok {
			t.Errorf("a correctly routed event %s was re-routed", id)
		}
		if m.Partition != right || string(m.Key) != "acme" || originals[string(m.Value)] == nil ||
			h[svckit.HeaderReroutedReason] != string(want[id]) || !strings.HasPrefix(h[svckit.HeaderReroutedFrom], e.cfg.Topic+"/") {
			t.Errorf("copy of %s: partition %d (want %d), key %q, headers %v, same bytes as an original: %v",
				id, m.Partition, right, m.Key, h, originals[string(m.Value)] != nil)
		}
		n[id]++
	}
	return n
}

func idOf(value []byte) string {
	var probe struct {
		ID string `json:"id"`
	}
	_ = json.Unmarshal(value, &probe)
	return probe.ID
}

// Keyless, wrongly keyed and wrongly partitioned events are re-routed to
// their tenant's partition once each and counted once, from the copy;
// nothing goes to the DLQ, and every offset, the copies' included, is
// committed.
func TestMisroutedEventsReroutedAndCountedOnce(t *testing.T) {
	e := newEnv(t, "")
	r := e.start()
	want := misrouted(t, e)
	e.waitDedup(20+uint64(len(want)), 60*time.Second)
	// Written once each (no FINAL), from the copy: on acme's partition.
	right := schemas.PartitionFor("acme", 4)
	if n := e.count("FROM usage_events WHERE id NOT LIKE 'ok-%' AND kafka_partition = ?", int32(right)); n != uint64(len(want)) {
		t.Errorf("%d raw rows of misrouted events from acme's partition, want %d (each once)", n, len(want))
	}
	if n := e.count("FROM usage_events"); n != 20+uint64(len(want)) {
		t.Errorf("%d raw rows, want %d", n, 20+len(want))
	}
	for id, n := range copies(t, e, want) {
		if n != 1 {
			t.Errorf("%s re-routed %d times, want once", id, n)
		}
		delete(want, id)
	}
	if len(want) != 0 {
		t.Errorf("never re-routed: %v", want)
	}
	if dlq := testenv.EndOffsets(t, e.broker, e.cfg.DLQTopic, 1)[0]; dlq != 0 {
		t.Errorf("DLQ holds %d messages, want none", dlq)
	}
	for _, c := range []struct {
		reason, publisher string
		want              float64
	}{{"key_mismatch", "unknown", 16}, {"wrong_partition", "billing-worker", 8}} {
		if got := testutil.ToFloat64(r.c.m.rerouted.WithLabelValues(c.reason, c.publisher)); got != c.want {
			t.Errorf("rerouted{%s,%s} = %v, want %v", c.reason, c.publisher, got, c.want)
		}
	}
	if err := r.shutdown(t); err != nil {
		t.Fatal(err)
	}
	assertCommittedToEnd(t, e)
}

// A crash after the copies are written and before the originals' offsets
// are committed: the next member re-reads the originals and writes their
// copies again; each event is still counted once.
func TestRerouteThenCrashBeforeCommit(t *testing.T) {
	e := newEnv(t, "")
	e.cfg.BatchSize = 1000
	e.cfg.FlushInterval = 2 * time.Second
	want := misrouted(t, e) // before the consumer starts: one batch holds them all
	var crashed sync.Once
	r := e.start(func(c *Consumer) {
		c.afterWrite = func(b *batch) error {
			var err error
			if len(b.reroute) > 0 {
				crashed.Do(func() { err = errCrash })
			}
			return err
		}
	})
	select {
	case err := <-r.done:
		r.done <- err
		if !errors.Is(err, errCrash) {
			t.Fatalf("consumer ended with %v, want the simulated crash", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("consumer did not reach the crash point")
	}
	r2 := e.start()
	e.waitDedup(20+uint64(len(want)), 60*time.Second)
	testenv.Eventually(t, 30*time.Second, "both sets of copies read", func() (bool, error) {
		n, err := testenv.CountRows(context.Background(), e.store.Conn(), "FROM usage_events WHERE id NOT LIKE 'ok-%'")
		return n >= 2*uint64(len(want)), err
	})
	for id, n := range copies(t, e, want) {
		if n != 2 {
			t.Errorf("%s re-routed %d times, want twice (before and after the crash)", id, n)
		}
	}
	if got := e.count("FROM usage_events FINAL"); got != 20+uint64(len(want)) {
		t.Fatalf("deduplicated rows %d, want %d", got, 20+len(want))
	}
	if err := r2.shutdown(t); err != nil {
		t.Fatal(err)
	}
	assertCommittedToEnd(t, e)
}

// A DLQ record Kafka refuses for good (here: larger than the DLQ topic's
// max.message.bytes) goes to the ClickHouse table dead_letters instead of
// being retried for ever; its partition keeps moving and commits to the end.
func TestDeadLetterFallbackKeepsThePartitionMoving(t *testing.T) {
	e := newEnv(t, "")
	e.cfg.DLQTopic = testenv.Name("small-dlq")
	testenv.CreateTopic(t, e.broker, e.cfg.DLQTopic, 1, "max.message.bytes", "1024")
	c, err := New(e.cfg, e.store, e.log, WithDeadLetterFallback(e.store.Conn()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	w := e.rawWriter()
	huge := `{"id":"big","tenant_id":"acme","note":"` + strings.Repeat("x", 4000) + `"}` // unknown field: invalid, 4 KB
	msgs := []kafka.Message{{Key: []byte("acme"), Value: []byte(huge)}}
	for i := range 10 {
		msgs = append(msgs, kafka.Message{Key: []byte("acme"), Value: eventJSON(fmt.Sprint("v", i), "acme")})
	}
	if err := w.WriteMessages(context.Background(), msgs...); err != nil {
		t.Fatal(err)
	}
	e.waitDedup(10, 60*time.Second)
	testenv.Eventually(t, 30*time.Second, "the refused record in dead_letters", func() (bool, error) {
		n, err := testenv.CountRows(context.Background(), e.store.Conn(), "FROM dead_letters FINAL WHERE message_value = ? AND target_topic = ?", huge, e.cfg.DLQTopic)
		return n == 1, err
	})
	if got := testutil.ToFloat64(c.m.deadLetterFallback); got != 1 {
		t.Fatalf("fallback metric %v, want 1", got)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	done <- nil
	part := schemas.PartitionFor("acme", 4)
	client := &kafka.Client{Addr: kafka.TCP(e.broker)}
	off, err := client.OffsetFetch(context.Background(), &kafka.OffsetFetchRequest{GroupID: e.cfg.GroupID, Topics: map[string][]int{e.cfg.Topic: {part}}})
	if err != nil {
		t.Fatal(err)
	}
	if got := off.Topics[e.cfg.Topic][0].CommittedOffset; got != int64(len(msgs)) {
		t.Fatalf("committed offset %d, want %d (the end of the partition)", got, len(msgs))
	}
}

// SIGTERM while ClickHouse is down: the writer holds one batch, the
// channel another, and the loop a third. Run must give up after
// ShutdownTimeout with an error (nothing committed past unwritten data),
// not hang; a new consumer then writes every event exactly once.
func TestShutdownWhileClickHouseIsDownDoesNotHang(t *testing.T) {
	ch := testenv.StartClickHouse(t)
	e := newEnv(t, ch.Addr)
	e.cfg.BatchSize = 50
	e.cfg.ShutdownTimeout = 2 * time.Second
	r := e.start()
	p := e.publisher()
	events, want := mixed(400, time.Now().Add(-time.Hour))
	if err := p.Publish(context.Background(), events[:100]...); err != nil {
		t.Fatal(err)
	}
	e.waitDedup(100, 60*time.Second)
	ch.Stop()
	if err := p.Publish(context.Background(), events[100:]...); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "insert errors while ClickHouse is down", func() (bool, error) {
		return testutil.ToFloat64(r.c.m.insertErrors) >= 1, nil
	})
	time.Sleep(time.Second) // let the next batches fill behind the stuck one
	r.stop()
	select {
	case err := <-r.done:
		if err == nil {
			t.Fatal("Run returned nil with unwritten batches")
		}
		r.done <- err
	case <-time.After(20 * time.Second):
		t.Fatal("Run still running 20 s after SIGTERM with ClickHouse down (shutdown_timeout 2 s)")
	}
	ch.Start()
	e.start()
	e.waitDedup(400, 90*time.Second)
	assertSums(t, e.sums(), want)
}
