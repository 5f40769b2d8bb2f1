package quota

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/usagemeter/usagemeter/schemas/plans"
)

// Reasons a Decision refuses (Reason is empty when Allowed).
const (
	ReasonLimit       = "limit_exceeded" // the request would pass the hard limit
	ReasonRate        = "rate_limited"   // the fair-use token bucket is empty
	ReasonStale       = "stale"          // stale state and the fail mode is closed
	ReasonNotCaughtUp = "not_caught_up"  // CheckAfter: the cache has not read the position yet
	ReasonTooLarge    = "quantity_too_large"
)

// Decision is the answer for one request. It is a plain value: no
// allocation, safe to keep.
type Decision struct {
	Allowed bool
	Reason  string
	Tenant  string
	Meter   string
	Plan    string
	Period  string
	// Level of Usage (ok, warning_<N>, at_limit, overage, blocked); when
	// refused for the limit, the level the request would have reached.
	Level string
	// Usage is the held state's usage plus Pending.
	Usage Amount
	// Pending is what this instance allowed that the held state does not
	// reflect yet, including this request when allowed.
	Pending Amount
	// Limit is the plan's limit; Unlimited when the plan has none (-1 on the
	// wire), and then Remaining is meaningless (-1 on the wire).
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

	b   *bucket
	qty Amount
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

// Reached reports whether the cache has read the record at p.
func (c *Cache) Reached(p Position) bool {
	select {
	case <-c.ready:
	default:
		return false // the partitions are not known yet
	}
	var ts *topicState
	switch p.Topic {
	case c.state.name:
		ts = &c.state
	case c.assign.name:
		ts = &c.assign
	default:
		return false
	}
	return p.Partition >= 0 && int(p.Partition) < len(ts.next) && ts.next[p.Partition].Load() > p.Offset
}

// WaitFor waits until the cache has read the record at p, or ctx is done.
func (c *Cache) WaitFor(ctx context.Context, p Position) error {
	if p.Topic != c.state.name && p.Topic != c.assign.name {
		return fmt.Errorf("quota: topic %q is not read by this cache", p.Topic)
	}
	t := time.NewTicker(2 * time.Millisecond)
	defer t.Stop()
	for !c.Reached(p) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("quota: %s/%d@%d not read yet: %w", p.Topic, p.Partition, p.Offset, ctx.Err())
		case <-t.C:
		}
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
	snap := c.snap.Load()
	e := c.tab.get(tenant, meter)
	a := snap.assignment(tenant)
	v := e.view.Load()
	if ns := now.UnixNano(); v == nil || v.assign != a || ns < v.start || ns >= v.end {
		v = c.refresh(e, snap, a, now)
	}
	d := Decision{Tenant: tenant, Meter: meter, Plan: a.Plan, Period: v.period, ResetAt: v.resetAt,
		Limit: v.q.limit, Unlimited: v.q.unlimited, b: v.b, qty: qty}
	d.Offsets.StateOffset = -1
	if h := v.held; h != nil {
		d.Offsets = Offsets{StatePartition: h.partition, StateOffset: h.offset, Source: h.source, StateUpdatedAt: h.updatedAt}
	}
	d.Offsets.Assignments = snap.assignNext
	d.Staleness = c.staleness(now)

	if consume && v.lim != nil && !v.lim.AllowN(now, qty.wholeUnits()) {
		d.Reason = ReasonRate
		d.RetryAfter = retryAfter(v.lim.TokensAt(now), qty.wholeUnits(), float64(v.lim.Limit()))
		c.fill(&d, v, v.usage.Add(Nanos(v.b.pending.Load())))
		return d
	}
	for {
		p := v.b.pending.Load()
		base := v.usage.Add(Nanos(p))
		after := base.Add(qty)
		ok := v.q.hardNone || after.Cmp(v.q.hardCap) <= 0
		reason := ReasonLimit
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
			d.Reason = reason
			c.fill(&d, v, base)
			if reason == ReasonLimit {
				d.Level = v.q.level(after)
				d.RetryAfter = time.Duration(v.end - now.UnixNano())
			} else {
				d.RetryAfter = c.cfg.PollInterval
			}
			return d
		}
		if !consume || v.b.pending.CompareAndSwap(p, np) {
			d.Allowed = true
			if !consume { // a preview reports the standing before the request
				after, np = base, p
			}
			c.fill(&d, v, after)
			d.Pending = Nanos(np)
			return d
		}
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
