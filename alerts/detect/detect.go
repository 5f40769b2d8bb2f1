// Package detect finds the alert lines a quota state has crossed. It is a
// pure function of the state and the plan's quota: which crossings were
// already published is the emitter's business.
package detect

import (
	"slices"
	"time"

	"github.com/shopspring/decimal"

	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/schemas/plans"
)

var hundred = decimal.NewFromInt(100)

// Quota returns the lines of the state's plan and meter. The state names
// its plan (a run-time assignment included), so the quota is looked up by
// plan, not by tenant. known is false when the plans file lacks the plan:
// then only the default warning thresholds apply.
func Quota(p *plans.Config, s *schemas.QuotaState) (q plans.Quota, known bool) {
	plan, ok := p.Plans[s.Plan]
	if !ok {
		return plans.Quota{WarningThresholds: []int{50, 75, 90, 100}}, false
	}
	q, ok = plan.Meters[s.FeatureType]
	if !ok { // a meter the plan does not list is unlimited: only absolute lines could apply, and it has none
		return plans.Quota{}, true
	}
	return q, true
}

// Crossings returns one alert per line the state has reached, in a fixed
// order: percent lines (warning thresholds and alerts.percent, merged),
// then absolute lines, then overage. A line is reached when usage >= it
// (percent: usage*100 >= line*limit, exact decimals, never the rounded
// percentage) and usage > 0. The limit is the state's, which already
// holds grants and plan changes. now stamps detected_at.
func Crossings(s *schemas.QuotaState, q plans.Quota, now time.Time) []schemas.UsageAlert {
	if s.Usage.Sign() <= 0 {
		return nil
	}
	var out []schemas.UsageAlert
	add := func(kind string, line decimal.Decimal) {
		a := schemas.UsageAlert{
			AlertID: schemas.AlertID(s.TenantID, s.FeatureType, s.Period, kind, line), TenantID: s.TenantID,
			FeatureType: s.FeatureType, Period: s.Period, Plan: s.Plan, Kind: kind, Threshold: line,
			Usage: s.Usage, Limit: s.Limit, Percentage: s.Percentage, Level: s.Level,
			PeriodStart: s.PeriodStart, PeriodEnd: s.PeriodEnd, SourceOffsets: s.SourceOffsets, DetectedAt: now.UTC(),
		}
		out = append(out, a)
	}
	if !s.Unlimited() {
		scaled := s.Usage.Mul(hundred)
		for _, pct := range percentLines(q) {
			if scaled.GreaterThanOrEqual(decimal.NewFromInt(int64(pct)).Mul(s.Limit)) {
				add(schemas.AlertKindPercent, decimal.NewFromInt(int64(pct)))
			}
		}
	}
	for _, amount := range q.Alerts.Absolute {
		if s.Usage.GreaterThanOrEqual(amount) {
			add(schemas.AlertKindAbsolute, amount)
		}
	}
	if !s.Unlimited() && q.OverageAllowed && s.Usage.GreaterThan(s.Limit) {
		add(schemas.AlertKindOverage, decimal.Zero)
	}
	return out
}

// percentLines merges the warning thresholds and alerts.percent, sorted,
// without repeats (100 may be in both).
func percentLines(q plans.Quota) []int {
	seen := make(map[int]bool, len(q.WarningThresholds)+len(q.Alerts.Percent))
	var out []int
	for _, list := range [][]int{q.WarningThresholds, q.Alerts.Percent} {
		for _, p := range list {
			if !seen[p] {
				seen[p] = true
				out = append(out, p)
			}
		}
	}
	slices.Sort(out)
	return out
}
