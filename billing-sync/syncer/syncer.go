// Package syncer bills closed usage windows to Stripe exactly once,
// reconciles them with what Stripe holds, and reports what differs. See
// billing-sync/README.md for the model: the raw table is the source of
// truth, the audit table is a write-ahead ledger, and every write carries
// an identifier and idempotency key derived from (tenant, meter, window,
// seq).
package syncer

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/usagemeter/usagemeter/billing-sync/audit"
	"github.com/usagemeter/usagemeter/billing-sync/stripeapi"
	"github.com/usagemeter/usagemeter/billing-sync/usage"
	"github.com/usagemeter/usagemeter/schemas/plans"
)

// Source is where our numbers come from (usage.Store).
type Source interface {
	Hours(ctx context.Context, meter string, m plans.Meter, from, to time.Time) ([]usage.Hour, error)
}

// Ledger is the audit table (audit.Store).
type Ledger interface {
	Load(ctx context.Context, meter string, from, to time.Time) (map[audit.WindowKey]*audit.Window, error)
	Write(ctx context.Context, rows []audit.Row) error
}

// Stripe is the part of stripeapi.Client the syncer uses.
type Stripe interface {
	SendMeterEvent(ctx context.Context, e stripeapi.MeterEvent) error
	CancelMeterEvent(ctx context.Context, customer, eventName, identifier, key string) error
	SetUsage(ctx context.Context, item string, quantity int64, ts time.Time, key string) error
	MeterSummaries(ctx context.Context, meterID, customer, eventName string, from, to time.Time) (map[int64]int64, error)
	UsageSummaries(ctx context.Context, item string) ([]stripeapi.UsageSummary, error)
	CustomersByTenant(ctx context.Context) (map[string]string, error)
	SubscriptionItemFor(ctx context.Context, customer, priceID string) (string, error)
}

// Fence is the writer lease's term (lease.Term): Check is asked before
// every Stripe write and fails once another writer may have begun.
type Fence interface {
	Check(ctx context.Context) error
	Generation() int32
}

// Syncer runs passes. Passes must not overlap (one billing-sync writer).
type Syncer struct {
	cfg    Config
	plans  *plans.Config
	src    Source
	ledger Ledger
	stripe Stripe
	log    *zap.Logger
	now    func() time.Time
	m      *metrics

	mu        sync.Mutex
	customers map[string]string // tenant -> customer, from config and look-ups
	looked    bool
	items     map[string]string // tenant/meter -> subscription item
	fence     Fence
}

// SetFence makes the following passes check f before each Stripe write and
// record its generation in their pass id (audit rows). Nil: no check.
func (s *Syncer) SetFence(f Fence) {
	s.mu.Lock()
	s.fence = f
	s.mu.Unlock()
}

func (s *Syncer) currentFence() Fence {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fence
}

// Option configures a Syncer.
type Option func(*Syncer)

// WithRegisterer registers the metrics.
func WithRegisterer(r prometheus.Registerer) Option {
	return func(s *Syncer) { s.m.register(r) }
}

// New returns a Syncer; cfg must be normalized.
func New(cfg Config, p *plans.Config, src Source, ledger Ledger, st Stripe, log *zap.Logger, opts ...Option) *Syncer {
	s := &Syncer{cfg: cfg, plans: p, src: src, ledger: ledger, stripe: st, log: log, now: time.Now, m: newMetrics(),
		customers: map[string]string{}, items: map[string]string{}}
	for _, cu := range cfg.Customers {
		s.customers[cu.Tenant] = cu.Customer
		for meter, item := range cu.Items {
			s.items[cu.Tenant+"/"+meter] = item
		}
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Report is what a pass did or found.
type Report struct {
	PassID    string
	Windows   int // windows compared
	Writes    int // Stripe writes made (or planned, in a dry run)
	Failed    int // writes that failed
	Resent    int // pending intents re-sent
	Observed  int // windows where Stripe differed from the ledger
	Unsettled int // windows skipped because Stripe's summaries may lag
	Unmapped  []string
	Unfixable []Drift
	Planned   []audit.Row // dry run: what would be written
}

// Drift is one window where ours and Stripe's differ.
type Drift struct {
	Tenant, Meter string
	Start, End    time.Time
	Ours, Stripe  int64
	Status        string // fixable, unsettled, past_grace, too_old, overbilled, period_closed, unmapped, aggregates_differ
}

func newPassID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Sync is one `run` pass: every closed window still within the grace is
// brought to our value, judged by the ledger (no Stripe reads).
func (s *Syncer) Sync(ctx context.Context) (*Report, error) {
	now := s.now()
	return s.pass(ctx, now.Add(-s.cfg.Grace-time.Hour), now, false)
}

// Reconcile reads Stripe's values of the windows starting in [from, to),
// records where they differ from the ledger, and corrects what Stripe still
// accepts. Zero from/to mean the grace.
func (s *Syncer) Reconcile(ctx context.Context, from, to time.Time) (*Report, error) {
	now := s.now()
	if from.IsZero() {
		from = now.Add(-s.cfg.Grace - time.Hour)
	}
	if to.IsZero() {
		to = now
	}
	return s.pass(ctx, from, to, true)
}

func (s *Syncer) pass(ctx context.Context, from, to time.Time, reconcile bool) (*Report, error) {
	start := time.Now()
	rep := &Report{PassID: newPassID()}
	if f := s.currentFence(); f != nil {
		// The lease generation on every audit row of the pass: which
		// writer's term made a write.
		rep.PassID = fmt.Sprintf("g%d-%s", f.Generation(), rep.PassID)
	}
	// A customer created in Stripe since the last pass (a new sign-up) is
	// found by this pass: the listing runs at most once per pass, and only
	// when a tenant is not mapped.
	s.mu.Lock()
	s.looked = false
	s.mu.Unlock()
	meters := make([]string, 0, len(s.cfg.Meters))
	for name := range s.cfg.Meters {
		meters = append(meters, name)
	}
	sort.Strings(meters)
	for _, name := range meters {
		if err := s.passMeter(ctx, name, s.cfg.Meters[name], from, to, reconcile, rep); err != nil {
			s.m.passes.WithLabelValues("error").Inc()
			return rep, err
		}
	}
	s.m.passes.WithLabelValues("ok").Inc()
	s.m.passSeconds.Observe(time.Since(start).Seconds())
	s.m.unmapped.Set(float64(len(rep.Unmapped)))
	s.log.Info("billing pass done", zap.String("pass", rep.PassID), zap.Bool("reconcile", reconcile), zap.Bool("dry_run", s.cfg.DryRun),
		zap.Int("windows", rep.Windows), zap.Int("writes", rep.Writes), zap.Int("failed", rep.Failed), zap.Int("resent", rep.Resent),
		zap.Int("observed", rep.Observed), zap.Int("unsettled", rep.Unsettled), zap.Int("unmapped", len(rep.Unmapped)),
		zap.Int("unfixable", len(rep.Unfixable)), zap.Duration("took", time.Since(start)))
	return rep, nil
}

// ours computes our windows of one meter starting in [from, to), closed
// before now - close_after; reads from far enough back to carry
// remainders from the start of each billing period.
func (s *Syncer) ours(ctx context.Context, name string, m Meter, from, to time.Time) ([]window, error) {
	pm := plans.Meter{Aggregation: plans.Sum}
	if s.plans != nil {
		pm, _ = s.plans.MeterFor(name)
	}
	closed := s.now().Add(-s.cfg.CloseAfter).Truncate(time.Hour)
	// Period windows need their hours up to the closed edge.
	readTo := to.Add(32 * 24 * time.Hour)
	if closed.Before(readTo) {
		readTo = closed
	}
	readFrom := from.Add(-32 * 24 * time.Hour).Truncate(24 * time.Hour)
	hours, err := s.src.Hours(ctx, name, pm, readFrom, readTo)
	if err != nil {
		return nil, err
	}
	var ws []window
	if m.Mode == MeterEvents {
		ws = hourWindows(hours, m, s.plans)
	} else {
		ws = periodWindows(hours, pm.Aggregation, m, s.plans)
	}
	out := ws[:0]
	for _, w := range ws {
		if w.end.After(from) && w.start.Before(to) { // a period overlapping the range counts
			out = append(out, w)
		}
	}
	return out, nil
}

// ledgerFrom reaches back to the start of a period overlapping from.
func ledgerFrom(from time.Time) time.Time { return from.Add(-32 * 24 * time.Hour) }

// target is where a tenant's meter is billed.
type target struct {
	customer string
	item     string // usage_records
}

func (s *Syncer) resolve(ctx context.Context, tenant, meter string, m Meter) (target, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cus, ok := s.customers[tenant]
	if !ok && s.cfg.LookupCustomers && !s.looked {
		if err := s.lookupCustomers(ctx); err != nil {
			return target{}, false, err
		}
		cus, ok = s.customers[tenant]
	}
	if !ok {
		return target{}, false, nil
	}
	t := target{customer: cus}
	if m.Mode == UsageRecords {
		item, ok := s.items[tenant+"/"+meter]
		if !ok && m.Price != "" {
			var err error
			if item, err = s.stripe.SubscriptionItemFor(ctx, cus, m.Price); err != nil {
				return target{}, false, fmt.Errorf("look up subscription item of %s for %s: %w", cus, m.Price, err)
			}
			if item != "" {
				s.items[tenant+"/"+meter] = item
			}
		}
		if item == "" {
			return target{}, false, nil
		}
		t.item = item
	}
	return t, true, nil
}

// job is one window's work in a pass.
type job struct {
	w       window
	tgt     target
	ledger  *audit.Window
	resend  []*audit.Intent // pending intents to re-send verbatim
	intents []audit.Row     // new intents (pending rows)
	// resolved: reconcile resolved the window's unknown outcomes from
	// Stripe's summary in this pass.
	resolved bool
}

func (s *Syncer) passMeter(ctx context.Context, name string, m Meter, from, to time.Time, reconcile bool, rep *Report) error {
	now := s.now()
	ws, err := s.ours(ctx, name, m, from, to)
	if err != nil {
		return err
	}
	ledger, err := s.ledger.Load(ctx, name, ledgerFrom(from), to)
	if err != nil {
		return err
	}
	// Windows the ledger knows but we no longer have (usage removed) bill 0.
	have := map[audit.WindowKey]bool{}
	for _, w := range ws {
		have[w.key] = true
	}
	for k, lw := range ledger {
		if !have[k] && len(lw.Intents) > 0 && lw.Intents[0].First.WindowEnd.After(from) {
			st := time.Unix(k.Start, 0).UTC()
			ws = append(ws, window{key: k, start: st, end: lw.Intents[0].First.WindowEnd})
		}
	}
	// Group by tenant (one customer, one meter: one in-flight call).
	byTenant := map[string][]window{}
	var tenants []string
	for _, w := range ws {
		if byTenant[w.key.Tenant] == nil {
			tenants = append(tenants, w.key.Tenant)
		}
		byTenant[w.key.Tenant] = append(byTenant[w.key.Tenant], w)
	}
	sort.Strings(tenants)
	var groups [][]*job
	unmapped := map[string]bool{}
	for _, tenant := range tenants {
		tgt, ok, err := s.resolve(ctx, tenant, name, m)
		if err != nil {
			return err
		}
		if !ok {
			if !unmapped[tenant] {
				unmapped[tenant] = true
				rep.Unmapped = append(rep.Unmapped, tenant+"/"+name)
				s.log.Warn("tenant has no Stripe customer (or subscription item): not billed", zap.String("tenant", tenant), zap.String("meter", name))
			}
			continue
		}
		var stripeVals map[int64]int64
		if reconcile {
			if stripeVals, err = s.stripeValues(ctx, m, tgt, byTenant[tenant], from, to); err != nil {
				return err
			}
		}
		var group []*job
		for _, w := range byTenant[tenant] {
			rep.Windows++
			lw := ledger[w.key]
			if lw == nil {
				lw = &audit.Window{}
			}
			j := &job{w: w, tgt: tgt, ledger: lw}
			if reconcile && !s.observe(j, m, stripeVals, now, rep) {
				continue
			}
			s.plan(j, name, m, now, rep)
			if len(j.resend) > 0 || len(j.intents) > 0 {
				group = append(group, j)
			}
		}
		if len(group) > 0 {
			groups = append(groups, group)
		}
	}
	return s.execute(ctx, groups, rep)
}

// stripeValues reads Stripe's per-window values for one tenant.
func (s *Syncer) stripeValues(ctx context.Context, m Meter, tgt target, ws []window, from, to time.Time) (map[int64]int64, error) {
	out := map[int64]int64{}
	if m.Mode == MeterEvents {
		vals, err := s.stripe.MeterSummaries(ctx, m.MeterID, tgt.customer, m.EventName, from.Truncate(time.Hour), to.Truncate(time.Hour).Add(time.Hour))
		if err != nil {
			return nil, err
		}
		return vals, nil
	}
	sums, err := s.stripe.UsageSummaries(ctx, tgt.item)
	if err != nil {
		return nil, err
	}
	for _, w := range ws {
		for _, su := range sums {
			if !w.start.Before(su.Start) && w.start.Before(su.End) || w.start.Equal(su.Start) {
				out[w.key.Start] = su.Total
			}
		}
	}
	return out, nil
}

// observe records Stripe's value when it differs from the ledger; false
// means leave the window alone this pass.
func (s *Syncer) observe(j *job, m Meter, stripeVals map[int64]int64, now time.Time, rep *Report) bool {
	lw := j.ledger
	if unk := lw.Unknown(); len(unk) > 0 {
		// Outcome unknown (idempotency_error): resolved by what Stripe
		// shows once its summaries have settled since the refusal.
		for _, in := range unk {
			if now.Sub(in.Latest.At) < s.cfg.Settle {
				rep.Unsettled++
				return false
			}
		}
		for _, in := range unk {
			r := in.First
			r.Result, r.Error, r.At = audit.Expired, "outcome unknown (idempotency_error); resolved from Stripe's summary", time.Time{}
			j.intents = append(j.intents, r)
		}
		j.resolved = true
	}
	if pend := lw.Pending(); len(pend) > 0 {
		// Fresh pending intents are re-sent by plan; stale ones (past the
		// idempotency window) are resolved by what Stripe shows.
		if now.Sub(pend[0].First.At) < s.cfg.CancelWindow {
			return true
		}
		for _, in := range pend {
			r := in.First
			r.Result, r.Error, r.At = audit.Expired, "unknown outcome past the idempotency window; resolved from Stripe's summary", time.Time{}
			j.intents = append(j.intents, r) // written with the pass; no call
		}
		lw.Intents = nil
	}
	if !lw.LastWrite.IsZero() && now.Sub(lw.LastWrite) < s.cfg.Settle {
		rep.Unsettled++
		return false
	}
	got := stripeVals[j.w.key.Start]
	if got != lw.Stripe {
		rep.Observed++
		j.intents = append(j.intents, s.row(j, m, audit.Observe, lw.NextSeq, got, got-lw.Stripe, "", audit.OK,
			fmt.Sprintf("Stripe holds %d, the ledger said %d", got, lw.Stripe)))
		lw.NextSeq++
		lw.Stripe = got
	}
	return true
}

func (s *Syncer) row(j *job, m Meter, action string, seq uint32, stripeAfter, delta int64, ident, result, msg string) audit.Row {
	tgt := m.EventName
	if m.Mode == UsageRecords {
		tgt = j.tgt.item
	}
	return audit.Row{
		Tenant: j.w.key.Tenant, Meter: j.w.key.Meter, Mode: m.Mode, WindowStart: j.w.start, WindowEnd: j.w.end,
		Customer: j.tgt.customer, Target: tgt, Seq: seq, Action: action, Quantity: j.w.quantity, Ours: j.w.units,
		Stripe: stripeAfter, Delta: delta, Identifier: ident, IdempotencyKey: IntentID(m.Mode+"/"+action, j.w.key, seq),
		Result: result, Error: msg,
	}
}

// plan decides the window's writes: re-send pending intents, or bring
// Stripe from the ledger's value to ours within Stripe's rules.
func (s *Syncer) plan(j *job, name string, m Meter, now time.Time, rep *Report) {
	lw := j.ledger
	if len(lw.Unknown()) > 0 && !j.resolved {
		// Another request used the key: Stripe may hold more than the
		// ledger says. Nothing new until reconcile reads it back.
		rep.Unfixable = append(rep.Unfixable, s.drift(j, "outcome_unknown"))
		return
	}
	if pend := lw.Pending(); len(pend) > 0 {
		if now.Sub(pend[0].First.At) < s.cfg.CancelWindow {
			j.resend = pend
		} else {
			rep.Unfixable = append(rep.Unfixable, s.drift(j, "unsettled"))
		}
		return // nothing new until their outcome is known
	}
	delta := j.w.units - lw.Stripe
	if delta == 0 {
		return
	}
	status := ""
	switch {
	case j.w.end.Before(now.Add(-s.cfg.Grace)):
		status = "past_grace"
	case m.Mode == MeterEvents && j.w.start.Before(now.Add(-s.cfg.MaxAge)):
		status = "too_old"
	case m.Mode == MeterEvents && j.w.end.After(now.Add(-s.cfg.CloseAfter)):
		return // not closed yet
	case m.Mode == UsageRecords && now.After(j.w.end.Add(s.cfg.UsageRecordClose)):
		status = "period_closed"
	}
	seq := lw.NextSeq
	next := func() uint32 { seq++; return seq - 1 }
	if status == "" && m.Mode == MeterEvents && delta < 0 {
		// Decrease: cancel every event of the window (Stripe: within 24 h)
		// and send ours again; otherwise it is an over-billing to credit.
		sends := lw.Sends()
		var sum int64
		ok := true
		for _, r := range sends {
			sum += r.Delta
			if now.Sub(r.At) >= s.cfg.CancelWindow {
				ok = false
			}
		}
		if !ok || sum != lw.Stripe {
			status = "overbilled"
		} else {
			after := lw.Stripe
			for _, r := range sends {
				after -= r.Delta
				j.intents = append(j.intents, s.row(j, m, audit.Cancel, next(), after, -r.Delta, r.Identifier, audit.Pending, ""))
			}
			if j.w.units > 0 {
				sq := next()
				j.intents = append(j.intents, s.row(j, m, audit.Send, sq, j.w.units, j.w.units, IntentID(m.Mode+"/send", j.w.key, sq), audit.Pending, ""))
			}
			return
		}
	}
	if status != "" {
		d := s.drift(j, status)
		rep.Unfixable = append(rep.Unfixable, d)
		if u := lw.LastUnfixable(); u == nil || u.Ours != j.w.units || u.Stripe != lw.Stripe {
			j.intents = append(j.intents, s.row(j, m, audit.Unfixable, next(), lw.Stripe, 0, "", audit.OK,
				fmt.Sprintf("%s: ours %d, Stripe %d", status, j.w.units, lw.Stripe)))
		}
		return
	}
	sq := next()
	if m.Mode == MeterEvents {
		j.intents = append(j.intents, s.row(j, m, audit.Send, sq, j.w.units, delta, IntentID(m.Mode+"/send", j.w.key, sq), audit.Pending, ""))
	} else {
		j.intents = append(j.intents, s.row(j, m, audit.Set, sq, j.w.units, delta, "", audit.Pending, ""))
	}
}

func (s *Syncer) drift(j *job, status string) Drift {
	return Drift{Tenant: j.w.key.Tenant, Meter: j.w.key.Meter, Start: j.w.start, End: j.w.end, Ours: j.w.units, Stripe: j.ledger.Stripe, Status: status}
}

// lookupCustomers lists Stripe's customers by metadata tenant_id once (until
// the next pass) and adds those not configured. The caller holds s.mu.
func (s *Syncer) lookupCustomers(ctx context.Context) error {
	found, err := s.stripe.CustomersByTenant(ctx)
	if err != nil {
		return fmt.Errorf("look up customers by metadata tenant_id: %w", err)
	}
	s.looked = true
	for t, c := range found {
		if _, configured := s.customers[t]; !configured {
			s.customers[t] = c
		}
	}
	return nil
}

// TenantOf maps a Stripe customer back to its tenant (webhooks), from the
// configured and looked-up customers.
func (s *Syncer) TenantOf(ctx context.Context, customerID string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.looked && s.cfg.LookupCustomers {
		_ = s.lookupCustomers(ctx) // a failed look-up only means "unknown customer"
	}
	for t, c := range s.customers {
		if c == customerID {
			return t, true
		}
	}
	return "", false
}
