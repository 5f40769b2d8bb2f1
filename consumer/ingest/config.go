package ingest

import (
	"errors"
	"fmt"
	"time"
)

// Config tunes the raw-event consumer. Keys are the viper/YAML names.
type Config struct {
	Brokers  []string `mapstructure:"brokers"`
	Topic    string   `mapstructure:"topic"`
	GroupID  string   `mapstructure:"group_id"`
	DLQTopic string   `mapstructure:"dlq_topic"`
	// A batch is flushed to ClickHouse when it holds BatchSize events or its
	// first event is FlushInterval old, whichever comes first.
	BatchSize     int           `mapstructure:"batch_size"`
	FlushInterval time.Duration `mapstructure:"flush_interval"`
	// FlushIdle flushes a partial batch early when no message has arrived
	// for this long and the previous flush is at least FlushMinSpacing old
	// (the input went quiet: the end of a burst reaches ClickHouse about
	// FlushIdle after its last event instead of up to FlushInterval later).
	// Continuous traffic never idles this long, so it adds no inserts there;
	// trickling traffic, quiet for FlushIdle between events, costs at most
	// one insert per FlushMinSpacing (4/s by default) instead of one per
	// FlushInterval. FlushIdle 0 disables it.
	FlushIdle       time.Duration `mapstructure:"flush_idle"`
	FlushMinSpacing time.Duration `mapstructure:"flush_min_spacing"`
	// Insert (and DLQ write) retries back off from RetryMin to RetryMax,
	// forever: offsets are never committed past unwritten data.
	RetryMin time.Duration `mapstructure:"retry_min"`
	RetryMax time.Duration `mapstructure:"retry_max"`
	// ShutdownTimeout bounds the final flush on SIGTERM.
	ShutdownTimeout time.Duration `mapstructure:"shutdown_timeout"`
	// SessionTimeout: a member that stops heartbeating (a crash, SIGKILL)
	// holds its partitions this long before the group moves them; kafka-go
	// heartbeats every SessionTimeout/10.
	SessionTimeout time.Duration `mapstructure:"session_timeout"`
	// FetchMaxBytes caps one fetch response; FetchMaxWait is how long the
	// broker may hold a fetch waiting for data.
	FetchMaxBytes int           `mapstructure:"fetch_max_bytes"`
	FetchMaxWait  time.Duration `mapstructure:"fetch_max_wait"`
	// OnRetentionGap is what to do when retention deleted events before
	// they were read (svckit.OffsetGaps): "fail" stops the consumer (after
	// committing what it read before the gap), "continue" counts them in
	// usage_consumer_retention_gap_events_total and goes on. The
	// aggregator has the same key.
	OnRetentionGap string `mapstructure:"on_retention_gap"`
}

// DefaultConfig returns the defaults documented in consumer/README.md.
func DefaultConfig() Config {
	return Config{
		Brokers:         []string{"127.0.0.1:19092"},
		Topic:           "usage.events",
		GroupID:         "usage-consumer",
		DLQTopic:        "usage.events.dlq",
		BatchSize:       50000,
		FlushInterval:   time.Second,
		FlushIdle:       100 * time.Millisecond,
		FlushMinSpacing: 250 * time.Millisecond,
		RetryMin:        100 * time.Millisecond,
		RetryMax:        10 * time.Second,
		ShutdownTimeout: 30 * time.Second,
		SessionTimeout:  10 * time.Second,
		FetchMaxBytes:   16 << 20,
		FetchMaxWait:    250 * time.Millisecond,
		OnRetentionGap:  "fail",
	}
}

// Validate names the first bad key and why.
func (c Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("kafka.%s: %s", key, fmt.Sprintf(format, args...)))
	}
	if len(c.Brokers) == 0 {
		bad("brokers", "at least one host:port is required")
	}
	if c.Topic == "" {
		bad("topic", "must not be empty")
	}
	if c.GroupID == "" {
		bad("group_id", "must not be empty")
	}
	if c.DLQTopic == "" || c.DLQTopic == c.Topic {
		bad("dlq_topic", "must be set and differ from topic")
	}
	if c.BatchSize < 1 {
		bad("batch_size", "must be >= 1, got %d", c.BatchSize)
	}
	if c.FlushInterval <= 0 {
		bad("flush_interval", "must be > 0, got %s", c.FlushInterval)
	}
	if c.FlushIdle < 0 {
		bad("flush_idle", "must be >= 0 (0 disables it), got %s", c.FlushIdle)
	}
	if c.FlushMinSpacing < 0 {
		bad("flush_min_spacing", "must be >= 0, got %s", c.FlushMinSpacing)
	}
	if c.RetryMin <= 0 || c.RetryMax < c.RetryMin {
		bad("retry_min", "need 0 < retry_min <= retry_max, got %s and %s", c.RetryMin, c.RetryMax)
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
