package service

import (
	"errors"
	"fmt"
	"time"

	"github.com/usagemeter/usagemeter/aggregator/state"
)

// Config tunes usage-aggregator. Keys are the viper/YAML names.
type Config struct {
	Brokers         []string `mapstructure:"brokers"`
	Topic           string   `mapstructure:"topic"`
	GroupID         string   `mapstructure:"group_id"`
	QuotaTopic      string   `mapstructure:"quota_topic"`
	LateTopic       string   `mapstructure:"late_topic"`
	DLQTopic        string   `mapstructure:"dlq_topic"`
	AssignmentTopic string   `mapstructure:"assignment_topic"`
	// PositionTopic (compacted) receives, per owned partition, the offset
	// through which every quota state is published (schemas.QuotaPosition):
	// quota caches expire pending usage the states should have absorbed.
	// Empty: none is published (caches fall back to their max pending age).
	PositionTopic string `mapstructure:"position_topic"`
	// FlushInterval is how often aggregate rows and the checkpoint are
	// written to ClickHouse.
	FlushInterval time.Duration `mapstructure:"flush_interval"`
	// FlushIdle: when no message has arrived for this long, what was
	// applied is flushed at once instead of at the next FlushInterval, so
	// the tables and the checkpoint do not lag the end of a burst by up to
	// an interval. Continuous traffic never goes idle, so it still flushes
	// once per interval. 0 turns it off.
	FlushIdle time.Duration `mapstructure:"flush_idle"`
	// FlushMinSpacing bounds idle flushes: none starts sooner than this
	// after the previous flush, so traffic that pauses just past FlushIdle
	// again and again costs at most one flush per FlushMinSpacing.
	FlushMinSpacing time.Duration `mapstructure:"flush_min_spacing"`
	// QuotaCoalesce: a quota-state key is published at most this often.
	QuotaCoalesce   time.Duration `mapstructure:"quota_coalesce"`
	AllowedLateness time.Duration `mapstructure:"allowed_lateness"`
	DedupHorizon    int           `mapstructure:"dedup_horizon"`
	RetryMin        time.Duration `mapstructure:"retry_min"`
	RetryMax        time.Duration `mapstructure:"retry_max"`
	// ShutdownTimeout bounds the final flush after SIGTERM.
	ShutdownTimeout time.Duration `mapstructure:"shutdown_timeout"`
	// SessionTimeout: a member that stops heartbeating (a crash, SIGKILL)
	// holds its partitions this long; then the group gives them to the
	// others, which resume from the checkpoint.
	SessionTimeout time.Duration `mapstructure:"session_timeout"`
	// OnRetentionGap says what to do when a partition's checkpoint is older
	// than the topic's first offset (retention deleted events the
	// aggregator never read): "fail" stops the service (run reconcile over
	// the range from the raw table, then set "continue"); "continue" skips
	// them. Both log the gap and count it in a metric.
	OnRetentionGap string `mapstructure:"on_retention_gap"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		Brokers:         []string{"127.0.0.1:19092"},
		Topic:           "usage.events",
		GroupID:         "usage-aggregator",
		QuotaTopic:      "usage.quota-state",
		LateTopic:       "usage.events.late",
		DLQTopic:        "usage.events.dlq",
		AssignmentTopic: "usage.plan-assignments",
		PositionTopic:   "usage.quota-positions",
		FlushInterval:   time.Second,
		FlushIdle:       100 * time.Millisecond,
		FlushMinSpacing: 250 * time.Millisecond,
		QuotaCoalesce:   100 * time.Millisecond,
		AllowedLateness: 10 * time.Minute,
		DedupHorizon:    200_000,
		RetryMin:        100 * time.Millisecond,
		RetryMax:        10 * time.Second,
		ShutdownTimeout: 30 * time.Second,
		SessionTimeout:  10 * time.Second,
		OnRetentionGap:  "fail",
	}
}

// Validate names the first bad key and why.
func (c Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("aggregator.%s: %s", key, fmt.Sprintf(format, args...)))
	}
	if len(c.Brokers) == 0 {
		bad("brokers", "at least one host:port is required")
	}
	for key, v := range map[string]string{"topic": c.Topic, "group_id": c.GroupID, "quota_topic": c.QuotaTopic,
		"late_topic": c.LateTopic, "dlq_topic": c.DLQTopic} {
		if v == "" {
			bad(key, "must not be empty")
		}
	}
	if c.FlushInterval <= 0 {
		bad("flush_interval", "must be > 0")
	}
	if c.FlushIdle < 0 {
		bad("flush_idle", "must not be negative (0 turns it off)")
	}
	if c.FlushMinSpacing < 0 {
		bad("flush_min_spacing", "must not be negative")
	}
	if c.QuotaCoalesce < 0 {
		bad("quota_coalesce", "must not be negative")
	}
	if c.AllowedLateness < 0 {
		bad("allowed_lateness", "must not be negative")
	}
	if c.DedupHorizon < 1 || c.DedupHorizon > state.MaxDedupHorizon {
		bad("dedup_horizon", "must be between 1 and %d, got %d", state.MaxDedupHorizon, c.DedupHorizon)
	}
	if c.RetryMin <= 0 || c.RetryMax < c.RetryMin {
		bad("retry_min", "need 0 < retry_min <= retry_max")
	}
	// Brokers refuse sessions outside group.min/max.session.timeout.ms
	// (6 s and 30 min by default).
	if c.SessionTimeout < 6*time.Second || c.SessionTimeout > 30*time.Minute {
		bad("session_timeout", "must be between 6s and 30m (the broker's defaults), got %s", c.SessionTimeout)
	}
	if c.OnRetentionGap != "fail" && c.OnRetentionGap != "continue" {
		bad("on_retention_gap", "must be fail or continue, got %q", c.OnRetentionGap)
	}
	return errors.Join(errs...)
}
