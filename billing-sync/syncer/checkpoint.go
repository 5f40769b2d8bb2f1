package syncer

import (
	"context"
	"time"

	"github.com/shopspring/decimal"
	"go.uber.org/zap"

	"github.com/usagemeter/usagemeter/billing-sync/audit"
	"github.com/usagemeter/usagemeter/schemas/plans"
)

// Checkpoints (issue 12 item 8): a `run` pass reads raw hours only from
// the newest checkpoint edge (at most two days before its grace), not 32
// days back, in both modes: a checkpoint holds, per tenant and Stripe
// period, the state of the period up to the edge. meter_events: the
// running total and what the ledger says Stripe holds for the windows
// before the edge (ledger rows are read from the edge too). usage_records:
// the period's aggregate so far (sum, max, or latest with its event
// time); the period's own ledger window is read from the start of the
// periods open at the edge (one window per period, rows per write).
// Each pass writes one at the day edge before its grace once per day
// (carrying forward every period it knows), so the raw rows a pass reads
// stay those of the last few days however old the period is. Without a
// checkpoint (first pass, a gap of more than two days, a ledger that
// cannot keep them, a unique_count meter whose set of subjects is not
// kept) a pass reads from the start of the periods open at its edge.
// reconcile and drift read from the start of the Stripe periods open at
// their range's edge (what a period total needs), never 32 days blindly;
// reconcile rewrites the checkpoint (the newest row wins). Known limit:
// an event older than the edge reaching the raw table later is seen by
// reconcile and drift, not by `run`.

// checkpointer is the ledger's checkpoint store (audit.Store).
type checkpointer interface {
	Checkpoints(ctx context.Context, meter string, from, to time.Time) (time.Time, map[string]map[int64]audit.PeriodTotals, error)
	Write(ctx context.Context, rows []audit.Row) error
}

// incremental is where a pass starts reading, and the totals before it.
type incremental struct {
	edge time.Time
	pre  map[string]map[int64]audit.PeriodTotals
}

func (inc *incremental) of(tenant string) map[int64]audit.PeriodTotals {
	if inc == nil {
		return nil
	}
	return inc.pre[tenant]
}

// checkpointed: meters whose period state fits a checkpoint row (a
// unique_count meter's set of subjects does not).
func checkpointed(m Meter, pm plans.Meter) bool {
	return m.Mode == MeterEvents || pm.Aggregation != plans.UniqueCount
}

// edgeOf is the checkpoint edge of a pass over windows from `from`: the
// UTC day start before it (windows before it are past the grace).
func edgeOf(from time.Time) time.Time { return from.UTC().Truncate(24 * time.Hour) }

// incremental finds the newest checkpoint within two days before the
// pass's edge; nil means read everything.
func (s *Syncer) incremental(ctx context.Context, name string, m Meter, from time.Time, reconcile bool) (*incremental, error) {
	cp, ok := s.ledger.(checkpointer)
	if !ok || reconcile || !checkpointed(m, s.plansMeter(name)) {
		return nil, nil
	}
	e := edgeOf(from)
	edge, pre, err := cp.Checkpoints(ctx, name, e.Add(-48*time.Hour), e)
	if err != nil || edge.IsZero() {
		return nil, err
	}
	return &incremental{edge: edge, pre: pre}, nil
}

// checkpoint writes the totals at the pass's edge when it is newer than
// the one read (or the pass read everything): per tenant and period that
// began before the edge and ends after it.
func (s *Syncer) checkpoint(ctx context.Context, name string, m Meter, from time.Time, runs []*tenantRun, ledger map[audit.WindowKey]*audit.Window,
	inc *incremental, passID string) error {
	cp, ok := s.ledger.(checkpointer)
	e := edgeOf(from)
	if !ok || s.cfg.DryRun || !checkpointed(m, s.plansMeter(name)) || inc != nil && !e.After(inc.edge) {
		return nil
	}
	// The edge stays while a window before it has an open intent: its
	// outcome is settled by this pass's or a later one's re-send, after
	// the checkpoint is written, so Held would leave it out, and the next
	// pass, reading the ledger from the edge, would not see the intent
	// and would bill its units again in a later window.
	for k, lw := range ledger {
		if k.Start < e.Unix() && hasOpen(lw) {
			s.m.edgeHeld.Inc()
			s.log.Info("checkpoint edge kept: a window before it has an open intent", zap.String("meter", name),
				zap.String("tenant", k.Tenant), zap.Time("window", time.Unix(k.Start, 0).UTC()), zap.Time("edge", e))
			return nil
		}
	}
	totals := map[string]map[int64]audit.PeriodTotals{}
	add := func(t audit.PeriodTotals) {
		if !t.PeriodStart.Before(e) || !t.PeriodEnd.After(e) {
			return
		}
		if totals[t.Tenant] == nil {
			totals[t.Tenant] = map[int64]audit.PeriodTotals{}
		}
		k := t.PeriodStart.Unix()
		cur, ok := totals[t.Tenant][k]
		if !ok {
			cur = audit.PeriodTotals{Tenant: t.Tenant, PeriodStart: t.PeriodStart, PeriodEnd: t.PeriodEnd, Quantity: decimal.Zero}
		}
		cur.Quantity, cur.Held = cur.Quantity.Add(t.Quantity), cur.Held+t.Held
		totals[t.Tenant][k] = cur
	}
	computed := map[string]bool{} // usage_records: tenants whose state at e this pass computed
	for _, run := range runs {
		for _, t := range run.atEdge {
			computed[run.tenant] = true
			if t.PeriodStart.Before(e) && t.PeriodEnd.After(e) {
				if totals[t.Tenant] == nil {
					totals[t.Tenant] = map[int64]audit.PeriodTotals{}
				}
				totals[t.Tenant][t.PeriodStart.Unix()] = t
			}
		}
	}
	if inc != nil {
		for tenant, byPeriod := range inc.pre {
			if computed[tenant] { // already includes the older checkpoint
				continue
			}
			for _, t := range byPeriod {
				add(t)
			}
		}
	}
	for _, run := range runs {
		for _, w := range run.all {
			if w.per.end.IsZero() || !w.start.Before(e) {
				continue
			}
			var held int64
			if lw := ledger[w.key]; lw != nil {
				held = lw.Stripe
			}
			add(audit.PeriodTotals{Tenant: run.tenant, PeriodStart: w.per.start, PeriodEnd: w.per.end, Quantity: w.quantity, Held: held})
		}
	}
	var rows []audit.Row
	for _, byPeriod := range totals {
		for _, t := range byPeriod {
			rows = append(rows, audit.CheckpointRow(name, m.Mode, passID, e, t))
		}
	}
	if len(rows) == 0 {
		// An empty edge still marks where the next pass may start.
		rows = append(rows, audit.CheckpointRow(name, m.Mode, passID, e, audit.PeriodTotals{Quantity: decimal.Zero}))
	}
	return cp.Write(ctx, rows)
}
