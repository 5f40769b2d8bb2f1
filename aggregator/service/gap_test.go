package service

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/segmentio/kafka-go"
	"github.com/shopspring/decimal"

	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/testenv"
)

func TestRetentionGap(t *testing.T) {
	for _, c := range []struct{ ckpt, first, want int64 }{
		{-1, 0, 0},   // new group
		{-1, 500, 0}, // new group on a topic whose head was deleted: starts at the first offset by design
		{99, 100, 0}, // resumes exactly at the first offset
		{99, 50, 0},  // the head is still there
		{99, 130, 30},
	} {
		if got := retentionGap(c.ckpt, c.first); got != c.want {
			t.Errorf("checkpoint %d, first offset %d: gap %d, want %d", c.ckpt, c.first, got, c.want)
		}
	}
}

func TestConfigNamesTheBadKey(t *testing.T) {
	c := DefaultConfig()
	c.SessionTimeout = time.Second
	c.OnRetentionGap = "ignore"
	err := c.Validate()
	if err == nil || !strings.Contains(err.Error(), "aggregator.session_timeout") || !strings.Contains(err.Error(), "aggregator.on_retention_gap") {
		t.Fatalf("Validate: %v", err)
	}
}

// deleteRecords deletes every record of topic/partition below offset, as
// retention does (Kafka's DeleteRecords API, v0). kafka-go has no client
// for it, so the request is written by hand; the single test broker leads
// every partition.
func deleteRecords(t *testing.T, broker, topic string, partition int32, offset int64) {
	t.Helper()
	var body bytes.Buffer
	w := func(v any) { _ = binary.Write(&body, binary.BigEndian, v) }
	str := func(s string) { w(int16(len(s))); body.WriteString(s) }
	w(int16(21)) // api key: DeleteRecords
	w(int16(0))  // version
	w(int32(1))  // correlation id
	str("aggregator-test")
	w(int32(1)) // topics
	str(topic)
	w(int32(1)) // partitions
	w(partition)
	w(offset)
	w(int32(10000)) // timeout ms
	conn, err := net.DialTimeout("tcp", broker, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(15 * time.Second))
	frame := binary.BigEndian.AppendUint32(nil, uint32(body.Len()))
	if _, err := conn.Write(append(frame, body.Bytes()...)); err != nil {
		t.Fatal(err)
	}
	var size int32
	if err := binary.Read(conn, binary.BigEndian, &size); err != nil {
		t.Fatal(err)
	}
	res := make([]byte, size)
	if _, err := io.ReadFull(conn, res); err != nil {
		t.Fatal(err)
	}
	// correlation id, throttle, 1 topic (name), 1 partition: id, low watermark, error code.
	name := int(binary.BigEndian.Uint16(res[12:]))
	p := res[14+name+4:]
	low, code := int64(binary.BigEndian.Uint64(p[4:])), int16(binary.BigEndian.Uint16(p[12:]))
	if code != 0 || low != offset {
		t.Fatalf("DeleteRecords %s/%d below %d: error code %d, low watermark %d", topic, partition, offset, code, low)
	}
}

// Issue 13 item 11: retention that deletes records while the aggregator
// is reading (not only before a partition opens) is detected, counted and
// handled as on_retention_gap says. The test stalls the aggregator (its
// flush blocks), fills its buffers, publishes more, deletes all but the
// last record, and lets it go: kafka-go silently jumps to the first
// offset. Every event is then either aggregated or counted as a gap.
func TestRetentionGapWhileReading(t *testing.T) {
	e := setupEnv(t, true)
	e.cfg.OnRetentionGap = "continue"
	tenant := "acme"
	part := int32(schemas.PartitionFor(tenant, 4))
	blocked, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	r := e.startAggregator(func(point string) error {
		if point == "flush" {
			once.Do(func() { close(blocked); <-release })
		}
		return nil
	})
	// Straight to the tenant's partition: a writer's metadata of a new
	// topic may list fewer partitions for a while, and murmur2 over a
	// shorter list lands elsewhere.
	publish := func(e *env, msgs []kafka.Message) {
		t.Helper()
		w := &kafka.Writer{Addr: kafka.TCP(e.broker), Topic: e.cfg.Topic, BatchTimeout: time.Millisecond, BatchSize: 5000, RequiredAcks: kafka.RequireAll,
			Balancer: kafka.BalancerFunc(func(kafka.Message, ...int) int { return int(part) })}
		defer w.Close()
		if err := w.WriteMessages(context.Background(), msgs...); err != nil {
			t.Fatal(err)
		}
	}
	batch := func(from, n int) []kafka.Message {
		out := make([]kafka.Message, n)
		for i := range out {
			ev := &schemas.UsageEvent{ID: fmt.Sprint("gap-", from+i), TenantID: tenant, UserID: "u", FeatureType: "api_calls",
				Quantity: decimal.NewFromInt(1), Timestamp: time.Now().UTC()}
			out[i] = eventMsg(ev)
		}
		return out
	}
	publish(e, batch(0, 1))
	select {
	case <-blocked:
	case <-time.After(30 * time.Second):
		t.Fatal("the aggregator never flushed")
	}
	// More than its channel and kafka-go's queue hold: the reader stops
	// fetching; then records it has not fetched.
	publish(e, batch(1, 12000))
	time.Sleep(2 * time.Second)
	publish(e, batch(12001, 3000))
	const total = 15001
	deleteRecords(t, e.broker, e.cfg.Topic, part, total-1)
	close(release)

	applied := func() float64 { return testutil.ToFloat64(r.svc.m.outcomes.WithLabelValues("applied")) }
	gap := func() float64 { return testutil.ToFloat64(r.svc.m.retentionGap) }
	testenv.Eventually(t, 60*time.Second, "every event aggregated or counted as deleted", func() (bool, error) {
		return applied()+gap() >= total, nil
	})
	if applied()+gap() != total || gap() == 0 {
		t.Fatalf("applied %v + retention gap %v, want %d with a gap", applied(), gap(), total)
	}
	r.shutdown(t)

	// With on_retention_gap: fail, the same jump stops the service.
	e2 := setupEnv(t, true)
	var once2 sync.Once
	blocked2, release2 := make(chan struct{}), make(chan struct{})
	r2 := e2.startAggregator(func(point string) error {
		if point == "flush" {
			once2.Do(func() { close(blocked2); <-release2 })
		}
		return nil
	})
	publish(e2, batch(0, 1))
	<-blocked2
	publish(e2, batch(1, 12000))
	time.Sleep(2 * time.Second)
	publish(e2, batch(12001, 3000))
	deleteRecords(t, e2.broker, e2.cfg.Topic, part, total-1)
	close(release2)
	select {
	case err := <-r2.done:
		if !errors.Is(err, errFatal) || !strings.Contains(err.Error(), "on_retention_gap: fail") {
			t.Fatalf("Run: %v, want the retention gap", err)
		}
		r2.done <- nil
	case <-time.After(60 * time.Second):
		t.Fatal("the aggregator did not stop on the retention gap")
	}
}
