package syncer

import (
	"context"
	"time"

	"github.com/shopspring/decimal"

	"github.com/usagemeter/usagemeter/billing-sync/audit"
)

// Checkpoints (issue 12 item 8): a `run` pass of a meter_events meter
// reads raw hours and ledger rows only from the newest checkpoint edge
// (at most two days before its grace), not 32 days back: a checkpoint
// holds, per tenant and Stripe period, the running total of the period
// up to the edge and what the ledger says Stripe holds for the windows
// before it. Each pass writes one at the day edge before its grace once
// per day (carrying forward every period it knows), so the cost of a
// pass stays that of the last few days however old the period is.
// Without a checkpoint (first pass, a gap of more than two days, a
// ledger that cannot keep them) a pass reads everything and writes one.
// reconcile and drift always read everything; reconcile rewrites the
// checkpoint (the newest row wins). Known limit: an event older than
// the edge reaching the raw table later is seen by reconcile and drift,
// not by `run`.

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

// edgeOf is the checkpoint edge of a pass over windows from `from`: the
// UTC day start before it (windows before it are past the grace).
func edgeOf(from time.Time) time.Time { return from.UTC().Truncate(24 * time.Hour) }

// incremental finds the newest checkpoint within two days before the
// pass's edge; nil means read everything.
func (s *Syncer) incremental(ctx context.Context, name string, m Meter, from time.Time, reconcile bool) (*incremental, error) {
	cp, ok := s.ledger.(checkpointer)
	if !ok || reconcile || m.Mode != MeterEvents {
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
	if !ok || s.cfg.DryRun || m.Mode != MeterEvents || inc != nil && !e.After(inc.edge) {
		return nil
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
	if inc != nil {
		for _, byPeriod := range inc.pre {
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
