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

// fixedPartition sends every message to one partition, as a publisher with
// another partitioner (librdkafka's CRC32) may.
type fixedPartition int

func (p fixedPartition) Balance(kafka.Message, ...int) int { return int(p) }

func eventJSON(id, tenant string) []byte {
	return fmt.Appendf(nil, `{"id":%q,"tenant_id":%q,"feature_type":"api_calls","quantity":"2","timestamp":%q}`,
		id, tenant, time.Now().UTC().Add(-time.Minute).Format(time.RFC3339Nano))
}

// Keyless, wrongly keyed and wrongly partitioned events are refused with
// their tag, each once, and nothing of them is counted; correctly routed
// events around them are.
func TestMisroutedEventsRefusedWithTheirTag(t *testing.T) {
	e := newEnv(t, "")
	e.start()
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
	want := map[string]string{} // id -> expected DLQ tag
	for i := range 20 {
		id := fmt.Sprintf("ok-%d", i)
		if err := writers["keyed"].WriteMessages(ctx, kafka.Message{Key: []byte("acme"), Value: eventJSON(id, "acme")}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 8 {
		for name, key := range map[string][]byte{"keyless": nil, "wrong key": []byte("globex"), "crc32": []byte("acme")} {
			id := fmt.Sprintf("%s-%d", strings.ReplaceAll(name, " ", "-"), i)
			if err := writers[name].WriteMessages(ctx, kafka.Message{Key: key, Value: eventJSON(id, "acme")}); err != nil {
				t.Fatal(err)
			}
			want[id] = string(schemas.CodeKeyMismatch)
			if name == "crc32" {
				want[id] = string(schemas.CodeWrongPartition)
			}
		}
	}
	e.waitDedup(20, 60*time.Second)
	for _, m := range testenv.ReadN(t, e.broker, e.cfg.DLQTopic, len(want)) {
		var probe struct {
			ID string `json:"id"`
		}
		id := string(m.Value)
		if i := strings.Index(id, `"id":"`); i >= 0 {
			id = id[i+6:]
			probe.ID = id[:strings.IndexByte(id, '"')]
		}
		tag := testenv.Headers(m)[schemas.HeaderError]
		if w, ok := want[probe.ID]; !ok || tag != w {
			t.Errorf("DLQ holds %s with tag %q, want %q", probe.ID, tag, w)
		}
		delete(want, probe.ID)
	}
	if len(want) != 0 {
		t.Fatalf("not in the DLQ: %v", want)
	}
	if n := e.count("FROM usage_events FINAL WHERE id NOT LIKE 'ok-%'"); n != 0 {
		t.Fatalf("%d misrouted events counted", n)
	}
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
