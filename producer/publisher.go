package producer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/compress"
	"github.com/shopspring/decimal"

	"github.com/usagemeter/usagemeter/schemas"
)

// DefaultTopic is the topic usage events are published to.
const DefaultTopic = "usage.events"

// ErrClosed is returned by Publish after Close.
var ErrClosed = errors.New("producer: publisher is closed")

// Publisher publishes usage events to Kafka. It is safe for concurrent use.
type Publisher struct {
	w         *kafka.Writer
	meta      *topicMetadata // the writer's Transport
	validator *schemas.Validator
	async     bool
	onError   func(error, []schemas.UsageEvent)
	now       func() time.Time

	closeOnce sync.Once
	closed    atomic.Bool
	stats     counters
	ids       idClock
	// msgs recycles the []kafka.Message of Publish calls: kafka-go copies
	// each Message into its batch before WriteMessages returns, so the
	// slice is free again once the call succeeded (on error it may be
	// referenced by the error, and is dropped).
	msgs sync.Pool
}

type counters struct {
	published, failed, refused atomic.Int64
}

// Stats are cumulative counts since the Publisher was created.
type Stats struct {
	Published int64 // acknowledged by the broker (acks=all)
	Failed    int64 // given up after retries, or not queued; reported to the caller
	Refused   int64 // in a Publish call refused for an invalid event; never sent
}

// New returns a Publisher for the given brokers ("host:port").
func New(brokers []string, opts ...Option) (*Publisher, error) {
	if len(brokers) == 0 {
		return nil, errors.New("producer: at least one broker address is required")
	}
	for _, b := range brokers {
		if b == "" {
			return nil, errors.New("producer: empty broker address")
		}
	}
	cfg := defaultConfig()
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.batchTimeout <= 0 {
		cfg.batchTimeout = defaultLingerSync
		if cfg.async {
			cfg.batchTimeout = defaultLingerAsync
		}
	}
	codec, err := compressionCodec(cfg.compression)
	if err != nil {
		return nil, err
	}
	if cfg.topic == "" {
		return nil, errors.New("producer: topic must not be empty")
	}
	p := &Publisher{
		meta:      &topicMetadata{},
		validator: schemas.NewValidator(cfg.validatorOpts...),
		async:     cfg.async,
		onError:   cfg.onError,
		now:       cfg.now,
	}
	p.w = &kafka.Writer{
		Addr:                   kafka.TCP(brokers...),
		Topic:                  cfg.topic,
		Balancer:               kafka.Murmur2Balancer{},
		BatchSize:              cfg.batchSize,
		BatchBytes:             cfg.batchBytes,
		BatchTimeout:           cfg.batchTimeout,
		WriteTimeout:           cfg.writeTimeout,
		MaxAttempts:            cfg.maxAttempts,
		RequiredAcks:           kafka.RequireAll,
		Compression:            codec,
		Async:                  cfg.async,
		AllowAutoTopicCreation: false,
		Completion:             p.complete,
		Transport:              p.meta,
	}
	return p, nil
}

func compressionCodec(name string) (kafka.Compression, error) {
	switch name {
	case "lz4":
		return kafka.Lz4, nil
	case "zstd":
		return kafka.Zstd, nil
	case "snappy":
		return kafka.Snappy, nil
	case "gzip":
		return kafka.Gzip, nil
	case "none", "":
		return compress.None, nil
	}
	return 0, fmt.Errorf("producer: compression %q: want lz4, zstd, snappy, gzip or none", name)
}

// NewEvent returns an event with its idempotency key (a UUIDv7) and its
// timestamp (now, UTC) already set. Build events with it, or set ID with
// schemas.NewID, before the first Publish: a retry of the same value then
// carries the same id and is counted once.
func NewEvent(tenantID, featureType string, quantity decimal.Decimal) schemas.UsageEvent {
	return schemas.UsageEvent{ID: schemas.NewID(), TenantID: tenantID, FeatureType: featureType,
		Quantity: quantity, Timestamp: time.Now().UTC()}
}

// PublishError is returned when events were valid but not acknowledged
// (sync mode) or not queued (async mode). Events holds them as sent, with
// the ids and timestamps Publish filled: republish exactly these to retry
// without double counting. It wraps the cause (context.DeadlineExceeded,
// kafka.WriteErrors, ...).
type PublishError struct {
	Events []schemas.UsageEvent
	Err    error
}

func (e *PublishError) Error() string {
	return fmt.Sprintf("producer: publish %d events: %v", len(e.Events), e.Err)
}

func (e *PublishError) Unwrap() error { return e.Err }

// Publish validates the events and publishes them. Each event missing an ID
// gets a UUIDv7 and each missing Timestamp gets the current time. The
// elements of the slice given with events... are updated in place; a
// single value (Publish(ctx, ev)) is a copy, so to retry one use NewEvent
// or schemas.NewID first, or the Events of the *PublishError.
//
// If any event is invalid, Publish returns its *schemas.ValidationError
// (wrapped, naming the index) and publishes none of them. The checks are
// the consumer's, encoded size included: what Publish accepts, the
// consumer accepts, and what it refuses the consumer would send to the DLQ
// with the same tag. If ctx is already done, Publish returns its error and
// publishes nothing.
//
// In sync mode (the default) Publish returns once the broker acknowledged
// every event (acks=all) or returns a *PublishError. In async mode it
// returns as soon as the events are queued; delivery failures go to the
// callback given to WithAsync, and Close waits for everything queued.
// Failures known before queueing are returned in both modes: an error from
// Publish in async mode means the events were not queued (for instance the
// topic does not exist: kafka-go looks the topic up in its metadata cache
// before queueing, without retries); they count as Failed but are not
// passed to the callback.
func (p *Publisher) Publish(ctx context.Context, events ...schemas.UsageEvent) error {
	if p.closed.Load() {
		return ErrClosed
	}
	if len(events) == 0 {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("producer: publish %d events: %w", len(events), err)
	}
	now, wall := p.now(), time.Now().UnixNano() // now for timestamps (WithClock), wall for ids and metadata
	msgs := p.getMsgs(len(events))
	if err := p.fillIDs(events, wall); err != nil {
		return fmt.Errorf("producer: publish %d events: %w", len(events), err)
	}
	// Encoded events go to slabs of up to slabBytes: one allocation per
	// slab instead of one per event, and small enough to stay off the
	// large-object path (a 256 KiB slab per call of 1000 was zeroed and
	// page-faulted afresh each time). The writer may keep the bytes after
	// Publish returns (async mode, or a cancelled context), so a slab is
	// never reused.
	//
	// Each partition the writer will choose gets slabs of its own, so that
	// the records of one produce request lie together in memory: kafka-go
	// copies each record into its lz4 block, and records picked from all
	// over the call's slabs made that copy wait on cache misses (a quarter
	// of the SDK's CPU). The partition is the routing rule's (Murmur2 of
	// the tenant, as the writer's balancer) over the last partition count
	// the writer saw; a stale count only costs locality.
	parts := p.meta.partitions(p.w.Topic)
	if parts > maxLayoutPartitions {
		parts = 0
	}
	var left [maxLayoutPartitions]int // events still to encode, per partition
	if parts > 1 {
		for i := range events {
			left[schemas.PartitionFor(events[i].TenantID, parts)]++
		}
	} else {
		left[0] = len(events)
	}
	var slabs [maxLayoutPartitions][]byte
	// One encoder per call: the validator's checks and AppendEvent's bytes,
	// in one pass over the usual event, the clock read once.
	enc := p.validator.BatchEncoder()
	for i := range events {
		e := &events[i]
		if e.Timestamp.IsZero() {
			e.Timestamp = now
		}
		k := 0
		if parts > 1 {
			k = schemas.PartitionFor(e.TenantID, parts)
		}
		slab := slabs[k]
		if cap(slab)-len(slab) < maxEventGuess {
			slab = make([]byte, 0, min(slabBytes, maxEventGuess*left[k]))
		}
		left[k]--
		start := len(slab)
		var err error
		if slab, err = enc.Append(slab, e); err != nil {
			p.putMsgs(msgs)
			p.stats.refused.Add(int64(len(events)))
			return fmt.Errorf("producer: event %d (id %s) refused: %w", i, e.ID, err)
		}
		end := len(slab)
		// The key (the tenant id) goes to the slab too: no allocation of
		// its own per event.
		slab = append(slab, e.TenantID...)
		msgs[i].Value = slab[start:end:end]
		msgs[i].Key = slab[end:len(slab):len(slab)]
		slabs[k] = slab
	}
	if p.async && p.onError != nil {
		// One copy of the call's events for the error callback; a pointer
		// in WriterData is not boxed, an event value was (one allocation
		// per event).
		kept := slices.Clone(events)
		for i := range kept {
			msgs[i].WriterData = &kept[i]
		}
	}
	p.meta.asOf.Store(wall)
	err := p.w.WriteMessages(ctx, msgs...)
	if err == nil {
		p.putMsgs(msgs)
		return nil
	}
	if errors.Is(err, io.ErrClosedPipe) && p.closed.Load() {
		return ErrClosed // Close ran since the check above
	}
	if !p.queued(ctx, err) {
		p.stats.failed.Add(int64(len(events)))
	}
	// A cancelled publish may still be delivered; publishing the same
	// events again is safe (same ids).
	return &PublishError{Events: slices.Clone(events), Err: err}
}

const (
	// slabBytes bounds one slab of encoded events: within Go's largest
	// size class (32 KiB), and below the 32 KiB - 8 above which even a
	// pointer-free object takes the large-object path (page-level
	// allocation, zeroed in chunks: 32 KiB slabs did).
	slabBytes = 32<<10 - 256
	// maxEventGuess is the room a slab keeps for the next event (a typical
	// event is ~280 bytes; a larger one makes append grow the slab).
	maxEventGuess = 512
	// maxLayoutPartitions bounds the partitions that get slabs of their
	// own in a call; a topic with more shares one run of slabs.
	maxLayoutPartitions = 64
)

// getMsgs returns a zeroed []kafka.Message of length n.
func (p *Publisher) getMsgs(n int) []kafka.Message {
	if m, ok := p.msgs.Get().(*[]kafka.Message); ok && cap(*m) >= n {
		return (*m)[:n]
	}
	return make([]kafka.Message, n)
}

// putMsgs keeps msgs for the next call, without references to this call's
// bytes and events.
func (p *Publisher) putMsgs(msgs []kafka.Message) {
	clear(msgs)
	p.msgs.Put(&msgs)
}

// queued reports whether the events of a WriteMessages call that returned err
// reached the writer's batches, whose outcome complete counts. In async mode
// an error always means they did not; in sync mode the writer returns
// WriteErrors for completed batches and the context's error when it stopped
// waiting for queued ones.
func (p *Publisher) queued(ctx context.Context, err error) bool {
	if p.async {
		return false
	}
	var werrs kafka.WriteErrors
	return errors.As(err, &werrs) || (ctx.Err() != nil && errors.Is(err, ctx.Err()))
}

// complete runs for every batch the writer finished, in both modes.
func (p *Publisher) complete(msgs []kafka.Message, err error) {
	if err == nil {
		p.stats.published.Add(int64(len(msgs)))
		return
	}
	p.stats.failed.Add(int64(len(msgs)))
	if !p.async || p.onError == nil {
		return // sync mode: Publish returns the error
	}
	events := make([]schemas.UsageEvent, 0, len(msgs))
	for _, m := range msgs {
		if e, ok := m.WriterData.(*schemas.UsageEvent); ok {
			events = append(events, *e)
		}
	}
	p.onError(fmt.Errorf("producer: deliver %d events: %w", len(msgs), err), events)
}

// Stats returns cumulative counts.
func (p *Publisher) Stats() Stats {
	return Stats{Published: p.stats.published.Load(), Failed: p.stats.failed.Load(), Refused: p.stats.refused.Load()}
}

// Close flushes every queued event, waits for the broker's answers (and the
// async error callbacks) and releases the connections. Publish after Close
// returns ErrClosed.
func (p *Publisher) Close() error {
	var err error
	p.closeOnce.Do(func() {
		p.closed.Store(true)
		if cerr := p.w.Close(); cerr != nil {
			err = fmt.Errorf("producer: close: %w", cerr)
		}
	})
	return err
}
