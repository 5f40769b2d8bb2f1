package quota

// Tests for issue 13 (enforcement that holds). Each one failed on the code
// before its fix; they use only what that code already exported, so that
// this could be checked.

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
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

// Item 2: a tenant id the contract refuses, or a meter no plan or meter
// definition names, is refused before Check counts anything.
func TestInvalidTenantOrUnknownMeterIsRefused(t *testing.T) {
	clk := &clock{}
	clk.set(nov)
	c := offline(t, clk, nil)
	ctx := context.Background()
	for _, k := range []struct{ tenant, meter, reason string }{
		{"bob+1@x", "ai_generation", "invalid_tenant"},
		{"", "ai_generation", "invalid_tenant"},
		{strings.Repeat("a", 129), "ai_generation", "invalid_tenant"},
		{"t1", "ai_generaton", "unknown_meter"}, // a typo: no plan and no meter definition names it
		{"t1", "AI-Generation", "unknown_meter"},
	} {
		for i := range 3 {
			d := c.Check(ctx, k.tenant, k.meter, Units(1))
			if d.Allowed || d.Reason != k.reason {
				t.Fatalf("%q/%q request %d: allowed %v reason %q, want refused %q", k.tenant, k.meter, i, d.Allowed, d.Reason, k.reason)
			}
		}
	}
	if d := c.Peek(ctx, "t1", "ai_generaton"); d.Allowed || d.Reason != "unknown_meter" || d.Unlimited {
		t.Fatalf("Peek of an unknown meter: %+v", d)
	}
	// Through the middleware: 400, nothing tracked.
	tr := &countingTracker{}
	h := middlewareFor(t, c, MiddlewareConfig{Meter: "ai_generation", Tenant: func(r *http.Request) string { return r.Header.Get("X-Tenant") },
		UpgradeURL: "https://x.test/up?t={tenant}", Tracker: tr}, okHandler)
	for range 5 {
		res := do(t, h, "bob+1@x")
		if res.Code != http.StatusBadRequest || !strings.Contains(res.Body.String(), "tenant_id") {
			t.Fatalf("invalid tenant through the middleware: %d %s", res.Code, res.Body)
		}
	}
	if _, err := NewMiddleware(c, MiddlewareConfig{Meter: "ai_generaton", Tenant: func(*http.Request) string { return "t" }, Tracker: tr}); err == nil {
		t.Fatal("NewMiddleware accepted a meter no plan names")
	}
	if n := tr.n.Load(); n != 0 {
		t.Fatalf("%d events tracked for refused requests", n)
	}
}

// Item 3: states delivered in the middle of a burst never let one instance
// allow more than the remaining quota (run with -race).
func TestStateMidBurstNeverOvershootsOneInstance(t *testing.T) {
	clk := &clock{}
	clk.set(nov)
	c := offline(t, clk, nil)
	ctx := context.Background()
	rounds := 12000
	if testing.Short() {
		rounds = 2000
	}
	over := 0
	for r := range rounds {
		tenant := "burst-" + decimal.NewFromInt(int64(r)).String()
		feed(t, c, tenant, "ai_generation", 47, nov) // remaining 3
		var allowed atomic.Int64
		var wg sync.WaitGroup
		start := make(chan struct{})
		for range 3 {
			wg.Go(func() {
				<-start
				for range 2 {
					if c.Check(ctx, tenant, "ai_generation", Units(1)).Allowed {
						allowed.Add(1)
					}
				}
			})
		}
		wg.Go(func() { // the aggregator: a state that counts what was allowed so far
			<-start
			for range 2 {
				feed(t, c, tenant, "ai_generation", 47+allowed.Load(), nov)
			}
		})
		close(start)
		wg.Wait()
		if n := allowed.Load(); n > 3 {
			over += int(n - 3)
		}
	}
	if over != 0 {
		t.Fatalf("%d over-cap allows in %d rounds on one instance (want 0)", over, rounds)
	}
}

// Item 4: a key's states are ordered by their source offsets: a state that
// reflects fewer events never replaces the held one, whatever its
// updated_at says (a stale member's clock, or a republish after a plan
// change).
func TestStaleStateWithNewerClockDoesNotReplace(t *testing.T) {
	clk := &clock{}
	clk.set(nov)
	c := offline(t, clk, nil)
	ctx := context.Background()
	feed(t, c, "t9", "ai_generation", 50, nov)                // source offset 50
	feed(t, c, "t9", "ai_generation", 20, nov.Add(time.Hour)) // source offset 20, later updated_at
	if d := c.Check(ctx, "t9", "ai_generation", Units(1)); d.Allowed || d.Usage.Cmp(Units(50)) != 0 {
		t.Fatalf("a stale state unblocked the tenant: %+v", d)
	}
	feed(t, c, "t9", "ai_generation", 60, nov.Add(-time.Hour)) // more offsets, older clock: newer
	if d := c.Peek(ctx, "t9", "ai_generation"); d.Usage.Cmp(Units(60)) != 0 {
		t.Fatalf("a newer state (by offsets) was ignored: usage %s", d.Usage)
	}
}

const kindPlans = `
meters:
  ai_generation: { aggregation: sum }
  exports:       { aggregation: count }
  users:         { aggregation: latest }
  storage:       { aggregation: max }
  active_users:  { aggregation: unique_count, unique_by: user_id }
plans:
  FREE:
    meters:
      ai_generation: { limit: 50 }
      exports: { limit: 5 }
      users: { limit: 3 }
      storage: { limit: 1000 }
      active_users: { limit: 3 }
default_plan: FREE
`

// Item 5: count meters count events, not quantities; limits on gauges and
// unique counts are refused with a reason (Check cannot add them), and the
// middleware refuses to publish such a meter as an increment.
func TestAggregationKinds(t *testing.T) {
	p, err := plans.Parse([]byte(kindPlans))
	if err != nil {
		t.Fatal(err)
	}
	clk := &clock{}
	clk.set(nov)
	c, err := New(DefaultConfig(), p, nil, WithClock(clk.now))
	if err != nil {
		t.Fatal(err)
	}
	c.markSynced()
	ctx := context.Background()
	allowed := 0
	for range 10 {
		if c.Check(ctx, "k1", "exports", Units(3)).Allowed { // quantity ignored: 1 event each
			allowed++
		}
	}
	if allowed != 5 {
		t.Fatalf("count meter: %d of 10 events allowed on a limit of 5", allowed)
	}
	for _, m := range []string{"users", "storage", "active_users"} {
		for i := range 10 {
			d := c.Check(ctx, "k1", m, Units(1))
			if d.Allowed || d.Reason != "unsupported_aggregation" {
				t.Fatalf("%s check %d: allowed %v reason %q: Check cannot add a %s meter", m, i, d.Allowed, d.Reason, m)
			}
		}
		if _, err := NewMiddleware(c, MiddlewareConfig{Meter: m, Tenant: func(*http.Request) string { return "k1" }, Tracker: &countingTracker{}}); err == nil {
			t.Fatalf("the middleware accepted %s, whose events are not increments", m)
		}
	}
}

// Item 7: the upgrade is visible to CheckAfter once Reached says so, even
// when the assignment is not the last record of its fetch; WaitFor for a
// record beyond the high-water mark fails at once instead of spinning.
func TestReadYourWritesMidFetch(t *testing.T) {
	clk := &clock{}
	clk.set(nov)
	c := offline(t, clk, nil)
	c.assign.name = "as"
	c.assign.next = make([]atomic.Int64, 1)
	c.assign.hwm = make([]atomic.Int64, 1)
	c.assign.hwm[0].Store(5) // what the reader saw in the fetch
	ctx := context.Background()
	feed(t, c, "t10", "ai_generation", 50, nov)
	k, v := plans.AssignmentRecord("t10", &plans.Assignment{Plan: "PRO", Version: 2})
	pos := Position{Topic: "as", Partition: 0, Offset: 0}
	c.applyAssignment(kafka.Message{Key: k, Value: v, Offset: 0, HighWaterMark: 5}) // 4 more records in the fetch
	c.assign.next[0].Store(1)
	d := c.CheckAfter(ctx, "t10", "ai_generation", Units(1), pos)
	if d.Reason != ReasonNotCaughtUp && (!d.Allowed || d.Plan != "PRO") {
		t.Fatalf("CheckAfter the upgrade's position answered with the old plan: %+v", d)
	}
	wctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if err := c.WaitFor(wctx, pos); err != nil {
		t.Fatalf("WaitFor the upgrade: %v", err)
	}
	if d := c.CheckAfter(ctx, "t10", "ai_generation", Units(1), pos); !d.Allowed || d.Plan != "PRO" {
		t.Fatalf("after WaitFor: %+v", d)
	}
	t0 := time.Now()
	err := c.WaitFor(wctx, Position{Topic: "as", Partition: 0, Offset: 1000})
	if err == nil || errors.Is(err, context.DeadlineExceeded) || time.Since(t0) > time.Second {
		t.Fatalf("WaitFor beyond the high-water mark: %v after %s", err, time.Since(t0))
	}
}

// Item 1: when tracking fails the served usage stays pending (one
// instance still stops at the limit) and is delivered once tracking works.
func TestTrackingFailureIsNotFreeUsage(t *testing.T) {
	clk := &clock{}
	clk.set(nov)
	c := offline(t, clk, nil)
	feed(t, c, "t11", "ai_generation", 10, nov)
	tr := &countingTracker{}
	tr.fail.Store(true)
	h := middlewareFor(t, c, MiddlewareConfig{Meter: "ai_generation", Tenant: func(*http.Request) string { return "t11" },
		UpgradeURL: "https://x.test/up", Tracker: tr}, okHandler)
	served := 0
	for range 100 {
		if do(t, h, "t11").Code == http.StatusOK {
			served++
		}
	}
	if served != 40 {
		t.Fatalf("served %d of 100 at 10/50 while tracking fails, want 40", served)
	}
	tr.fail.Store(false)
	deadline := time.Now().Add(10 * time.Second)
	for tr.n.Load() < 40 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := tr.n.Load(); n != 40 {
		t.Fatalf("%d of the 40 served events delivered after tracking recovered", n)
	}
	if ids := tr.distinct(); ids != 40 {
		t.Fatalf("%d distinct ids delivered, want 40", ids)
	}
}

// Item 8: the response reaches the client before the usage is published.
func TestResponseDoesNotWaitForTracking(t *testing.T) {
	clk := &clock{}
	clk.set(nov)
	c := offline(t, clk, nil)
	tr := &countingTracker{block: make(chan struct{})}
	defer close(tr.block)
	mw, err := NewMiddleware(c, MiddlewareConfig{Meter: "ai_generation", Tenant: func(*http.Request) string { return "t12" },
		UpgradeURL: "https://x.test/up", Tracker: tr})
	if err != nil {
		t.Fatal(err)
	}
	defer mw.Close()
	srv := httptest.NewServer(mw.Wrap(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "done") })))
	defer srv.Close()
	cl := &http.Client{Timeout: 2 * time.Second}
	res, err := cl.Get(srv.URL)
	if err != nil {
		t.Fatalf("the response waited for the publish: %v", err)
	}
	body, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil || string(body) != "done" {
		t.Fatalf("body %q: %v", body, err)
	}
}

// Item 9: upgrade URLs escape the tenant, a 402 always has upgrade_url, a
// 429's RateLimit fields describe the bucket that refused, Preview applies
// the bucket, and the status wrapper keeps Flusher and ignores 1xx.
func TestMiddlewareHygiene(t *testing.T) {
	clk := &clock{}
	clk.set(nov)
	c := offline(t, clk, func(cfg *Config) {
		cfg.RateLimits = map[string]RateLimit{"api_calls": {PerSecond: 1, Burst: 2}}
	})
	ctx := context.Background()
	feed(t, c, "bob@x:1", "ai_generation", 50, nov)
	tr := &countingTracker{}
	h := middlewareFor(t, c, MiddlewareConfig{Meter: "ai_generation", Tenant: func(r *http.Request) string { return r.Header.Get("X-Tenant") },
		UpgradeURL: "https://x.test/upgrade?tenant={tenant}", Tracker: tr}, okHandler)
	res := do(t, h, "bob@x:1")
	var body struct {
		UpgradeURL string `json:"upgrade_url"`
	}
	_ = json.Unmarshal(res.Body.Bytes(), &body)
	if res.Code != http.StatusPaymentRequired || body.UpgradeURL != "https://x.test/upgrade?tenant=bob%40x%3A1" {
		t.Errorf("402 upgrade_url %q (status %d)", body.UpgradeURL, res.Code)
	}
	// No UpgradeURL configured: the 402 still names where to upgrade.
	h2 := middlewareFor(t, c, MiddlewareConfig{Meter: "ai_generation", Tenant: func(*http.Request) string { return "bob@x:1" }, Tracker: tr}, okHandler)
	res = do(t, h2, "bob@x:1")
	var raw map[string]any
	_ = json.Unmarshal(res.Body.Bytes(), &raw)
	if u, _ := raw["upgrade_url"].(string); res.Code != http.StatusPaymentRequired || u == "" {
		t.Errorf("402 without upgrade_url: %s", res.Body)
	}

	// 429: the RateLimit fields describe the bucket (2 tokens, 1/s), not the quota.
	h3 := middlewareFor(t, c, MiddlewareConfig{Meter: "api_calls", Tenant: func(*http.Request) string { return "rl" }, UpgradeURL: "u", Tracker: tr}, okHandler)
	for range 2 {
		if res := do(t, h3, "rl"); res.Code != 200 {
			t.Fatalf("burst: %d", res.Code)
		}
	}
	res = do(t, h3, "rl")
	if res.Code != http.StatusTooManyRequests || !strings.Contains(res.Header().Get("Ratelimit"), "r=0;t=1") ||
		!strings.Contains(res.Header().Get("Ratelimit-Policy"), "q=2;w=2") {
		t.Errorf("429 headers: %d %v", res.Code, res.Header())
	}
	if d := c.Preview(ctx, "rl", "api_calls", Units(1)); d.Allowed || d.Reason != ReasonRate {
		t.Errorf("Preview with an empty bucket: %+v", d)
	}

	// The wrapper keeps http.Flusher, and a 103 before a 200 is tracked as a 200.
	var flusher bool
	tr4 := &countingTracker{}
	h4 := middlewareFor(t, c, MiddlewareConfig{Meter: "ai_generation", Tenant: func(*http.Request) string { return "t13" }, UpgradeURL: "u", Tracker: tr4},
		http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			_, flusher = w.(http.Flusher)
			w.Header().Set("Link", "</style.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
			w.WriteHeader(http.StatusOK)
			_, _ = io.WriteString(w, "ok")
		}))
	srv := httptest.NewServer(h4)
	defer srv.Close()
	r, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
	if !flusher {
		t.Error("the middleware's ResponseWriter is not an http.Flusher")
	}
	deadline := time.Now().Add(5 * time.Second)
	for tr4.n.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond)
	if n := tr4.n.Load(); n != 1 {
		t.Errorf("a 103 then 200: %d events tracked, want 1", n)
	}
}

// countingTracker counts delivered events; fail makes Track fail, block
// makes it wait.
type countingTracker struct {
	n     atomic.Int64
	fail  atomic.Bool
	block chan struct{}
	mu    sync.Mutex
	ids   map[string]bool
}

func (c *countingTracker) Track(ctx context.Context, e *schemas.UsageEvent) error {
	if c.block != nil {
		select {
		case <-c.block:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if c.fail.Load() {
		return errors.New("broker down")
	}
	if e.ID == "" {
		e.ID = schemas.NewID()
	}
	c.mu.Lock()
	if c.ids == nil {
		c.ids = map[string]bool{}
	}
	c.ids[e.ID] = true
	c.mu.Unlock()
	c.n.Add(1)
	return nil
}

func (c *countingTracker) distinct() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.ids)
}

var okHandler = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") })

func middlewareFor(t *testing.T, c *Cache, cfg MiddlewareConfig, h http.Handler) http.Handler {
	t.Helper()
	mw, err := NewMiddleware(c, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(mw.Close)
	return mw.Wrap(h)
}

func do(t *testing.T, h http.Handler, tenant string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, "/generate", nil)
	req.Header.Set("X-Tenant", tenant)
	res := httptest.NewRecorder()
	h.ServeHTTP(res, req)
	return res
}

// Item 1, the durable and bounded parts: events a process left in the
// outbox's directory are delivered by the next one with their ids; a full
// outbox refuses before serving (503 TRACKING_BACKLOG) and counts nothing.
func TestOutboxSurvivesRestartAndRefusesWhenFull(t *testing.T) {
	dir := t.TempDir()
	down := &countingTracker{}
	down.fail.Store(true)
	o, err := NewOutbox(OutboxConfig{Dir: dir, MaxEvents: 3, RetryMin: time.Millisecond, RetryMax: 5 * time.Millisecond}, down, nil)
	if err != nil {
		t.Fatal(err)
	}
	clk := &clock{}
	clk.set(nov)
	c := offline(t, clk, nil)
	h := middlewareFor(t, c, MiddlewareConfig{Meter: "ai_generation", Tenant: func(*http.Request) string { return "t14" }, Outbox: o}, okHandler)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = o.Run(ctx) }()
	codes := map[int]int{}
	for range 5 {
		res := do(t, h, "t14")
		codes[res.Code]++
		if res.Code == http.StatusServiceUnavailable && !strings.Contains(res.Body.String(), CodeBacklog) {
			t.Fatalf("503 without %s: %s", CodeBacklog, res.Body)
		}
	}
	if codes[200] != 3 || codes[503] != 2 {
		t.Fatalf("bound 3, broker down: %v, want 3 served and 2 refused", codes)
	}
	if d := c.Peek(context.Background(), "t14", "ai_generation"); d.Pending.Cmp(Units(3)) != 0 {
		t.Fatalf("pending %s, want the 3 served (refused ones given back)", d.Pending)
	}
	cancel()
	<-done
	// A new process: the three events are still there and go out once.
	up := &countingTracker{}
	o2, err := NewOutbox(OutboxConfig{Dir: dir}, up, nil)
	if err != nil {
		t.Fatal(err)
	}
	if o2.Len() != 3 {
		t.Fatalf("%d events reloaded, want 3", o2.Len())
	}
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	go func() { _ = o2.Run(ctx2) }()
	deadline := time.Now().Add(5 * time.Second)
	for o2.Len() > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if up.n.Load() != 3 || up.distinct() != 3 {
		t.Fatalf("delivered %d (%d distinct ids), want 3", up.n.Load(), up.distinct())
	}
	o3, err := NewOutbox(OutboxConfig{Dir: dir}, up, nil)
	if err != nil || o3.Len() != 0 {
		t.Fatalf("after delivery a restart still finds %d events (%v)", o3.Len(), err)
	}
}

const anchoredPlans = `
meters:
  ai_generation: { aggregation: sum }
plans:
  FREE:
    meters:
      ai_generation: { limit: 50 }
  TEAM:
    meters:
      ai_generation: { limit: 50, period: anchored }
default_plan: FREE
`

// Item 7: a held state per period. A tenant blocked on its calendar
// month moves to an anchored plan (the aggregator publishes the anchored
// period's state) and back: the calendar month's state is still held, so
// the tenant is still blocked, not given a fresh quota.
func TestHeldStatePerPeriod(t *testing.T) {
	p, err := plans.Parse([]byte(anchoredPlans))
	if err != nil {
		t.Fatal(err)
	}
	clk := &clock{}
	clk.set(nov)
	c, err := New(DefaultConfig(), p, nil, WithClock(clk.now))
	if err != nil {
		t.Fatal(err)
	}
	c.markSynced()
	ctx := context.Background()
	feed(t, c, "t15", "ai_generation", 50, nov)
	if d := c.Check(ctx, "t15", "ai_generation", Units(1)); d.Allowed {
		t.Fatalf("FREE at 50 allowed: %+v", d)
	}
	assign := func(plan string, anchor int, version int64) {
		k, v := plans.AssignmentRecord("t15", &plans.Assignment{Plan: plan, AnchorDay: anchor, Version: version})
		c.applyAssignment(kafka.Message{Key: k, Value: v, Offset: version, HighWaterMark: version + 1})
	}
	assign("TEAM", 15, 1)
	per := plans.PeriodOf(plans.Quota{Period: plans.Anchored}, 15, nov)
	s := schemas.QuotaState{TenantID: "t15", FeatureType: "ai_generation", Period: per.ID, Plan: "TEAM",
		Usage: decimal.NewFromInt(5), Limit: decimal.NewFromInt(50), Remaining: decimal.NewFromInt(45),
		OverageUsed: decimal.Zero, Percentage: decimal.NewFromInt(10), Level: "ok", PeriodStart: per.Start, PeriodEnd: per.End,
		SourceOffsets: map[int32]int64{0: 60}, UpdatedAt: nov.Add(time.Minute)}
	c.applyState(kafka.Message{Partition: 1, Offset: offsetSeq.Add(1), Value: s.AppendJSON(nil)})
	if d := c.Peek(ctx, "t15", "ai_generation"); d.Period != per.ID || d.Usage.Cmp(Units(5)) != 0 {
		t.Fatalf("anchored: %+v", d)
	}
	assign("FREE", 0, 2)
	if d := c.Check(ctx, "t15", "ai_generation", Units(1)); d.Allowed || d.Period != "2026-11" || d.Usage.Cmp(Units(50)) != 0 {
		t.Fatalf("back on the calendar month, a fresh quota: %+v", d)
	}
}

// Item 9: entries of tenants checked once and idle since go away; those
// with pending usage or a state of a live period stay.
func TestIdleEntriesAreEvicted(t *testing.T) {
	clk := &clock{}
	clk.set(nov)
	c := offline(t, clk, nil)
	ctx := context.Background()
	for i := range 1000 {
		c.Peek(ctx, "idle-"+decimal.NewFromInt(int64(i)).String(), "ai_generation")
	}
	c.Check(ctx, "busy", "ai_generation", Units(1)) // pending 1
	feed(t, c, "stated", "ai_generation", 7, nov)
	before := c.Stats().Entries
	clk.advance(2 * time.Hour)
	if n := c.tab.evictIdle(clk.now(), time.Hour); n != 1000 {
		t.Fatalf("evicted %d, want the 1000 idle ones (entries before: %d)", n, before)
	}
	if d := c.Peek(ctx, "busy", "ai_generation"); d.Pending.Cmp(Units(1)) != 0 {
		t.Fatalf("pending lost with an eviction: %+v", d)
	}
	if d := c.Peek(ctx, "stated", "ai_generation"); d.Usage.Cmp(Units(7)) != 0 {
		t.Fatalf("a live state lost with an eviction: %+v", d)
	}
	// Evictions racing with checks never lose pending.
	var wg sync.WaitGroup
	var allowed atomic.Int64
	for range 4 {
		wg.Go(func() {
			for range 2000 {
				if c.Check(ctx, "race", "ai_generation", Units(0)).Allowed {
					allowed.Add(1)
				}
				if c.Check(ctx, "race2", "ai_generation", Nanos(1)).Allowed {
					allowed.Add(1)
				}
			}
		})
	}
	wg.Go(func() {
		for range 200 {
			c.tab.evictIdle(clk.now().Add(3*time.Hour), time.Hour)
		}
	})
	wg.Wait()
	if d := c.Peek(ctx, "race2", "ai_generation"); d.Pending.Cmp(Nanos(8000)) != 0 {
		t.Fatalf("pending %s after 8000 checks racing evictions, want 0.000008", d.Pending)
	}
}

// Item 6 (quota side): CheckEvent refuses an event time outside now ±
// the contract's skew and answers a retried id as a duplicate that counts
// nothing.
func TestCheckEventTimestampsAndRecentIDs(t *testing.T) {
	clk := &clock{}
	clk.set(nov)
	c := offline(t, clk, nil)
	ctx := context.Background()
	e := schemas.UsageEvent{ID: "ev-1", TenantID: "t16", FeatureType: "ai_generation", Timestamp: nov}
	if d := c.CheckEvent(ctx, &e, Units(1)); !d.Allowed || d.Duplicate {
		t.Fatalf("first: %+v", d)
	}
	for range 3 {
		if d := c.CheckEvent(ctx, &e, Units(1)); !d.Allowed || !d.Duplicate || d.Pending.Cmp(Units(1)) != 0 {
			t.Fatalf("retry of ev-1: %+v", d)
		}
	}
	for _, ts := range []time.Time{time.Unix(0, 0), nov.Add(-6 * time.Minute), nov.Add(6 * time.Minute), nov.AddDate(0, -1, 0)} {
		old := schemas.UsageEvent{ID: "ev-2", TenantID: "t16", FeatureType: "ai_generation", Timestamp: ts}
		if d := c.CheckEvent(ctx, &old, Units(1)); d.Allowed || d.Reason != ReasonTimestamp {
			t.Fatalf("timestamp %s: %+v", ts, d)
		}
	}
	c.ForgetEvent(&e)
	if d := c.CheckEvent(ctx, &e, Units(1)); !d.Allowed || d.Duplicate || d.Pending.Cmp(Units(2)) != 0 {
		t.Fatalf("after ForgetEvent: %+v", d)
	}
}

// Issue 15 item 3 in the middleware: a quantity one instance cannot hold
// pending (over 2^64-1 nano-units) on an unlimited meter is not "the limit
// is reached" (402): it is a 503 PENDING_FULL that says why.
func TestMiddlewareQuantityBeyondPendingIsNotALimit(t *testing.T) {
	clk := &clock{}
	clk.set(nov)
	c := offline(t, clk, nil)
	tr := &countingTracker{}
	huge, err := AmountOf(decimal.RequireFromString("20000000000")) // 20 GB as bytes, 20e9 units
	if err != nil {
		t.Fatal(err)
	}
	h := middlewareFor(t, c, MiddlewareConfig{Meter: "ai_generation", Tenant: func(*http.Request) string { return "acme" },
		Quantity: func(*http.Request) Amount { return huge }, UpgradeURL: "u", Tracker: tr}, okHandler)
	res := do(t, h, "acme") // acme is PRO: ai_generation unlimited
	var body map[string]any
	_ = json.Unmarshal(res.Body.Bytes(), &body)
	if res.Code != http.StatusServiceUnavailable || body["code"] != CodePendingFull || res.Header().Get("Retry-After") == "" {
		t.Fatalf("quantity beyond pending on an unlimited meter: %d %s", res.Code, res.Body)
	}
}
