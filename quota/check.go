package quota

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/schemas/plans"
)

// Reasons a Decision refuses (Reason is empty when Allowed).
const (
	ReasonLimit       = "limit_exceeded" // the request would pass the hard limit
	ReasonRate        = "rate_limited"   // the fair-use token bucket is empty
	ReasonStale       = "stale"          // stale state and the fail mode is closed
	ReasonNotCaughtUp = "not_caught_up"  // CheckAfter: the cache has not read the position yet
	ReasonTooLarge    = "quantity_too_large"
	// ReasonInvalidTenant: the tenant id breaks the contract's rules
	// (schemas.CheckTenantID); its events would go to the DLQ uncounted.
	ReasonInvalidTenant = "invalid_tenant"
	// ReasonUnknownMeter: no meter definition or plan names the meter (or
	// its name breaks the contract): likely a typo, refused rather than
	// "allowed, unlimited".
	ReasonUnknownMeter = "unknown_meter"
	// ReasonUnsupported: the meter is a gauge (max, latest) or a unique
	// count with a limit on the tenant's plan; its usage is not the sum of
	// what was allowed, so Check cannot decide it (Peek still reports it).
	ReasonUnsupported = "unsupported_aggregation"
	// ReasonTimestamp: CheckEvent's event time is further than the
	// contract's skew (schemas.DefaultMaxFutureSkew) from now: usage of
	// another period must not be counted against this one, or stay
	// pending until that period ends.
	ReasonTimestamp = "timestamp_out_of_range"
)

// Errors ValidateKey wraps.
var (
	ErrUnknownMeter           = errors.New("no meter definition or plan names this meter")
	ErrUnsupportedAggregation = errors.New("quota.Check adds quantities and cannot enforce a limit on a max, latest or unique_count meter")
)

// Decision is the answer for one request. It is a plain value: no
// allocation, safe to keep.
type Decision struct {
	Allowed bool
	Reason  string
	// Duplicate: CheckEvent saw this event id allowed recently; it is
	// allowed again (a retry) and counted nothing.
	Duplicate bool
	Tenant    string
	Meter     string
	Plan      string
	Period    string
	// Level of Usage (ok, warning_<N>, at_limit, overage, blocked); when
	// refused for the limit, the level the request would have reached.
	Level string
	// Usage is the held state's usage plus Pending.
	Usage Amount
	// Pending is what this instance allowed that the held state does not
	// reflect yet, including this request when allowed.
	Pending Amount
	// Limit is the plan's limit. When Unlimited is set (the plan has no
	// limit; -1 on the wire) Limit is 0 and Remaining is 0 (-1 on the
	// wire): neither means anything then.
	Limit     Amount
	Unlimited bool
	Remaining Amount
	// Percentage of the limit used, in hundredths of a percent (1234 = 12.34 %).
	Percentage int64
	// Warning is the highest warning threshold Usage reached (0: none; 100 at
	// or beyond the limit): the middleware's warning header.
	Warning    int
	ResetAt    time.Time     // the period's end: usage starts again from 0
	RetryAfter time.Duration // when refused: how long until asking again makes sense
	Staleness  Staleness
	Offsets    Offsets

	b      *bucket
	qty    Amount
	lim    *rate.Limiter // the token bucket, for a 429's RateLimit fields
	tokens float64       // its tokens when it refused
}

// Staleness says how fresh a decision is.
type Staleness struct {
	Stale bool // the fail mode decided (Age > MaxStaleness, or not ready)
	// OffsetLag is how many records of both topics the cache had not read at
	// its last high-water-mark poll.
	OffsetLag int64
	// Age is how long ago the cache last knew it had read everything (since
	// the start when it never did).
	Age       time.Duration
	Reachable bool // the last poll reached the broker
	// Ready: the cache has read both topics up to their high-water marks
	// at least once. Before that it knows no usage at all, so the level is
	// unknown and Config.BeforeReady decides.
	Ready bool
	Mode  Mode // the fail mode applied when Stale
}

// Offsets say which records a decision was computed from.
type Offsets struct {
	// StatePartition and StateOffset locate the usage.quota-state record
	// held; StateOffset is -1 when there is none for this period (usage 0).
	StatePartition int32
	StateOffset    int64
	// Source maps usage.events partitions to the last offset the state
	// reflects (the state's source_offsets). Shared: do not modify.
	Source         map[int32]int64
	StateUpdatedAt time.Time
	// Assignments is, per partition of usage.plan-assignments, the next
	// offset after the records the plan lookup reflected (nil when none
	// was read). Shared: do not modify.
	Assignments []int64
}

// Position is a record's place in a topic, for read-your-writes.
type Position struct {
	Topic     string
	Partition int32
	Offset    int64
}

// Check decides whether tenant may use quantity of meter now, and if so
// counts it as pending. It never blocks, never does I/O and does not
// allocate on a warm cache.
func (c *Cache) Check(_ context.Context, tenant, meter string, quantity Amount) Decision {
	return c.check(tenant, meter, quantity, true)
}

// CheckEvent is Check for an event whose id and timestamp the caller chose
// (usage-api's /v1/track): it refuses a timestamp further than the
// contract's skew from now (ReasonTimestamp), and answers an id it allowed
// recently (the last Config.RecentIDs) as a Duplicate, allowed and counting
// nothing, so a retried track does not stay pending for good. Call
// ForgetEvent when the allowed event will not be published after all.
func (c *Cache) CheckEvent(ctx context.Context, e *schemas.UsageEvent, quantity Amount) Decision {
	now := c.now()
	if e.Timestamp.Before(now.Add(-schemas.DefaultMaxFutureSkew)) || e.Timestamp.After(now.Add(schemas.DefaultMaxFutureSkew)) {
		d := c.check(e.TenantID, e.FeatureType, quantity, false)
		d.Allowed, d.Reason, d.RetryAfter = false, ReasonTimestamp, 0
		return d
	}
	if c.ids.seen(e.TenantID, e.ID) {
		d := c.check(e.TenantID, e.FeatureType, Amount{}, false)
		d.Duplicate = d.Allowed
		return d
	}
	d := c.Check(ctx, e.TenantID, e.FeatureType, quantity)
	if d.Allowed {
		c.ids.add(e.TenantID, e.ID)
	}
	return d
}

// ForgetEvent forgets an id CheckEvent remembered (with Release, when the
// event will not be published).
func (c *Cache) ForgetEvent(e *schemas.UsageEvent) { c.ids.forget(e.TenantID, e.ID) }

// recentIDs remembers the last n event ids CheckEvent allowed (FIFO).
type recentIDs struct {
	mu   sync.Mutex
	n    int
	set  map[string]struct{}
	ring []string
	next int
}

func newRecentIDs(n int) *recentIDs {
	return &recentIDs{n: n, set: make(map[string]struct{}, min(n, 1<<16))}
}

func idKey(tenant, id string) string { return tenant + "/" + id }

func (r *recentIDs) seen(tenant, id string) bool {
	if r.n == 0 {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.set[idKey(tenant, id)]
	return ok
}

func (r *recentIDs) add(tenant, id string) {
	if r.n == 0 {
		return
	}
	k := idKey(tenant, id)
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.ring) < r.n {
		r.ring = append(r.ring, k)
	} else {
		delete(r.set, r.ring[r.next])
		r.ring[r.next] = k
		r.next = (r.next + 1) % r.n
	}
	r.set[k] = struct{}{}
}

func (r *recentIDs) forget(tenant, id string) {
	r.mu.Lock()
	delete(r.set, idKey(tenant, id)) // its ring slot is reused in turn
	r.mu.Unlock()
}

// Peek is the current standing: Preview of quantity 0.
func (c *Cache) Peek(ctx context.Context, tenant, meter string) Decision {
	return c.Preview(ctx, tenant, meter, Amount{})
}

// Preview answers whether quantity would be allowed now, without counting
// it or taking a rate token; Usage is the standing before it.
func (c *Cache) Preview(_ context.Context, tenant, meter string, quantity Amount) Decision {
	return c.check(tenant, meter, quantity, false)
}

// CheckAfter is Check once the cache has read the record at min (for
// example the plan assignment an upgrade just published): until then it
// refuses with ReasonNotCaughtUp and counts nothing. WaitFor waits instead.
func (c *Cache) CheckAfter(ctx context.Context, tenant, meter string, quantity Amount, min Position) Decision {
	if !c.Reached(min) {
		d := c.check(tenant, meter, quantity, false)
		d.Allowed, d.Reason, d.RetryAfter = false, ReasonNotCaughtUp, c.cfg.PollInterval
		return d
	}
	return c.Check(ctx, tenant, meter, quantity)
}

// Reached reports whether the cache has read the record at p, and for a
// plan assignment also whether Check sees it.
func (c *Cache) Reached(p Position) bool {
	select {
	case <-c.ready:
	default:
		return false // the partitions are not known yet
	}
	switch p.Topic {
	case c.state.name:
		return p.Partition >= 0 && int(p.Partition) < len(c.state.next) && c.state.next[p.Partition].Load() > p.Offset
	case c.assign.name:
		if p.Partition < 0 || int(p.Partition) >= len(c.assign.next) || c.assign.next[p.Partition].Load() <= p.Offset {
			return false
		}
		if n := c.snap.Load().assignNext; int(p.Partition) < len(n) && n[p.Partition] > p.Offset {
			return true
		}
		c.flushAssignments() // read in the middle of a fetch: make Check see it now
		n := c.snap.Load().assignNext
		return int(p.Partition) < len(n) && n[p.Partition] > p.Offset
	}
	return false
}

// ErrBeyondHighWaterMark: WaitFor was asked for a record the topic does not
// hold (the high-water mark, read again from the broker, is not past it).
var ErrBeyondHighWaterMark = errors.New("offset is at or beyond the partition's high-water mark")

// WaitFor waits until the cache has read the record at p (Reached), or ctx
// is done. It sleeps until the readers make progress. A position the
// topic does not hold (at or past the high-water mark read again from the
// broker, or an unknown partition) fails at once with
// ErrBeyondHighWaterMark instead of waiting for a record that may never
// come.
func (c *Cache) WaitFor(ctx context.Context, p Position) error {
	var ts *topicState
	switch p.Topic {
	case c.state.name:
		ts = &c.state
	case c.assign.name:
		ts = &c.assign
	default:
		return fmt.Errorf("quota: topic %q is not read by this cache", p.Topic)
	}
	checked := false
	for {
		ch := c.waitCh() // before Reached: a wake in between is not missed
		if c.Reached(p) {
			return nil
		}
		if ready := c.isReady(); ready && !checked {
			if err := c.checkHWM(ctx, ts, p); err != nil {
				return err
			}
			checked = true
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("quota: %s/%d@%d not read yet: %w", p.Topic, p.Partition, p.Offset, ctx.Err())
		case <-ch:
		}
	}
}

func (c *Cache) isReady() bool {
	select {
	case <-c.ready:
		return true
	default:
		return false
	}
}

// checkHWM fails when p is not below its partition's high-water mark, read
// again from the broker when the known one is not past p.
func (c *Cache) checkHWM(ctx context.Context, ts *topicState, p Position) error {
	if p.Partition < 0 || int(p.Partition) >= len(ts.hwm) || p.Offset < 0 {
		return fmt.Errorf("quota: %s/%d@%d: no such partition or offset: %w", p.Topic, p.Partition, p.Offset, ErrBeyondHighWaterMark)
	}
	if ts.hwm[p.Partition].Load() > p.Offset {
		return nil
	}
	if cl := c.client.Load(); cl != nil {
		ends, err := c.listEnds(ctx, cl, ts.name, len(ts.hwm))
		if err != nil {
			return nil // the broker does not answer: the bound is unknown, ctx bounds the wait
		}
		noteHWM(ts, ends)
	}
	if hwm := ts.hwm[p.Partition].Load(); hwm <= p.Offset {
		return fmt.Errorf("quota: %s/%d@%d: high-water mark %d: %w", p.Topic, p.Partition, p.Offset, hwm, ErrBeyondHighWaterMark)
	}
	return nil
}

// Release gives back what an allowed decision counted as pending, when the
// usage it stood for will not be published (the handler failed).
func (c *Cache) Release(d Decision) {
	if d.Allowed && d.b != nil && !d.qty.IsZero() {
		subPending(d.b, d.qty)
	}
}

func (c *Cache) check(tenant, meter string, qty Amount, consume bool) Decision {
	now := c.now()
	ns := now.UnixNano()
	snap := c.snap.Load()
	e, bad := c.tab.lookup(tenant, meter)
	if e == nil {
		return Decision{Tenant: tenant, Meter: meter, Reason: bad, Offsets: Offsets{StateOffset: -1}, Staleness: c.staleness(now)}
	}
	if sec := ns / int64(time.Second); e.seen.Load() != sec {
		e.seen.Store(sec)
	}
	a := snap.assignment(tenant)
	v := e.view.Load()
	if v == nil || v.assign != a || ns < v.start || ns >= v.end {
		v = c.refresh(e, snap, a, now)
	}
	d := Decision{Tenant: tenant, Meter: meter, Plan: a.Plan, Staleness: c.staleness(now), lim: v.lim}
	// An unknown meter is refused even to Peek (a typo must not read as
	// "unlimited"); a gauge's or unique count's standing is still shown.
	if v.q.refuse == ReasonUnknownMeter || (v.q.refuse != "" && (consume || !qty.IsZero())) {
		c.describe(&d, v, snap)
		d.Reason = v.q.refuse
		c.fill(&d, v, v.usage.Add(Nanos(v.b.pending.Load())))
		return d
	}
	switch v.q.agg {
	case plans.Count:
		if !qty.IsZero() || consume {
			qty = Units(1) // one event, whatever its quantity
		}
	case plans.Max, plans.Latest, plans.UniqueCount:
		qty = Amount{} // unlimited here: nothing to add
	}
	d.qty = qty

	if v.lim != nil {
		n := qty.wholeUnits()
		if ok := (consume && v.lim.AllowN(now, n)) || (!consume && v.lim.TokensAt(now) >= float64(n)); !ok {
			c.describe(&d, v, snap)
			d.Reason = ReasonRate
			d.tokens = v.lim.TokensAt(now)
			d.RetryAfter = retryAfter(d.tokens, n, float64(v.lim.Limit()))
			c.fill(&d, v, v.usage.Add(Nanos(v.b.pending.Load())))
			return d
		}
	}
	for {
		p := v.b.pending.Load()
		base := v.usage.Add(Nanos(p))
		after := base.Add(qty)
		ok := v.q.hardNone || after.Cmp(v.q.hardCap) <= 0
		reason := ReasonLimit
		d.Staleness.Mode = ""
		if d.Staleness.Stale {
			d.Staleness.Mode = c.cfg.BeforeReady
			if d.Staleness.Ready {
				d.Staleness.Mode = c.mode(meter, v.q.level(base))
			}
			switch d.Staleness.Mode {
			case Open:
				ok = true
			case Closed:
				ok, reason = false, ReasonStale
			}
		}
		np, carry := p+qty.lo, p+qty.lo < p
		if ok && consume && (qty.hi != 0 || carry) {
			ok, reason = false, ReasonTooLarge // beyond 18 billion units pending in one instance
		}
		if !ok {
			c.describe(&d, v, snap)
			d.Reason = reason
			c.fill(&d, v, base)
			if reason == ReasonLimit {
				d.Level = v.q.level(after)
				d.RetryAfter = time.Duration(v.end - ns)
			} else {
				d.RetryAfter = c.cfg.PollInterval
			}
			return d
		}
		if consume {
			if !v.b.pending.CompareAndSwap(p, np) {
				continue
			}
			if e.evicted.Load() { // dropped from the table meanwhile: count it on the new entry
				subPending(v.b, qty)
				c.tab.mu.Lock() // the eviction pass is over: e is out of the table, or kept
				c.tab.mu.Unlock()
				return c.check(tenant, meter, qty, consume)
			}
			// The view and pending must be one consistent pair: a state
			// applied between reading v and the swap moved usage into v's
			// successor and took it off pending, so base undercounted. Give
			// the amount back and decide again on the new view.
			if nv := e.view.Load(); nv != v {
				subPending(v.b, qty)
				if nv == nil || nv.assign != a || ns < nv.start || ns >= nv.end {
					nv = c.refresh(e, snap, a, now)
				}
				v = nv
				continue
			}
		}
		c.describe(&d, v, snap)
		d.Allowed = true
		if !consume { // a preview reports the standing before the request
			after, np = base, p
		}
		c.fill(&d, v, after)
		d.Pending = Nanos(np)
		return d
	}
}

// describe sets what d says about the view it was decided on.
func (c *Cache) describe(d *Decision, v *view, snap *plansSnapshot) {
	d.Period, d.ResetAt, d.Limit, d.Unlimited, d.b = v.period, v.resetAt, v.q.limit, v.q.unlimited, v.b
	if v.q.refuse == ReasonUnknownMeter {
		d.Unlimited = false // no plan says anything about it
	}
	d.Offsets = Offsets{StateOffset: -1, Assignments: snap.assignNext}
	if h := v.held; h != nil {
		d.Offsets = Offsets{StatePartition: h.partition, StateOffset: h.offset, Source: h.source, StateUpdatedAt: h.updatedAt,
			Assignments: d.Offsets.Assignments}
	}
}

// fill sets the usage figures for usage.
func (c *Cache) fill(d *Decision, v *view, usage Amount) {
	d.Usage = usage
	d.Pending = usage.Sub(v.usage)
	d.Level = v.q.level(usage)
	if v.q.unlimited {
		return
	}
	d.Remaining = v.q.limit.Sub(usage)
	d.Percentage = basisPoints(usage, v.q.limit)
	switch {
	case usage.Cmp(v.q.limit) >= 0:
		d.Warning = 100
	default:
		for i := range v.q.thresholds {
			if usage.Cmp(v.q.thresholds[i].at) >= 0 {
				d.Warning = v.q.thresholds[i].pct
			}
		}
	}
}

func (c *Cache) staleness(now time.Time) Staleness {
	s := Staleness{OffsetLag: c.lag.Load(), Reachable: c.reachable.Load()}
	synced := c.syncedAt.Load()
	if synced == 0 {
		s.Stale = true
		return s
	}
	s.Ready = true
	s.Age = max(0, time.Duration(now.UnixNano()-synced))
	s.Stale = s.Age > c.cfg.MaxStaleness
	return s
}

func (c *Cache) mode(meter string, level string) Mode {
	f, ok := c.cfg.MeterFailModes[meter]
	if !ok {
		f = c.cfg.FailModes
	}
	switch level {
	case plans.LevelOK:
		return f.OK
	case plans.LevelAtLimit:
		return f.AtLimit
	case plans.LevelOverage:
		return f.Overage
	case plans.LevelBlocked:
		return f.Blocked
	}
	return f.Warning
}

// retryAfter is how long until the bucket holds n tokens.
func retryAfter(tokens float64, n int, perSecond float64) time.Duration {
	if perSecond <= 0 {
		return time.Duration(math.MaxInt64)
	}
	need := float64(n) - tokens
	if need <= 0 {
		return 0
	}
	return time.Duration(need / perSecond * float64(time.Second))
}
