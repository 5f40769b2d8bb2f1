package quota

import (
	"errors"
	"fmt"
	"time"

	"github.com/usagemeter/usagemeter/schemas"
)

// Mode is what Check does when its state is stale (see Config.MaxStaleness).
type Mode string

const (
	// Open allows the request whatever the held state says; what it allows
	// still counts as pending, so the level climbs and the next level's
	// mode takes over.
	Open Mode = "open"
	// Closed refuses the request with ReasonStale.
	Closed Mode = "closed"
	// LastKnown decides from the last known state plus pending, as when fresh.
	LastKnown Mode = "last_known"
)

// FailModes picks a Mode by the level the held state and pending give
// before the request.
type FailModes struct {
	OK      Mode `mapstructure:"ok"`
	Warning Mode `mapstructure:"warning"` // any warning_<N>
	AtLimit Mode `mapstructure:"at_limit"`
	Overage Mode `mapstructure:"overage"`
	Blocked Mode `mapstructure:"blocked"`
}

// DefaultFailModes: open while ok, last known state at warning and overage,
// closed at at_limit and blocked.
func DefaultFailModes() FailModes {
	return FailModes{OK: Open, Warning: LastKnown, AtLimit: Closed, Overage: LastKnown, Blocked: Closed}
}

// RateLimit is a token bucket for fair use: PerSecond units per second,
// bursts of Burst units. A zero PerSecond means no rate limit.
type RateLimit struct {
	PerSecond float64 `mapstructure:"per_second"`
	Burst     int     `mapstructure:"burst"`
}

// Config configures a Cache.
type Config struct {
	Brokers         []string `mapstructure:"brokers"`
	StateTopic      string   `mapstructure:"state_topic"`      // usage.quota-state
	AssignmentTopic string   `mapstructure:"assignment_topic"` // usage.plan-assignments
	// MaxStaleness: a decision is stale when the cache last knew it was
	// caught up with both topics longer ago than this (or never did).
	MaxStaleness time.Duration `mapstructure:"max_staleness"`
	// PollInterval is how often the high-water marks are read: it bounds
	// how fast staleness is noticed and how old Age can be when fresh.
	PollInterval time.Duration `mapstructure:"poll_interval"`
	// FailModes apply to every meter without an entry in MeterFailModes.
	FailModes FailModes `mapstructure:"fail_modes"`
	// BeforeReady is the mode until the cache has first caught up with both
	// topics. It then knows no usage at all, so "open while ok" would let
	// every app restart overshoot every tenant: closed by default (serve
	// after WaitReady, or accept 503s for the first second).
	BeforeReady    Mode                 `mapstructure:"before_ready"`
	MeterFailModes map[string]FailModes `mapstructure:"meter_fail_modes"`
	// RateLimits by meter; PlanRateLimits[plan][meter] overrides them.
	RateLimits     map[string]RateLimit            `mapstructure:"rate_limits"`
	PlanRateLimits map[string]map[string]RateLimit `mapstructure:"plan_rate_limits"`
	// IdleEviction drops a tenant and meter entry nobody checked for this
	// long when it holds nothing Check needs (no pending in its current
	// period, no state of a period that ended less than this ago): checks
	// of many tenants that never use anything do not grow memory for
	// good. 0 keeps every entry. Default 1h.
	IdleEviction time.Duration `mapstructure:"idle_eviction"`
	// RecentIDs is how many event ids CheckEvent remembers to answer a
	// retried event as a duplicate (about 100 bytes each). Default 100000.
	RecentIDs int `mapstructure:"recent_ids"`
	// EventsTopic is the topic tracked events go to (usage.events): the
	// cache reads its high-water marks to bound the offset of an event the
	// broker acknowledged.
	EventsTopic string `mapstructure:"events_topic"`
	// PositionTopic carries the aggregator's positions
	// (schemas.QuotaPosition): a tracked event's pending expires once the
	// position of its partition covers it (it is in a state, or never will
	// be: DLQ, duplicate id, late). Empty: by MaxPendingAge only.
	PositionTopic string `mapstructure:"position_topic"`
	// MaxPendingAge expires a tracked event's pending this long after the
	// broker acknowledged it even when no position covers it (positions
	// not published, aggregator stopped). Undelivered events never expire.
	// 0: never. Default 10m.
	MaxPendingAge time.Duration `mapstructure:"max_pending_age"`
}

// DefaultConfig is the configuration for the local engines.
func DefaultConfig() Config {
	return Config{
		Brokers:         []string{"127.0.0.1:19092"},
		StateTopic:      schemas.QuotaStateTopic,
		AssignmentTopic: "usage.plan-assignments",
		MaxStaleness:    5 * time.Second,
		PollInterval:    200 * time.Millisecond,
		FailModes:       DefaultFailModes(),
		BeforeReady:     Closed,
		IdleEviction:    time.Hour,
		RecentIDs:       100_000,
		EventsTopic:     "usage.events",
		PositionTopic:   schemas.QuotaPositionTopic,
		MaxPendingAge:   10 * time.Minute,
	}
}

// Validate names the first key at fault.
func (c *Config) Validate() error {
	var errs []error
	if len(c.Brokers) == 0 {
		errs = append(errs, errors.New("brokers: at least one broker is required"))
	}
	if c.StateTopic == "" || c.AssignmentTopic == "" {
		errs = append(errs, errors.New("state_topic and assignment_topic are required"))
	}
	if c.MaxStaleness <= 0 || c.PollInterval <= 0 {
		errs = append(errs, errors.New("max_staleness and poll_interval must be positive"))
	}
	if c.RecentIDs < 0 {
		errs = append(errs, fmt.Errorf("recent_ids: %d, want >= 0", c.RecentIDs))
	}
	if c.MaxPendingAge < 0 {
		errs = append(errs, fmt.Errorf("max_pending_age: %s, want >= 0 (0: never)", c.MaxPendingAge))
	}
	if c.IdleEviction < 0 {
		errs = append(errs, fmt.Errorf("idle_eviction: %s, want >= 0 (0: never)", c.IdleEviction))
	}
	check := func(key string, f FailModes) {
		for level, m := range map[string]Mode{"ok": f.OK, "warning": f.Warning, "at_limit": f.AtLimit, "overage": f.Overage, "blocked": f.Blocked} {
			if m != Open && m != Closed && m != LastKnown {
				errs = append(errs, fmt.Errorf("%s.%s: %q is not open, closed or last_known", key, level, m))
			}
		}
	}
	check("fail_modes", c.FailModes)
	if c.BeforeReady != Open && c.BeforeReady != Closed && c.BeforeReady != LastKnown {
		errs = append(errs, fmt.Errorf("before_ready: %q is not open, closed or last_known", c.BeforeReady))
	}
	for meter, f := range c.MeterFailModes {
		check("meter_fail_modes."+meter, f)
	}
	for meter, r := range c.RateLimits {
		if r.PerSecond < 0 || (r.PerSecond > 0 && r.Burst < 1) {
			errs = append(errs, fmt.Errorf("rate_limits.%s: per_second must be >= 0 and burst >= 1", meter))
		}
	}
	for plan, m := range c.PlanRateLimits {
		for meter, r := range m {
			if r.PerSecond < 0 || (r.PerSecond > 0 && r.Burst < 1) {
				errs = append(errs, fmt.Errorf("plan_rate_limits.%s.%s: per_second must be >= 0 and burst >= 1", plan, meter))
			}
		}
	}
	return errors.Join(errs...)
}
