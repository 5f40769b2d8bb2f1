package plans

import (
	"fmt"
	"time"
)

// Period is one billing period, [Start, End) in UTC.
type Period struct {
	// ID: "2026-11" for calendar months, "2026-11-15" (the UTC date of
	// the first day) for anchored periods, also those anchored at a second
	// (the exact start is Start): one period starts per day at most, so the
	// date names it, and QuotaState keys and usage_period ids keep one
	// format.
	ID    string
	Start time.Time
	End   time.Time
}

// PeriodOf returns the period of quota q containing t for a tenant whose
// anchor day is anchorDay (0 = 1).
func PeriodOf(q Quota, anchorDay int, t time.Time) Period {
	t = t.UTC()
	if q.Period != Anchored || anchorDay <= 1 {
		start := time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)
		return Period{ID: start.Format("2006-01"), Start: start, End: start.AddDate(0, 1, 0)}
	}
	start := anchorIn(t.Year(), t.Month(), anchorDay)
	if t.Before(start) {
		y, m := t.Year(), t.Month()-1
		if m == 0 {
			y, m = y-1, time.December
		}
		start = anchorIn(y, m, anchorDay)
	}
	ny, nm := start.Year(), start.Month()+1
	if nm == 13 {
		ny, nm = ny+1, time.January
	}
	return Period{ID: start.Format("2006-01-02"), Start: start, End: anchorIn(ny, nm, anchorDay)}
}

// PeriodFor returns the period of quota q containing t for a tenant on
// assignment a: with a.Anchor set (a Stripe subscription's
// billing_cycle_anchor), an anchored period starts at the anchor's day and
// second each month, Stripe's way (days past a short month's end clamp to
// its last day); else PeriodOf with a.AnchorDay. The aggregator, the quota
// cache and usage-api all take periods from here, and billing-sync's
// windows follow the same subscription periods, so a unit is in the same
// period for quotas and for billing.
func (a Assignment) PeriodFor(q Quota, t time.Time) Period {
	anc := a.Anchor.UTC()
	if q.Period != Anchored || a.Anchor.IsZero() {
		return PeriodOf(q, a.AnchorDay, t)
	}
	if anc.Day() == 1 && anc.Hour() == 0 && anc.Minute() == 0 && anc.Second() == 0 {
		return PeriodOf(q, 1, t) // the calendar month, named as before
	}
	t = t.UTC()
	k := (t.Year()-anc.Year())*12 + int(t.Month()) - int(anc.Month())
	for anchorStep(anc, k).After(t) {
		k--
	}
	for !anchorStep(anc, k+1).After(t) {
		k++
	}
	start := anchorStep(anc, k)
	return Period{ID: start.Format("2006-01-02"), Start: start, End: anchorStep(anc, k+1)}
}

// anchorStep is the start of the k-th period from anchor (k may be
// negative): the anchor's day (clamped), hour, minute and second.
func anchorStep(anchor time.Time, k int) time.Time {
	y, m := anchor.Year(), int(anchor.Month())-1+k
	y += m / 12
	m %= 12
	if m < 0 {
		m += 12
		y--
	}
	d := anchorIn(y, time.Month(m+1), anchor.Day())
	return time.Date(d.Year(), d.Month(), d.Day(), anchor.Hour(), anchor.Minute(), anchor.Second(), 0, time.UTC)
}

// anchorIn is the anchor day in the given month, clamped to its last day.
func anchorIn(y int, m time.Month, day int) time.Time {
	last := time.Date(y, m+1, 0, 0, 0, 0, 0, time.UTC).Day()
	return time.Date(y, m, min(day, last), 0, 0, 0, 0, time.UTC)
}

// String is the period ID.
func (p Period) String() string { return p.ID }

// Contains reports whether t is in [Start, End).
func (p Period) Contains(t time.Time) bool { return !t.Before(p.Start) && t.Before(p.End) }

// GoString helps test failure messages.
func (p Period) GoString() string {
	return fmt.Sprintf("Period{%s %s..%s}", p.ID, p.Start.Format(time.RFC3339), p.End.Format(time.RFC3339))
}
