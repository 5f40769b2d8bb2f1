package main

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/usagemeter/usagemeter/schemas"
)

// Freshness is publish -> the quota state that reflects the event is on
// the compacted topic, as every quota cache reads it.
type Freshness struct {
	EventsPerS float64 `json:"events_per_s"`
	Events     int     `json:"events"`
	P50ms      float64 `json:"p50_ms"`
	P99ms      float64 `json:"p99_ms"`
	MaxMs      float64 `json:"max_ms"`
}

// tracker records, per tenant, when its k-th api_calls event (quantity
// 1..7, usage is a running sum) was published, and latencies as quota
// states arrive. A tenant's events share a partition and are applied in
// order, so usage U covers every event whose running sum is <= U.
type tracker struct {
	mu        sync.Mutex
	cum       map[string][]int64     // tenant -> running usage after its k-th event
	at        map[string][]time.Time // tenant -> publish time of its k-th event
	seen      map[string]int         // tenant -> events already reflected
	latencies []time.Duration
}

func (t *tracker) observe(tenant string, usage int64, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	cum := t.cum[tenant]
	k := t.seen[tenant]
	for ; k < len(cum) && cum[k] <= usage; k++ {
		t.latencies = append(t.latencies, now.Sub(t.at[tenant][k]))
	}
	t.seen[tenant] = k
}

func (t *tracker) pending() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for tenant, c := range t.cum {
		n += len(c) - t.seen[tenant]
	}
	return n
}

// measureFreshness publishes api_calls events of 50 fresh tenants at
// o.freshRate for o.freshness and times each until a quota state shows it.
func measureFreshness(ctx context.Context, o options, pub *publisher, quotaTopic string, w *workload) (*Freshness, error) {
	tr := &tracker{cum: map[string][]int64{}, at: map[string][]time.Time{}, seen: map[string]int{}}
	readCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait() // runs after cancel: deferred calls run last first
	defer cancel()
	for p := range partitions {
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{o.broker}, Topic: quotaTopic, Partition: p,
			MinBytes: 1, MaxBytes: 16 << 20, MaxWait: 20 * time.Millisecond})
		if err := r.SetOffset(kafka.LastOffset); err != nil {
			return nil, fmt.Errorf("quota reader: %w", err)
		}
		wg.Go(func() {
			defer r.Close()
			for {
				m, err := r.FetchMessage(readCtx)
				if err != nil {
					return
				}
				now := time.Now()
				qs, err := schemas.DecodeQuotaState(m.Value)
				if err != nil || qs.FeatureType != "api_calls" {
					continue
				}
				tr.observe(qs.TenantID, qs.Usage.IntPart(), now)
			}
		})
	}
	time.Sleep(500 * time.Millisecond) // the readers have their start offsets
	const tick = 10 * time.Millisecond
	start := time.Now()
	sent := 0
	t := time.NewTicker(tick)
	defer t.Stop()
	for now := start; now.Sub(start) < o.freshness; now = <-t.C {
		// Catch up on ticks the scheduler delayed, so the average rate holds.
		due := int(float64(o.freshRate)*now.Sub(start).Seconds()) - sent
		if due <= 0 {
			continue
		}
		evs := w.next(due, 50, "fresh-%03d", "api_calls")
		at := time.Now()
		tr.mu.Lock()
		for i := range evs {
			tenant := evs[i].TenantID
			c := tr.cum[tenant]
			prev := int64(0)
			if len(c) > 0 {
				prev = c[len(c)-1]
			}
			tr.cum[tenant] = append(c, prev+evs[i].Quantity.IntPart())
			tr.at[tenant] = append(tr.at[tenant], at)
		}
		tr.mu.Unlock()
		if err := pub.publish(ctx, evs); err != nil {
			return nil, err
		}
		sent += due
	}
	elapsed := time.Since(start)
	if err := waitFor(ctx, time.Minute, "every freshness event in a quota state", func() (bool, string, error) {
		p := tr.pending()
		return p == 0, fmt.Sprintf("%d events not yet in a quota state", p), nil
	}); err != nil {
		return nil, err
	}
	tr.mu.Lock()
	lat := slices.Clone(tr.latencies)
	tr.mu.Unlock()
	if len(lat) != sent {
		return nil, fmt.Errorf("measured %d latencies for %d events", len(lat), sent)
	}
	slices.Sort(lat)
	ms := func(q float64) float64 {
		return round(float64(lat[min(len(lat)-1, int(q*float64(len(lat))))].Microseconds())/1000, 1)
	}
	return &Freshness{EventsPerS: round(float64(sent)/elapsed.Seconds(), 0), Events: sent,
		P50ms: ms(0.50), P99ms: ms(0.99), MaxMs: round(float64(lat[len(lat)-1].Microseconds())/1000, 1)}, nil
}
