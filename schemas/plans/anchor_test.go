package plans

import (
	"strings"
	"testing"
	"time"
)

// An anchor to the second (a Stripe subscription's billing_cycle_anchor)
// starts each anchored period at that second: 14:32:09 on the 15th is in
// the previous period, 14:32:10 in the next; Stripe's month-end clamp; the
// ID stays the date of the first day; day anchors and calendar months are
// unchanged.
func TestPeriodForAnchorSecond(t *testing.T) {
	q := Quota{Period: Anchored}
	a := Assignment{Plan: "PRO", AnchorDay: 15, Anchor: time.Date(2027, 1, 15, 14, 32, 10, 0, time.UTC)}
	at := func(s string) time.Time { v, _ := time.Parse(time.RFC3339, s); return v }
	for _, c := range []struct{ t, id, start, end string }{
		{"2027-03-15T14:32:09Z", "2027-02-15", "2027-02-15T14:32:10Z", "2027-03-15T14:32:10Z"},
		{"2027-03-15T14:32:10Z", "2027-03-15", "2027-03-15T14:32:10Z", "2027-04-15T14:32:10Z"},
		{"2026-12-20T00:00:00Z", "2026-12-15", "2026-12-15T14:32:10Z", "2027-01-15T14:32:10Z"}, // before the anchor
	} {
		p := a.PeriodFor(q, at(c.t))
		if p.ID != c.id || !p.Start.Equal(at(c.start)) || !p.End.Equal(at(c.end)) {
			t.Errorf("%s: got %#v, want %s [%s, %s)", c.t, p, c.id, c.start, c.end)
		}
	}
	// Anchored on the 31st at 09:00:05: February's period starts on its last day.
	a31 := Assignment{Plan: "PRO", AnchorDay: 31, Anchor: time.Date(2027, 1, 31, 9, 0, 5, 0, time.UTC)}
	if p := a31.PeriodFor(q, at("2027-03-01T00:00:00Z")); p.ID != "2027-02-28" || !p.Start.Equal(at("2027-02-28T09:00:05Z")) ||
		!p.End.Equal(at("2027-03-31T09:00:05Z")) {
		t.Errorf("clamped: %#v", p)
	}
	// A day anchor, a calendar-month quota and an anchor at 1st 00:00:00
	// keep the periods and IDs they had.
	day := Assignment{Plan: "PRO", AnchorDay: 15}
	if got, want := day.PeriodFor(q, at("2027-03-15T14:32:09Z")), PeriodOf(q, 15, at("2027-03-15T14:32:09Z")); got != want || got.ID != "2027-03-15" {
		t.Errorf("day anchor: %#v, want %#v", got, want)
	}
	if p := a.PeriodFor(Quota{Period: CalendarMonth}, at("2027-03-15T14:32:09Z")); p.ID != "2027-03" {
		t.Errorf("calendar month quota: %#v", p)
	}
	first := Assignment{Plan: "PRO", AnchorDay: 1, Anchor: time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)}
	if p := first.PeriodFor(q, at("2027-03-15T00:00:00Z")); p.ID != "2027-03" {
		t.Errorf("anchor at the 1st, midnight: %#v, want the calendar month 2027-03", p)
	}
}

func TestAssignmentRecordAnchor(t *testing.T) {
	a := &Assignment{Plan: "PRO", AnchorDay: 15, Anchor: time.Date(2027, 1, 15, 14, 32, 10, 0, time.UTC), Version: 7}
	k, v := AssignmentRecord("acme", a)
	if !strings.Contains(string(v), `"anchor":"2027-01-15T14:32:10Z"`) {
		t.Fatalf("record %s has no anchor", v)
	}
	_, got, err := ParseAssignmentRecord(k, v)
	if err != nil || !got.Anchor.Equal(a.Anchor) || got.AnchorDay != 15 {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	// Old records (a day only) still load.
	if _, old, err := ParseAssignmentRecord([]byte("acme"), []byte(`{"plan":"PRO","anchor_day":15}`)); err != nil || !old.Anchor.IsZero() || old.AnchorDay != 15 {
		t.Fatalf("day-only record: %+v %v", old, err)
	}
	for value, want := range map[string]string{
		`{"plan":"PRO","anchor":"15 Jan"}`:                               `anchor "15 Jan" is not an RFC 3339 time`,
		`{"plan":"PRO","anchor_day":14,"anchor":"2027-01-15T14:32:10Z"}`: "anchor_day 14 is not the day of anchor",
	} {
		if _, _, err := ParseAssignmentRecord([]byte("acme"), []byte(value)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want %q", value, err, want)
		}
	}
}
