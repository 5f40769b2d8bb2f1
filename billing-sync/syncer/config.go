package syncer

import (
	"errors"
	"fmt"
	"time"

	"github.com/shopspring/decimal"

	"github.com/usagemeter/usagemeter/schemas/plans"
)

// Stripe modes of a meter.
const (
	MeterEvents  = "meter_events"  // Billing Meters (default): one event per closed hour
	UsageRecords = "usage_records" // legacy metered prices: action=set of the period total
)

// Meter says how one meter reaches Stripe.
type Meter struct {
	Mode string `mapstructure:"mode"`
	// EventName is the Stripe meter's event_name (meter_events; default:
	// the meter's name). MeterID (mtr_...) is needed to read summaries.
	EventName string `mapstructure:"event_name"`
	MeterID   string `mapstructure:"meter_id"`
	// Price (usage_records) finds the customer's subscription item when
	// the tenant's items are not configured.
	Price string `mapstructure:"price"`
	// Scale is billing units per unit of quantity ("0.001": per thousand
	// tokens). Stripe takes integers: each window bills the floor of the
	// period's running total minus what earlier windows billed, so the
	// remainders carry and the period's sum is floor(total x scale).
	Scale string `mapstructure:"scale"`

	scale decimal.Decimal
}

// Customer maps a tenant to its Stripe customer and, for usage_records
// meters, subscription items. A list, not a map: viper lower-cases map
// keys and tenant ids are case sensitive.
type Customer struct {
	Tenant   string            `mapstructure:"tenant"`
	Customer string            `mapstructure:"customer"`
	Items    map[string]string `mapstructure:"items"` // meter -> si_...
}

// Config is the billing section.
type Config struct {
	Meters    map[string]Meter `mapstructure:"meters"`
	Customers []Customer       `mapstructure:"customers"`
	// CustomerTTL: a customer found by search is trusted this long, then
	// searched again (a tenant not found is searched again every pass).
	CustomerTTL time.Duration `mapstructure:"customer_ttl"`
	// LookupCustomers finds unmapped tenants by the Stripe customer
	// metadata tenant_id (all customers listed once, then cached).
	LookupCustomers bool `mapstructure:"lookup_customers"`
	// Interval between passes of `run`.
	Interval time.Duration `mapstructure:"interval"`
	// CloseAfter: an hour is billed this long after it ends (the
	// aggregator's allowed lateness and the consumer's flush).
	CloseAfter time.Duration `mapstructure:"close_after"`
	// Grace: a window that ended less than this ago is still corrected;
	// older differences are only reported. Match the plans' grace_period.
	Grace time.Duration `mapstructure:"grace"`
	// Settle: Stripe's summaries are compared only this long after our
	// last write to a window (they are eventually consistent).
	Settle time.Duration `mapstructure:"settle"`
	// CancelWindow: meter events are cancelled only this soon after they
	// were sent (Stripe: 24 h), and a pending intent is re-sent only
	// within it (idempotency keys and identifiers last 24 h).
	CancelWindow time.Duration `mapstructure:"cancel_window"`
	// MaxAge: meter event timestamps must be within 35 days (Stripe).
	MaxAge time.Duration `mapstructure:"max_age"`
	// UsageRecordClose is the invoice finalization grace: a period's
	// invoice is finalized this long after the period ends (Stripe's
	// default: 1 h); after that, usage of the period is reported
	// (invoice_finalized), never sent, in both modes.
	UsageRecordClose time.Duration `mapstructure:"usage_record_close"`
	// SubscriptionTTL: the account's subscriptions (periods, items) are
	// listed once (100 per call) and re-listed after this long.
	SubscriptionTTL time.Duration `mapstructure:"subscription_ttl"`
	// Workers process (customer, meter) groups concurrently; within a
	// group calls are sequential (one in flight per customer and meter).
	Workers int `mapstructure:"workers"`
	// CheckAggregates makes drift also compare the aggregator's usage_1h
	// with the raw table (hours that differ need usage-aggregator reconcile).
	CheckAggregates bool `mapstructure:"check_aggregates"`
	DryRun          bool `mapstructure:"dry_run"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		Meters:           map[string]Meter{},
		Interval:         time.Minute,
		CloseAfter:       15 * time.Minute,
		Grace:            72 * time.Hour,
		Settle:           10 * time.Minute,
		CancelWindow:     23 * time.Hour,
		MaxAge:           35*24*time.Hour - time.Hour,
		UsageRecordClose: time.Hour,
		SubscriptionTTL:  10 * time.Minute,
		CustomerTTL:      time.Hour,
		Workers:          16,
		LookupCustomers:  true,
		CheckAggregates:  true,
	}
}

// Normalize fills defaults and checks the config against the plans file,
// naming the key at fault.
func (c *Config) Normalize(p *plans.Config) error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("billing.%s: %s", key, fmt.Sprintf(format, args...)))
	}
	if len(c.Meters) == 0 {
		bad("meters", "at least one meter to bill is required")
	}
	for name, m := range c.Meters {
		key := "meters." + name
		if m.Mode == "" {
			m.Mode = MeterEvents
		}
		if m.EventName == "" {
			m.EventName = name
		}
		if m.Scale == "" {
			m.Scale = "1"
		}
		var err error
		if m.scale, err = decimal.NewFromString(m.Scale); err != nil || !m.scale.IsPositive() {
			bad(key+".scale", "%q is not a positive decimal", m.Scale)
		}
		agg := plans.Sum
		if p != nil {
			pm, known := p.MeterFor(name)
			if !known {
				bad(key, "meter %q is not defined in the plans file", name)
			}
			agg = pm.Aggregation
		}
		switch m.Mode {
		case MeterEvents:
			if m.MeterID == "" {
				bad(key+".meter_id", "required: the meter's settings are checked at start and its summaries read back")
			}
			// Hourly events add up on Stripe: only for meters whose hours add up.
			if agg != plans.Sum && agg != plans.Count {
				bad(key+".mode", "meter_events needs a sum or count meter (%s is %s): use usage_records", name, agg)
			}
		case UsageRecords:
			if m.Price == "" {
				bad(key+".price", "required: usage records are written to the subscription item on this price")
			}
		default:
			bad(key+".mode", "%q is not meter_events or usage_records", m.Mode)
		}
		c.Meters[name] = m
	}
	seen := map[string]bool{}
	for i, cu := range c.Customers {
		if cu.Tenant == "" || cu.Customer == "" {
			bad(fmt.Sprintf("customers[%d]", i), "tenant and customer are required")
		}
		if seen[cu.Tenant] {
			bad(fmt.Sprintf("customers[%d]", i), "tenant %q listed twice", cu.Tenant)
		}
		seen[cu.Tenant] = true
	}
	for key, d := range map[string]time.Duration{"interval": c.Interval, "grace": c.Grace, "cancel_window": c.CancelWindow, "max_age": c.MaxAge,
		"subscription_ttl": c.SubscriptionTTL, "customer_ttl": c.CustomerTTL} {
		if d <= 0 {
			bad(key, "must be > 0")
		}
	}
	if c.CloseAfter < 0 || c.Settle < 0 || c.UsageRecordClose < 0 {
		bad("close_after/settle/usage_record_close", "must not be negative")
	}
	if c.Workers < 1 {
		bad("workers", "must be >= 1")
	}
	return errors.Join(errs...)
}
