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
	"strings"
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
	CustomersForTenant(ctx context.Context, tenant string) ([]string, error)
	SubscriptionItemFor(ctx context.Context, customer, priceID string) (string, error)
	AllSubscriptions(ctx context.Context) (map[string][]stripeapi.Subscription, error)
	FinalizedInvoices(ctx context.Context, customer string) ([]stripeapi.Invoice, error)
	Meter(ctx context.Context, id string) (stripeapi.MeterSettings, error)
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

	mu          sync.Mutex
	customers   map[string]string // tenant -> customer, from config and look-ups
	looked      bool
	items       map[string]string                   // tenant/meter -> subscription item
	subs        map[string][]stripeapi.Subscription // customer -> subscriptions (periods.go)
	subsAt      time.Time
	subsLooked  bool             // listed during this pass
	subsErr     error            // the listing failed during this pass
	subsDropped bool             // a write found an item gone this pass: re-list next pass, not now
	found       map[string]found // tenant -> customer search (customer_ttl)
	passStart   time.Time
	fence       Fence
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

// WithClock sets the syncer's clock (scenario tests move it by months;
// pair it with stripefake.Clock).
func WithClock(now func() time.Time) Option {
	return func(s *Syncer) { s.now = now }
}

// WithRegisterer registers the metrics.
func WithRegisterer(r prometheus.Registerer) Option {
	return func(s *Syncer) { s.m.register(r) }
}

// New returns a Syncer; cfg must be normalized.
func New(cfg Config, p *plans.Config, src Source, ledger Ledger, st Stripe, log *zap.Logger, opts ...Option) *Syncer {
	s := &Syncer{cfg: cfg, plans: p, src: src, ledger: ledger, stripe: st, log: log, now: time.Now, m: newMetrics(),
		customers: map[string]string{}, items: map[string]string{}, found: map[string]found{}}
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
	// NoSubscription lists tenant/meter pairs with usage that no
	// subscription item on the meter's price invoices (Stripe would record
	// meter events for them and charge nobody): not billed, reported.
	NoSubscription []string
	// LookupErrors lists tenant/meter pairs skipped because a Stripe
	// look-up failed (retried next pass; the others were billed).
	LookupErrors []string
	// Ambiguous lists tenants refused because more than one Stripe
	// customer carries their tenant_id ("tenant/meter: cus_a, cus_b").
	Ambiguous []string
	// Refused counts windows left alone because Stripe refused their last
	// write for good and neither our value nor the target has changed.
	Refused   int
	Unfixable []Drift
	Planned   []audit.Row // dry run: what would be written
}

// Drift is one window where ours and Stripe's differ.
type Drift struct {
	Tenant, Meter string
	Start, End    time.Time
	Ours, Stripe  int64
	Status        string // fixable, unsettled, past_grace, too_old, overbilled, invoice_finalized, invoiced_differs, unmapped, no_subscription, aggregates_differ
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
	s.looked, s.subsLooked, s.subsErr, s.subsDropped = false, false, nil, false
	s.passStart = s.now()
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
		zap.Int("unfixable", len(rep.Unfixable)), zap.Int("refused", rep.Refused), zap.Int("lookup_errors", len(rep.LookupErrors)),
		zap.Int("ambiguous", len(rep.Ambiguous)), zap.Duration("took", time.Since(start)))
	return rep, nil
}

// tenantRun is one tenant's windows of a meter and where they bill.
type tenantRun struct {
	tenant    string
	tgt       target
	status    string               // "" (billed), unmapped, no_subscription
	ws        []window             // windows in the subscription's periods
	all       []window             // meter_events: every window read, also before from (checkpoints)
	uncovered []window             // usage no subscription item invoices
	atEdge    []audit.PeriodTotals // usage_records: each period's state at the checkpoint edge
	err       error                // lookup_error: why
}

// ours computes each tenant's windows of one meter starting in [from, to),
// closed before now - close_after, in the tenant's Stripe periods; reads
// from far enough back to carry remainders from the start of each period.
// Windows the ledger holds but we no longer have (usage removed) are
// included with 0 units.
func (s *Syncer) ours(ctx context.Context, name string, m Meter, from, to time.Time, ledger map[audit.WindowKey]*audit.Window, inc *incremental) ([]*tenantRun, error) {
	pm := s.plansMeter(name)
	// Period windows need their hours up to the closed edge. The hour
	// being closed is read too: its piece before a period boundary closes
	// at the boundary + close_after, in time for the invoice (pieces()
	// drops what is not closed).
	closed := s.now().Add(-s.cfg.CloseAfter).Truncate(time.Hour).Add(time.Hour)
	readTo := to.Add(32 * 24 * time.Hour)
	if closed.Before(readTo) {
		readTo = closed
	}
	// From the start of the periods open at the edge (a period total
	// needs no more), or from the checkpoint's edge (what came before is
	// in it).
	readFrom := s.periodFloor(ctx, m, edgeOf(from))
	if inc != nil {
		readFrom = inc.edge
	}
	hours, err := s.src.Hours(ctx, name, pm, readFrom, readTo)
	if err != nil {
		return nil, err
	}
	byTenant := map[string][]usage.Hour{}
	var tenants []string
	for _, h := range hours { // ordered by tenant, hour
		if _, ok := byTenant[h.Tenant]; !ok {
			tenants = append(tenants, h.Tenant)
		}
		byTenant[h.Tenant] = append(byTenant[h.Tenant], h)
	}
	if inc != nil { // a period whose state is in the checkpoint only
		for tenant := range inc.pre {
			if _, ok := byTenant[tenant]; !ok && tenant != "" {
				byTenant[tenant] = nil
				tenants = append(tenants, tenant)
			}
		}
	}
	ledgerOf := map[string][]audit.WindowKey{} // the ledger's windows still in range, by tenant
	for k, lw := range ledger {
		// Out of range, a window with an open intent is still re-sent or
		// resolved: left alone, its intent would stay open for good.
		if len(lw.Intents) == 0 || !lw.Intents[0].First.WindowEnd.After(from) && !hasOpen(lw) {
			continue
		}
		ledgerOf[k.Tenant] = append(ledgerOf[k.Tenant], k)
		if _, ok := byTenant[k.Tenant]; !ok {
			byTenant[k.Tenant] = nil
			tenants = append(tenants, k.Tenant)
		}
	}
	sort.Strings(tenants)
	inRange := func(ws []window) []window {
		out := ws[:0]
		for _, w := range ws {
			if w.end.After(from) && w.start.Before(to) || hasOpen(ledger[w.key]) { // a period overlapping the range counts
				out = append(out, w)
			}
		}
		return out
	}
	var runs []*tenantRun
	for _, tenant := range tenants {
		tgt, status, err := s.resolve(ctx, tenant, name, m)
		run := &tenantRun{tenant: tenant, tgt: tgt, status: status}
		runs = append(runs, run)
		if err != nil {
			// One tenant's failed look-up never stops the others.
			run.status, run.err = "lookup_error", err
			continue
		}
		if status != "" {
			for _, h := range byTenant[tenant] {
				if h.Start.Add(time.Hour).After(s.now().Add(-s.cfg.CloseAfter)) {
					continue // not closed
				}
				run.uncovered = append(run.uncovered, window{key: audit.WindowKey{Tenant: tenant, Meter: name, Start: h.Start.Unix()},
					start: h.Start, end: h.Start.Add(time.Hour), quantity: h.Value, units: h.Value.Mul(m.scale).Floor().IntPart()})
			}
			run.uncovered = inRange(run.uncovered)
			continue
		}
		ps, err := s.pieces(ctx, name, pm, byTenant[tenant], tgt.cov)
		if err != nil {
			return nil, err
		}
		if m.Mode == MeterEvents {
			run.ws, run.uncovered = s.hourWindows(ps, m, tgt.cov, ledger, inc.of(tenant))
			run.all = append([]window(nil), run.ws...)
		} else {
			run.ws, run.uncovered, run.atEdge = periodWindows(name, ps, pm.Aggregation, m, tgt.cov, inc.of(tenant), edgeOf(from))
		}
		run.ws, run.uncovered = inRange(run.ws), inRange(run.uncovered)
		have := map[audit.WindowKey]bool{}
		for _, w := range run.ws {
			have[w.key] = true
		}
		for _, k := range ledgerOf[tenant] {
			lw := ledger[k]
			if have[k] {
				continue
			}
			st := time.Unix(k.Start, 0).UTC()
			w := window{key: k, start: st, end: lw.Intents[0].First.WindowEnd}
			w.per, _ = tgt.cov.at(st)
			run.ws = append(run.ws, w)
		}
		sort.Slice(run.ws, func(i, j int) bool { return run.ws[i].start.Before(run.ws[j].start) })
	}
	return runs, nil
}

// target is where a tenant's meter is billed.
type target struct {
	customer string
	item     string   // usage_records: the window's item (job), from cov
	cov      coverage // the subscriptions with an item on the meter
}

// resolve finds the tenant's customer and the subscriptions that invoice
// the meter; status is "" when billable, else unmapped (no customer) or
// no_subscription (no billable subscription item on the meter's price).
func (s *Syncer) resolve(ctx context.Context, tenant, meter string, m Meter) (target, string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cus, ok := s.customers[tenant]
	if !ok && s.cfg.LookupCustomers {
		var err error
		if cus, ok, err = s.searchCustomer(ctx, tenant); err != nil {
			return target{}, "", err
		}
		if strings.HasPrefix(cus, "ambiguous_customer") {
			return target{}, cus, nil
		}
	}
	if !ok {
		return target{}, "unmapped", nil
	}
	subs, err := s.subscriptionsOf(ctx, cus)
	if err != nil {
		return target{}, "", fmt.Errorf("subscriptions of %s: %w", cus, err)
	}
	t := target{customer: cus, cov: coverageOf(subs, m)}
	if item, ok := s.items[tenant+"/"+meter]; ok && !t.cov.empty() {
		for i := range t.cov.items { // configured: this item, in the subscriptions' periods
			t.cov.items[i] = item
		}
	}
	if t.cov.empty() {
		return t, "no_subscription", nil
	}
	return t, "", nil
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
	inc, err := s.incremental(ctx, name, m, from, reconcile)
	if err != nil {
		return err
	}
	// The ledger's windows of the periods open at the edge; a checkpoint
	// holds meter_events windows before its edge (a usage_records period
	// is one window keyed by its start: read from the periods' starts).
	lf := s.periodFloor(ctx, m, edgeOf(from))
	switch {
	case inc != nil && m.Mode == MeterEvents:
		lf = inc.edge
	case inc != nil:
		lf = s.periodFloor(ctx, m, inc.edge)
	}
	ledger, err := s.ledger.Load(ctx, name, lf, to)
	if err != nil {
		return err
	}
	runs, err := s.ours(ctx, name, m, from, to, ledger, inc)
	if err != nil {
		return err
	}
	if err := s.checkpoint(ctx, name, m, from, runs, ledger, inc, rep.PassID); err != nil {
		return err
	}
	// One group per tenant (one customer, one meter: one in-flight call).
	var groups [][]*job
	for _, run := range runs {
		tenant := run.tenant
		switch {
		case run.status == "lookup_error":
			rep.LookupErrors = append(rep.LookupErrors, tenant+"/"+name)
			s.m.lookupErrors.Inc()
			s.log.Warn("Stripe look-up failed: tenant skipped this pass", zap.String("tenant", tenant), zap.String("meter", name), zap.Error(run.err))
			continue
		case strings.HasPrefix(run.status, "ambiguous_customer"):
			rep.Ambiguous = append(rep.Ambiguous, tenant+"/"+name+": "+strings.TrimPrefix(run.status, "ambiguous_customer: "))
			s.log.Error("more than one Stripe customer has this tenant_id: tenant refused, not billed", zap.String("tenant", tenant),
				zap.String("meter", name), zap.String("customers", strings.TrimPrefix(run.status, "ambiguous_customer: ")))
			continue
		case run.status == "unmapped":
			rep.Unmapped = append(rep.Unmapped, tenant+"/"+name)
			s.log.Warn("tenant has no Stripe customer: not billed", zap.String("tenant", tenant), zap.String("meter", name))
			continue
		case run.status == "no_subscription" || sumUnits(run.uncovered) > 0:
			rep.NoSubscription = append(rep.NoSubscription, tenant+"/"+name)
			s.log.Warn("usage that no subscription item on the meter's price invoices: not billed", zap.String("tenant", tenant),
				zap.String("meter", name), zap.Int64("units", sumUnits(run.uncovered)))
			if run.status != "" {
				continue
			}
		}
		tgt := run.tgt
		var stripeVals map[int64]int64
		if reconcile {
			if stripeVals, err = s.stripeValues(ctx, m, tgt, run.ws, from, to); err != nil {
				return err
			}
			if m.Mode == MeterEvents {
				splitHours(stripeVals, run.ws, ledger)
			}
		}
		var group []*job
		for _, w := range run.ws {
			rep.Windows++
			lw := ledger[w.key]
			if lw == nil {
				lw = &audit.Window{}
			}
			jt := tgt
			jt.item = w.per.item
			j := &job{w: w, tgt: jt, ledger: lw}
			// A window outside [from, to) is here for its open intent
			// only: Stripe's values were not read for it.
			inside := w.end.After(from) && w.start.Before(to)
			if reconcile && inside && !s.observe(j, m, stripeVals, now, rep) {
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
	s.m.noSubscription.Set(float64(len(rep.NoSubscription)))
	s.m.refusedWindows.Set(float64(rep.Refused))
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
	byItem := map[string][]stripeapi.UsageSummary{}
	for _, w := range ws {
		sums, ok := byItem[w.per.item]
		if !ok && w.per.item != "" {
			var err error
			if sums, err = s.stripe.UsageSummaries(ctx, w.per.item); err != nil {
				return nil, err
			}
			byItem[w.per.item] = sums
		}
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
	target := m.EventName
	if m.Mode == UsageRecords {
		target = j.tgt.item
	}
	if r := lw.LastRefused(); r != nil && r.Ours == j.w.units && r.Customer == j.tgt.customer && r.Target == target {
		// Stripe refused this very write for good: sending it again
		// would be refused again. A new value or target re-plans it.
		rep.Refused++
		rep.Unfixable = append(rep.Unfixable, s.drift(j, "refused"))
		return
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
	case !j.w.per.end.IsZero() && !now.Before(j.w.per.end.Add(s.cfg.UsageRecordClose)):
		// The period's invoice is finalized: Stripe would take a meter
		// event (35 days back) but never invoice it, and refuses a usage
		// record. Policy: reported, never sent (README).
		status = "invoice_finalized"
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

// found is a customer search's answer for one tenant.
type found struct {
	customers []string
	at        time.Time
}

// searchCustomer finds the tenant's customer by search (metadata
// tenant_id): one call per tenant, trusted for customer_ttl; a tenant not
// found is searched again at most once per pass. Two customers with one
// tenant_id return "ambiguous_customer: ..." (the tenant is refused: billing
// either could be wrong). The caller holds s.mu.
func (s *Syncer) searchCustomer(ctx context.Context, tenant string) (string, bool, error) {
	f, ok := s.found[tenant]
	fresh := ok && (len(f.customers) > 0 && s.now().Sub(f.at) < s.cfg.CustomerTTL || len(f.customers) == 0 && !f.at.Before(s.passStart))
	if !fresh {
		cs, err := s.stripe.CustomersForTenant(ctx, tenant)
		if err != nil {
			return "", false, fmt.Errorf("search the customer of tenant %q: %w", tenant, err)
		}
		f = found{customers: cs, at: s.now()}
		s.found[tenant] = f
	}
	switch len(f.customers) {
	case 0:
		return "", false, nil
	case 1:
		return f.customers[0], true, nil
	}
	return "ambiguous_customer: " + strings.Join(f.customers, ", "), true, nil
}

// forgetSubscriptions drops the subscription cache (a write found an item
// gone): the next look-up re-lists.
func (s *Syncer) forgetSubscriptions() {
	s.mu.Lock()
	s.subs, s.subsDropped = nil, true
	s.mu.Unlock()
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
