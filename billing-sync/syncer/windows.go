package syncer

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"sort"
	"strconv"
	"time"

	"github.com/shopspring/decimal"

	"github.com/usagemeter/usagemeter/billing-sync/audit"
	"github.com/usagemeter/usagemeter/billing-sync/usage"
	"github.com/usagemeter/usagemeter/schemas/plans"
)

// window is what we bill for one tenant, meter and window: an hour, or
// the piece of an hour on one side of a period boundary (meter_events),
// or a billing period (usage_records). Periods are the subscription's
// (Stripe's current_period_start/end and its anchor), never the plans
// file's.
type window struct {
	key        audit.WindowKey
	start, end time.Time
	quantity   decimal.Decimal // the window's value in the meter's unit
	units      int64           // billing units (after scale and carry)
	per        period          // the Stripe period the window bills into
}

// piece is an hour, or part of one cut by a period boundary.
type piece struct {
	usage.Hour
	end time.Time
}

// ranger reads one tenant's usage over any range (usage.Store): an hour
// that a period boundary cuts (anchors are at any second) is billed as
// two pieces. A Source without it bills the whole hour in the period of
// its start.
type ranger interface {
	Range(ctx context.Context, meter string, m plans.Meter, tenant string, from, to time.Time) (usage.Hour, error)
}

// pieces cuts the hours (one tenant's, in order) at the period
// boundaries of cov.
func (s *Syncer) pieces(ctx context.Context, name string, pm plans.Meter, hours []usage.Hour, cov coverage) (out []piece, err error) {
	rg, canSplit := s.src.(ranger)
	closed := s.now().Add(-s.cfg.CloseAfter)
	out = make([]piece, 0, len(hours))
	defer func() { // only closed pieces are billed
		keep := out[:0]
		for _, x := range out {
			if !x.end.After(closed) {
				keep = append(keep, x)
			}
		}
		out = keep
	}()
	for _, h := range hours {
		end := h.Start.Add(time.Hour)
		var cut time.Time
		if p, ok := cov.at(h.Start); ok && p.end.Before(end) {
			cut = p.end
		} else if q, ok := cov.at(end.Add(-time.Second)); ok && q.start.After(h.Start) {
			cut = q.start
		}
		if cut.IsZero() || !canSplit {
			out = append(out, piece{Hour: h, end: end})
			continue
		}
		a, err := rg.Range(ctx, name, pm, h.Tenant, h.Start, cut)
		if err != nil {
			return nil, err
		}
		b, err := rg.Range(ctx, name, pm, h.Tenant, cut, end)
		if err != nil {
			return nil, err
		}
		a.Start, b.Start = h.Start, cut
		for _, x := range []piece{{Hour: a, end: cut}, {Hour: b, end: end}} {
			if x.Events > 0 {
				out = append(out, x)
			}
		}
	}
	return out, nil
}

// hourWindows turns one tenant's pieces into billed windows, one Stripe
// period at a time. What Stripe holds is the ledger's (held); a window
// bills floor(running total x scale) minus what the whole period holds
// so far, never below 0: units are only added, never moved between
// windows, so a late event in an earlier hour never makes the period
// bill more than floor(total x scale) (issue 12 item 7). A window this
// pass cannot change (past the grace, invoice finalized) keeps what it
// holds and what it lacks is carried into a later window; when usage
// went down, the excess is taken back from the latest windows whose
// events can still be cancelled. The period's last window shows what
// could not be billed. Pieces outside every subscription are returned
// apart (no_subscription).
// pre holds the periods' totals before the first piece (a checkpoint).
func (s *Syncer) hourWindows(ps []piece, m Meter, cov coverage, ledger map[audit.WindowKey]*audit.Window, pre map[int64]audit.PeriodTotals) (ws, uncovered []window) {
	now := s.now()
	held := func(w window) int64 { return heldOf(ledger[w.key]) }
	flush := func(per []window, cum []decimal.Decimal) {
		if len(per) == 0 {
			return
		}
		planned := pre[per[0].per.start.Unix()].Held
		for _, w := range per {
			planned += held(w)
		}
		for i := range per {
			w := &per[i]
			w.units = held(*w)
			if s.changeable(*w, now) || i == len(per)-1 {
				inc := max(0, cum[i].Mul(m.scale).Floor().IntPart()-planned)
				w.units += inc
				planned += inc
			}
		}
		excess := planned - cum[len(cum)-1].Mul(m.scale).Floor().IntPart()
		for i := len(per) - 1; i >= 0 && excess > 0; i-- {
			w := &per[i]
			if s.changeable(*w, now) && s.cancellable(ledger[w.key], now) {
				cut := min(excess, w.units)
				w.units -= cut
				excess -= cut
			}
		}
		ws = append(ws, per...)
	}
	var (
		cur  period
		per  []window
		cums []decimal.Decimal
		cum  decimal.Decimal
	)
	for _, h := range ps {
		w := window{key: audit.WindowKey{Tenant: h.Tenant, Meter: h.Meter, Start: h.Start.Unix()}, start: h.Start, end: h.end, quantity: h.Value}
		p, ok := cov.at(h.Start)
		if !ok {
			w.units = h.Value.Mul(m.scale).Floor().IntPart()
			uncovered = append(uncovered, w)
			continue
		}
		if p != cur {
			flush(per, cums)
			cur, per, cums, cum = p, nil, nil, pre[p.start.Unix()].Quantity
		}
		w.per = p
		cum = cum.Add(h.Value)
		per = append(per, w)
		cums = append(cums, cum)
	}
	flush(per, cums)
	return ws, uncovered
}

// heldOf is what a window holds for planning: the ledger's value, or more
// while an intent's outcome is open (pending, retry, unknown): it may have
// applied, and it is re-sent until resolved. Counting only the ledger's
// value would carry the same units into a later window of the period
// while the open intent is re-sent: billed twice. The highest of them, so
// an open intent never lets a later window bill what it may already hold.
func heldOf(lw *audit.Window) int64 {
	if lw == nil {
		return 0
	}
	v := lw.Stripe
	for _, in := range lw.Intents {
		if isOpen(in) && in.First.Stripe > v {
			v = in.First.Stripe
		}
	}
	return v
}

// isOpen: the intent's outcome is not known yet.
func isOpen(in *audit.Intent) bool {
	r := in.Latest.Result
	return r == audit.Pending || r == audit.Retry || r == audit.Unknown
}

// hasOpen reports whether the window has an intent whose outcome is open.
func hasOpen(lw *audit.Window) bool {
	if lw == nil {
		return false
	}
	for _, in := range lw.Intents {
		if isOpen(in) {
			return true
		}
	}
	return false
}

func (p period) contains(t time.Time) bool { return !t.Before(p.start) && t.Before(p.end) }

// cancellable reports whether every event of the window may still be
// cancelled (Stripe: within 24 h of receipt).
func (s *Syncer) cancellable(lw *audit.Window, now time.Time) bool {
	if lw == nil {
		return true
	}
	for _, r := range lw.Sends() {
		if now.Sub(r.At) >= s.cfg.CancelWindow {
			return false
		}
	}
	return true
}

// changeable reports whether a pass may still change what Stripe holds
// for w: within the grace, and its period's invoice not finalized.
func (s *Syncer) changeable(w window, now time.Time) bool {
	return !w.end.Before(now.Add(-s.cfg.Grace)) && (w.per.end.IsZero() || now.Before(w.per.end.Add(s.cfg.UsageRecordClose)))
}

// periodWindows folds one tenant's pieces into its Stripe periods under
// the meter's aggregation (the pieces of a unique_count meter carry their
// subjects), starting from pre (each period's state at a checkpoint edge;
// a period in it is billed even with no piece after it). atEdge is each
// period's state at edge, before the pieces from it (the next checkpoint).
func periodWindows(meter string, ps []piece, agg plans.Aggregation, m Meter, cov coverage, pre map[int64]audit.PeriodTotals, edge time.Time) (ws, uncovered []window, atEdge []audit.PeriodTotals) {
	type acc struct {
		w        window
		latestNs int64
		subjects map[string]bool
	}
	byKey := map[audit.WindowKey]*acc{}
	var order []audit.WindowKey
	accOf := func(tenant, meter string, per period) *acc {
		k := audit.WindowKey{Tenant: tenant, Meter: meter, Start: per.start.Unix()}
		a := byKey[k]
		if a == nil {
			a = &acc{w: window{key: k, start: per.start, end: per.end, per: per}, subjects: map[string]bool{}}
			byKey[k] = a
			order = append(order, k)
		}
		return a
	}
	for _, t := range pre {
		if per, ok := cov.at(t.PeriodStart); ok && per.start.Equal(t.PeriodStart) {
			a := accOf(t.Tenant, meter, per)
			a.w.quantity, a.latestNs = t.Quantity, t.LatestNs
		}
	}
	snapped := false
	snap := func() {
		snapped = true
		if agg == plans.UniqueCount {
			return // a set of subjects is not checkpointed
		}
		for _, k := range order {
			a := byKey[k]
			if a.w.start.Before(edge) && a.w.end.After(edge) {
				atEdge = append(atEdge, audit.PeriodTotals{Tenant: k.Tenant, PeriodStart: a.w.start, PeriodEnd: a.w.end,
					Quantity: a.w.quantity, LatestNs: a.latestNs})
			}
		}
	}
	for _, h := range ps {
		if !snapped && !h.Start.Before(edge) {
			snap()
		}
		per, ok := cov.at(h.Start)
		if !ok {
			uncovered = append(uncovered, window{key: audit.WindowKey{Tenant: h.Tenant, Meter: h.Meter, Start: h.Start.Unix()}, start: h.Start, end: h.end,
				quantity: h.Value, units: h.Value.Mul(m.scale).Floor().IntPart()})
			continue
		}
		a := accOf(h.Tenant, h.Meter, per)
		switch agg {
		case plans.Max:
			if h.Value.GreaterThan(a.w.quantity) {
				a.w.quantity = h.Value
			}
		case plans.Latest:
			if h.LatestNs >= a.latestNs {
				a.w.quantity, a.latestNs = h.Value, h.LatestNs
			}
		case plans.UniqueCount:
			for _, sub := range h.Subjects {
				a.subjects[sub] = true
			}
			a.w.quantity = decimal.NewFromInt(int64(len(a.subjects)))
		default:
			a.w.quantity = a.w.quantity.Add(h.Value)
		}
	}
	if !snapped {
		snap()
	}
	ws = make([]window, 0, len(order))
	for _, k := range order {
		w := byKey[k].w
		w.units = w.quantity.Mul(m.scale).Floor().IntPart()
		ws = append(ws, w)
	}
	sort.Slice(ws, func(i, j int) bool { return ws[i].start.Before(ws[j].start) })
	return ws, uncovered, atEdge
}

// IntentID is the identifier of the seq-th write to a window: the meter
// event identifier and the idempotency key. Derived only from (tenant,
// meter, window, seq), so a retry, a restarted process and a second pass
// all use the same one; the ledger fixes the parameters that go with it.
// Hashed to stay within Stripe's 100 characters whatever the tenant id.
func IntentID(mode string, k audit.WindowKey, seq uint32) string {
	h := sha256.New()
	for _, part := range []string{mode, k.Tenant, k.Meter, strconv.FormatInt(k.Start, 10), strconv.FormatUint(uint64(seq), 10)} {
		h.Write([]byte(part))
		h.Write([]byte{0})
	}
	return "bs1-" + hex.EncodeToString(h.Sum(nil))[:48]
}

func unitsOf(v string, m Meter) int64 {
	d, err := decimal.NewFromString(v)
	if err != nil {
		return 0
	}
	return d.Mul(m.scale).Floor().IntPart()
}

func (s *Syncer) plansMeter(name string) plans.Meter {
	if s.plans == nil {
		return plans.Meter{Aggregation: plans.Sum}
	}
	m, _ := s.plans.MeterFor(name)
	return m
}

func sumUnits(ws []window) int64 {
	var n int64
	for _, w := range ws {
		n += w.units
	}
	return n
}
