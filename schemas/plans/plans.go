// Package plans holds the operator's meters and plans: how each meter
// aggregates, what each plan allows per meter and over which period, and
// which plan a tenant is on. It computes billing periods and quota levels;
// it does no I/O beyond reading its YAML file.
package plans

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/shopspring/decimal"
)

// Aggregation is how a meter's events combine.
type Aggregation string

const (
	Sum         Aggregation = "sum"          // api_calls, tokens
	Count       Aggregation = "count"        // number of events, quantity ignored
	Max         Aggregation = "max"          // gauges: peak storage, seats
	Latest      Aggregation = "latest"       // gauges: the last reported value
	UniqueCount Aggregation = "unique_count" // active users, by user_id or a metadata key
)

// Meter describes one feature_type.
type Meter struct {
	Aggregation Aggregation `mapstructure:"aggregation"`
	// UniqueBy is what unique_count counts: "user_id" (default) or
	// "metadata.<key>".
	UniqueBy string `mapstructure:"unique_by"`
}

// Period kinds.
const (
	CalendarMonth = "calendar_month" // 1st of the month 00:00 UTC to the next 1st
	Anchored      = "anchored"       // from the tenant's anchor day to the same day next month
)

// Unlimited is the limit value meaning no limit.
var Unlimited = decimal.NewFromInt(-1)

// Quota is what a plan allows for one meter.
type Quota struct {
	Limit  decimal.Decimal `mapstructure:"limit"`  // -1 = unlimited
	Period string          `mapstructure:"period"` // calendar_month (default) or anchored
	// WarningThresholds are percentages of the limit that raise a warning
	// level; 100 is at_limit. Default 50, 75, 90, 100.
	WarningThresholds []int `mapstructure:"warning_thresholds"`
	// OverageAllowed lets usage exceed the limit by up to OverageLimit
	// (-1 = without bound) at level overage instead of blocked.
	OverageAllowed bool            `mapstructure:"overage_allowed"`
	OverageLimit   decimal.Decimal `mapstructure:"overage_limit"`
	// GracePeriod is how long after a period ends late events may still
	// change it; after that the period is final (and billed).
	GracePeriod time.Duration `mapstructure:"grace_period"`
	// Alerts adds alert lines to the warning thresholds (which always
	// alert, once per period each): see AlertThresholds.
	Alerts AlertThresholds `mapstructure:"alerts"`
}

// AlertThresholds are extra lines usage-alerts reports once per tenant,
// meter and period. They never change the quota level or the decision.
type AlertThresholds struct {
	// Percent are percentages of the limit, 1..MaxAlertPercent: above 100
	// warns about overage. Ignored for an unlimited meter.
	Percent []int `mapstructure:"percent"`
	// Absolute are usage amounts (> 0), for limited and unlimited meters.
	Absolute []decimal.Decimal `mapstructure:"absolute"`
}

// MaxAlertPercent bounds alerts.percent (1000 times the limit); it equals
// schemas.MaxAlertPercent, the bound of the UsageAlert contract.
const MaxAlertPercent = 100_000

// Plan maps meters to quotas. A meter a plan does not list is unlimited.
type Plan struct {
	Meters map[string]Quota `mapstructure:"meters"`
}

// Assignment puts a tenant on a plan.
type Assignment struct {
	Plan string `mapstructure:"plan"`
	// AnchorDay (1-31) starts the tenant's anchored periods; days past the
	// end of a short month clamp to its last day.
	AnchorDay int `mapstructure:"anchor_day"`
	// Anchor is the subscription's billing_cycle_anchor to the second
	// (UTC), as Stripe starts its periods; zero when only a day is known.
	// When set, anchored periods start at its day and second (PeriodFor),
	// so quotas and billing agree on the period of every unit. Only
	// run-time records carry it (billing-sync's plan hook), never the file.
	Anchor time.Time `mapstructure:"-"`
	// Version orders run-time assignments of one tenant (for example the
	// Stripe event's creation time): Assign ignores one older than the
	// tenant's current assignment, so a replayed or reordered record never
	// regresses a plan. 0 means unordered (always applies).
	Version int64 `mapstructure:"version"`
	// Grants are one-off quota increases for named periods (see Grant);
	// nil when none. Only run-time records carry them, never the file.
	Grants *Grants `mapstructure:"-"`
}

// Config is the meters-and-plans file.
type Config struct {
	Meters map[string]Meter `mapstructure:"meters"`
	// UnknownMeters: "sum" aggregates a feature_type missing from Meters as
	// a sum (and reports it); "reject" sends its events to the DLQ.
	UnknownMeters string                `mapstructure:"unknown_meters"`
	Plans         map[string]Plan       `mapstructure:"plans"`
	DefaultPlan   string                `mapstructure:"default_plan"`
	Tenants       map[string]Assignment `mapstructure:"tenants"`

	fromFile map[string]Assignment // Tenants as loaded, for Assign(nil)
}

// ErrStaleAssignment: an assignment older than the tenant's current one.
var ErrStaleAssignment = errors.New("stale plan assignment ignored")

// DefaultThresholds are the warning percentages when a quota names none.
var defaultThresholds = []int{50, 75, 90, 100}

// Normalize fills defaults and checks everything, naming the key at fault.
func (c *Config) Normalize() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	if c.UnknownMeters == "" {
		c.UnknownMeters = "sum"
	}
	if c.UnknownMeters != "sum" && c.UnknownMeters != "reject" {
		bad("unknown_meters", "%q is not sum or reject", c.UnknownMeters)
	}
	for name, m := range c.Meters {
		key := "meters." + name
		switch m.Aggregation {
		case Sum, Count, Max, Latest:
			if m.UniqueBy != "" {
				bad(key+".unique_by", "only unique_count meters take unique_by")
			}
		case UniqueCount:
			if m.UniqueBy == "" {
				m.UniqueBy = "user_id"
			}
			if k, ok := strings.CutPrefix(m.UniqueBy, "metadata."); m.UniqueBy != "user_id" && (!ok || k == "") {
				bad(key+".unique_by", "%q is not user_id or metadata.<key>", m.UniqueBy)
			}
		case "":
			bad(key+".aggregation", "is required (sum, count, max, latest or unique_count)")
		default:
			bad(key+".aggregation", "%q is not sum, count, max, latest or unique_count", m.Aggregation)
		}
		c.Meters[name] = m
	}
	if len(c.Plans) == 0 {
		bad("plans", "at least one plan is required")
	}
	for pname, p := range c.Plans {
		for mname, q := range p.Meters {
			key := "plans." + pname + ".meters." + mname
			if _, ok := c.Meters[mname]; !ok && c.UnknownMeters == "reject" {
				bad(key, "meter %q is not defined under meters", mname)
			}
			if q.Limit.LessThan(Unlimited) || (q.Limit.IsNegative() && !q.Limit.Equal(Unlimited)) {
				bad(key+".limit", "%s is not -1 (unlimited) or >= 0", q.Limit)
			}
			if q.Period == "" {
				q.Period = CalendarMonth
			}
			if q.Period != CalendarMonth && q.Period != Anchored {
				bad(key+".period", "%q is not calendar_month or anchored", q.Period)
			}
			if len(q.WarningThresholds) == 0 {
				q.WarningThresholds = slices.Clone(defaultThresholds)
			}
			sort.Ints(q.WarningThresholds)
			for i, t := range q.WarningThresholds {
				if t < 1 || t > 100 || (i > 0 && t == q.WarningThresholds[i-1]) {
					bad(key+".warning_thresholds", "need distinct percentages in 1..100, got %v", q.WarningThresholds)
					break
				}
			}
			sort.Ints(q.Alerts.Percent)
			for i, t := range q.Alerts.Percent {
				if t < 1 || t > MaxAlertPercent || (i > 0 && t == q.Alerts.Percent[i-1]) {
					bad(key+".alerts.percent", "need distinct percentages in 1..%d, got %v", MaxAlertPercent, q.Alerts.Percent)
					break
				}
			}
			slices.SortFunc(q.Alerts.Absolute, decimal.Decimal.Cmp)
			for i, a := range q.Alerts.Absolute {
				if a.Sign() <= 0 || !a.Equal(a.Truncate(9)) || (i > 0 && a.Equal(q.Alerts.Absolute[i-1])) {
					bad(key+".alerts.absolute", "need distinct amounts > 0 with at most 9 decimals, got %v", q.Alerts.Absolute)
					break
				}
			}
			if !q.OverageAllowed && !q.OverageLimit.IsZero() {
				bad(key+".overage_limit", "set without overage_allowed: true")
			}
			if q.OverageAllowed && q.OverageLimit.IsZero() {
				q.OverageLimit = Unlimited
			}
			if q.OverageLimit.IsNegative() && !q.OverageLimit.Equal(Unlimited) {
				bad(key+".overage_limit", "%s is not -1 (unbounded) or >= 0", q.OverageLimit)
			}
			if q.GracePeriod < 0 {
				bad(key+".grace_period", "must not be negative")
			}
			p.Meters[mname] = q
		}
	}
	if c.DefaultPlan == "" {
		bad("default_plan", "is required: the plan of tenants not listed under tenants")
	} else if _, ok := c.Plans[c.DefaultPlan]; !ok {
		bad("default_plan", "plan %q is not defined under plans", c.DefaultPlan)
	}
	for tenant, a := range c.Tenants {
		if _, ok := c.Plans[a.Plan]; !ok {
			bad("tenants."+tenant+".plan", "plan %q is not defined under plans", a.Plan)
		}
		if a.AnchorDay < 0 || a.AnchorDay > 31 {
			bad("tenants."+tenant+".anchor_day", "%d is not in 1..31", a.AnchorDay)
		}
	}
	return errors.Join(errs...)
}

// MeterFor returns how feature_type aggregates and whether it is configured.
func (c *Config) MeterFor(featureType string) (Meter, bool) {
	m, ok := c.Meters[featureType]
	if !ok {
		return Meter{Aggregation: Sum}, false
	}
	return m, true
}

// QuotaFor returns the tenant's plan name and its quota for the meter; a
// meter the plan does not list is unlimited.
func (c *Config) QuotaFor(tenant, meter string) (string, Quota, Assignment) {
	a, ok := c.Tenants[tenant]
	if !ok {
		a = Assignment{Plan: c.DefaultPlan}
	}
	q, ok := c.Plans[a.Plan].Meters[meter]
	if !ok {
		q = Quota{Limit: Unlimited, Period: CalendarMonth, WarningThresholds: defaultThresholds}
	}
	return a.Plan, q, a
}

// Assign changes a tenant's plan at run time (from the compacted topic
// usage.plan-assignments). nil reverts the tenant to the config file's
// assignment, or to the default plan. Not safe for concurrent use with the
// lookups: the aggregator calls both from one goroutine.
func (c *Config) Assign(tenant string, a *Assignment) error {
	if c.fromFile == nil {
		c.fromFile = make(map[string]Assignment, len(c.Tenants))
		for t, fa := range c.Tenants {
			c.fromFile[t] = fa
		}
	}
	if c.Tenants == nil {
		c.Tenants = map[string]Assignment{}
	}
	if a == nil {
		if fa, ok := c.fromFile[tenant]; ok {
			c.Tenants[tenant] = fa
		} else {
			delete(c.Tenants, tenant)
		}
		return nil
	}
	if _, ok := c.Plans[a.Plan]; !ok {
		return fmt.Errorf("plan assignment for %s: plan %q is not defined", tenant, a.Plan)
	}
	if a.AnchorDay < 0 || a.AnchorDay > 31 {
		return fmt.Errorf("plan assignment for %s: anchor_day %d is not in 1..31", tenant, a.AnchorDay)
	}
	if a.Grants != nil {
		if len(a.Grants.List) > MaxGrants {
			return fmt.Errorf("plan assignment for %s: grants: %d grants, at most %d", tenant, len(a.Grants.List), MaxGrants)
		}
		for i, g := range a.Grants.List {
			if err := g.Validate(fmt.Sprintf("grants[%d]", i)); err != nil {
				return fmt.Errorf("plan assignment for %s: %w", tenant, err)
			}
		}
	}
	if cur, ok := c.Tenants[tenant]; ok && a.Version != 0 && a.Version < cur.Version {
		return fmt.Errorf("plan assignment for %s: version %d is older than the current %d: %w", tenant, a.Version, cur.Version, ErrStaleAssignment)
	}
	c.Tenants[tenant] = *a
	return nil
}
