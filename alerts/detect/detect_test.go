package detect

import (
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/schemas/plans"
)

func state(usage, limit string) *schemas.QuotaState {
	return &schemas.QuotaState{TenantID: "acme", FeatureType: "ai_generation", Period: "2026-11", Plan: "FREE",
		Usage: decimal.RequireFromString(usage), Limit: decimal.RequireFromString(limit), Level: "ok",
		PeriodStart: time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC), PeriodEnd: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)}
}

func lines(as []schemas.UsageAlert) []string {
	var out []string
	for _, a := range as {
		out = append(out, a.Kind+":"+a.Threshold.String())
	}
	return out
}

func TestCrossings(t *testing.T) {
	free := plans.Quota{WarningThresholds: []int{50, 75, 90, 100}}
	pro := plans.Quota{WarningThresholds: []int{50, 75, 90, 100}, OverageAllowed: true,
		Alerts: plans.AlertThresholds{Percent: []int{100, 150}, Absolute: []decimal.Decimal{decimal.NewFromInt(1000)}}}
	cases := []struct {
		name         string
		q            plans.Quota
		usage, limit string
		want         string
	}{
		{"nothing yet", free, "24", "50", "[]"},
		{"just below 50", free, "24.999999999", "50", "[]"},
		{"exactly 50", free, "25", "50", "[percent:50]"},
		{"at 90", free, "45", "50", "[percent:50 percent:75 percent:90]"},
		{"at the limit", free, "50", "50", "[percent:50 percent:75 percent:90 percent:100]"},
		{"limit 3, 2.4 is 80 %", free, "2.4", "3", "[percent:50 percent:75]"},
		{"zero usage, zero limit", free, "0", "0", "[]"},
		{"some usage, zero limit", free, "1", "0", "[percent:50 percent:75 percent:90 percent:100]"},
		{"over 150 % with overage", pro, "1500", "1000", "[percent:50 percent:75 percent:90 percent:100 percent:150 absolute:1000 overage:0]"},
		{"unlimited: absolute only", pro, "1000", "-1", "[absolute:1000]"},
		{"unlimited below the line", pro, "999.999", "-1", "[]"},
	}
	now := time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC)
	for _, c := range cases {
		s := state(c.usage, c.limit)
		got := Crossings(s, c.q, now)
		if g := lines(got); fmtList(g) != c.want {
			t.Errorf("%s: got %s, want %s", c.name, fmtList(g), c.want)
		}
		for _, a := range got {
			if err := a.Validate(); err != nil {
				t.Errorf("%s: alert %s does not validate: %v", c.name, a.Kind, err)
			}
		}
	}
}

func fmtList(s []string) string {
	out := "["
	for i, x := range s {
		if i > 0 {
			out += " "
		}
		out += x
	}
	return out + "]"
}

func TestQuotaByPlanName(t *testing.T) {
	p, err := plans.Parse([]byte("plans: {FREE: {meters: {ai_generation: {limit: 50, warning_thresholds: [80]}}}}\ndefault_plan: FREE"))
	if err != nil {
		t.Fatal(err)
	}
	s := state("45", "50")
	if q, known := Quota(p, s); !known || len(q.WarningThresholds) != 1 || q.WarningThresholds[0] != 80 {
		t.Errorf("FREE: %+v %v", q, known)
	}
	s.Plan = "GOLD"
	if q, known := Quota(p, s); known || len(q.WarningThresholds) != 4 {
		t.Errorf("unknown plan: %+v %v", q, known)
	}
}

// BenchmarkCrossings: the work per quota state read, for a FREE state at
// 90 % (three lines reached).
func BenchmarkCrossings(b *testing.B) {
	q := plans.Quota{WarningThresholds: []int{50, 75, 90, 100}}
	s := state("45", "50")
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		if len(Crossings(s, q, now)) != 3 {
			b.Fatal("want 3")
		}
	}
}
