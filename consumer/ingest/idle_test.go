package ingest

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/usagemeter/usagemeter/producer"
	"github.com/usagemeter/usagemeter/schemas"
)

// TestIdleInputFlushesEarly: with flush_interval 30 s, a burst that ends
// is in ClickHouse flush_idle after its last event, not 30 s later.
func TestIdleInputFlushesEarly(t *testing.T) {
	e := newEnv(t, "")
	e.cfg.FlushInterval = 30 * time.Second
	e.cfg.FlushIdle = 100 * time.Millisecond
	r := e.start()
	p := e.publisher()
	events, _ := mixed(10, time.Now().Add(-time.Hour))
	// The first burst also waits for the group join.
	if err := p.Publish(context.Background(), events[:5]...); err != nil {
		t.Fatal(err)
	}
	e.waitDedup(5, 25*time.Second)
	time.Sleep(e.cfg.FlushMinSpacing) // the next idle flush is allowed from here
	start := time.Now()
	if err := p.Publish(context.Background(), events[5:]...); err != nil {
		t.Fatal(err)
	}
	e.waitDedup(10, 2*time.Second)
	t.Logf("second burst written %s after its publish", time.Since(start).Round(time.Millisecond))
	if err := r.shutdown(t); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	assertCommittedToEnd(t, e)
}

// TestIdleFlushAddsNoInsertsUnderContinuousTraffic: 10,000 events/s for
// 3 s (the SDK, async, 100 events every 10 ms) are flushed by
// flush_interval (1 s), about one insert a second, as without flush_idle.
func TestIdleFlushAddsNoInsertsUnderContinuousTraffic(t *testing.T) {
	e := newEnv(t, "")
	e.cfg.FlushInterval = time.Second
	e.cfg.FlushIdle = 100 * time.Millisecond
	r := e.start()
	p := e.publisher(producer.WithAsync(func(err error, _ []schemas.UsageEvent) { t.Errorf("async publish: %v", err) }))
	events, want := mixed(30_001, time.Now().Add(-time.Hour))
	// Wait for the join with the first event, so that the traffic below
	// meets a consumer that is already reading.
	if err := p.Publish(context.Background(), events[0]); err != nil {
		t.Fatal(err)
	}
	e.waitDedup(1, 25*time.Second)
	before := testutil.ToFloat64(r.c.m.batches)
	start := time.Now()
	for i := 1; i < len(events); i += 100 {
		if err := p.Publish(context.Background(), events[i:min(i+100, len(events))]...); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Until(start.Add(time.Duration(i) * 100 * time.Microsecond)))
	}
	if err := p.Close(); err != nil { // sends what is buffered
		t.Fatal(err)
	}
	took := time.Since(start)
	e.waitDedup(uint64(len(events)), 10*time.Second)
	assertSums(t, e.sums(), want)
	inserts := testutil.ToFloat64(r.c.m.batches) - before
	// One per flush_interval while events flow, one idle flush at the end,
	// one for a batch cut at the boundary.
	if limit := took.Seconds() + 2; inserts > limit {
		t.Fatalf("%v inserts for %s of continuous traffic, want at most %.1f", inserts, took.Round(time.Millisecond), limit)
	}
	t.Logf("%v inserts for %s of continuous traffic", inserts, took.Round(time.Millisecond))
}

// TestIdleFlushesSpacedUnderTrickle: one event every 150 ms idles the
// input after each event, but flushes stay flush_min_spacing apart (here
// 500 ms: at most ~2 inserts/s, not ~7), and every event is written.
func TestIdleFlushesSpacedUnderTrickle(t *testing.T) {
	e := newEnv(t, "")
	e.cfg.FlushInterval = 30 * time.Second
	e.cfg.FlushIdle = 100 * time.Millisecond
	e.cfg.FlushMinSpacing = 500 * time.Millisecond
	r := e.start()
	p := e.publisher()
	events, want := mixed(21, time.Now().Add(-time.Hour))
	if err := p.Publish(context.Background(), events[0]); err != nil {
		t.Fatal(err)
	}
	e.waitDedup(1, 25*time.Second)
	before := testutil.ToFloat64(r.c.m.batches)
	start := time.Now()
	for i := 1; i < len(events); i++ {
		time.Sleep(time.Until(start.Add(time.Duration(i) * 150 * time.Millisecond)))
		if err := p.Publish(context.Background(), events[i]); err != nil {
			t.Fatal(err)
		}
	}
	took := time.Since(start)
	e.waitDedup(uint64(len(events)), 5*time.Second)
	assertSums(t, e.sums(), want)
	inserts := testutil.ToFloat64(r.c.m.batches) - before
	if limit := took.Seconds()/e.cfg.FlushMinSpacing.Seconds() + 2; inserts > limit {
		t.Fatalf("%v inserts for %d events over %s, want at most %.1f", inserts, len(events)-1, took.Round(time.Millisecond), limit)
	}
	t.Logf("%v inserts for %d events over %s", inserts, len(events)-1, took.Round(time.Millisecond))
}
