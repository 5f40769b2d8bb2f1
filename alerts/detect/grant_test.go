package detect

import (
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"github.com/usagemeter/usagemeter/schemas/plans"
)

// With a one-off grant the lines are relative to the granted limit, which
// the state carries (the aggregator applies plans.WithGrants): FREE's 50
// plus 10 is 60, so usage 50 is 83 % (no 90 or 100 alert), 54 is 90 % and
// 60 is 100 %.
func TestCrossingsOfAGrantedLimit(t *testing.T) {
	q := plans.Quota{Limit: decimal.NewFromInt(50), WarningThresholds: []int{50, 75, 90, 100}}
	a := plans.Assignment{Plan: "FREE", Grants: &plans.Grants{List: []plans.Grant{
		{Meter: "ai_generation", Period: "2026-11", Amount: decimal.NewFromInt(10)}}}}
	limit := plans.WithGrants(q, a, "ai_generation", "2026-11").Limit.String()
	now := time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC)
	for usage, want := range map[string]string{
		"50": "[percent:50 percent:75]",
		"54": "[percent:50 percent:75 percent:90]",
		"60": "[percent:50 percent:75 percent:90 percent:100]",
	} {
		if got := fmtList(lines(Crossings(state(usage, limit), q, now))); got != want {
			t.Errorf("usage %s of %s: %s, want %s", usage, limit, got, want)
		}
	}
}
