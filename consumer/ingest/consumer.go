// Package ingest is the raw-event sink: it reads usage events from Kafka
// with a consumer group, validates them, writes the valid ones to ClickHouse
// in batches and the invalid ones to the DLQ, and only then commits the
// offsets.
//
// # Delivery
//
// Offsets are committed only after the batch they cover is in ClickHouse
// and its invalid messages are in the DLQ, so a crash at any point re-reads
// uncommitted messages instead of losing them. A re-read event is inserted
// again; usage_events is a ReplacingMergeTree keyed by (tenant_id, id), so
// the deduplicated view counts it once. Together: at-least-once writes,
// exactly-once counts.
//
// # Back-pressure
//
// One batch is written while the next one fills. When ClickHouse is down the
// writer retries with exponential backoff, forever; the next batch fills up
// and the consumer stops fetching, which holds every assigned partition in
// place (the partitions' fetchers hand over to one loop, so all of them
// wait) while the group membership stays alive through heartbeats. When
// ClickHouse returns, the writer catches up batch by batch.
//
// # Rerouting
//
// A valid event that breaks the routing rule (no key, another key, or the
// right key on another partition: librdkafka's CRC32 default) is not
// written from where it was read. Its copy (same bytes, so the same id;
// key = tenant_id; svckit.Reroute) is written to its tenant's partition,
// acks=all, before the original's offset is committed, and the copy is what
// the raw table and the aggregator count: both judge the same record with
// the same svckit.Intake. A failed re-publish is retried like an insert
// and nothing is committed past it; a crash between the re-publish and
// the commit writes the copy again, which is a retry like any other (same
// id, deduplicated by the raw table and the aggregator). The copy passes
// the routing rule, so it is never re-routed again.
package ingest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	"go.uber.org/zap"

	"github.com/usagemeter/usagemeter/consumer/chstore"
	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/svckit"
	"github.com/usagemeter/usagemeter/svckit/backoff"
	"github.com/usagemeter/usagemeter/svckit/deadletter"
)

// Store writes a batch of valid events. Writing the same batch again must
// be harmless (chstore.Store deduplicates by id).
type Store interface {
	Insert(ctx context.Context, b *chstore.EventBatch) error
}

// Consumer is one member of the raw-sink consumer group.
type Consumer struct {
	cfg    Config
	log    *zap.Logger
	store  Store
	intake *svckit.Intake
	// group is the membership in GroupID; each generation's partitions are
	// fetched by readPartition, and gen is the newest generation, which
	// commits (as kafka.Reader commits through its current generation).
	group *kafka.ConsumerGroup
	gen   atomic.Pointer[kafka.Generation]
	// lag is the messages behind each partition's end, as last fetched.
	lagMu sync.Mutex
	lag   map[int]int64
	dlq   *deadletter.Writer
	dlqW  *kafka.Writer
	// rerouteW writes re-routed copies of misrouted events back to Topic,
	// on the partition the routing rule names.
	rerouteW *kafka.Writer
	fallback driver.Conn // dead_letters, when Kafka refuses a DLQ write for good
	m        *metrics
	reg      prometheus.Registerer

	// partitions of Topic, for the routing rule and the re-route writer:
	// the count at start (pinned: it must equal pinned when pinned > 0);
	// Run stops if it changes (svckit.WatchPartitions), as the aggregator
	// does, so the two never judge routing by different counts.
	partitions      atomic.Int64
	pinned          int
	partitionsEvery time.Duration // how often the count is re-read

	// clocked is intake once Run knows the topic keeps broker times, for
	// the lookups metric (read from the scrape goroutine).
	clocked atomic.Pointer[svckit.Intake]

	// gaps tells records retention deleted unread from legitimate offset
	// jumps; only Run's loop uses it.
	gaps *svckit.OffsetGaps

	// view is the event add decodes into, reused (only Run's loop uses it):
	// no metadata map and no big.Int per event.
	view schemas.EventView

	// publishers are the values of the reroute metric's publisher label
	// seen so far, capped at maxPublisherLabels; only Run's loop uses it.
	publishers map[string]bool

	// afterWrite runs after a batch is written (rows, DLQ records and
	// re-routed copies) and before its commit; an error aborts Run without
	// committing. Tests use it to crash there.
	afterWrite func(b *batch) error
}

// maxPublisherLabels bounds the publisher label of
// usage_consumer_rerouted_total: publishers name themselves.
const maxPublisherLabels = 32

// Option configures a Consumer.
type Option func(*Consumer)

// WithRegisterer registers the consumer's Prometheus metrics on reg.
func WithRegisterer(reg prometheus.Registerer) Option { return func(c *Consumer) { c.reg = reg } }

// WithDeadLetterFallback writes DLQ records that Kafka refuses for good
// (too large for the DLQ topic, topic missing) to the ClickHouse table
// dead_letters on conn, instead of retrying them for ever.
func WithDeadLetterFallback(conn driver.Conn) Option { return func(c *Consumer) { c.fallback = conn } }

// WithBeforeCommit runs fn after a batch is durably written (rows, DLQ
// records, re-routed copies) and before its offsets are committed, with the
// number of copies it re-routed; an error aborts Run there without
// committing. The fault suite uses it to SIGKILL usage-consumer exactly
// between a re-publish and its commit.
func WithBeforeCommit(fn func(rerouted int) error) Option {
	return func(c *Consumer) { c.afterWrite = func(b *batch) error { return fn(len(b.reroute)) } }
}

// WithPinnedPartitions makes Run refuse to start unless Topic has n
// partitions (the service's topic_partitions); 0 takes the count it finds.
func WithPinnedPartitions(n int) Option { return func(c *Consumer) { c.pinned = n } }

// New returns a Consumer; Run starts it.
func New(cfg Config, store Store, log *zap.Logger, opts ...Option) (*Consumer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid consumer config: %w", err)
	}
	c := &Consumer{
		cfg:             cfg,
		log:             log,
		store:           store,
		intake:          svckit.NewIntake(svckit.WithAliasedValues()), // nothing writes to a message's Value
		publishers:      map[string]bool{},
		partitionsEvery: 10 * time.Second,
	}
	for _, o := range opts {
		o(c)
	}
	c.m = newMetrics(c.reg)
	c.gaps = svckit.NewOffsetGaps(cfg.Brokers, cfg.Topic, cfg.GroupID)
	// The group as kafka.Reader would configure it for these settings; the
	// fetching is readPartition's (see fetch).
	group, err := kafka.NewConsumerGroup(kafka.ConsumerGroupConfig{
		ID:             cfg.GroupID,
		Brokers:        cfg.Brokers,
		Topics:         []string{cfg.Topic},
		StartOffset:    kafka.FirstOffset,
		SessionTimeout: cfg.SessionTimeout,
		// Heartbeats well inside the session, so only a dead member times out.
		HeartbeatInterval:     cfg.SessionTimeout / 10,
		RebalanceTimeout:      cfg.SessionTimeout,
		WatchPartitionChanges: true,
		ErrorLogger:           kafka.LoggerFunc(func(msg string, args ...any) { log.Warn("kafka reader: " + fmt.Sprintf(msg, args...)) }),
	})
	if err != nil {
		return nil, fmt.Errorf("consumer group %s: %w", cfg.GroupID, err)
	}
	c.group, c.lag = group, map[int]int64{}
	c.dlqW = &kafka.Writer{
		Addr:         kafka.TCP(cfg.Brokers...),
		Topic:        cfg.DLQTopic,
		Balancer:     kafka.Murmur2Balancer{},
		RequiredAcks: kafka.RequireAll,
		BatchSize:    10000,
		BatchTimeout: 2 * time.Millisecond,
		MaxAttempts:  3,
	}
	c.rerouteW = &kafka.Writer{
		Addr:         kafka.TCP(cfg.Brokers...),
		Topic:        cfg.Topic,
		Balancer:     svckit.RoutingBalancer{Partitions: func() int { return int(c.partitions.Load()) }},
		RequiredAcks: kafka.RequireAll,
		BatchSize:    10000,
		BatchTimeout: 2 * time.Millisecond,
		MaxAttempts:  3,
	}
	c.dlq = deadletter.New(c.dlqW, c.fallback)
	c.dlq.Fallback = func(n int, err error) {
		c.m.deadLetterFallback.Add(float64(n))
		c.log.Error("Kafka refused DLQ records for good; written to ClickHouse dead_letters", zap.Int("records", n), zap.Error(err))
	}
	if c.reg != nil {
		c.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "usage_consumer_broker_time_lookups_total", Help: "ListOffsets requests made to judge the future rule by the broker's append time (svckit.Intake.DecodeRecord)."},
			func() float64 {
				if in := c.clocked.Load(); in != nil {
					return float64(in.Lookups())
				}
				return 0
			}))
		c.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "usage_consumer_lag", Help: "Messages behind the end of the assigned partitions, as last seen by the reader."},
			func() float64 {
				c.lagMu.Lock()
				defer c.lagMu.Unlock()
				var sum int64
				for _, l := range c.lag {
					sum += l
				}
				return float64(sum)
			}))
	}
	return c, nil
}

// batch is what one flush writes and commits.
type batch struct {
	rows    chstore.EventBatch
	invalid []kafka.Message
	reroute []kafka.Message // copies of misrouted events, for Topic
	// next[p] is the offset after the last message read from partition p,
	// 0 when none was (a slice, not a map: add sets it for every message).
	next    []int64
	msgs    int
	started time.Time

	// rerouteSrc[i] is the original of reroute[i]: what goes to the DLQ
	// when the broker refuses the copy for good (publishReroutes).
	rerouteSrc []kafka.Message
}

// newBatch takes a written batch back for reuse, or makes one. Reusing the
// column slices saves re-growing them for every flush.
func (c *Consumer) newBatch(free chan *batch) *batch {
	select {
	case b := <-free:
		b.rows.Reset()
		b.invalid, b.reroute, b.rerouteSrc, b.msgs = b.invalid[:0], b.reroute[:0], b.rerouteSrc[:0], 0
		clear(b.next)
		return b
	default:
		return &batch{}
	}
}

// add validates m and files it as a row, a re-routed copy or a DLQ
// message. It fails only when ctx ends while the broker does not answer
// the future-rule lookup (the message is then not in the batch, and is read
// again after a restart).
func (c *Consumer) add(ctx context.Context, b *batch, m kafka.Message) error {
	e := &c.view
	err := c.intake.DecodeRecordView(ctx, m, int(c.partitions.Load()), e)
	if errors.Is(err, svckit.ErrBrokerTime) { // no verdict: ask again (rare, so no retry closure per record)
		if rerr := c.retry(ctx, "learn the broker time of a record", c.m.fetchErrors, func(ctx context.Context) error {
			err = c.intake.DecodeRecordView(ctx, m, int(c.partitions.Load()), e)
			if errors.Is(err, svckit.ErrBrokerTime) {
				return err
			}
			return nil
		}); rerr != nil {
			return rerr
		}
	}
	if b.msgs == 0 {
		b.started = time.Now()
	}
	b.msgs++
	if m.Partition >= len(b.next) {
		b.next = append(b.next, make([]int64, m.Partition+1-len(b.next))...)
	}
	b.next[m.Partition] = m.Offset + 1
	if reason, ok := svckit.Misrouted(err); ok {
		// A valid event on the wrong partition or under the wrong key:
		// its copy goes where the rule says, and is written to the raw
		// table when it is read there, like any event (see Rerouting in
		// the package doc).
		b.reroute = append(b.reroute, svckit.Reroute(m, e.TenantID, reason))
		b.rerouteSrc = append(b.rerouteSrc, m)
		c.m.rerouted.WithLabelValues(string(reason), c.publisherLabel(m)).Inc()
		return nil
	}
	if err != nil {
		b.invalid = append(b.invalid, c.dlqMessage(m, err))
		return nil
	}
	b.rows.AppendView(e, int32(m.Partition), m.Offset)
	return nil
}

// publisherLabel is m's HeaderPublisher, or "unknown"; "other" once
// maxPublisherLabels distinct values were seen.
func (c *Consumer) publisherLabel(m kafka.Message) string {
	name := "unknown"
	for _, h := range m.Headers {
		if h.Key == svckit.HeaderPublisher && len(h.Value) > 0 {
			name = string(h.Value[:min(len(h.Value), 64)])
		}
	}
	if !c.publishers[name] {
		if len(c.publishers) >= maxPublisherLabels {
			return "other"
		}
		c.publishers[name] = true
	}
	return name
}

func (c *Consumer) dlqMessage(m kafka.Message, err error) kafka.Message {
	tag, reason := "malformed_json", err.Error()
	var ve *schemas.ValidationError
	if errors.As(err, &ve) {
		tag, reason = ve.Tag(), ve.Reason
	}
	c.m.invalid.WithLabelValues(metricLabel(err)).Inc()
	c.log.Debug("invalid event to DLQ", zap.String("code", tag), zap.Int("partition", m.Partition), zap.Int64("offset", m.Offset))
	// The writer has the DLQ topic; the message must not name one.
	dl := svckit.DeadLetter(m, "", tag, reason)
	return dl
}

// Run consumes until ctx is cancelled, then flushes and commits what it has
// read (bounded by ShutdownTimeout) and returns nil. It returns an error
// only when it could not finish cleanly; uncommitted messages are then
// re-read by the next member, so nothing is lost either way.
func (c *Consumer) Run(ctx context.Context) error {
	c.log.Info("consuming", zap.Strings("brokers", c.cfg.Brokers), zap.String("topic", c.cfg.Topic),
		zap.String("group", c.cfg.GroupID), zap.Int("batch_size", c.cfg.BatchSize), zap.Duration("flush_interval", c.cfg.FlushInterval))
	defer func() {
		if err := c.group.Close(); err != nil { // leaves the group
			c.log.Warn("leave the consumer group", zap.Error(err))
		}
		if err := c.dlqW.Close(); err != nil {
			c.log.Warn("close DLQ writer", zap.Error(err))
		}
		if err := c.rerouteW.Close(); err != nil {
			c.log.Warn("close re-route writer", zap.Error(err))
		}
	}()

	// The routing rule needs the partition count before the first message.
	var pinErr error
	if err := c.retry(ctx, "read the partition count of "+c.cfg.Topic, c.m.fetchErrors, func(ctx context.Context) error {
		n, err := svckit.PinPartitions(ctx, c.cfg.Brokers, c.cfg.Topic, c.pinned)
		if errors.Is(err, svckit.ErrPartitionCountChanged) {
			pinErr = err // not retried: a config or topic to fix
			return nil
		}
		c.partitions.Store(int64(n))
		return err
	}); err != nil {
		return c.startErr(ctx, err)
	}
	if pinErr != nil {
		return pinErr
	}
	if err := c.retry(ctx, "read the timestamp type of "+c.cfg.Topic, c.m.fetchErrors, func(ctx context.Context) error {
		tt, err := svckit.TimestampType(ctx, c.cfg.Brokers, c.cfg.Topic)
		if err != nil {
			return err
		}
		if tt == "LogAppendTime" {
			c.intake = svckit.NewIntake(svckit.WithBrokerClock(c.cfg.Brokers, c.cfg.Topic), svckit.WithAliasedValues())
			c.clocked.Store(c.intake)
		} else {
			c.log.Warn("the events topic keeps the publishers' timestamps (message.timestamp.type "+tt+"): "+
				"\"at most 5 minutes in the future\" is judged by each publisher's clock; set LogAppendTime to judge it by the broker's",
				zap.String("topic", c.cfg.Topic))
		}
		return nil
	}); err != nil {
		return c.startErr(ctx, err)
	}
	partsChanged := make(chan error, 1)
	go func() {
		if err := svckit.WatchPartitions(ctx, c.cfg.Brokers, c.cfg.Topic, int(c.partitions.Load()), c.partitionsEvery); err != nil {
			partsChanged <- err
		}
	}()

	// The fetcher feeds messages through a svckit.Handoff so that the loop below
	// can also react to the flush timer and to shutdown, once per slice.
	fetchCtx, stopFetch := context.WithCancel(context.Background())
	defer stopFetch()
	msgs := svckit.NewHandoff[kafka.Message](1024)
	fetchErr := make(chan error, 1)
	go c.fetch(fetchCtx, msgs, fetchErr)

	// The writer writes and commits batches in order, one at a time.
	writeCtx, stopWrite := context.WithCancel(context.Background())
	defer stopWrite()
	batches := make(chan *batch, 1)
	free := make(chan *batch, 2)
	writeErr := make(chan error, 1)
	go func() {
		for b := range batches {
			err := c.write(writeCtx, b)
			select {
			case free <- b:
			default:
			}
			if err != nil {
				writeErr <- err
				for range batches { // drain, so the loop's send never blocks
				}
				return
			}
		}
		writeErr <- nil
	}()

	every := c.cfg.FlushInterval / 10
	if c.cfg.FlushIdle > 0 {
		every = min(every, c.cfg.FlushIdle/2)
	}
	tick := time.NewTicker(max(every, time.Millisecond))
	defer tick.Stop()
	cur := c.newBatch(free)
	var runErr error
	var spare []kafka.Message
	// lastMsg is when the loop last took messages, lastFlush when it last
	// handed a batch to the writer (see Config.FlushIdle).
	var lastMsg, lastFlush time.Time

loop:
	for {
		var full bool
		select {
		case <-msgs.Ready():
			batch := msgs.Take(spare)
			spare = batch
			lastMsg = time.Now()
			c.m.consumed.Add(float64(len(batch)))
			for _, m := range batch {
				if err := c.checkGap(ctx, m); err != nil {
					if ctx.Err() == nil { // a shutdown mid-check is no error: m is read again later
						runErr = err
					}
					break loop
				}
				if err := c.add(ctx, cur, m); err != nil {
					break loop // shutdown while the broker is away: m is read again later
				}
				if cur.msgs < c.cfg.BatchSize {
					continue
				}
				// Blocks while the previous batch is still being written:
				// the back-pressure that pauses consumption when
				// ClickHouse is down.
				select {
				case batches <- cur:
					cur, lastFlush = c.newBatch(free), time.Now()
				case <-ctx.Done():
					break loop
				case err := <-writeErr:
					return err
				}
			}
			continue
		case err := <-fetchErr:
			// Messages fetched before the group closed are not handled:
			// uncommitted, they are read again after a restart.
			runErr = fmt.Errorf("fetch from %s: %w", c.cfg.Topic, err)
			break loop
		case now := <-tick.C:
			full = cur.msgs > 0 && now.Sub(cur.started) >= c.cfg.FlushInterval
			full = full || cur.msgs > 0 && c.idle(now, lastMsg, lastFlush)
		case <-ctx.Done():
			break loop
		case err := <-partsChanged:
			// What was read so far was judged by the old count, as the
			// aggregator judges it: write and commit it, then stop.
			c.log.Error("stopping: the partition count of the events topic changed", zap.Error(err))
			runErr = err
			break loop
		case err := <-writeErr:
			return err // the writer stopped early: a test's crash hook
		}
		if !full {
			continue
		}
		// Blocks while the previous batch is still being written: this is
		// the back-pressure that pauses consumption when ClickHouse is down.
		select {
		case batches <- cur:
			cur, lastFlush = c.newBatch(free), time.Now()
		case <-ctx.Done():
			break loop
		case err := <-writeErr:
			return err
		}
	}

	// Shutdown: stop reading, write what was read, commit, leave the group.
	// The timer starts first: while ClickHouse is down the writer holds one
	// batch and the channel another, and handing over the last one must
	// not wait for ever.
	stopFetch()
	timer := time.AfterFunc(c.cfg.ShutdownTimeout, stopWrite)
	defer timer.Stop()
	if cur.msgs > 0 {
		select {
		case batches <- cur:
		case <-writeCtx.Done():
		}
	}
	close(batches)
	if err := <-writeErr; err != nil {
		return errors.Join(runErr, fmt.Errorf("final flush: %w (uncommitted messages will be re-read)", err))
	}
	if runErr == nil {
		c.log.Info("stopped cleanly: every message read is written and committed")
	}
	return runErr
}

// idle reports whether a partial batch should be flushed at now because
// the input went quiet: no message for FlushIdle, and the previous flush at
// least FlushMinSpacing ago. Continuous traffic reaches the loop every few
// milliseconds from the partitions' concurrent fetchers and never idles
// that long, so it is flushed by size and FlushInterval only; trickling
// traffic (quiet for FlushIdle between events) costs at most one insert
// per FlushMinSpacing.
func (c *Consumer) idle(now, lastMsg, lastFlush time.Time) bool {
	return c.cfg.FlushIdle > 0 && now.Sub(lastMsg) >= c.cfg.FlushIdle && now.Sub(lastFlush) >= c.cfg.FlushMinSpacing
}

// write stores one batch and commits it. It only returns early when ctx is
// cancelled (shutdown timeout) or the crash hook fires.
func (c *Consumer) write(ctx context.Context, b *batch) error {
	start := time.Now()
	if err := c.retry(ctx, "insert into ClickHouse", c.m.insertErrors, func(ctx context.Context) error {
		return c.store.Insert(ctx, &b.rows)
	}); err != nil {
		return err
	}
	c.m.insertSeconds.Observe(time.Since(start).Seconds())
	c.m.inserted.Add(float64(b.rows.Len()))
	if len(b.invalid) > 0 {
		if err := c.retry(ctx, "write to DLQ", c.m.dlqErrors, func(ctx context.Context) error {
			return c.dlq.Write(ctx, b.invalid...)
		}); err != nil {
			return err
		}
	}
	if len(b.reroute) > 0 {
		// Before the commit: a crash after this point re-reads the
		// originals and writes their copies again (same ids, deduplicated
		// like any retry); a transient failure here is retried, never
		// committed past; a copy too large for the broker goes to the DLQ.
		if err := c.publishReroutes(ctx, b); err != nil {
			return err
		}
	}
	if c.afterWrite != nil {
		if err := c.afterWrite(b); err != nil {
			return err
		}
	}
	// The next offset to read, per partition, committed through the newest
	// generation (a batch read before a rebalance is committed after it,
	// as kafka.Reader does). A commit is not retried: the data is durable,
	// and a lost commit only means these messages are read and
	// deduplicated again.
	offsets := make(map[int]int64, len(b.next))
	for p, next := range b.next {
		if next > 0 {
			offsets[p] = next
		}
	}
	var err error
	if gen := c.gen.Load(); gen == nil {
		err = errors.New("no consumer group generation")
	} else {
		err = gen.CommitOffsets(map[string]map[int]int64{c.cfg.Topic: offsets})
	}
	if err != nil {
		c.m.commitErrors.Inc()
		c.log.Warn("commit offsets failed; the batch will be re-read and deduplicated", zap.Error(err))
	} else {
		for p, next := range offsets {
			c.m.committed.WithLabelValues(strconv.Itoa(p)).Set(float64(next - 1))
		}
	}
	c.m.batches.Inc()
	c.m.batchRows.Observe(float64(b.msgs))
	c.log.Debug("batch committed", zap.Int("rows", b.rows.Len()), zap.Int("invalid", len(b.invalid)), zap.Int("rerouted", len(b.reroute)),
		zap.Duration("took", time.Since(start)))
	return nil
}

// startErr is what Run returns when a start-up step failed: nothing, when
// the step only failed because ctx ended (a SIGTERM during start-up is a
// clean stop: nothing was read, so nothing is left uncommitted).
func (c *Consumer) startErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		c.log.Info("stopped during start-up: nothing was read")
		return nil
	}
	return err
}

// checkGap reports records that retention deleted before this consumer
// read them (kafka-go jumps to the first offset without an error, at a
// partition's start and mid-read) and acts as OnRetentionGap says: an error
// for "fail" (Run writes and commits what it read before the gap, then
// stops; the next start meets the same gap), a count and a log line for
// "continue". A broker that does not answer the check is retried.
func (c *Consumer) checkGap(ctx context.Context, m kafka.Message) error {
	missed, err := c.gaps.Observe(ctx, m.Partition, m.Offset)
	if err != nil { // the broker did not answer: ask again
		if err := c.retry(ctx, "check the offsets of "+c.cfg.Topic+" for a retention gap", c.m.fetchErrors, func(ctx context.Context) error {
			var err error
			missed, err = c.gaps.Observe(ctx, m.Partition, m.Offset)
			return err
		}); err != nil {
			return err
		}
	}
	if missed == 0 {
		return nil
	}
	c.m.retentionGap.Add(float64(missed))
	c.log.Error("retention deleted events before the consumer read them: they are in neither the raw table nor the aggregates; "+
		"republish them if their publishers still can, and run the aggregator's reconcile over their time range",
		zap.Int("partition", m.Partition), zap.Int64("first_read_after_gap", m.Offset), zap.Int64("records", missed),
		zap.String("on_retention_gap", c.cfg.OnRetentionGap))
	if c.cfg.OnRetentionGap == "fail" {
		return fmt.Errorf("partition %d of %s: %d records before offset %d were deleted by retention before they were read (on_retention_gap: fail)",
			m.Partition, c.cfg.Topic, missed, m.Offset)
	}
	return nil
}

// metricLabel is the invalid-event metric's label: the tag, bounded
// (ValidationError.MetricTag drops field names taken from the input).
func metricLabel(err error) string {
	var ve *schemas.ValidationError
	if !errors.As(err, &ve) {
		return string(schemas.CodeMalformedJSON)
	}
	return ve.MetricTag()
}

// retry runs fn until it succeeds or ctx ends, backing off between
// RetryMin and RetryMax, and logs and counts each failure.
func (c *Consumer) retry(ctx context.Context, what string, failures prometheus.Counter, fn func(context.Context) error) error {
	failed := false
	err := backoff.Retry(ctx, backoff.Policy{Min: c.cfg.RetryMin, Max: c.cfg.RetryMax}, fn, func(attempt int, pause time.Duration, err error) {
		failed = true
		failures.Inc()
		c.log.Warn(what+" failed; retrying, offsets stay uncommitted",
			zap.Int("attempt", attempt), zap.Duration("backoff", pause), zap.Error(err))
	})
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if failed {
		c.log.Info(what + " succeeded again")
	}
	return nil
}

// fetch joins generation after generation of the group and reads each
// assigned partition with readPartition until the generation ends. It
// replaces kafka.Reader's fetching, which, per message, set a read deadline
// (a timer change), sent the message on a channel and had FetchMessage
// select on it: about 15 % of the consumer's CPU. The group protocol
// (joins, heartbeats, assignments, partition watching, leaving on Close) is
// still kafka-go's ConsumerGroup, the one kafka.Reader runs. It returns
// only when ctx ends or the group is closed (fetchErr gets io.EOF then).
func (c *Consumer) fetch(ctx context.Context, msgs *svckit.Handoff[kafka.Message], fetchErr chan<- error) {
	pause := c.cfg.RetryMin
	for {
		gen, err := c.group.Next(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if errors.Is(err, kafka.ErrGroupClosed) {
				fetchErr <- io.EOF
				return
			}
			// A rebalance in progress, a coordinator that moved, the broker
			// down: the group joins again; nothing read is lost.
			c.m.fetchErrors.Inc()
			c.log.Warn("join the consumer group failed; retrying", zap.Duration("backoff", pause), zap.Error(err))
			if !sleep(ctx, pause) {
				return
			}
			pause = min(pause*2, c.cfg.RetryMax)
			continue
		}
		pause = c.cfg.RetryMin
		c.gen.Store(gen)
		c.lagMu.Lock()
		clear(c.lag)
		c.lagMu.Unlock()
		for _, a := range gen.Assignments[c.cfg.Topic] {
			partition, offset := a.ID, a.Offset
			gen.Start(func(genCtx context.Context) {
				c.readPartition(genCtx, ctx, msgs, partition, offset)
			})
		}
	}
}

// readPartition reads one partition from offset (the group's committed
// offset, or kafka.FirstOffset) into msgs until the generation ends
// (genCtx). When fetching stops (stop, at shutdown) it only waits: a
// function that returns ends the generation, and the final commit needs it.
// Errors are retried with backoff, from the next unread offset.
func (c *Consumer) readPartition(genCtx, stop context.Context, msgs *svckit.Handoff[kafka.Message], partition int, offset int64) {
	ctx, cancel := context.WithCancel(genCtx)
	defer cancel()
	defer context.AfterFunc(stop, cancel)()
	pause := c.cfg.RetryMin
	for ctx.Err() == nil {
		next, err := c.readFrom(ctx, msgs, partition, offset)
		if next > offset {
			pause = c.cfg.RetryMin // it was reading: a new failure, not a repeated one
		}
		offset = next
		if ctx.Err() != nil {
			break
		}
		c.m.fetchErrors.Inc()
		c.log.Warn("fetch failed; retrying", zap.Int("partition", partition), zap.Int64("offset", offset),
			zap.Duration("backoff", pause), zap.Error(err))
		sleep(ctx, pause)
		pause = min(pause*2, c.cfg.RetryMax)
	}
	<-genCtx.Done()
}

// readFrom fetches partition from its leader starting at offset and hands
// its messages to msgs in chunks (one lock and wake-up per chunk), with
// kafka.Reader's rules (svckit.PartitionFetch), until an error or ctx
// ends; it returns the next offset to read.
func (c *Consumer) readFrom(ctx context.Context, msgs *svckit.Handoff[kafka.Message], partition int, offset int64) (int64, error) {
	f := svckit.PartitionFetch{Brokers: c.cfg.Brokers, Topic: c.cfg.Topic, Partition: partition,
		MaxBytes: c.cfg.FetchMaxBytes, MaxWait: c.cfg.FetchMaxWait, RetryMin: c.cfg.RetryMin,
		Progress: func(hwm, next int64) { c.setLag(partition, hwm-next) }}
	return f.Run(ctx, offset, func(ms []kafka.Message) (int, error) {
		if err := msgs.PutAll(ctx, ms); err != nil {
			return 0, err
		}
		return len(ms), nil
	})
}

// setLag records how far partition's fetch position is behind its end.
func (c *Consumer) setLag(partition int, lag int64) {
	c.lagMu.Lock()
	c.lag[partition] = max(0, lag)
	c.lagMu.Unlock()
}

// sleep waits for d or until ctx ends, and reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
