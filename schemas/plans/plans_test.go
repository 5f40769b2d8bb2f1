package plans

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shopspring/decimal"
)

func d(s string) decimal.Decimal { return decimal.RequireFromString(s) }

func TestExampleFileLoadsWithSeedPlans(t *testing.T) {
	c, err := Load("plans.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	plan, q, _ := c.QuotaFor("some-new-tenant", "ai_generation")
	if plan != "FREE" || !q.Limit.Equal(d("50")) || q.Period != CalendarMonth || len(q.WarningThresholds) != 4 || q.GracePeriod != 72*time.Hour {
		t.Fatalf("FREE ai_generation: %s %+v", plan, q)
	}
	for _, tenant := range []string{"acme", "globex"} {
		if _, q, _ := c.QuotaFor(tenant, "ai_generation"); !q.Limit.Equal(Unlimited) {
			t.Errorf("%s: ai_generation limit %s, want unlimited", tenant, q.Limit)
		}
	}
	if _, q, a := c.QuotaFor("acme", "api_calls"); !q.OverageAllowed || !q.OverageLimit.Equal(d("250000")) || a.AnchorDay != 15 {
		t.Errorf("acme api_calls: %+v %+v", q, a)
	}
	if m, ok := c.MeterFor("projects"); !ok || m.Aggregation != UniqueCount || m.UniqueBy != "metadata.project_id" {
		t.Errorf("projects meter: %+v", m)
	}
	if m, ok := c.MeterFor("mystery"); ok || m.Aggregation != Sum {
		t.Errorf("unknown meter: %+v %v", m, ok)
	}
}

func TestInvalidConfigNamesTheKey(t *testing.T) {
	cases := map[string]string{
		"meters: {x: {aggregation: avg}}\nplans: {P: {}}\ndefault_plan: P":                              "meters.x.aggregation",
		"plans: {P: {meters: {api_calls: {limit: -5}}}}\ndefault_plan: P":                               "plans.P.meters.api_calls.limit",
		"plans: {P: {meters: {api_calls: {limit: 5, period: weekly}}}}\ndefault_plan: P":                "plans.P.meters.api_calls.period",
		"plans: {P: {meters: {api_calls: {limit: 5, warning_thresholds: [50, 150]}}}}\ndefault_plan: P": "warning_thresholds",
		"plans: {P: {meters: {api_calls: {limit: 5, overage_limit: 3}}}}\ndefault_plan: P":              "overage_limit",
		"plans: {P: {}}\ndefault_plan: Q":                                                               "default_plan",
		"plans: {P: {}}\ndefault_plan: P\ntenants: {acme: {plan: GOLD}}":                                "tenants.acme.plan",
		"plans: {P: {meters: {api_calls: {limit: 5, limt: 3}}}}\ndefault_plan: P":                       "limt",
		"plans: {P: {meters: {api_calls: {limit: lots}}}}\ndefault_plan: P":                             "lots",
		"unknown_meters: reject\nplans: {P: {meters: {api_calls: {limit: 5}}}}\ndefault_plan: P":        "plans.P.meters.api_calls",
		"meters: {u: {aggregation: unique_count, unique_by: email}}\nplans: {P: {}}\ndefault_plan: P":   "meters.u.unique_by",
		"plans: {P: {meters: {api_calls: {limit: 5, alerts: {percent: [150, 0]}}}}}\ndefault_plan: P":   "plans.P.meters.api_calls.alerts.percent",
		"plans: {P: {meters: {api_calls: {limit: 5, alerts: {percent: [120, 120]}}}}}\ndefault_plan: P": "plans.P.meters.api_calls.alerts.percent",
		"plans: {P: {meters: {api_calls: {limit: 5, alerts: {absolute: [10, -1]}}}}}\ndefault_plan: P":  "plans.P.meters.api_calls.alerts.absolute",
		"plans: {P: {meters: {api_calls: {limit: 5, alerts: {absolute: [lots]}}}}}\ndefault_plan: P":    "lots",
	}
	for yaml, key := range cases {
		f := filepath.Join(t.TempDir(), "p.yaml")
		if err := os.WriteFile(f, []byte(yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := Load(f)
		if err == nil || !strings.Contains(err.Error(), key) {
			t.Errorf("%q: want an error naming %s, got %v", yaml, key, err)
		}
	}
}

func TestPeriods(t *testing.T) {
	cal := Quota{Period: CalendarMonth}
	anc := Quota{Period: Anchored}
	at := func(s string) time.Time { tm, _ := time.Parse(time.RFC3339, s); return tm }
	for _, c := range []struct {
		q         Quota
		anchor    int
		t         string
		id, start string
		end       string
	}{
		{cal, 0, "2026-11-30T23:59:59Z", "2026-11", "2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z"},
		{cal, 0, "2026-12-01T00:00:00Z", "2026-12", "2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z"},
		{cal, 0, "2026-12-01T00:30:00+01:00", "2026-11", "2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z"}, // UTC decides
		{anc, 15, "2026-11-14T23:00:00Z", "2026-10-15", "2026-10-15T00:00:00Z", "2026-11-15T00:00:00Z"},
		{anc, 15, "2026-11-15T00:00:00Z", "2026-11-15", "2026-11-15T00:00:00Z", "2026-12-15T00:00:00Z"},
		{anc, 31, "2027-02-28T12:00:00Z", "2027-02-28", "2027-02-28T00:00:00Z", "2027-03-31T00:00:00Z"}, // clamped
		{anc, 31, "2027-02-27T12:00:00Z", "2027-01-31", "2027-01-31T00:00:00Z", "2027-02-28T00:00:00Z"},
		{anc, 20, "2027-01-05T00:00:00Z", "2026-12-20", "2026-12-20T00:00:00Z", "2027-01-20T00:00:00Z"}, // year boundary
	} {
		p := PeriodOf(c.q, c.anchor, at(c.t))
		if p.ID != c.id || !p.Start.Equal(at(c.start)) || !p.End.Equal(at(c.end)) || !p.Contains(at(c.t)) {
			t.Errorf("%s anchor %d at %s: got %#v, want %s %s..%s", c.q.Period, c.anchor, c.t, p, c.id, c.start, c.end)
		}
	}
}

func TestEvaluateSeedAndEdges(t *testing.T) {
	free := Quota{Limit: d("50"), WarningThresholds: []int{50, 75, 90, 100}}
	for usage, want := range map[string]string{
		"0": LevelOK, "24": LevelOK, "25": "warning_50", "37.5": "warning_75", "44.99": "warning_75",
		"45": "warning_90", "49": "warning_90", "50": LevelAtLimit, "51": LevelBlocked,
	} {
		if got := Evaluate(free, d(usage)); got.Level != want {
			t.Errorf("FREE at %s: %s, want %s", usage, got.Level, want)
		}
	}
	s := Evaluate(free, d("51"))
	if !s.Remaining.IsZero() || !s.OverageUsed.Equal(d("1")) || !s.Percentage.Equal(d("102")) {
		t.Errorf("FREE at 51: %+v", s)
	}
	if s := Evaluate(Quota{Limit: Unlimited}, d("100000")); s.Level != LevelOK || !s.Remaining.Equal(Unlimited) {
		t.Errorf("unlimited: %+v", s)
	}
	over := Quota{Limit: d("100"), OverageAllowed: true, OverageLimit: d("10"), WarningThresholds: defaultThresholds}
	if s := Evaluate(over, d("110")); s.Level != LevelOverage || !s.OverageUsed.Equal(d("10")) {
		t.Errorf("overage within limit: %+v", s)
	}
	if s := Evaluate(over, d("110.000000001")); s.Level != LevelBlocked {
		t.Errorf("overage past limit: %+v", s)
	}
	if s := Evaluate(Quota{Limit: d("100"), OverageAllowed: true, OverageLimit: Unlimited}, d("1e9")); s.Level != LevelOverage {
		t.Errorf("unbounded overage: %+v", s)
	}
	if s := Evaluate(Quota{Limit: d("0")}, d("1")); s.Level != LevelBlocked {
		t.Errorf("zero limit used: %+v", s)
	}
	if s := Evaluate(Quota{Limit: d("3"), WarningThresholds: []int{80}}, d("2.4")); s.Level != "warning_80" {
		t.Errorf("custom threshold: %+v", s)
	}
}

func TestAssignOverridesAndReverts(t *testing.T) {
	c, err := Load("plans.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Assign("acme", &Assignment{Plan: "ENTERPRISE"}); err != nil {
		t.Fatal(err)
	}
	if p, _, _ := c.QuotaFor("acme", "api_calls"); p != "ENTERPRISE" {
		t.Fatalf("override: %s", p)
	}
	if err := c.Assign("newco", &Assignment{Plan: "PRO"}); err != nil {
		t.Fatal(err)
	}
	if err := c.Assign("acme", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Assign("newco", nil); err != nil {
		t.Fatal(err)
	}
	if p, _, a := c.QuotaFor("acme", "api_calls"); p != "PRO" || a.AnchorDay != 15 {
		t.Fatalf("revert to file: %s %+v", p, a)
	}
	if p, _, _ := c.QuotaFor("newco", "api_calls"); p != "FREE" {
		t.Fatalf("revert to default: %s", p)
	}
	if err := c.Assign("x", &Assignment{Plan: "GOLD"}); err == nil || !strings.Contains(err.Error(), "GOLD") {
		t.Fatalf("unknown plan accepted: %v", err)
	}
}

// alerts: percentages above 100 and absolute amounts load, sorted and
// exact; a file without them loads as before (no extra lines).
func TestAlertThresholdsLoad(t *testing.T) {
	c, err := Parse([]byte("plans: {P: {meters: {api_calls: {limit: 5, alerts: {percent: [200, 110], absolute: [\"1000.5\", 20, 0.1]}}}}}\ndefault_plan: P"))
	if err != nil {
		t.Fatal(err)
	}
	q := c.Plans["P"].Meters["api_calls"]
	if !slices.Equal(q.Alerts.Percent, []int{110, 200}) {
		t.Errorf("percent %v", q.Alerts.Percent)
	}
	if got := fmt.Sprint(q.Alerts.Absolute); got != "[0.1 20 1000.5]" {
		t.Errorf("absolute %s", got)
	}
	if !slices.Equal(q.WarningThresholds, []int{50, 75, 90, 100}) {
		t.Errorf("warning thresholds %v", q.WarningThresholds)
	}
	seed, err := Load("plans.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if _, q, _ := seed.QuotaFor("someone", "ai_generation"); len(q.Alerts.Percent)+len(q.Alerts.Absolute) != 0 {
		t.Errorf("seed plan has alert lines %+v", q.Alerts)
	}
}
