package producer

import (
	"time"

	"github.com/usagemeter/usagemeter/schemas"
)

type config struct {
	topic         string
	compression   string
	batchSize     int
	batchBytes    int64
	batchTimeout  time.Duration
	writeTimeout  time.Duration
	maxAttempts   int
	async         bool
	onError       func(error, []schemas.UsageEvent)
	now           func() time.Time
	validatorOpts []schemas.Option
}

// Batching defaults (see README "Performance"). kafka-go allocates room for
// BatchSize messages with every batch, full or not, so the count bound stays
// near what BatchBytes lets through (1 MiB / ~270-byte events = ~3,900):
// 10,000 cost 1.5 MB per batch. The linger is short for sync publishes,
// which wait for it, and longer for async ones, whose callers do not: at
// 10k events/s it cuts produce requests from ~37 to ~14 per 1000 events.
const (
	defaultBatchSize    = 4096
	defaultLingerSync   = 5 * time.Millisecond
	defaultLingerAsync  = 20 * time.Millisecond
	defaultBatchBytes   = 1 << 20
	defaultWriteTimeout = 10 * time.Second
)

func defaultConfig() config {
	return config{
		topic:        DefaultTopic,
		compression:  "lz4",
		batchSize:    defaultBatchSize,
		batchBytes:   defaultBatchBytes,
		writeTimeout: defaultWriteTimeout,
		maxAttempts:  10,
		now:          time.Now,
	}
}

// Option configures a Publisher.
type Option func(*config)

// WithTopic overrides the topic (default usage.events).
func WithTopic(topic string) Option { return func(c *config) { c.topic = topic } }

// WithCompression selects the batch codec: "lz4" (default), "zstd",
// "snappy", "gzip" or "none".
func WithCompression(codec string) Option { return func(c *config) { c.compression = codec } }

// WithBatching bounds a batch per partition by message count and bytes, and
// sets how long a partial batch waits for more events. A short timeout keeps
// sync publishes fast; a long one packs bigger batches. The defaults are
// 4096 events, 1 MiB and a timeout of 5 ms (sync) or 20 ms (async); a zero
// or negative argument keeps its default.
func WithBatching(maxEvents int, maxBytes int64, timeout time.Duration) Option {
	return func(c *config) {
		if maxEvents > 0 {
			c.batchSize = maxEvents
		}
		if maxBytes > 0 {
			c.batchBytes = maxBytes
		}
		if timeout > 0 {
			c.batchTimeout = timeout
		}
	}
}

// WithRetries sets how many times a batch is attempted and how long one
// write may take.
func WithRetries(maxAttempts int, writeTimeout time.Duration) Option {
	return func(c *config) { c.maxAttempts, c.writeTimeout = maxAttempts, writeTimeout }
}

// WithAsync makes Publish return once events are queued. onError receives
// every batch that could not be delivered after retries, with its events;
// republishing them is safe, since their ids are kept. onError runs on the
// writer's goroutine: keep it short. It may be nil, in which case failures
// are only counted in Stats.
func WithAsync(onError func(err error, events []schemas.UsageEvent)) Option {
	return func(c *config) { c.async, c.onError = true, onError }
}

// WithValidatorOptions tunes event validation (e.g. allowed clock skew).
func WithValidatorOptions(opts ...schemas.Option) Option {
	return func(c *config) { c.validatorOpts = append(c.validatorOpts, opts...) }
}

// WithClock replaces time.Now for timestamps the Publisher fills, for tests.
func WithClock(now func() time.Time) Option { return func(c *config) { c.now = now } }
