package plans

import (
	"fmt"
	"time"
)

// Period is one billing period, [Start, End) in UTC.
type Period struct {
	ID    string // "2026-11" for calendar months, "2026-11-15" for anchored periods
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
