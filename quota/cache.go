// Package quota enforces plan quotas in process: a Cache fed by the
// compacted topics usage.quota-state (the aggregator's usage per tenant,
// meter and period) and usage.plan-assignments (who is on which plan),
// Check (an allocation-free decision in well under a microsecond), token
// buckets for fair use, and net/http middleware. It never links ClickHouse
// or aggregator code: an app imports quota and producer only.
package quota

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go"
	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/schemas/plans"
)

// Cache holds the quota state of every tenant and meter. Create it with
// New, run it with Run, and wait for Ready before trusting its answers.
// Check is safe for concurrent use.
type Cache struct {
	cfg Config
	log *zap.Logger
	now func() time.Time

	snap   atomic.Pointer[plansSnapshot]
	quotas map[planMeter]*quotaInfo
	extra  sync.Map // planMeter -> *quotaInfo for meters a plan does not list (unlimited)
	// meters are the meters the plans file defines or a plan limits, with
	// their aggregation: Check refuses any other (a typo must not be
	// "allowed, unlimited").
	meters map[string]plans.Aggregation
	tab    *table
	ids    *recentIDs // event ids CheckEvent allowed recently

	amu     sync.Mutex
	private *plans.Config // assignments applied so far; copied into snapshots

	state, assign topicState
	syncedAt      atomic.Int64 // unix ns when the cache last knew it had read every high-water mark
	lag           atomic.Int64 // messages behind the last polled high-water marks
	reachable     atomic.Bool
	ready         chan struct{}
	readyOnce     sync.Once

	pmu  sync.Mutex
	poll *pollMark // a poll the readers have not caught up with yet

	// WaitFor sleeps on wch; every read or poll closes it (and clears it).
	wmu    sync.Mutex
	wch    chan struct{}
	client atomic.Pointer[kafka.Client] // for WaitFor's fresh high-water mark

	stats struct{ states, assignments, invalid, staleStates, evicted atomic.Int64 }
	pend  pendingEvents // tracked events whose pending can expire (expire.go)
}

// topicState tracks one topic's partitions.
type topicState struct {
	name  string
	next  []atomic.Int64 // next offset to read, per partition
	start []int64        // high-water marks at start: Ready once reached
	hwm   []atomic.Int64 // the newest high-water mark seen (polls, fetches): WaitFor's bound
}

type pollMark struct {
	at        time.Time
	state, as []int64
}

// Option configures a Cache.
type Option func(*Cache)

// WithClock replaces time.Now (tests: a new period, staleness).
func WithClock(now func() time.Time) Option { return func(c *Cache) { c.now = now } }

// New returns a cache for the plans p (from plans.Load; the cache keeps its
// own copy and never modifies p). Call Run to start reading.
func New(cfg Config, p *plans.Config, log *zap.Logger, opts ...Option) (*Cache, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("quota config: %w", err)
	}
	if p == nil {
		return nil, errors.New("quota: plans are required")
	}
	if log == nil {
		log = zap.NewNop()
	}
	c := &Cache{cfg: cfg, log: log, now: time.Now, tab: newTable(), ready: make(chan struct{}),
		quotas: map[planMeter]*quotaInfo{}, ids: newRecentIDs(cfg.RecentIDs)}
	c.pend.byKey, c.pend.covered = map[string]*pendingEvent{}, map[int32]int64{}
	for _, o := range opts {
		o(c)
	}
	// viper lower-cases map keys, and plan names are case sensitive: a
	// plan_rate_limits key that names no plan matches one case-insensitively.
	fixed := make(map[string]map[string]RateLimit, len(cfg.PlanRateLimits))
	for name, m := range cfg.PlanRateLimits {
		if _, ok := p.Plans[name]; !ok {
			for plan := range p.Plans {
				if strings.EqualFold(plan, name) {
					name = plan
				}
			}
		}
		if _, ok := p.Plans[name]; !ok {
			return nil, fmt.Errorf("quota config: plan_rate_limits.%s: no such plan", name)
		}
		fixed[name] = m
	}
	c.cfg.PlanRateLimits = fixed
	c.meters = map[string]plans.Aggregation{}
	for meter, m := range p.Meters {
		c.meters[meter] = m.Aggregation
	}
	for name, plan := range p.Plans {
		for meter, q := range plan.Meters {
			agg, ok := c.meters[meter]
			if !ok {
				agg = plans.Sum // a meter only a plan names aggregates as unknown_meters: sum does
				c.meters[meter] = agg
			}
			c.quotas[planMeter{name, meter}] = newQuotaInfo(name, meter, q, c.rateFor(name, meter), agg)
		}
	}
	priv := *p
	priv.Tenants = make(map[string]plans.Assignment, len(p.Tenants))
	for t, a := range p.Tenants {
		priv.Tenants[t] = a
	}
	c.private = &priv
	c.publishPlans(nil)
	c.state.name, c.assign.name = cfg.StateTopic, cfg.AssignmentTopic
	return c, nil
}

func (c *Cache) rateFor(plan, meter string) RateLimit {
	if r, ok := c.cfg.PlanRateLimits[plan][meter]; ok {
		return r
	}
	return c.cfg.RateLimits[meter]
}

// quotaFor returns the plan's quota for the meter; a defined meter the
// plan does not list is unlimited, an undefined one is refused.
func (c *Cache) quotaFor(plan, meter string) *quotaInfo {
	k := planMeter{plan, meter}
	if q, ok := c.quotas[k]; ok {
		return q
	}
	if q, ok := c.extra.Load(k); ok {
		return q.(*quotaInfo)
	}
	agg, known := c.meters[meter]
	qi := newQuotaInfo(plan, meter, plans.Quota{Limit: plans.Unlimited, Period: plans.CalendarMonth}, c.rateFor(plan, meter), agg)
	if !known {
		qi.refuse = ReasonUnknownMeter
	}
	q, _ := c.extra.LoadOrStore(k, qi)
	return q.(*quotaInfo)
}

// ValidateKey says why Check refuses tenant and meter whatever the usage
// (a *schemas.ValidationError naming the field for a name the contract
// refuses; ErrUnknownMeter; ErrUnsupportedAggregation for a limited gauge
// or unique count on the tenant's plan), or nil. For error messages: 400s
// in usage-api and the middleware.
func (c *Cache) ValidateKey(tenant, meter string) error {
	if err := schemas.CheckTenantID(tenant); err != nil {
		return err
	}
	if err := schemas.CheckFeatureType(meter); err != nil {
		return err
	}
	agg, ok := c.meters[meter]
	if !ok {
		return fmt.Errorf("feature_type %q: %w", meter, ErrUnknownMeter)
	}
	a := c.snap.Load().assignment(tenant)
	if c.quotaFor(a.Plan, meter).refuse == ReasonUnsupported {
		return fmt.Errorf("feature_type %q (%s) has a limit on plan %s: %w", meter, agg, a.Plan, ErrUnsupportedAggregation)
	}
	return nil
}

// Aggregation returns how meter aggregates, and false when the plans file
// does not define it.
func (c *Cache) Aggregation(meter string) (plans.Aggregation, bool) {
	agg, ok := c.meters[meter]
	return agg, ok
}

// publishPlans copies the private config into a new snapshot that reflects
// the assignment records before next; amu held or no reader running.
func (c *Cache) publishPlans(next []int64) {
	cp := *c.private
	cp.Tenants = make(map[string]plans.Assignment, len(c.private.Tenants))
	for t, a := range c.private.Tenants {
		cp.Tenants[t] = a
	}
	c.snap.Store(&plansSnapshot{cfg: &cp, assignNext: next})
}

// Ready is closed once the cache has read both topics up to the high-water
// marks taken when Run started.
func (c *Cache) Ready() <-chan struct{} { return c.ready }

// WaitReady waits for Ready or ctx.
func (c *Cache) WaitReady(ctx context.Context) error {
	select {
	case <-c.ready:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("quota cache not ready: %w", ctx.Err())
	}
}

// Run reads both topics until ctx is done. It retries the broker until it
// answers; meanwhile Check answers as stale.
func (c *Cache) Run(ctx context.Context) error {
	client := &kafka.Client{Addr: kafka.TCP(c.cfg.Brokers...), Timeout: max(time.Second, 4*c.cfg.PollInterval)}
	c.client.Store(client)
	delay := 100 * time.Millisecond
	for {
		err := c.start(ctx, client)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return nil
		}
		c.log.Warn("quota cache: broker not ready, retrying", zap.Error(err), zap.Duration("in", delay))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Second)
	}
	var wg sync.WaitGroup
	for _, ts := range []*topicState{&c.state, &c.assign} {
		for p := range ts.next {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c.read(ctx, ts, p)
			}()
		}
	}
	if c.cfg.IdleEviction > 0 {
		wg.Go(func() { c.evictor(ctx) })
	}
	wg.Go(func() { c.pendingLoop(ctx, client) })
	if c.cfg.PositionTopic != "" {
		wg.Go(func() { c.readPositions(ctx, client) })
	}
	c.poller(ctx, client)
	wg.Wait()
	return nil
}

// evictor drops idle entries every IdleEviction/4 (at most every minute).
func (c *Cache) evictor(ctx context.Context) {
	t := time.NewTicker(min(time.Minute, c.cfg.IdleEviction/4))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if n := c.tab.evictIdle(c.now(), c.cfg.IdleEviction); n > 0 {
				c.stats.evicted.Add(int64(n))
			}
		}
	}
}

// start reads the partitions and the high-water marks of both topics.
func (c *Cache) start(ctx context.Context, client *kafka.Client) error {
	at := c.now()
	for _, ts := range []*topicState{&c.state, &c.assign} {
		md, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{ts.name}})
		if err != nil {
			return fmt.Errorf("metadata of %s: %w", ts.name, err)
		}
		if len(md.Topics) != 1 || md.Topics[0].Error != nil || len(md.Topics[0].Partitions) == 0 {
			return fmt.Errorf("topic %s: not found", ts.name)
		}
		n := len(md.Topics[0].Partitions)
		hwm, err := c.listEnds(ctx, client, ts.name, n)
		if err != nil {
			return err
		}
		ts.next = make([]atomic.Int64, n)
		ts.start = hwm
		ts.hwm = make([]atomic.Int64, n)
		noteHWM(ts, hwm)
	}
	c.reachable.Store(true)
	c.pmu.Lock()
	c.poll = &pollMark{at: at, state: c.state.start, as: c.assign.start}
	c.pmu.Unlock()
	c.progress()
	return nil
}

func (c *Cache) listEnds(ctx context.Context, client *kafka.Client, topic string, n int) ([]int64, error) {
	reqs := make([]kafka.OffsetRequest, n)
	for p := range n {
		reqs[p] = kafka.LastOffsetOf(p)
	}
	res, err := client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil {
		return nil, fmt.Errorf("high-water marks of %s: %w", topic, err)
	}
	ends := make([]int64, n)
	got := 0
	for _, po := range res.Topics[topic] {
		if po.Error != nil {
			return nil, fmt.Errorf("high-water mark of %s/%d: %w", topic, po.Partition, po.Error)
		}
		if po.Partition >= 0 && po.Partition < n {
			ends[po.Partition] = po.LastOffset
			got++
		}
	}
	if got != n {
		return nil, fmt.Errorf("high-water marks of %s: %d of %d partitions answered", topic, got, n)
	}
	return ends, nil
}

// read consumes one partition from its first offset.
func (c *Cache) read(ctx context.Context, ts *topicState, p int) {
	r := kafka.NewReader(kafka.ReaderConfig{
		Brokers: c.cfg.Brokers, Topic: ts.name, Partition: p,
		MinBytes: 1, MaxBytes: 8 << 20, MaxWait: 250 * time.Millisecond,
		ReadBackoffMin: 50 * time.Millisecond, ReadBackoffMax: time.Second,
	})
	defer r.Close()
	for {
		m, err := r.FetchMessage(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			c.log.Warn("quota cache: read", zap.String("topic", ts.name), zap.Int("partition", p), zap.Error(err))
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
			continue
		}
		if p < len(ts.hwm) && m.HighWaterMark > ts.hwm[p].Load() {
			ts.hwm[p].Store(m.HighWaterMark)
		}
		if ts == &c.state {
			c.applyState(m)
		} else {
			c.applyAssignment(m)
		}
		ts.next[p].Store(m.Offset + 1)
		c.progress()
	}
}

// poller reads the high-water marks every PollInterval: they give the lag,
// and a poll the readers have caught up with moves syncedAt, from which
// every decision's age is measured.
func (c *Cache) poller(ctx context.Context, client *kafka.Client) {
	t := time.NewTicker(c.cfg.PollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		at := c.now()
		pctx, cancel := context.WithTimeout(ctx, max(time.Second, 4*c.cfg.PollInterval))
		st, err := c.listEnds(pctx, client, c.state.name, len(c.state.next))
		var as []int64
		if err == nil {
			as, err = c.listEnds(pctx, client, c.assign.name, len(c.assign.next))
		}
		cancel()
		if err != nil {
			if c.reachable.Swap(false) {
				c.log.Warn("quota cache: broker unreachable", zap.Error(err))
			}
			continue
		}
		if !c.reachable.Swap(true) {
			c.log.Info("quota cache: broker reachable again")
		}
		noteHWM(&c.state, st)
		noteHWM(&c.assign, as)
		c.pmu.Lock()
		c.poll = &pollMark{at: at, state: st, as: as}
		c.pmu.Unlock()
		c.progress()
	}
}

// noteHWM raises ts's known high-water marks to ends.
func noteHWM(ts *topicState, ends []int64) {
	for p, e := range ends {
		if p < len(ts.hwm) && e > ts.hwm[p].Load() {
			ts.hwm[p].Store(e)
		}
	}
}

// progress moves syncedAt and lag after a read or a poll, and wakes
// WaitFor.
func (c *Cache) progress() {
	c.wake()
	c.pmu.Lock()
	defer c.pmu.Unlock()
	pm := c.poll
	if pm == nil {
		return
	}
	lag := behind(&c.state, pm.state) + behind(&c.assign, pm.as)
	c.lag.Store(lag)
	if lag > 0 {
		return
	}
	c.poll = nil
	if at := pm.at.UnixNano(); at > c.syncedAt.Load() {
		c.syncedAt.Store(at)
	}
	if behind(&c.state, c.state.start)+behind(&c.assign, c.assign.start) == 0 {
		c.readyOnce.Do(func() {
			c.log.Info("quota cache ready", zap.Int64("states", c.stats.states.Load()), zap.Int64("assignments", c.stats.assignments.Load()))
			close(c.ready)
		})
	}
}

func behind(ts *topicState, ends []int64) int64 {
	var n int64
	for p := range ends {
		if p < len(ts.next) {
			n += max(0, ends[p]-ts.next[p].Load())
		}
	}
	return n
}

// applyAssignment applies one plan-assignment record to the private copy
// and publishes a snapshot once the partition is caught up (one copy per
// batch while catching up, one per record afterwards).
func (c *Cache) applyAssignment(m kafka.Message) {
	tenant, a, err := plans.ParseAssignmentRecord(m.Key, m.Value)
	c.amu.Lock()
	defer c.amu.Unlock()
	if err == nil {
		err = c.private.Assign(tenant, a)
	}
	if err != nil {
		c.stats.invalid.Add(1)
		if !errors.Is(err, plans.ErrStaleAssignment) {
			c.log.Warn("quota cache: plan assignment ignored", zap.Int64("offset", m.Offset), zap.Error(err))
		}
	} else {
		c.stats.assignments.Add(1)
	}
	if m.HighWaterMark <= m.Offset+1 {
		c.publishAssigned(m.Partition, m.Offset+1)
	}
}

// publishAssigned publishes a snapshot of every assignment applied so far:
// the readers' positions, partition p at least at next; amu held.
func (c *Cache) publishAssigned(p int, next int64) {
	n := make([]int64, len(c.assign.next))
	for i := range n {
		n[i] = c.assign.next[i].Load()
	}
	if p >= 0 && p < len(n) {
		n[p] = max(n[p], next)
	}
	c.publishPlans(n)
}

// flushAssignments publishes what the readers applied but a snapshot does
// not show yet (records read in the middle of a fetch: one copy per record
// would be quadratic while catching up). Read-your-writes calls it when it
// needs a record that was read but not published.
func (c *Cache) flushAssignments() {
	c.amu.Lock()
	defer c.amu.Unlock()
	c.publishAssigned(-1, 0)
}

// wake wakes every WaitFor.
func (c *Cache) wake() {
	c.wmu.Lock()
	if c.wch != nil {
		close(c.wch)
		c.wch = nil
	}
	c.wmu.Unlock()
}

// waitCh returns the channel the next wake closes.
func (c *Cache) waitCh() <-chan struct{} {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.wch == nil {
		c.wch = make(chan struct{})
	}
	return c.wch
}

// applyState records one QuotaState and rebuilds the entry's view: the
// increase of usage the new state shows is taken off pending, because it
// includes what this instance allowed.
func (c *Cache) applyState(m kafka.Message) {
	if len(m.Value) == 0 {
		return // a tombstone: the state of an old period was compacted away
	}
	s, err := schemas.DecodeQuotaState(m.Value)
	if err != nil {
		c.stats.invalid.Add(1)
		c.log.Warn("quota cache: invalid quota state", zap.Int("partition", m.Partition), zap.Int64("offset", m.Offset), zap.Error(err))
		return
	}
	usage, err := AmountOf(s.Usage)
	if err != nil {
		c.stats.invalid.Add(1)
		return
	}
	c.stats.states.Add(1)
	h := &heldState{period: s.Period, start: s.PeriodStart, end: s.PeriodEnd, usage: usage,
		partition: int32(m.Partition), offset: m.Offset, source: s.SourceOffsets, updatedAt: s.UpdatedAt}
	e := c.tab.get(s.TenantID, s.FeatureType)
	e.mu.Lock()
	for e.evicted.Load() { // evicted since the lookup: the table has (or gets) a new one
		e.mu.Unlock()
		e = c.tab.get(s.TenantID, s.FeatureType)
		e.mu.Lock()
	}
	defer e.mu.Unlock()
	i := slices.IndexFunc(e.held, func(o *heldState) bool { return o.period == h.period })
	switch {
	case i >= 0 && !newerState(h, e.held[i]):
		c.stats.staleStates.Add(1)
		return // reflects fewer events than the held one (a stale member, a republish of an old copy)
	case i >= 0:
		e.held[i] = h
	default:
		e.held = append(e.held, h)
		slices.SortFunc(e.held, func(a, b *heldState) int { return b.start.Compare(a.start) })
		if len(e.held) > maxHeld {
			e.held = e.held[:maxHeld] // the oldest periods: long final
		}
	}
	v := e.view.Load()
	if v == nil || v.period != h.period {
		return // the next Check builds the view
	}
	nv := *v
	nv.usage, nv.held = h.usage, h
	// The view goes first and pending after it: a Check between the two
	// counts the increase twice (refuses early), never zero times, and a
	// Check that read the old view fails its recheck of the view after its
	// compare-and-swap and retries.
	e.view.Store(&nv)
	if delta := h.usage.Sub(v.usage); !delta.IsZero() {
		absorb(v.b, delta)
	}
}

// newerState reports whether s may replace old (same key): states are
// ordered by the usage.events offsets they reflect (source_offsets), not
// by updated_at, which is a member's clock. s is older when it is behind
// on a partition both name and ahead on none; when the offsets do not
// order them (each ahead somewhere, or no partition in common) updated_at
// decides.
func newerState(s, old *heldState) bool {
	ahead, behind := false, false
	for p, o := range s.source {
		if oo, ok := old.source[p]; ok {
			ahead = ahead || o > oo
			behind = behind || o < oo
		}
	}
	switch {
	case behind && !ahead:
		return false
	case ahead && !behind:
		return true
	}
	return !s.updatedAt.Before(old.updatedAt) // the same events (a plan change's republish), or unordered
}

// subPending takes d off b's pending, not below 0, and returns what it took.
func subPending(b *bucket, d Amount) Amount {
	for {
		p := b.pending.Load()
		np := Nanos(p).Sub(d)
		if b.pending.CompareAndSwap(p, np.lo) {
			return Nanos(p).Sub(np)
		}
	}
}

// refresh builds the entry's view for the tenant's current assignment and
// the period containing now. It runs when the plan changed, the period
// rolled over, or the entry is new; never on a warm path.
func (c *Cache) refresh(e *entry, snap *plansSnapshot, a plans.Assignment, now time.Time) *view {
	e.mu.Lock()
	defer e.mu.Unlock()
	ns := now.UnixNano()
	old := e.view.Load()
	if old != nil && old.assign == a && ns >= old.start && ns < old.end {
		return old // another goroutine did it
	}
	q := c.quotaFor(a.Plan, e.key.meter)
	p := a.PeriodFor(q.q, now)
	if g := plans.WithGrants(q.q, a, e.key.meter, p.ID); !g.Limit.Equal(q.q.Limit) {
		// A one-off grant for this period: this view's own limit (built
		// here, off the hot path; the next period's view has none).
		q = newQuotaInfo(q.plan, q.meter, g, q.rate, q.agg)
	}
	v := &view{assign: a, q: q, period: p.ID, start: p.Start.UnixNano(), end: p.End.UnixNano(), resetAt: p.End}
	if old != nil && old.period == p.ID {
		v.b = old.b
	} else {
		v.b = &bucket{}
	}
	if h := e.heldFor(p.ID); h != nil {
		v.usage, v.held = h.usage, h
	}
	switch {
	case old != nil && old.q.plan == q.plan && old.q.rate == q.rate:
		v.lim = old.lim
	case q.rate.PerSecond > 0:
		v.lim = rate.NewLimiter(rate.Limit(q.rate.PerSecond), q.rate.Burst)
	}
	e.view.Store(v)
	return v
}

// Stats are counts since New.
type Stats struct {
	States, Assignments, Invalid int64
	// StaleStates were ignored: they reflect fewer events than the held
	// state of their key (source offsets behind).
	StaleStates int64
	Evicted     int64 // idle entries dropped (IdleEviction)
	Entries     int   // tenant and meter entries held now
	Lag         int64
	Reachable   bool
}

// Stats returns what the cache has read.
func (c *Cache) Stats() Stats {
	return Stats{States: c.stats.states.Load(), Assignments: c.stats.assignments.Load(), Invalid: c.stats.invalid.Load(),
		StaleStates: c.stats.staleStates.Load(), Evicted: c.stats.evicted.Load(), Entries: c.tab.len(),
		Lag: c.lag.Load(), Reachable: c.reachable.Load()}
}

// Assignment returns the tenant's assignment as this cache has read it
// (plan, anchor day, version, grants): what a new record for the tenant
// builds on.
func (c *Cache) Assignment(tenant string) plans.Assignment {
	return c.snap.Load().assignment(tenant)
}

// Meters returns the tenant's plan and every meter it has a quota or a
// definition for, sorted (for listings such as GET /v1/quotas/{tenant}).
func (c *Cache) Meters(tenant string) (plan string, meters []string) {
	snap := c.snap.Load()
	a := snap.assignment(tenant)
	seen := map[string]bool{}
	for m := range snap.cfg.Meters {
		seen[m] = true
	}
	for m := range snap.cfg.Plans[a.Plan].Meters {
		seen[m] = true
	}
	for m := range seen {
		meters = append(meters, m)
	}
	slices.Sort(meters)
	return a.Plan, meters
}
