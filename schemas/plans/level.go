package plans

import (
	"strconv"

	"github.com/shopspring/decimal"
)

// Quota levels, the graduated answers enforcement gives.
const (
	LevelOK      = "ok"
	LevelAtLimit = "at_limit"
	LevelOverage = "overage"
	LevelBlocked = "blocked"
)

// WarningLevel names the level for a warning threshold, e.g. warning_75.
func WarningLevel(pct int) string { return "warning_" + strconv.Itoa(pct) }

// Status is a quota evaluated at some usage.
type Status struct {
	Level       string
	Remaining   decimal.Decimal // limit - usage, never negative; -1 when unlimited
	Percentage  decimal.Decimal // usage / limit * 100, 2 decimals; 0 when unlimited
	OverageUsed decimal.Decimal // usage beyond the limit, 0 when none
}

var hundred = decimal.NewFromInt(100)

// Evaluate grades usage against q:
//
//	usage < first threshold          ok
//	usage >= threshold t (t < 100)   warning_t (the highest reached)
//	usage >= limit, not above it     at_limit (also when the 100 threshold is absent)
//	usage above limit                overage while overage_allowed and within
//	                                 overage_limit, else blocked
//
// With the seed FREE plan (50 ai_generation) the 50th event is at_limit and
// the 51st blocked.
func Evaluate(q Quota, usage decimal.Decimal) Status {
	if q.Limit.Equal(Unlimited) {
		return Status{Level: LevelOK, Remaining: Unlimited, Percentage: decimal.Zero, OverageUsed: decimal.Zero}
	}
	s := Status{Remaining: decimal.Max(q.Limit.Sub(usage), decimal.Zero), OverageUsed: decimal.Max(usage.Sub(q.Limit), decimal.Zero)}
	if q.Limit.IsZero() {
		s.Percentage = decimal.Zero
		if usage.IsPositive() {
			s.Percentage = hundred
		}
	} else {
		s.Percentage = usage.Mul(hundred).DivRound(q.Limit, 2)
	}
	switch {
	case usage.GreaterThan(q.Limit):
		if q.OverageAllowed && (q.OverageLimit.Equal(Unlimited) || s.OverageUsed.LessThanOrEqual(q.OverageLimit)) {
			s.Level = LevelOverage
		} else {
			s.Level = LevelBlocked
		}
	case usage.Equal(q.Limit) && !q.Limit.IsZero():
		s.Level = LevelAtLimit
	case q.Limit.IsZero():
		s.Level = LevelAtLimit // nothing allowed, nothing used yet
	default:
		s.Level = LevelOK
		for _, t := range q.WarningThresholds {
			if t < 100 && usage.Mul(hundred).GreaterThanOrEqual(q.Limit.Mul(decimal.NewFromInt(int64(t)))) {
				s.Level = WarningLevel(t)
			}
		}
	}
	return s
}
