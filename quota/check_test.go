package quota

import (
	"context"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/shopspring/decimal"

	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/schemas/plans"
)

const seedPlans = `
meters:
  api_calls:     { aggregation: sum }
  ai_generation: { aggregation: sum }
plans:
  FREE:
    meters:
      ai_generation: { limit: 50, grace_period: 72h }
      api_calls: { limit: 10000 }
  PRO:
    meters:
      ai_generation: { limit: -1 }
      api_calls: { limit: 1000, overage_allowed: true, overage_limit: 250 }
default_plan: FREE
tenants:
  acme: { plan: PRO }
`

type clock struct{ ns atomic.Int64 }

func (c *clock) now() time.Time          { return time.Unix(0, c.ns.Load()).UTC() }
func (c *clock) set(t time.Time)         { c.ns.Store(t.UnixNano()) }
func (c *clock) advance(d time.Duration) { c.ns.Add(int64(d)) }
func mustPlans(t testing.TB) *plans.Config {
	t.Helper()
	p, err := plans.Parse([]byte(seedPlans))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// offline returns a cache that reads nothing: tests feed it records and
// mark it in sync themselves.
func offline(t testing.TB, clk *clock, mut func(*Config)) *Cache {
	t.Helper()
	cfg := DefaultConfig()
	if mut != nil {
		mut(&cfg)
	}
	c, err := New(cfg, mustPlans(t), nil, WithClock(clk.now))
	if err != nil {
		t.Fatal(err)
	}
	c.markSynced()
	return c
}

// markSynced is what a poll the readers caught up with does.
func (c *Cache) markSynced() {
	c.syncedAt.Store(c.now().UnixNano())
	c.readyOnce.Do(func() { close(c.ready) })
}

var offsetSeq atomic.Int64

func feed(t testing.TB, c *Cache, tenant, meter string, usage int64, at time.Time) {
	t.Helper()
	limit := decimal.NewFromInt(50)
	p := plans.PeriodOf(plans.Quota{Period: plans.CalendarMonth}, 0, at)
	s := schemas.QuotaState{TenantID: tenant, FeatureType: meter, Period: p.ID, Plan: "FREE",
		Usage: decimal.NewFromInt(usage), Limit: limit, Remaining: decimal.Max(limit.Sub(decimal.NewFromInt(usage)), decimal.Zero),
		OverageUsed: decimal.Zero, Percentage: decimal.Zero, Level: "ok", PeriodStart: p.Start, PeriodEnd: p.End,
		SourceOffsets: map[int32]int64{0: usage}, UpdatedAt: at}
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	c.applyState(kafka.Message{Partition: 1, Offset: offsetSeq.Add(1), Value: s.AppendJSON(nil)})
}

var nov = time.Date(2026, 11, 28, 10, 0, 0, 0, time.UTC)

func TestFreePlanStopsAt50(t *testing.T) {
	clk := &clock{}
	clk.set(nov)
	c := offline(t, clk, nil)
	ctx := context.Background()
	for i := 1; i <= 50; i++ {
		d := c.Check(ctx, "t1", "ai_generation", Units(1))
		if !d.Allowed {
			t.Fatalf("request %d refused: %+v", i, d)
		}
		if i == 50 && (d.Level != "at_limit" || !d.Remaining.IsZero() || d.Percentage != 10000) {
			t.Fatalf("50th: %+v", d)
		}
		if i == 25 && (d.Level != "warning_50" || d.Warning != 50) {
			t.Fatalf("25th: level %s warning %d", d.Level, d.Warning)
		}
	}
	d := c.Check(ctx, "t1", "ai_generation", Units(1))
	if d.Allowed || d.Reason != ReasonLimit || d.Level != "blocked" || d.RetryAfter <= 0 || !d.ResetAt.Equal(time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)) {
		t.Fatalf("51st: %+v", d)
	}
	// The state catches up with the 50: pending goes, usage stays 50.
	feed(t, c, "t1", "ai_generation", 50, nov)
	d = c.Peek(ctx, "t1", "ai_generation")
	if !d.Pending.IsZero() || d.Usage.Cmp(Units(50)) != 0 || d.Offsets.StateOffset < 0 {
		t.Fatalf("after state: %+v", d)
	}
	// PRO is unlimited for ai_generation.
	for range 120 {
		if d := c.Check(ctx, "acme", "ai_generation", Units(1)); !d.Allowed || !d.Unlimited {
			t.Fatalf("PRO refused: %+v", d)
		}
	}
	// A new period starts from zero.
	clk.set(time.Date(2026, 12, 1, 0, 0, 1, 0, time.UTC))
	if d := c.Check(ctx, "t1", "ai_generation", Units(1)); !d.Allowed || d.Period != "2026-12" || d.Usage.Cmp(Units(1)) != 0 {
		t.Fatalf("new period: %+v", d)
	}
}

func TestPendingAbsorbedByState(t *testing.T) {
	clk := &clock{}
	clk.set(nov)
	c := offline(t, clk, nil)
	ctx := context.Background()
	feed(t, c, "t2", "ai_generation", 30, nov)
	for range 10 {
		c.Check(ctx, "t2", "ai_generation", Units(1))
	}
	// The aggregator has seen 6 of the 10: 4 stay pending.
	feed(t, c, "t2", "ai_generation", 36, nov)
	d := c.Peek(ctx, "t2", "ai_generation")
	if d.Usage.Cmp(Units(40)) != 0 || d.Pending.Cmp(Units(4)) != 0 {
		t.Fatalf("usage %s pending %s", d.Usage, d.Pending)
	}
	allowed := 0
	for range 20 {
		if c.Check(ctx, "t2", "ai_generation", Units(1)).Allowed {
			allowed++
		}
	}
	if allowed != 10 {
		t.Fatalf("allowed %d more, want 10", allowed)
	}
}

func TestConcurrentChecksNeverOvershootOneInstance(t *testing.T) {
	clk := &clock{}
	clk.set(nov)
	c := offline(t, clk, nil)
	feed(t, c, "t3", "ai_generation", 40, nov)
	var allowed atomic.Int64
	var wg sync.WaitGroup
	for range 200 {
		wg.Go(func() {
			if c.Check(context.Background(), "t3", "ai_generation", Units(1)).Allowed {
				allowed.Add(1)
			}
		})
	}
	wg.Wait()
	if allowed.Load() != 10 {
		t.Fatalf("allowed %d, want exactly 10", allowed.Load())
	}
}

func TestLevelsMatchPlansEvaluate(t *testing.T) {
	p := mustPlans(t)
	r := rand.New(rand.NewPCG(1, 2))
	for _, pm := range []planMeter{{"FREE", "ai_generation"}, {"FREE", "api_calls"}, {"PRO", "api_calls"}} {
		q := p.Plans[pm.plan].Meters[pm.meter]
		qi := newQuotaInfo(pm.plan, pm.meter, q, RateLimit{}, plans.Sum)
		limit := q.Limit.IntPart()
		for range 2000 {
			u := decimal.New(r.Int64N(limit*1_500_000_000), -9)
			if r.IntN(3) == 0 {
				u = decimal.NewFromInt(r.Int64N(limit * 2))
			}
			a, err := AmountOf(u)
			if err != nil {
				t.Fatal(err)
			}
			want := plans.Evaluate(q, u)
			if got := qi.level(a); got != want.Level {
				t.Fatalf("%v usage %s: level %s, plans.Evaluate %s", pm, u, got, want.Level)
			}
			if got := basisPoints(a, qi.limit); !decimal.NewFromInt(got).Equal(want.Percentage.Shift(2)) {
				t.Fatalf("%v usage %s: %d bp, plans.Evaluate %s %%", pm, u, got, want.Percentage)
			}
		}
	}
}

func TestOverageUpToHardCap(t *testing.T) {
	clk := &clock{}
	clk.set(nov)
	c := offline(t, clk, nil)
	d := c.Check(context.Background(), "acme", "api_calls", Units(1100))
	if !d.Allowed || d.Level != "overage" {
		t.Fatalf("1100 of 1000+250: %+v", d)
	}
	if d := c.Check(context.Background(), "acme", "api_calls", Units(151)); d.Allowed || d.Level != "blocked" {
		t.Fatalf("1251: %+v", d)
	}
	if d := c.Check(context.Background(), "acme", "api_calls", Units(150)); !d.Allowed || d.Level != "overage" {
		t.Fatalf("1250: %+v", d)
	}
}

func TestStaleFailModes(t *testing.T) {
	clk := &clock{}
	clk.set(nov)
	c := offline(t, clk, func(cfg *Config) {
		cfg.MeterFailModes = map[string]FailModes{"api_calls": {OK: Closed, Warning: Closed, AtLimit: Closed, Overage: Closed, Blocked: Closed}}
	})
	ctx := context.Background()
	feed(t, c, "t4", "ai_generation", 10, nov)          // ok
	feed(t, c, "t5", "ai_generation", 40, nov)          // warning_75
	feed(t, c, "t6", "ai_generation", 50, nov)          // at_limit
	clk.advance(6 * time.Second)                        // MaxStaleness is 5s
	d := c.Check(ctx, "t4", "ai_generation", Units(45)) // open: allowed though 55 > 50
	if !d.Allowed || !d.Staleness.Stale || d.Staleness.Mode != Open || d.Staleness.Age < 6*time.Second {
		t.Fatalf("ok, open: %+v", d)
	}
	if d := c.Check(ctx, "t5", "ai_generation", Units(10)); !d.Allowed || d.Staleness.Mode != LastKnown {
		t.Fatalf("warning, last known, 50: %+v", d)
	}
	if d := c.Check(ctx, "t5", "ai_generation", Units(1)); d.Allowed || d.Reason != ReasonStale || d.Staleness.Mode != Closed {
		t.Fatalf("at_limit after 50, closed: %+v", d)
	}
	if d := c.Check(ctx, "t6", "ai_generation", Units(1)); d.Allowed || d.Reason != ReasonStale {
		t.Fatalf("at_limit, closed: %+v", d)
	}
	if d := c.Check(ctx, "t4", "api_calls", Units(1)); d.Allowed || d.Reason != ReasonStale {
		t.Fatalf("api_calls closed whatever the level: %+v", d)
	}
	c.markSynced()
	if d := c.Check(ctx, "t4", "api_calls", Units(1)); !d.Allowed || d.Staleness.Stale {
		t.Fatalf("fresh again: %+v", d)
	}
}

func TestRateLimit(t *testing.T) {
	clk := &clock{}
	clk.set(nov)
	c := offline(t, clk, func(cfg *Config) {
		cfg.RateLimits = map[string]RateLimit{"api_calls": {PerSecond: 10, Burst: 5}}
		cfg.PlanRateLimits = map[string]map[string]RateLimit{"pro": {"api_calls": {PerSecond: 1, Burst: 1}}} // as viper gives it
	})
	ctx := context.Background()
	for i := range 5 {
		if d := c.Check(ctx, "t7", "api_calls", Units(1)); !d.Allowed {
			t.Fatalf("burst %d refused: %+v", i, d)
		}
	}
	d := c.Check(ctx, "t7", "api_calls", Units(1))
	if d.Allowed || d.Reason != ReasonRate || d.RetryAfter != 100*time.Millisecond {
		t.Fatalf("6th: %+v", d)
	}
	clk.advance(100 * time.Millisecond)
	if d := c.Check(ctx, "t7", "api_calls", Units(1)); !d.Allowed {
		t.Fatalf("after refill: %+v", d)
	}
	c.Check(ctx, "acme", "api_calls", Units(1)) // PRO: 1/s, burst 1
	if d := c.Check(ctx, "acme", "api_calls", Units(1)); d.Allowed || d.Reason != ReasonRate || d.RetryAfter != time.Second {
		t.Fatalf("PRO's plan rate limit: %+v", d)
	}
}

func TestPlanChangeAndReadYourWrites(t *testing.T) {
	clk := &clock{}
	clk.set(nov)
	c := offline(t, clk, nil)
	c.assign.name = "as"
	c.assign.next = make([]atomic.Int64, 1)
	ctx := context.Background()
	feed(t, c, "t8", "ai_generation", 50, nov)
	if d := c.Check(ctx, "t8", "ai_generation", Units(1)); d.Allowed {
		t.Fatalf("FREE at 50 allowed: %+v", d)
	}
	k, v := plans.AssignmentRecord("t8", &plans.Assignment{Plan: "PRO", Version: 2})
	pos := Position{Topic: "as", Partition: 0, Offset: 0}
	if d := c.CheckAfter(ctx, "t8", "ai_generation", Units(1), pos); d.Allowed || d.Reason != ReasonNotCaughtUp {
		t.Fatalf("before the record: %+v", d)
	}
	c.applyAssignment(kafka.Message{Key: k, Value: v, Offset: 0, HighWaterMark: 1})
	c.assign.next[0].Store(1)
	if d := c.CheckAfter(ctx, "t8", "ai_generation", Units(1), pos); !d.Allowed || d.Plan != "PRO" || !d.Unlimited {
		t.Fatalf("after the upgrade: %+v", d)
	}
	k, v = plans.AssignmentRecord("t8", &plans.Assignment{Plan: "FREE", Version: 1}) // older: ignored
	c.applyAssignment(kafka.Message{Key: k, Value: v, Offset: 1, HighWaterMark: 2})
	if d := c.Check(ctx, "t8", "ai_generation", Units(1)); d.Plan != "PRO" {
		t.Fatalf("a stale assignment applied: %+v", d)
	}
}

func TestAmount(t *testing.T) {
	for _, s := range []string{"0", "1", "12.5", "0.000000001", "99999999999999999999999999999.999999999", "18446744073.709551616"} {
		a, err := ParseAmount(s)
		if err != nil {
			t.Fatalf("%s: %v", s, err)
		}
		if a.String() != s || !a.Decimal().Equal(decimal.RequireFromString(s)) {
			t.Fatalf("%s: got %s / %s", s, a.String(), a.Decimal())
		}
	}
	for _, s := range []string{"-1", "0.0000000001", "100000000000000000000000000000"} {
		if _, err := ParseAmount(s); err == nil {
			t.Fatalf("%s accepted", s)
		}
	}
}

// BenchmarkCheck: Check on a warm cache, several tenants. Reports p50/p99
// of single calls (timed with the monotonic clock, whose ~20-40 ns
// overhead is included) besides ns/op and allocs/op.
func BenchmarkCheck(b *testing.B) {
	b.Run("warm", func(b *testing.B) { benchCheck(b, nil) })
	b.Run("warm_untimed", func(b *testing.B) { // ns/op of Check alone, no clock reads around it
		c, tenants := warmCache(b, nil)
		ctx := context.Background()
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if !c.Check(ctx, tenants[i%len(tenants)], "api_calls", Nanos(1)).Allowed {
				b.Fatal("refused")
			}
		}
	})
	b.Run("warm_rate_limited", func(b *testing.B) {
		benchCheck(b, map[string]RateLimit{"api_calls": {PerSecond: 1e12, Burst: 1 << 40}})
	})
	// Every core on one tenant at its limit: each Check is refused
	// (limit_exceeded) reading the same entry and bucket.
	b.Run("parallel_hot_at_limit", func(b *testing.B) {
		c, _ := warmCache(b, nil)
		feed(b, c, "hot", "ai_generation", 50, time.Now())
		benchParallel(b, func(ctx context.Context) bool {
			d := c.Check(ctx, "hot", "ai_generation", Units(1))
			return !d.Allowed && d.Reason == ReasonLimit
		})
	})
	// Every core on one tenant with room: each Check is allowed and adds
	// to the same pending counter (compare-and-swap contention).
	b.Run("parallel_hot_allowed", func(b *testing.B) {
		c, _ := warmCache(b, nil)
		benchParallel(b, func(ctx context.Context) bool {
			return c.Check(ctx, "hot", "api_calls", Nanos(1)).Allowed
		})
	})
	// First lookups: every Check is a tenant the cache has never seen (its
	// entry, view and bucket are made): the cold path, which allocates.
	b.Run("first_lookup", func(b *testing.B) {
		c, _ := warmCache(b, nil)
		names := make([]string, b.N)
		for i := range names {
			names[i] = "new-" + strconv.Itoa(i)
		}
		var n atomic.Int64
		benchParallel(b, func(ctx context.Context) bool {
			return c.Check(ctx, names[n.Add(1)-1], "api_calls", Nanos(1)).Allowed
		})
	})
}

// benchParallel runs check on every core (b.RunParallel) and reports the
// p50, p99 and p999 of single calls over all goroutines.
func benchParallel(b *testing.B, check func(context.Context) bool) {
	ctx := context.Background()
	var mu sync.Mutex
	var all []int64
	bufs := make(chan []int64, 256) // latency buffers made before the timer: B/op is Check's
	for range cap(bufs) {
		bufs <- make([]int64, 0, 1<<14)
	}
	all = make([]int64, 0, cap(bufs)<<14)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		lat := <-bufs
		for pb.Next() {
			t0 := time.Now()
			ok := check(ctx)
			if len(lat) < cap(lat) {
				lat = append(lat, int64(time.Since(t0)))
			}
			if !ok {
				b.Error("unexpected decision")
				return
			}
		}
		mu.Lock()
		all = append(all, lat...)
		mu.Unlock()
	})
	b.StopTimer()
	slices.Sort(all)
	if len(all) > 0 {
		b.ReportMetric(float64(all[len(all)/2]), "p50-ns")
		b.ReportMetric(float64(all[len(all)*99/100]), "p99-ns")
		b.ReportMetric(float64(all[len(all)*999/1000]), "p999-ns")
	}
}

// warmCache is a cache holding state for 1000 tenants, each checked once
// (its view built), on the real clock.
func warmCache(tb testing.TB, limits map[string]RateLimit) (*Cache, []string) {
	clk := &clock{}
	clk.set(nov)
	c := offline(tb, clk, func(cfg *Config) { cfg.RateLimits = limits })
	c.now = time.Now
	c.markSynced()
	tenants := make([]string, 1000)
	for i := range tenants {
		tenants[i] = "tenant-" + string(rune('a'+i%26)) + decimal.NewFromInt(int64(i)).String()
		feed(tb, c, tenants[i], "api_calls", 10, time.Now())
		c.Check(context.Background(), tenants[i], "api_calls", Nanos(1))
	}
	return c, tenants
}

// Check on a warm cache allocates nothing: the target the benchmark
// reports, held by a test that fails.
func TestCheckAllocatesNothingWhenWarm(t *testing.T) {
	c, tenants := warmCache(t, map[string]RateLimit{"api_calls": {PerSecond: 1e12, Burst: 1 << 40}})
	ctx := context.Background()
	i := 0
	if n := testing.AllocsPerRun(10000, func() {
		c.Check(ctx, tenants[i%len(tenants)], "api_calls", Nanos(1))
		i++
	}); n != 0 {
		t.Fatalf("Check allocates %.2f times per call on a warm cache", n)
	}
	feed(t, c, "hot", "ai_generation", 50, time.Now()) // at its limit: every Check refused
	if n := testing.AllocsPerRun(10000, func() {
		if c.Check(ctx, "hot", "ai_generation", Units(1)).Allowed {
			t.Fatal("allowed past the limit")
		}
	}); n != 0 {
		t.Fatalf("a refused Check allocates %.2f times per call", n)
	}
}

func benchCheck(b *testing.B, limits map[string]RateLimit) {
	c, tenants := warmCache(b, limits)
	ctx := context.Background()
	one := Nanos(1) // 1e-9: a billion checks stay far from the limit
	lat := make([]int64, 0, min(b.N, 1<<20))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		d := c.Check(ctx, tenants[i%len(tenants)], "api_calls", one)
		if len(lat) < cap(lat) {
			lat = append(lat, int64(time.Since(t0)))
		}
		if !d.Allowed {
			b.Fatalf("refused: %+v", d)
		}
	}
	b.StopTimer()
	slices.Sort(lat)
	if len(lat) > 0 {
		b.ReportMetric(float64(lat[len(lat)/2]), "p50-ns")
		b.ReportMetric(float64(lat[len(lat)*99/100]), "p99-ns")
	}
}

// Before its first catch-up a cache knows no usage at all: "open while ok"
// would let every restart of an app overshoot every tenant, so it refuses
// (BeforeReady, closed by default) whatever the level would be.
func TestBeforeReadyIsClosedByDefault(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct {
		mode    Mode
		allowed bool
	}{{Closed, false}, {Open, true}} {
		clk := &clock{}
		clk.set(time.Date(2026, 11, 20, 10, 0, 0, 0, time.UTC))
		cfg := DefaultConfig()
		cfg.BeforeReady = c.mode
		cache, err := New(cfg, mustPlans(t), nil, WithClock(clk.now))
		if err != nil {
			t.Fatal(err)
		}
		d := cache.Check(ctx, "t1", "ai_generation", Units(1))
		if d.Allowed != c.allowed || d.Staleness.Ready || !d.Staleness.Stale || d.Staleness.Mode != c.mode {
			t.Fatalf("before_ready %s: %+v", c.mode, d)
		}
		if !c.allowed && d.Reason != ReasonStale {
			t.Fatalf("before_ready closed: reason %q, want %q", d.Reason, ReasonStale)
		}
		cache.markSynced()
		if d := cache.Check(ctx, "t1", "ai_generation", Units(1)); !d.Allowed || !d.Staleness.Ready || d.Staleness.Stale {
			t.Fatalf("after the first catch-up: %+v", d)
		}
	}
	bad := DefaultConfig()
	bad.BeforeReady = "maybe"
	if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), "before_ready") {
		t.Fatalf("Validate: %v", err)
	}
}
