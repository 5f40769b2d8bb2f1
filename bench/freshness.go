package main

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"
	"go.uber.org/zap"

	"github.com/usagemeter/usagemeter/quota"
	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/schemas/plans"
)

// Freshness is publish (acks=all) -> a decision of a quota cache reflects
// the event: the definition, and what an app embedding the cache
// sees. Topic is the same events timed when the quota state carrying them
// arrives on the compacted topic (a reader with a 20 ms fetch wait), so the
// difference between the two is the cache's own fetch and apply.
type Freshness struct {
	EventsPerS float64    `json:"events_per_s"`
	Events     int        `json:"events"`
	Via        string     `json:"via,omitempty"`
	P50ms      float64    `json:"p50_ms"`
	P99ms      float64    `json:"p99_ms"`
	MaxMs      float64    `json:"max_ms"`
	Topic      *Freshness `json:"topic,omitempty"`
}

// tracker records, per tenant, when its k-th api_calls event (quantity
// 1..7, usage is a running sum) was published. A tenant's events share a
// partition and are applied in order, so usage U covers every event whose
// running sum is <= U.
type tracker struct {
	mu  sync.Mutex
	cum map[string][]int64     // tenant -> running usage after its k-th event
	at  map[string][]time.Time // tenant -> publish time of its k-th event
}

// observer times events as one reader (the topic, or the cache) sees them.
type observer struct {
	t         *tracker
	seen      map[string]int // tenant -> events already reflected
	latencies []time.Duration
}

func (t *tracker) observer() *observer { return &observer{t: t, seen: map[string]int{}} }

func (o *observer) observe(tenant string, usage int64, now time.Time) {
	o.t.mu.Lock()
	defer o.t.mu.Unlock()
	cum := o.t.cum[tenant]
	k := o.seen[tenant]
	for ; k < len(cum) && cum[k] <= usage; k++ {
		o.latencies = append(o.latencies, now.Sub(o.t.at[tenant][k]))
	}
	o.seen[tenant] = k
}

func (o *observer) pending() int {
	o.t.mu.Lock()
	defer o.t.mu.Unlock()
	n := 0
	for tenant, c := range o.t.cum {
		n += len(c) - o.seen[tenant]
	}
	return n
}

// result turns the observed latencies into percentiles.
func (o *observer) result(sent int, elapsed time.Duration, via string) (*Freshness, error) {
	o.t.mu.Lock()
	lat := slices.Clone(o.latencies)
	o.t.mu.Unlock()
	if len(lat) != sent {
		return nil, fmt.Errorf("%s: measured %d latencies for %d events", via, len(lat), sent)
	}
	slices.Sort(lat)
	ms := func(q float64) float64 {
		return round(float64(lat[min(len(lat)-1, int(q*float64(len(lat))))].Microseconds())/1000, 1)
	}
	return &Freshness{EventsPerS: round(float64(sent)/elapsed.Seconds(), 0), Events: sent, Via: via,
		P50ms: ms(0.50), P99ms: ms(0.99), MaxMs: round(float64(lat[len(lat)-1].Microseconds())/1000, 1)}, nil
}

// freshTenants is how many tenants the freshness events spread over.
const freshTenants = 50

// measureFreshness publishes api_calls events of 50 fresh tenants at
// o.freshRate for o.freshness and times each until a quota cache (the
// quota package, as an app embeds it) answers with a usage that covers it,
// and until the quota state on the topic does.
func measureFreshness(ctx context.Context, o options, pub *publisher, n names, w *workload) (*Freshness, error) {
	tr := &tracker{cum: map[string][]int64{}, at: map[string][]time.Time{}}
	onTopic, inCache := tr.observer(), tr.observer()
	readCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait() // runs after cancel: deferred calls run last first
	defer cancel()

	cache, err := startCache(readCtx, &wg, o.broker, n)
	if err != nil {
		return nil, err
	}
	for p := range partitions {
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{o.broker}, Topic: n.quota, Partition: p,
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
				if err != nil || qs.FeatureType != schemas.MeterAPICalls {
					continue
				}
				onTopic.observe(qs.TenantID, qs.Usage.IntPart(), now)
			}
		})
	}
	// The cache is asked every millisecond for each tenant, as an app
	// checking before each request would; a Peek costs about 300 ns.
	tenants := make([]string, freshTenants)
	for i := range tenants {
		tenants[i] = fmt.Sprintf(freshTenantFmt, i)
	}
	wg.Go(func() {
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-readCtx.Done():
				return
			case <-t.C:
			}
			for _, tenant := range tenants {
				d := cache.Peek(readCtx, tenant, schemas.MeterAPICalls)
				inCache.observe(tenant, d.Usage.Decimal().IntPart(), time.Now())
			}
		}
	})
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
		evs := w.next(due, freshTenants, freshTenantFmt, schemas.MeterAPICalls)
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
	if err := waitFor(ctx, time.Minute, "every freshness event in a quota state and in the cache", func() (bool, string, error) {
		pt, pc := onTopic.pending(), inCache.pending()
		return pt == 0 && pc == 0, fmt.Sprintf("%d events not yet in a quota state, %d not yet in the cache", pt, pc), nil
	}); err != nil {
		return nil, err
	}
	f, err := inCache.result(sent, elapsed, "quota cache decision (quota.Cache.Peek)")
	if err != nil {
		return nil, err
	}
	if f.Topic, err = onTopic.result(sent, elapsed, "quota state on the topic"); err != nil {
		return nil, err
	}
	return f, nil
}

// freshTenantFmt names the freshness phase's tenants.
const freshTenantFmt = "fresh-%03d"

// startCache runs a quota cache over the run's topics, with the plans the
// aggregator has, until ctx ends.
func startCache(ctx context.Context, wg *sync.WaitGroup, broker string, n names) (*quota.Cache, error) {
	p, err := plans.Parse([]byte(benchPlans))
	if err != nil {
		return nil, fmt.Errorf("bench plans: %w", err)
	}
	cfg := quota.DefaultConfig()
	cfg.Brokers = []string{broker}
	cfg.StateTopic, cfg.AssignmentTopic, cfg.EventsTopic, cfg.PositionTopic = n.quota, n.asg, n.topic, n.positions
	c, err := quota.New(cfg, p, zap.NewNop())
	if err != nil {
		return nil, fmt.Errorf("quota cache: %w", err)
	}
	wg.Go(func() { _ = c.Run(ctx) })
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := c.WaitReady(wctx); err != nil {
		return nil, fmt.Errorf("quota cache ready: %w", err)
	}
	return c, nil
}
