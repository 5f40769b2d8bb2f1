package quota

import (
	"maps"
	"math/big"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shopspring/decimal"
	"golang.org/x/time/rate"

	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/schemas/plans"
)

// plansSnapshot is an immutable copy of the plans with the assignments read
// so far. plans.Config.Assign is not safe next to lookups, so the reader
// assigns on a private copy and publishes a fresh snapshot behind an
// atomic.Pointer: Check reads without a lock.
type plansSnapshot struct {
	cfg *plans.Config
	// assignNext is, per partition of the assignment topic, the next offset
	// after the records this snapshot reflects (nil before any was read).
	assignNext []int64
}

type planMeter struct{ plan, meter string }

func (s *plansSnapshot) assignment(tenant string) plans.Assignment {
	if a, ok := s.cfg.Tenants[tenant]; ok {
		return a
	}
	return plans.Assignment{Plan: s.cfg.DefaultPlan}
}

// quotaInfo is one plan's quota for one meter, with the amounts Check
// compares precomputed so that it needs no decimal arithmetic.
type quotaInfo struct {
	plan, meter string
	q           plans.Quota
	unlimited   bool
	limit       Amount
	hardCap     Amount // the most usage a request may reach: limit, or limit + overage_limit
	hardNone    bool   // no hard cap (unlimited, or unbounded overage)
	overage     bool
	thresholds  []threshold // below 100 %, ascending
	rate        RateLimit
	// agg is the meter's aggregation: Check adds quantities for sum, counts
	// one per event for count, and cannot add gauges or unique counts.
	agg plans.Aggregation
	// refuse is the reason Check refuses every request of this plan and
	// meter (unknown_meter, unsupported_aggregation), or "".
	refuse string
}

type threshold struct {
	at    Amount // usage >= at reaches the level
	level string
	pct   int
}

func newQuotaInfo(plan, meter string, q plans.Quota, rl RateLimit, agg plans.Aggregation) *quotaInfo {
	qi := &quotaInfo{plan: plan, meter: meter, q: q, rate: rl, agg: agg}
	if !q.Limit.Equal(plans.Unlimited) && agg != plans.Sum && agg != plans.Count && agg != "" {
		// A gauge's or a unique count's usage is not the sum of what was
		// allowed: adding quantities would be a silently wrong answer.
		qi.refuse = ReasonUnsupported
	}
	if q.Limit.Equal(plans.Unlimited) {
		qi.unlimited, qi.hardNone = true, true
		return qi
	}
	qi.limit, _ = AmountOf(q.Limit) // plans.Load checked it
	qi.overage = q.OverageAllowed
	switch {
	case !q.OverageAllowed:
		qi.hardCap = qi.limit
	case q.OverageLimit.Equal(plans.Unlimited):
		qi.hardNone = true
	default:
		ol, _ := AmountOf(q.OverageLimit)
		qi.hardCap = qi.limit.Add(ol)
	}
	for _, t := range q.WarningThresholds {
		if t >= 100 {
			continue
		}
		// usage*100 >= limit*t  <=>  usage >= ceil(limit*t/100) in nano-units.
		n := qi.limit.Decimal().Shift(9).BigInt()
		n.Mul(n, big.NewInt(int64(t)))
		n.Add(n, big.NewInt(99))
		n.Quo(n, big.NewInt(100))
		at, _ := AmountOf(decimal.NewFromBigInt(n, -9))
		qi.thresholds = append(qi.thresholds, threshold{at: at, level: plans.WarningLevel(t), pct: t})
	}
	return qi
}

// level grades usage as plans.Evaluate does.
func (q *quotaInfo) level(usage Amount) string {
	if q.unlimited {
		return plans.LevelOK
	}
	switch c := usage.Cmp(q.limit); {
	case c > 0:
		if q.overage && (q.hardNone || usage.Cmp(q.hardCap) <= 0) {
			return plans.LevelOverage
		}
		return plans.LevelBlocked
	case c == 0 || q.limit.IsZero():
		return plans.LevelAtLimit
	}
	lvl := plans.LevelOK
	for i := range q.thresholds {
		if usage.Cmp(q.thresholds[i].at) >= 0 {
			lvl = q.thresholds[i].level
		}
	}
	return lvl
}

// table maps tenant+meter to its entry. Lookups of existing entries read an
// immutable map behind an atomic pointer (no lock); new entries go to a
// locked overflow map that is folded into a new read map once it has been
// missed as often as the read map is large (amortised O(1), like sync.Map,
// but with a typed key that does not allocate).
type table struct {
	read   atomic.Pointer[map[key]*entry]
	mu     sync.Mutex
	dirty  map[key]*entry
	misses int
}

type key struct{ tenant, meter string }

func newTable() *table {
	t := &table{dirty: map[key]*entry{}}
	m := map[key]*entry{}
	t.read.Store(&m)
	return t
}

// get returns the entry of a key read from a state (already validated).
func (t *table) get(tenant, meter string) *entry {
	if e, ok := (*t.read.Load())[key{tenant, meter}]; ok {
		return e
	}
	return t.slowGet(tenant, meter)
}

// lookup returns the entry for a Check, or nil (and why) when the tenant or
// meter breaks the contract: such keys never get an entry, so a flood of
// invalid names costs no memory, and valid keys pay no validation once
// their entry exists.
func (t *table) lookup(tenant, meter string) (*entry, string) {
	if e, ok := (*t.read.Load())[key{tenant, meter}]; ok {
		return e, ""
	}
	if schemas.CheckTenantID(tenant) != nil {
		return nil, ReasonInvalidTenant
	}
	if schemas.CheckFeatureType(meter) != nil {
		return nil, ReasonUnknownMeter
	}
	return t.slowGet(tenant, meter), ""
}

func (t *table) slowGet(tenant, meter string) *entry {
	t.mu.Lock()
	defer t.mu.Unlock()
	read := *t.read.Load()
	k := key{tenant, meter}
	if e, ok := read[k]; ok {
		return e
	}
	e, ok := t.dirty[k]
	if !ok {
		e = &entry{key: k}
		t.dirty[k] = e
	}
	t.misses++
	if t.misses > len(read)/4 {
		m := make(map[key]*entry, len(read)+len(t.dirty))
		maps.Copy(m, read)
		maps.Copy(m, t.dirty)
		t.read.Store(&m)
		t.dirty, t.misses = map[key]*entry{}, 0
	}
	return e
}

// evictIdle drops the entries nobody checked for idle that hold nothing
// Check needs: no pending in the current period and no state of a period
// that ended less than idle ago. It returns how many it dropped. The
// evicted flag is set before pending is read again, and Check reads the
// flag after adding to pending: one of the two sees the other, so no
// pending is lost with an entry.
func (t *table) evictIdle(now time.Time, idle time.Duration) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	read := *t.read.Load()
	cut, ns := now.Add(-idle).Unix(), now.UnixNano()
	var gone []key
	consider := func(k key, e *entry) {
		if e.seen.Load() > cut {
			return
		}
		e.mu.Lock()
		defer e.mu.Unlock()
		for _, h := range e.held {
			if now.Sub(h.end) < idle {
				return
			}
		}
		v := e.view.Load()
		live := v != nil && ns < v.end
		if live && v.b.pending.Load() != 0 {
			return
		}
		e.evicted.Store(true)
		if live && v.b.pending.Load() != 0 { // a Check added meanwhile
			e.evicted.Store(false)
			return
		}
		gone = append(gone, k)
	}
	for k, e := range read {
		consider(k, e)
	}
	for k, e := range t.dirty {
		consider(k, e)
	}
	if len(gone) == 0 {
		return 0
	}
	m := make(map[key]*entry, len(read)+len(t.dirty)-len(gone))
	maps.Copy(m, read)
	maps.Copy(m, t.dirty)
	for _, k := range gone {
		delete(m, k)
	}
	t.read.Store(&m)
	t.dirty, t.misses = map[key]*entry{}, 0
	return len(gone)
}

// len is the number of entries.
func (t *table) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(*t.read.Load()) + len(t.dirty)
}

// all calls f for every entry (for GET /v1/quotas and tests).
func (t *table) all(f func(*entry)) {
	t.mu.Lock()
	read := *t.read.Load()
	list := make([]*entry, 0, len(read)+len(t.dirty))
	for _, e := range read {
		list = append(list, e)
	}
	for _, e := range t.dirty {
		list = append(list, e)
	}
	t.mu.Unlock()
	for _, e := range list {
		f(e)
	}
}

// entry is one tenant and meter.
type entry struct {
	key  key
	view atomic.Pointer[view] // what Check reads
	// seen is the unix second of the last Check (written only when it
	// changes: the hot path mostly reads it); evicted is set when the
	// entry left the table (Check and applyState then look it up again).
	seen    atomic.Int64
	evicted atomic.Bool
	mu      sync.Mutex // serialises view rebuilds (state arrivals, plan changes, new periods)
	// held is the newest state read per period, newest period first, at
	// most maxHeld (guarded by mu): a plan change that moves the tenant
	// between calendar and anchored periods and back finds its state again.
	held []*heldState
}

const maxHeld = 4

// heldFor returns the held state of period, or nil; mu held.
func (e *entry) heldFor(period string) *heldState {
	for _, h := range e.held {
		if h.period == period {
			return h
		}
	}
	return nil
}

// heldState is one QuotaState record with where it was read.
type heldState struct {
	period     string
	start, end time.Time
	usage      Amount
	partition  int32
	offset     int64
	source     map[int32]int64
	updatedAt  time.Time
}

// bucket holds what this instance allowed for one tenant, meter and period
// that the held state does not reflect yet. It lives as long as the period:
// views of the same period share it.
type bucket struct {
	pending atomic.Uint64 // nano-units
	// events are the held events (Hold) with a part still pending, oldest
	// first: a state's usage increase is taken off them in that order.
	mu     sync.Mutex
	events []*pendingEvent
}

// view is what one Check needs, immutable but for bucket and limiter.
type view struct {
	assign     plans.Assignment
	q          *quotaInfo
	period     string
	start, end int64 // unix nanoseconds, [start, end)
	resetAt    time.Time
	usage      Amount     // from held, when held is for this period; else 0
	held       *heldState // nil when there is no state for this period yet
	b          *bucket
	lim        *rate.Limiter // nil without a rate limit
}
