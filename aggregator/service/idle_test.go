package service

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/shopspring/decimal"

	"github.com/usagemeter/usagemeter/aggregator/aggstore"
	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/testenv"
)

func idleEvents(prefix string, n int) []kafka.Message {
	out := make([]kafka.Message, n)
	for i := range out {
		out[i] = eventMsg(&schemas.UsageEvent{ID: fmt.Sprint(prefix, i), TenantID: []string{"acme", "globex", "initech"}[i%3], UserID: "u",
			FeatureType: "api_calls", Quantity: decimal.NewFromInt(1), Timestamp: time.Now().UTC()})
	}
	return out
}

// checkpointed is how many messages of the topic the group's checkpoint covers.
func (e *env) checkpointedCount() (int, error) {
	cps, err := aggstore.New(e.store.Conn()).Checkpoints(context.Background(), e.cfg.GroupID, e.cfg.Topic)
	n := 0
	for _, c := range cps {
		n += int(c.Offset) + 1
	}
	return n, err
}

// TestIdleInputFlushesEarly: with flush_interval 30 s, the rows and the
// checkpoint of a burst that ends are in ClickHouse about flush_idle after
// its last event, not up to 30 s later.
func TestIdleInputFlushesEarly(t *testing.T) {
	e := setupEnv(t, false)
	e.cfg.FlushInterval = 30 * time.Second
	r := e.startAggregator(nil)
	defer r.shutdown(t)
	// The first burst also waits for the group join.
	e.publish(idleEvents("first-", 3))
	testenv.Eventually(t, 30*time.Second, "the first burst checkpointed", func() (bool, error) {
		n, err := e.checkpointedCount()
		return n == 3, err
	})
	time.Sleep(e.cfg.FlushMinSpacing) // the next idle flush is allowed from here
	start := time.Now()
	e.publish(idleEvents("second-", 5))
	testenv.Eventually(t, 2*time.Second, "the second burst checkpointed within 2 s", func() (bool, error) {
		n, err := e.checkpointedCount()
		return n == 8, err
	})
	t.Logf("second burst checkpointed %s after its publish", time.Since(start).Round(time.Millisecond))
	var events uint64
	row := e.store.Conn().QueryRow(context.Background(), "SELECT toUInt64(sum(events)) FROM usage_period FINAL WHERE feature_type = 'api_calls'")
	if err := row.Scan(&events); err != nil {
		t.Fatal(err)
	}
	if events != 8 {
		t.Fatalf("usage_period counts %d events, want 8", events)
	}
}

// TestIdleFlushAddsNoFlushesUnderContinuousTraffic: events arriving every
// few milliseconds for 3 s are flushed by flush_interval (1 s), about one
// flush a second, as without flush_idle.
func TestIdleFlushAddsNoFlushesUnderContinuousTraffic(t *testing.T) {
	e := setupEnv(t, false)
	var flushes atomic.Int64
	r := e.startAggregator(func(point string) error {
		if point == "flush" {
			flushes.Add(1)
		}
		return nil
	})
	defer r.shutdown(t)
	e.publish(idleEvents("join-", 1))
	testenv.Eventually(t, 30*time.Second, "the first event checkpointed", func() (bool, error) {
		n, err := e.checkpointedCount()
		return n == 1, err
	})
	w := &kafka.Writer{Addr: kafka.TCP(e.broker), Topic: e.cfg.Topic, Balancer: kafka.Murmur2Balancer{}, BatchTimeout: time.Millisecond}
	defer w.Close()
	msgs := idleEvents("steady-", 3000)
	before := flushes.Load()
	start := time.Now()
	for i := 0; i < len(msgs); i += 10 { // ~1,000 events/s for 3 s
		if err := w.WriteMessages(context.Background(), msgs[i:i+10]...); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Until(start.Add(time.Duration(i) * time.Millisecond)))
	}
	took := time.Since(start)
	testenv.Eventually(t, 10*time.Second, "all events checkpointed", func() (bool, error) {
		n, err := e.checkpointedCount()
		return n == 1+len(msgs), err
	})
	n := flushes.Load() - before
	// One per flush_interval while events flow, one idle flush at the end,
	// one for a tick at the boundary (4 in quiet runs); the limit leaves
	// room for a publisher stalled past flush_idle on a loaded machine,
	// and is still far below a flush per 50 ms tick (60).
	if limit := 2*took.Seconds() + 2; float64(n) > limit {
		t.Fatalf("%d flushes for %s of continuous traffic, want at most %.1f", n, took.Round(time.Millisecond), limit)
	}
	t.Logf("%d flushes for %s of continuous traffic", n, took.Round(time.Millisecond))
}

func TestIdleFlushDue(t *testing.T) {
	cfg := DefaultConfig() // flush_idle 100 ms, flush_min_spacing 250 ms
	s := &Service{cfg: cfg}
	t0 := time.Now()
	ms := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }
	for _, c := range []struct {
		now, input, flush int
		want              bool
	}{
		{now: 1000, input: 950, flush: 0, want: false},   // input 50 ms ago: not idle
		{now: 1000, input: 900, flush: 0, want: true},    // idle 100 ms, last flush 1 s ago
		{now: 1000, input: 800, flush: 800, want: false}, // idle, but a flush 200 ms ago
		{now: 1000, input: 800, flush: 750, want: true},  // idle, the last flush 250 ms ago
	} {
		if got := s.idleFlushDue(ms(c.now), ms(c.input), ms(c.flush)); got != c.want {
			t.Errorf("now %d, input %d, flush %d: got %v, want %v", c.now, c.input, c.flush, got, c.want)
		}
	}
	s.cfg.FlushIdle = 0
	if s.idleFlushDue(ms(5000), ms(0), ms(0)) {
		t.Error("flush_idle 0 must turn the idle flush off")
	}
}
