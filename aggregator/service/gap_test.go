package service

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/segmentio/kafka-go"
	"github.com/shopspring/decimal"

	"github.com/usagemeter/usagemeter/aggregator/aggstore"
	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/svckit"
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

// Issue 13 item 11: retention that deletes records while the aggregator
// is reading (not only before a partition opens) is detected, counted and
// handled as on_retention_gap says. The test stalls the aggregator (its
// apply loop blocks after publishing a quota state), fills its buffers, publishes more, deletes all but the
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
		if point == "after_publish" { // on the apply loop: it stops, and so do the readers
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
		t.Fatal("the aggregator never published")
	}
	// More than its channel and kafka-go's queue hold: the reader stops
	// fetching; then records it has not fetched.
	publish(e, batch(1, 12000))
	time.Sleep(2 * time.Second)
	publish(e, batch(12001, 3000))
	const total = 15001
	testenv.DeleteRecords(t, e.broker, e.cfg.Topic, part, total-1)
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
		if point == "after_publish" { // on the apply loop: it stops, and so do the readers
			once2.Do(func() { close(blocked2); <-release2 })
		}
		return nil
	})
	publish(e2, batch(0, 1))
	<-blocked2
	publish(e2, batch(1, 12000))
	time.Sleep(2 * time.Second)
	publish(e2, batch(12001, 3000))
	testenv.DeleteRecords(t, e2.broker, e2.cfg.Topic, part, total-1)
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

// Issue 13 item 12: the aggregator judges routing by the count it started
// with, as the consumer does: it refuses to start on a topic of another
// count than the pinned one, and stops, after its final flush, when a
// partition is added (it used to carry on with the new count at the next
// generation, while the consumer judged by its own).
func TestPartitionCountPinnedAndWatched(t *testing.T) {
	e := setupEnv(t, true)
	svc, err := New(e.cfg, e.plans, aggstore.New(e.store.Conn()), e.log, WithRegisterer(prometheus.NewRegistry()), WithPinnedPartitions(8))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := svc.Run(ctx); !errors.Is(err, svckit.ErrPartitionCountChanged) || !errors.Is(err, errFatal) {
		t.Fatalf("Run pinned to 8 partitions on a topic of 4: %v", err)
	}

	svc, err = New(e.cfg, e.plans, aggstore.New(e.store.Conn()), e.log, WithRegisterer(prometheus.NewRegistry()), WithPinnedPartitions(4))
	if err != nil {
		t.Fatal(err)
	}
	svc.partitionsEvery = 100 * time.Millisecond
	done := make(chan error, 1)
	go func() { done <- svc.Run(context.Background()) }()
	msgs, _ := mixed(200, 12)
	e.publish(msgs)
	e.waitCaughtUp(len(msgs))
	client := &kafka.Client{Addr: kafka.TCP(e.broker), Timeout: 10 * time.Second}
	res, err := client.CreatePartitions(context.Background(), &kafka.CreatePartitionsRequest{
		Topics: []kafka.TopicPartitionsConfig{{Name: e.cfg.Topic, Count: 5}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := res.Errors[e.cfg.Topic]; err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, svckit.ErrPartitionCountChanged) || !strings.Contains(err.Error(), "had 4 partitions and now has 5") {
			t.Fatalf("Run after a partition was added: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the aggregator kept running after the topic grew from 4 to 5 partitions")
	}
}

// Issue 13 item 10 (the aggregator's side): on a LogAppendTime topic, a
// host 2 h ahead (its records' CreateTime and its event times) cannot move
// its partition's watermark: the aggregator refuses its event as the
// consumer does, by the broker's clock, and the other tenant of the
// partition is counted, not late. A host 4 minutes ahead is within the
// contract's skew: counted, and the watermark stays within 5 minutes of
// the broker's clock. Every aggregate equals the raw table.
func TestSkewedHostCannotMakeItsPartitionLate(t *testing.T) {
	e := setupEnv(t, true)
	e.cfg.Topic = testenv.Name("events-lat")
	testenv.CreateTopic(t, e.broker, e.cfg.Topic, 4, "message.timestamp.type", "LogAppendTime")
	e.startRawConsumer()
	honest := "acme"
	part := schemas.PartitionFor(honest, 4)
	skewed := ""
	for i := 0; skewed == ""; i++ {
		if name := fmt.Sprint("fast-clock-", i); schemas.PartitionFor(name, 4) == part {
			skewed = name
		}
	}
	r := e.startAggregator(nil)
	now := time.Now().UTC()
	event := func(tenant, id string, at time.Time) kafka.Message {
		m := eventMsg(&schemas.UsageEvent{ID: id, TenantID: tenant, UserID: "u1", FeatureType: "api_calls",
			Quantity: decimal.RequireFromString("1.5"), Timestamp: at})
		m.Time = at // the publisher's clock, as its client stamps CreateTime
		return m
	}
	e.publish([]kafka.Message{
		event(honest, "h1", now),
		event(skewed, "s1", now.Add(2*time.Hour)),   // 2 h ahead: refused by both services
		event(skewed, "s2", now.Add(4*time.Minute)), // within the skew: counted
		event(honest, "h2", now.Add(-time.Minute)),  // a minute old: counted, not late
		// 4 minutes old: the watermark is 4 minutes ahead, still within
		// the allowed lateness (10m) minus the contract's skew (5m).
		event(honest, "h3", now.Add(-4*time.Minute)),
	})
	e.waitRaw(4)
	e.waitCaughtUp(5)
	if late := testutil.ToFloat64(r.svc.m.outcomes.WithLabelValues("late")); late != 0 {
		t.Fatalf("%v events late after a skewed host's event", late)
	}
	if invalid := testutil.ToFloat64(r.svc.m.outcomes.WithLabelValues("invalid")); invalid != 1 {
		t.Fatalf("%v events refused, want the one 2 h ahead", invalid)
	}
	e.assertTablesMatchRaw()
	cps, err := aggstore.New(e.store.Conn()).Checkpoints(context.Background(), e.cfg.GroupID, e.cfg.Topic)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cps {
		if int(c.Partition) == part && c.Watermark.After(time.Now().Add(schemas.DefaultMaxFutureSkew)) {
			t.Fatalf("partition %d watermark %s is more than the contract's skew ahead of the broker's clock", part, c.Watermark)
		}
	}
	r.shutdown(t)
}

// A flush's writes do not stop the apply loop: while one is held (as a
// slow ClickHouse holds it), events are still applied and their quota
// states published. The flush ran on the loop's goroutine before, and
// every quota state waited for its round trips.
func TestQuotaStatesFlowWhileAFlushIsHeld(t *testing.T) {
	e := setupEnv(t, true)
	tenant := "acme"
	blocked, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	r := e.startAggregator(func(point string) error {
		if point == "flush" {
			once.Do(func() { close(blocked); <-release })
		}
		return nil
	})
	defer r.shutdown(t)
	defer close(release)
	batch := func(from, n int) []kafka.Message {
		out := make([]kafka.Message, n)
		for i := range out {
			out[i] = eventMsg(&schemas.UsageEvent{ID: fmt.Sprint("held-", from+i), TenantID: tenant, UserID: "u", FeatureType: "api_calls",
				Quantity: decimal.NewFromInt(1), Timestamp: time.Now().UTC()})
		}
		return out
	}
	e.publish(batch(0, 1))
	select {
	case <-blocked:
	case <-time.After(30 * time.Second):
		t.Fatal("the aggregator never flushed")
	}
	e.publish(batch(1, 100))
	testenv.Eventually(t, 30*time.Second, "a quota state of all 101 events while the flush is held", func() (bool, error) {
		for _, qs := range r.svc.QuotaStates() {
			if qs.TenantID == tenant && qs.FeatureType == "api_calls" && qs.Usage.Equal(decimal.NewFromInt(101)) {
				return true, nil
			}
		}
		return false, nil
	})
}
