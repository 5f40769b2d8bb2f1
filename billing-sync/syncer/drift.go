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
		ws, err := s.ours(ctx, name, m, from, to)
		if err != nil {
			return nil, err
		}
		ledger, err := s.ledger.Load(ctx, name, ledgerFrom(from), to)
		if err != nil {
			return nil, err
		}
		byTenant := map[string][]window{}
		for _, w := range ws {
			byTenant[w.key.Tenant] = append(byTenant[w.key.Tenant], w)
		}
		for k, lw := range ledger { // tenants billed before whose usage is gone
			if byTenant[k.Tenant] == nil && len(lw.Intents) > 0 && lw.Intents[0].First.WindowEnd.After(from) {
				byTenant[k.Tenant] = []window{}
			}
		}
		for tenant, tws := range byTenant {
			tgt, ok, err := s.resolve(ctx, tenant, name, m)
			if err != nil {
				return nil, err
			}
			if !ok {
				var units int64
				for _, w := range tws {
					units += w.units
				}
				out = append(out, Drift{Tenant: tenant, Meter: name, Start: from, End: to, Ours: units, Status: "unmapped"})
				continue
			}
			vals, err := s.stripeValues(ctx, m, tgt, tws, from, to)
			if err != nil {
				return nil, err
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
				if d, differs := s.classify(w, v, ledger[w.key], m, now); differs {
					out = append(out, d)
				}
			}
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
	case m.Mode == UsageRecords && now.After(w.end.Add(s.cfg.UsageRecordClose)):
		d.Status = "period_closed"
	case m.Mode == MeterEvents && stripe > w.units && !cancellable:
		d.Status = "overbilled"
	case m.Mode == MeterEvents && w.end.After(now.Add(-s.cfg.CloseAfter)):
		d.Status = "open"
	default:
		d.Status = "fixable"
	}
	return d, true
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
