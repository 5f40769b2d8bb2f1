package plans

import (
	"fmt"
	"regexp"
	"time"

	"github.com/shopspring/decimal"
)

// Grant is a one-off quota increase: Amount more of Meter in the period
// whose ID is Period ("2026-11", or "2026-11-15" for an anchored period).
// It raises the limit of that period only, so it expires with its period
// by construction: no clock or cleanup is involved, and a record replayed
// next month grants nothing.
type Grant struct {
	Meter  string          `mapstructure:"meter"`
	Period string          `mapstructure:"period"`
	Amount decimal.Decimal `mapstructure:"amount"`
}

// Grants are an assignment's grants. An Assignment holds them behind a
// pointer, never modified once the Assignment is in use, so Assignments
// stay comparable with == (the quota cache's hot path compares them) and
// a new record's grants are a new pointer.
type Grants struct {
	List []Grant
}

// MaxGrants bounds the grants one assignment record carries.
const MaxGrants = 100

var periodIDRe = regexp.MustCompile(`^\d{4}-(0[1-9]|1[0-2])(-(0[1-9]|[12]\d|3[01]))?$`)

// Validate checks one grant; field is its position in the record, e.g.
// "grants[2]", and prefixes the errors.
func (g Grant) Validate(field string) error {
	switch {
	case g.Meter == "":
		return fmt.Errorf("%s.meter: is required", field)
	case len(g.Meter) > 64:
		return fmt.Errorf("%s.meter: longer than 64 bytes", field)
	case !periodIDRe.MatchString(g.Period):
		return fmt.Errorf("%s.period: %q is not a period id (YYYY-MM, or YYYY-MM-DD for an anchored period)", field, g.Period)
	case g.Amount.Sign() <= 0:
		return fmt.Errorf("%s.amount: %s is not > 0", field, g.Amount)
	case !g.Amount.Equal(g.Amount.Truncate(9)):
		return fmt.Errorf("%s.amount: %s has more than 9 decimals", field, g.Amount)
	case g.Amount.GreaterThan(maxGrantAmount):
		return fmt.Errorf("%s.amount: %s is above %s", field, g.Amount, maxGrantAmount)
	}
	return nil
}

// maxGrantAmount keeps a granted limit inside the quota cache's exact
// nano-unit amounts (and far from Decimal128 overflow in ClickHouse).
var maxGrantAmount = decimal.NewFromInt(1_000_000_000_000)

// Granted returns the sum of a's grants of meter in period (0 when none).
func (a Assignment) Granted(meter, period string) decimal.Decimal {
	sum := decimal.Zero
	if a.Grants == nil {
		return sum
	}
	for _, g := range a.Grants.List {
		if g.Meter == meter && g.Period == period {
			sum = sum.Add(g.Amount)
		}
	}
	return sum
}

// WithGrants returns q with a's grants of meter in period added to its
// limit. An unlimited quota stays unlimited. Every reader (quota caches,
// the aggregator's QuotaState, usage-api's pages) calls it, so they agree
// on the limit.
func WithGrants(q Quota, a Assignment, meter, period string) Quota {
	if q.Limit.Equal(Unlimited) {
		return q
	}
	if g := a.Granted(meter, period); g.IsPositive() {
		q.Limit = q.Limit.Add(g)
	}
	return q
}

// Open returns the grants whose period may still be open at now (started
// less than two months ago, or later): what a new record of the tenant
// carries on, so that a plan change or another grant keeps them while a
// grant of a long closed period is dropped instead of piling up.
func (gs *Grants) Open(now time.Time) []Grant {
	if gs == nil {
		return nil
	}
	cut := now.UTC().AddDate(0, -2, 0)
	var out []Grant
	for _, g := range gs.List {
		layout := "2006-01"
		if len(g.Period) == 10 {
			layout = "2006-01-02"
		}
		if start, err := time.Parse(layout, g.Period); err == nil && start.After(cut) {
			out = append(out, g)
		}
	}
	return out
}
