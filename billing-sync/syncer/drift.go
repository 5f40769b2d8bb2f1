package syncer

import (
	"context"
	"fmt"
	"io"
	"sort"
	"time"

	"github.com/usagemeter/usagemeter/billing-sync/audit"
	"github.com/usagemeter/usagemeter/billing-sync/usage"
)

// aggregated is the optional cross-check source (usage.Store).
type aggregated interface {
	AggregatedHours(ctx context.Context, meter string, from, to time.Time) ([]usage.Hour, error)
}

// Drift compares ours with what Stripe holds for every window starting in
// [from, to) and returns the differences, each with why it exists and
// whether a pass can still fix it. It writes nothing. It also lists the
// hours where the aggregator's usage_1h disagrees with the raw table
// (status aggregates_differ: run usage-aggregator reconcile).
func (s *Syncer) Drift(ctx context.Context, from, to time.Time) ([]Drift, error) {
	now := s.now()
	var out []Drift
	for name, m := range s.cfg.Meters {
		ledger, err := s.ledger.Load(ctx, name, s.periodFloor(ctx, m, edgeOf(from)), to)
		if err != nil {
			return nil, err
		}
		runs, err := s.ours(ctx, name, m, from, to, ledger, nil) // a full read: drift sees every late event
		if err != nil {
			return nil, err
		}
		for _, run := range runs {
			tenant, tws := run.tenant, run.ws
			if u := sumUnits(run.uncovered); run.status != "" || u > 0 {
				st := run.status
				if st == "" {
					st = "no_subscription"
				}
				out = append(out, Drift{Tenant: tenant, Meter: name, Start: from, End: to, Ours: u, Status: st})
			}
			if run.status != "" {
				continue
			}
			tgt := run.tgt
			vals, err := s.stripeValues(ctx, m, tgt, tws, from, to)
			if err != nil {
				return nil, err
			}
			if m.Mode == MeterEvents {
				splitHours(vals, tws, ledger)
			}
			seen := map[int64]bool{}
			for _, w := range tws {
				seen[w.key.Start] = true
				if d, differs := s.classify(w, vals[w.key.Start], ledger[w.key], m, now); differs {
					out = append(out, d)
				}
			}
			for start, v := range vals { // on Stripe, not ours
				st := time.Unix(start, 0).UTC()
				if seen[start] || v == 0 || st.Before(from) || !st.Before(to) {
					continue
				}
				w := window{key: audit.WindowKey{Tenant: tenant, Meter: name, Start: start}, start: st, end: st.Add(time.Hour)}
				w.per, _ = tgt.cov.at(st)
				if d, differs := s.classify(w, v, ledger[w.key], m, now); differs {
					out = append(out, d)
				}
			}
			inv, err := s.invoiced(ctx, name, m, tgt, tws, from, to)
			if err != nil {
				return nil, err
			}
			out = append(out, inv...)
		}
		if agg, ok := s.src.(aggregated); ok && m.Mode == MeterEvents && s.cfg.CheckAggregates {
			diffs, err := s.aggregatesDiffer(ctx, agg, name, m, from, to)
			if err != nil {
				return nil, err
			}
			out = append(out, diffs...)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Tenant != b.Tenant {
			return a.Tenant < b.Tenant
		}
		if a.Meter != b.Meter {
			return a.Meter < b.Meter
		}
		if !a.Start.Equal(b.Start) {
			return a.Start.Before(b.Start)
		}
		return a.Status < b.Status
	})
	counts := map[string]int{}
	for _, d := range out {
		counts[d.Status]++
	}
	s.m.drift.Reset()
	for st, n := range counts {
		s.m.drift.WithLabelValues(st).Set(float64(n))
	}
	return out, nil
}

func (s *Syncer) classify(w window, stripe int64, lw *audit.Window, m Meter, now time.Time) (Drift, bool) {
	d := Drift{Tenant: w.key.Tenant, Meter: w.key.Meter, Start: w.start, End: w.end, Ours: w.units, Stripe: stripe}
	if stripe == w.units {
		return d, false
	}
	if lw == nil {
		lw = &audit.Window{}
	}
	cancellable := true
	for _, r := range lw.Sends() {
		if now.Sub(r.At) >= s.cfg.CancelWindow {
			cancellable = false
		}
	}
	switch {
	case len(lw.Pending()) > 0 || !lw.LastWrite.IsZero() && now.Sub(lw.LastWrite) < s.cfg.Settle:
		d.Status = "unsettled"
	case w.end.Before(now.Add(-s.cfg.Grace)):
		d.Status = "past_grace"
	case m.Mode == MeterEvents && w.start.Before(now.Add(-s.cfg.MaxAge)):
		d.Status = "too_old"
	case !w.per.end.IsZero() && !now.Before(w.per.end.Add(s.cfg.UsageRecordClose)):
		d.Status = "invoice_finalized"
	case m.Mode == MeterEvents && stripe > w.units && !cancellable:
		d.Status = "overbilled"
	case m.Mode == MeterEvents && w.end.After(now.Add(-s.cfg.CloseAfter)):
		d.Status = "open"
	default:
		d.Status = "fixable"
	}
	return d, true
}

// splitHours divides Stripe's hourly value of an hour cut by a period
// boundary between its two pieces: Stripe's hourly summaries cannot tell
// them apart (anchors are at any second), so the earlier piece is taken
// to hold what the ledger says (at most the hour's value) and the later
// one the rest; a difference is attributed to the later piece.
func splitHours(vals map[int64]int64, ws []window, ledger map[audit.WindowKey]*audit.Window) {
	for _, w := range ws {
		hour := w.start.Truncate(time.Hour)
		if hour.Equal(w.start) {
			continue
		}
		var first int64
		if lw := ledger[audit.WindowKey{Tenant: w.key.Tenant, Meter: w.key.Meter, Start: hour.Unix()}]; lw != nil {
			first = lw.Stripe
		}
		total := vals[hour.Unix()]
		vals[hour.Unix()] = min(first, total)
		vals[w.key.Start] = total - vals[hour.Unix()]
	}
}

// invoiced compares each closed period (its invoice finalized) with what
// that invoice actually charged on the meter's items: a meter's summary
// counts every event, also one sent after finalization that no invoice
// will ever charge, so only the invoice says what was billed. A period
// whose invoice charged other than ours is invoiced_differs (Ours: our
// period total, Stripe: the invoice's quantity).
func (s *Syncer) invoiced(ctx context.Context, name string, m Meter, tgt target, ws []window, from, to time.Time) ([]Drift, error) {
	ours := map[period]int64{}
	for _, w := range ws {
		// Only periods wholly in [from, to): ws holds only the windows in it.
		if !w.per.end.IsZero() && !w.per.start.Before(from) && !w.per.end.After(to) {
			ours[w.per] += w.units
		}
	}
	if len(ours) == 0 {
		return nil, nil
	}
	invs, err := s.stripe.FinalizedInvoices(ctx, tgt.customer)
	if err != nil {
		return nil, fmt.Errorf("invoices of %s: %w", tgt.customer, err)
	}
	var out []Drift
	for per, units := range ours {
		for _, in := range invs {
			if in.Subscription != per.sub || !in.PeriodStart.Equal(per.start) || !in.PeriodEnd.Equal(per.end) {
				continue
			}
			var charged int64
			for _, l := range in.Lines {
				if l.Item == per.item {
					charged += l.Quantity
				}
			}
			if charged != units {
				out = append(out, Drift{Tenant: ws[0].key.Tenant, Meter: name, Start: per.start, End: per.end, Ours: units, Stripe: charged,
					Status: "invoiced_differs"})
			}
		}
	}
	return out, nil
}

func (s *Syncer) aggregatesDiffer(ctx context.Context, agg aggregated, name string, m Meter, from, to time.Time) ([]Drift, error) {
	closed := s.now().Add(-s.cfg.CloseAfter).Truncate(time.Hour)
	if closed.Before(to) {
		to = closed
	}
	raw, err := s.src.Hours(ctx, name, s.plansMeter(name), from, to)
	if err != nil {
		return nil, err
	}
	hourly, err := agg.AggregatedHours(ctx, name, from, to)
	if err != nil {
		return nil, err
	}
	type key struct {
		tenant string
		start  int64
	}
	vals := map[key][2]string{}
	for _, h := range raw {
		k := key{h.Tenant, h.Start.Unix()}
		v := vals[k]
		v[0] = h.Value.String()
		vals[k] = v
	}
	for _, h := range hourly {
		k := key{h.Tenant, h.Start.Unix()}
		v := vals[k]
		v[1] = h.Value.String()
		vals[k] = v
	}
	var out []Drift
	for k, v := range vals {
		if v[0] != v[1] {
			st := time.Unix(k.start, 0).UTC()
			out = append(out, Drift{Tenant: k.tenant, Meter: name, Start: st, End: st.Add(time.Hour), Status: "aggregates_differ",
				Ours: unitsOf(v[0], m), Stripe: unitsOf(v[1], m)})
		}
	}
	return out, nil
}

// PrintDrift writes the differences as a table.
func PrintDrift(w io.Writer, ds []Drift) {
	if len(ds) == 0 {
		fmt.Fprintln(w, "no drift: every window matches Stripe")
		return
	}
	fmt.Fprintf(w, "%-24s %-16s %-20s %-20s %12s %12s %12s  %s\n", "TENANT", "METER", "WINDOW_START", "WINDOW_END", "OURS", "STRIPE", "DIFF", "STATUS")
	for _, d := range ds {
		fmt.Fprintf(w, "%-24s %-16s %-20s %-20s %12d %12d %12d  %s\n", d.Tenant, d.Meter, d.Start.Format(time.RFC3339), d.End.Format(time.RFC3339),
			d.Ours, d.Stripe, d.Ours-d.Stripe, d.Status)
	}
}
