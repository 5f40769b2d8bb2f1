// Package service runs usage-aggregator: it reads usage.events in its own
// consumer group, folds every event into package state, writes the changed
// aggregate rows and then a checkpoint to ClickHouse once per flush
// interval, and publishes changed quota totals to the compacted topic
// usage.quota-state. See aggregator/README.md for why a crash anywhere
// neither loses nor double counts.
package service

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	"go.uber.org/zap"

	"github.com/usagemeter/usagemeter/aggregator/aggstore"
	"github.com/usagemeter/usagemeter/aggregator/state"
	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/schemas/plans"
	"github.com/usagemeter/usagemeter/svckit"
	"github.com/usagemeter/usagemeter/svckit/backoff"
	"github.com/usagemeter/usagemeter/svckit/deadletter"
)

// Service is one aggregator.
type Service struct {
	cfg      Config
	plans    *plans.Config
	store    *aggstore.Store
	log      *zap.Logger
	intake   *svckit.Intake
	m        *metrics
	quotaW   *kafka.Writer
	posW     *kafka.Writer      // PositionTopic; nil when none
	sideW    *kafka.Writer      // late events and rejected ones
	side     *deadletter.Writer // sideW, falling back to ClickHouse dead_letters
	fallback driver.Conn

	// partitions of Topic, for the routing rule: the count at start, which
	// must equal pinned when pinned > 0 (topic_partitions). Run stops when
	// it changes (svckit.WatchPartitions), as the consumer does, so the two
	// never judge routing by different counts.
	partitions      int
	pinned          int
	partitionsEvery time.Duration

	written []state.Checkpoint // the last checkpoint written
	// view is the apply loop's decoded event, refilled per message
	// (schemas.EventView: no metadata map or big.Int per event).
	view schemas.EventView
	// statesPublished: the last publishStates left nothing due unpublished.
	statesPublished bool

	mu sync.Mutex
	// latest is the last published state per key, for the status page, as
	// the message's JSON: a decoded QuotaState (five decimals, a map,
	// strings) took about 1 KB and 15 objects per key, more than the
	// key's quota total and rows together.
	latest map[string][]byte

	// hook runs at named points of a flush; an error aborts Run there, as a
	// crash would. Tests use it.
	hook func(point string) error
}

// Option configures a Service.
type Option func(*Service)

// WithRegisterer registers the service's metrics on reg.
func WithRegisterer(reg prometheus.Registerer) Option {
	return func(s *Service) { s.m = newMetrics(reg) }
}

// WithPinnedPartitions makes Run refuse to start unless Topic has n
// partitions (the service's topic_partitions); 0 takes the count it finds.
func WithPinnedPartitions(n int) Option { return func(s *Service) { s.pinned = n } }

// WithDeadLetterFallback writes late and DLQ records that Kafka refuses for
// good (too large for the topic, topic missing) to the ClickHouse table
// dead_letters on conn, instead of retrying them for ever.
func WithDeadLetterFallback(conn driver.Conn) Option {
	return func(s *Service) { s.fallback = conn }
}

// New returns a Service; Run starts it.
func New(cfg Config, p *plans.Config, store *aggstore.Store, log *zap.Logger, opts ...Option) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid aggregator config: %w", err)
	}
	// Aliased: the view's strings are the message's own bytes, not a copy
	// (nothing here writes to a message's Value, and the state clones
	// every string it keeps: cloneSeriesKey).
	s := &Service{cfg: cfg, plans: p, store: store, log: log, intake: svckit.NewIntake(svckit.WithAliasedValues()),
		latest: make(map[string][]byte), partitionsEvery: 10 * time.Second}
	for _, o := range opts {
		o(s)
	}
	if s.m == nil {
		s.m = newMetrics(nil)
	}
	s.quotaW = &kafka.Writer{Addr: kafka.TCP(cfg.Brokers...), Topic: cfg.QuotaTopic, Balancer: kafka.Murmur2Balancer{},
		RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond, BatchSize: 10000}
	if cfg.PositionTopic != "" {
		// One attempt, short timeout: the write runs on the apply loop's
		// goroutine, and a missed position is only sent again later.
		s.posW = &kafka.Writer{Addr: kafka.TCP(cfg.Brokers...), Topic: cfg.PositionTopic, Balancer: kafka.Murmur2Balancer{},
			RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond, MaxAttempts: 1, WriteTimeout: 2 * time.Second}
	}
	s.sideW = &kafka.Writer{Addr: kafka.TCP(cfg.Brokers...), Balancer: kafka.Murmur2Balancer{},
		RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond, BatchSize: 10000, MaxAttempts: 3}
	s.side = deadletter.New(s.sideW, s.fallback)
	s.side.Fallback = func(n int, err error) {
		s.m.deadLetterFallback.Add(float64(n))
		s.log.Error("Kafka refused late/DLQ records for good; written to ClickHouse dead_letters", zap.Int("records", n), zap.Error(err))
	}
	return s, nil
}

// Run aggregates until ctx is cancelled, then flushes and returns nil.
func (s *Service) Run(ctx context.Context) error {
	defer s.quotaW.Close()
	if s.posW != nil {
		defer s.posW.Close()
	}
	defer s.sideW.Close()
	if err := s.intakeRules(ctx); err != nil {
		return err
	}
	// A change of the partition count ends Run, after the final flush:
	// every event read so far was judged by the old count (see README,
	// growing usage.events).
	ctx, stopOnChange := context.WithCancelCause(ctx)
	defer stopOnChange(nil)
	go func() {
		if err := svckit.WatchPartitions(ctx, s.cfg.Brokers, s.cfg.Topic, s.partitions, s.partitionsEvery); err != nil {
			s.log.Error("stopping", zap.Error(err))
			stopOnChange(err)
		}
	}()
	assignments := make(chan assignment, 64)
	if err := s.followAssignments(ctx, assignments); err != nil {
		return err
	}
	// Group and generation errors (a rebalance in progress, a coordinator
	// that moved, the broker restarting, ClickHouse unreachable while
	// loading state) mean "try again", never "exit": leave the group,
	// back off and join again. Leaving matters: a member that stopped
	// processing but kept heartbeating would hold its partitions for ever.
	pause := s.cfg.RetryMin
	for ctx.Err() == nil {
		err := s.runGroup(ctx, assignments)
		if err == nil || ctx.Err() != nil {
			break
		}
		if errors.Is(err, errFatal) {
			return err
		}
		s.m.groupErrors.Inc()
		s.log.Warn("consumer group error; rejoining", zap.Duration("backoff", pause), zap.Error(err))
		sleep(ctx, pause)
		pause = min(pause*2, s.cfg.RetryMax)
	}
	if cause := context.Cause(ctx); errors.Is(cause, svckit.ErrPartitionCountChanged) {
		return fmt.Errorf("%w: %w", errFatal, cause)
	}
	s.log.Info("stopped cleanly: every event read is aggregated and checkpointed")
	return nil
}

// intakeRules reads, once at start, what the intake rule depends on, as
// the consumer does, so that both decide alike on every record: the
// partition count (pinned to topic_partitions), and whether the topic
// keeps the broker's append times (then "at most 5 minutes in the future"
// is judged by the broker's clock, svckit.Intake.DecodeRecord).
func (s *Service) intakeRules(ctx context.Context) error {
	var pinErr error
	if err := s.retry(ctx, "read the partition count of "+s.cfg.Topic, func(ctx context.Context) error {
		n, err := svckit.PinPartitions(ctx, s.cfg.Brokers, s.cfg.Topic, s.pinned)
		if errors.Is(err, svckit.ErrPartitionCountChanged) {
			pinErr = err // not retried: a config or topic to fix
			return nil
		}
		s.partitions = n
		return err
	}); err != nil {
		return err
	}
	if pinErr != nil {
		return fmt.Errorf("%w: %w", errFatal, pinErr)
	}
	return s.retry(ctx, "read the timestamp type of "+s.cfg.Topic, func(ctx context.Context) error {
		tt, err := svckit.TimestampType(ctx, s.cfg.Brokers, s.cfg.Topic)
		if err != nil {
			return err
		}
		if tt == "LogAppendTime" {
			s.intake = svckit.NewIntake(svckit.WithBrokerClock(s.cfg.Brokers, s.cfg.Topic), svckit.WithAliasedValues())
		} else {
			s.log.Warn("the events topic keeps the publishers' timestamps (message.timestamp.type "+tt+"): "+
				"\"at most 5 minutes in the future\" is judged by each publisher's clock; set LogAppendTime to judge it by the broker's",
				zap.String("topic", s.cfg.Topic))
		}
		return nil
	})
}

// errFatal marks errors that rejoining cannot fix (on_retention_gap: fail).
var errFatal = errors.New("fatal")

// runGroup joins the group and runs its generations until ctx ends (nil)
// or one fails (the error).
func (s *Service) runGroup(ctx context.Context, assignments <-chan assignment) error {
	group, err := kafka.NewConsumerGroup(kafka.ConsumerGroupConfig{
		ID: s.cfg.GroupID, Brokers: s.cfg.Brokers, Topics: []string{s.cfg.Topic},
		StartOffset: kafka.FirstOffset, JoinGroupBackoff: 500 * time.Millisecond,
		SessionTimeout: s.cfg.SessionTimeout, RebalanceTimeout: s.cfg.SessionTimeout,
		HeartbeatInterval:     s.cfg.SessionTimeout / 10,
		WatchPartitionChanges: true,
		Logger:                kafka.LoggerFunc(func(string, ...any) {}),
		ErrorLogger:           kafka.LoggerFunc(func(msg string, args ...any) { s.log.Debug("kafka group: " + fmt.Sprintf(msg, args...)) }),
	})
	if err != nil {
		return fmt.Errorf("join group %s: %w", s.cfg.GroupID, err)
	}
	defer group.Close()
	for {
		gen, err := group.Next(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("next generation of %s: %w", s.cfg.GroupID, err)
		}
		if err := s.runGeneration(ctx, gen, assignments); err != nil {
			return fmt.Errorf("generation %d: %w", gen.ID, err)
		}
		if ctx.Err() != nil {
			return nil
		}
	}
}

// message is one record read from an assigned partition.
type message struct {
	kafka.Message
	replay bool // at or before the checkpoint: only warms the dedup set
}

// runGeneration aggregates the partitions of one group generation. State is
// rebuilt from ClickHouse at its start, so a rebalance never carries memory
// over for partitions another member may have changed.
func (s *Service) runGeneration(ctx context.Context, gen *kafka.Generation, assignments <-chan assignment) error {
	assigned := gen.Assignments[s.cfg.Topic]
	s.written = nil
	st, starts, err := s.restore(ctx, assigned)
	if err != nil {
		return err
	}
	own := owner{gen: gen, topic: s.cfg.Topic, partitions: map[int32]bool{}, starts: starts, every: s.cfg.SessionTimeout / 10}
	for _, a := range assigned {
		own.partitions[int32(a.ID)] = true
	}
	s.mu.Lock()
	clear(s.latest) // the status page shows this generation's tenants only
	s.mu.Unlock()
	s.log.Info("generation started", zap.Int32("generation", gen.ID), zap.Int("partitions", len(assigned)),
		zap.Int("rows_loaded", st.Rows()))

	msgs := svckit.NewHandoff[message](4096)
	var spare []message
	genDone := make(chan struct{})
	// kafka-go rejoins the group only when every function started on the
	// generation has returned: holding this one until the final flush is
	// written means the next owner of a partition resumes exactly where
	// this member stopped, not at an older checkpoint (it would publish
	// quota states below the ones this member already published).
	finished := make(chan struct{})
	defer close(finished)
	gen.Start(func(gctx context.Context) {
		<-gctx.Done()
		close(genDone)
		<-finished
	})
	readCtx, stopReading := context.WithCancel(context.Background())
	defer stopReading()
	fatal := make(chan error, len(assigned))
	for _, a := range assigned {
		ckpt := starts[a.ID]
		gen.Start(func(context.Context) {
			if err := s.read(readCtx, a.ID, ckpt, msgs); err != nil {
				fatal <- err
			}
		})
	}

	// Writes outlive ctx: a flush under way when SIGTERM arrives finishes,
	// and so does the final one, unless ClickHouse stays unreachable for
	// ShutdownTimeout (then nothing is checkpointed and the next run
	// re-reads: nothing lost either way).
	wctx, cancelWrites := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWrites()
	stopTimer := context.AfterFunc(ctx, func() { time.AfterFunc(s.cfg.ShutdownTimeout, cancelWrites) })
	defer stopTimer()

	flushTick := time.NewTicker(s.cfg.FlushInterval)
	defer flushTick.Stop()
	quotaTick := time.NewTicker(50 * time.Millisecond)
	defer quotaTick.Stop()
	var side []kafka.Message
	var inflight *pendingFlush // a flush whose writes are under way
	// For the idle flush: when input last arrived, when the last flush
	// started, and whether anything arrived since.
	var lastInput, lastFlush time.Time
	fresh := false
	startFlush := func(now time.Time) {
		inflight = s.startFlush(wctx, gen, st, &side)
		lastFlush, fresh = now, false
	}
	defer func() {
		// Whatever ends the generation, its writes end before the member
		// rejoins, as when the flush ran on this goroutine.
		if inflight != nil {
			<-inflight.done
		}
	}()
	flushDone := func() <-chan error {
		if inflight == nil {
			return nil // blocks for ever in the select
		}
		return inflight.done
	}
	// drain waits for the flush under way, if any, before a final one.
	drain := func() error {
		if inflight == nil {
			return nil
		}
		f := inflight
		inflight = nil
		return s.finishFlush(st, f, <-f.done)
	}
	for {
		select {
		case <-msgs.Ready():
			batch := msgs.Take(spare)
			for _, m := range batch {
				out, err := s.apply(wctx, st, m)
				if err != nil {
					return err
				}
				if out != nil {
					side = append(side, *out)
				}
			}
			spare = batch
			lastInput, fresh = time.Now(), true
		case a := <-assignments:
			if err := s.plans.Assign(a.tenant, a.a); err != nil {
				s.m.assignErrors.Inc()
				s.log.Warn("ignored plan assignment", zap.Error(err))
				continue
			}
			s.log.Info("plan assignment changed", zap.String("tenant", a.tenant))
			st.TouchTenant(a.tenant)
		case <-quotaTick.C:
			if err := s.publishQuotas(wctx, st, &own); err != nil {
				return err
			}
			if now := time.Now(); fresh && inflight == nil && s.idleFlushDue(now, lastInput, lastFlush) {
				startFlush(now)
			}
		case <-flushTick.C:
			if inflight == nil { // else the next tick after it
				startFlush(time.Now())
			}
		case err := <-flushDone():
			f := inflight
			inflight = nil
			if err := s.finishFlush(st, f, err); err != nil {
				return err
			}
		case <-genDone:
			stopReading()
			// Bounded: the group waits for this flush (see finished).
			fctx, cancel := context.WithTimeout(wctx, s.cfg.SessionTimeout)
			defer cancel()
			if err := drain(); err != nil {
				return err
			}
			return s.flush(fctx, gen, st, &side)
		case err := <-fatal:
			stopReading()
			if derr := drain(); derr != nil {
				return errors.Join(err, derr)
			}
			return errors.Join(err, s.flush(wctx, gen, st, &side))
		case <-ctx.Done():
			stopReading()
			if err := drain(); err != nil {
				return err
			}
			if err := s.flush(wctx, gen, st, &side); err != nil {
				return err
			}
			return s.publishQuotas(wctx, st, &own)
		}
	}
}

// idleFlushDue says whether the input has been idle long enough to flush
// now rather than at the next FlushInterval tick (checked on the 50 ms
// quota tick, so it fires FlushIdle to FlushIdle + 50 ms after the last
// input). Under continuous traffic the input is never idle and flushes
// stay one per interval; FlushMinSpacing caps the rate when traffic keeps
// pausing just past FlushIdle.
func (s *Service) idleFlushDue(now, lastInput, lastFlush time.Time) bool {
	return s.cfg.FlushIdle > 0 && now.Sub(lastInput) >= s.cfg.FlushIdle && now.Sub(lastFlush) >= s.cfg.FlushMinSpacing
}

// restore rebuilds state for the assigned partitions from ClickHouse and
// returns, per partition, the checkpointed offset (-1 when none).
func (s *Service) restore(ctx context.Context, assigned []kafka.PartitionAssignment) (*state.State, map[int]int64, error) {
	cps, err := s.store.Checkpoints(ctx, s.cfg.GroupID, s.cfg.Topic)
	if err != nil {
		return nil, nil, err
	}
	byPart := map[int]state.Checkpoint{}
	for _, c := range cps {
		byPart[int(c.Partition)] = c
	}
	// Rows whose window ends after `since` may still change: load them all;
	// older ones are fetched one by one if an event needs them.
	since := time.Now().Add(-2*s.cfg.AllowedLateness - 24*time.Hour)
	starts := map[int]int64{}
	for _, a := range assigned {
		starts[a.ID] = -1
		if c, ok := byPart[a.ID]; ok {
			starts[a.ID] = c.Offset
			// A partition that only ever saw invalid input has no
			// watermark (stored as 1970): it needs no old rows.
			if c.Watermark.Unix() <= 0 {
				continue
			}
			if wm := c.Watermark.Add(-s.cfg.AllowedLateness - time.Minute); wm.Before(since) {
				since = wm
			}
		}
	}
	owned := make([]int32, 0, len(assigned))
	for _, a := range assigned {
		owned = append(owned, int32(a.ID))
	}
	rows, err := s.store.LoadOpen(ctx, since, owned)
	if err != nil {
		return nil, nil, err
	}
	st := state.New(state.Config{Plans: s.plans, AllowedLateness: s.cfg.AllowedLateness, DedupHorizon: s.cfg.DedupHorizon},
		since, func(k state.Key) (*state.Row, error) { return s.store.Fetch(ctx, k) })
	for _, r := range rows {
		st.Load(r)
	}
	for p, off := range starts {
		if off >= 0 {
			wm := byPart[p].Watermark
			if wm.Unix() <= 0 {
				wm = time.Time{}
			}
			st.Restore(int32(p), off, wm)
		}
	}
	return st, starts, nil
}

// read feeds one partition into msgs, starting DedupHorizon messages
// before the checkpoint so that duplicates of recent events are still
// recognised after a restart. A failing reader is re-created at the next
// offset after a pause, so a broker hiccup never stalls a partition. It
// returns an error only for a retention gap with on_retention_gap: fail.
func (s *Service) read(ctx context.Context, partition int, ckpt int64, msgs *svckit.Handoff[message]) error {
	next := int64(-1)
	for pause := s.cfg.RetryMin; ctx.Err() == nil; pause = min(pause*2, s.cfg.RetryMax) {
		if next < 0 {
			first, _, err := offsetsOf(ctx, &kafka.Client{Addr: kafka.TCP(s.cfg.Brokers...)}, s.cfg.Topic, partition)
			if err != nil {
				s.log.Warn("first offset; retrying", zap.Int("partition", partition), zap.Error(err))
				sleep(ctx, pause)
				continue
			}
			if missed := retentionGap(ckpt, first); missed > 0 {
				s.m.retentionGap.Add(float64(missed))
				s.log.Error("retention deleted events the aggregator never read: run reconcile over their time range",
					zap.Int("partition", partition), zap.Int64("checkpoint", ckpt), zap.Int64("first_offset", first),
					zap.Int64("events", missed), zap.String("on_retention_gap", s.cfg.OnRetentionGap))
				if s.cfg.OnRetentionGap == "fail" {
					return fmt.Errorf("%w: partition %d: checkpoint %d is older than the first offset %d (on_retention_gap: fail)",
						errFatal, partition, ckpt, first)
				}
			}
			next = max(first, ckpt+1-int64(s.cfg.DedupHorizon))
		}
		var err error
		before := next
		next, err = s.readFrom(ctx, partition, next, ckpt, msgs)
		if ctx.Err() != nil {
			return nil
		}
		if next > before {
			pause = s.cfg.RetryMin // it was reading: a new failure, not a repeated one
		}
		if errors.Is(err, errFatal) {
			return err
		}
		s.m.writeErrors.Inc()
		s.log.Warn("read partition; re-creating the reader", zap.Int("partition", partition), zap.Int64("offset", next), zap.Error(err))
		sleep(ctx, pause)
	}
	return nil
}

// retentionGapWhileReading acts on `deleted` records from offset `from` on
// that retention deleted before they were read. Those at or before the
// checkpoint were only to be re-read (dedup warm-up); the others were never
// aggregated: logged, counted, and with on_retention_gap: fail, the end of
// the service (errFatal).
func (s *Service) retentionGapWhileReading(partition int, from, deleted, ckpt int64) error {
	missed := from + deleted - max(from, ckpt+1)
	if missed <= 0 {
		return nil
	}
	s.m.retentionGap.Add(float64(missed))
	s.log.Error("retention deleted events the aggregator never read: run reconcile over their time range",
		zap.Int("partition", partition), zap.Int64("from_offset", max(from, ckpt+1)), zap.Int64("events", missed),
		zap.String("on_retention_gap", s.cfg.OnRetentionGap))
	if s.cfg.OnRetentionGap == "fail" {
		return fmt.Errorf("%w: partition %d: offsets %d to %d were deleted before they were read (on_retention_gap: fail)",
			errFatal, partition, max(from, ckpt+1), from+deleted-1)
	}
	return nil
}

// retentionGap is how many events after the checkpoint retention deleted
// before they were read: the partition's first offset is past ckpt+1.
func retentionGap(ckpt, first int64) int64 {
	if ckpt < 0 {
		return 0 // a new group starts at the first offset by design
	}
	return max(0, first-(ckpt+1))
}

// readFrom reads from offset until an error, and returns the next offset.
// It fetches on one leader connection (svckit.PartitionFetch, kafka.Reader's
// rules without its channel hop per message) and hands each message to
// msgs. kafka-go jumps to the partition's first offset when its position was
// deleted, at any time, not only when a partition opens: every record goes
// through svckit.OffsetGaps, the consumer's rule, which tells records
// retention deleted unread from offsets that hold no event.
func (s *Service) readFrom(ctx context.Context, partition int, offset, ckpt int64, msgs *svckit.Handoff[message]) (int64, error) {
	gaps := svckit.NewOffsetGaps(s.cfg.Brokers, s.cfg.Topic, "")
	gaps.Expect(partition, offset)
	f := svckit.PartitionFetch{Brokers: s.cfg.Brokers, Topic: s.cfg.Topic, Partition: partition,
		MaxBytes: 16 << 20, MaxWait: 100 * time.Millisecond, RetryMin: s.cfg.RetryMin}
	next := offset // after the last message taken: where a gap starts
	var chunk []message
	return f.Run(ctx, offset, func(ms []kafka.Message) (int, error) {
		// A chunk goes to the apply loop at once (one lock and one wake-up,
		// not one per message).
		chunk = chunk[:0]
		for _, m := range ms {
			deleted, err := gaps.Observe(ctx, partition, m.Offset)
			if err == nil && deleted > 0 {
				err = s.retentionGapWhileReading(partition, next, deleted, ckpt)
			}
			if err != nil {
				// The reader is re-created after the last message taken.
				if perr := msgs.PutAll(ctx, chunk); perr != nil {
					return 0, perr // ctx ended: the generation is over
				}
				return len(chunk), err
			}
			chunk = append(chunk, message{Message: m, replay: m.Offset <= ckpt})
			next = m.Offset + 1
		}
		err := msgs.PutAll(ctx, chunk)
		clear(chunk) // the apply loop's now
		if err != nil {
			return 0, err // ctx ended: the generation is over
		}
		return len(ms), nil
	})
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-time.After(d):
	case <-ctx.Done():
	}
}

// apply folds one message into st and returns the message to publish on
// the late topic or the DLQ, if any.
func (s *Service) apply(ctx context.Context, st *state.State, m message) (*kafka.Message, error) {
	p, o := int32(m.Partition), m.Offset
	// The consumer's rule, so every event is in the raw table and the
	// aggregates, or in neither (the consumer puts it in the DLQ).
	e := &s.view
	err := s.intake.DecodeRecordView(ctx, m.Message, s.partitions, e)
	if errors.Is(err, svckit.ErrBrokerTime) {
		return nil, err // no verdict yet: rejoin and read the record again
	}
	if err != nil {
		st.Skip(p, o)
		s.m.invalid.Inc()
		return nil, nil
	}
	if m.replay {
		st.Remember(e, p)
		return nil, nil
	}
	out, err := st.ApplyView(e, p, o)
	if err != nil {
		return nil, err
	}
	s.m.byOutcome[out].Inc()
	switch out {
	case state.Late:
		return s.sideMessage(s.cfg.LateTopic, m, "late", fmt.Sprintf("event time %s is more than %s before the partition watermark %s",
			e.Timestamp.Format(time.RFC3339Nano), s.cfg.AllowedLateness, st.Watermark(p).Format(time.RFC3339Nano))), nil
	case state.UnknownMeter:
		return s.sideMessage(s.cfg.DLQTopic, m, "unknown_meter", fmt.Sprintf("feature_type %q is not configured and unknown_meters is reject", e.FeatureType)), nil
	case state.Overflow:
		s.log.Error("event would overflow its aggregate: not counted, sent to the DLQ", zap.String("tenant", e.TenantID),
			zap.String("meter", e.FeatureType), zap.String("id", e.ID), zap.Int32("partition", p), zap.Int64("offset", o))
		return s.sideMessage(s.cfg.DLQTopic, m, state.Overflow.String(), fmt.Sprintf(
			"quantity %s would take the %s total of %s past %s, the most an aggregate holds", e.Quantity, e.FeatureType, e.TenantID, state.MaxValue)), nil
	case state.Applied:
		if _, known := st.MeterFor(e.FeatureType); !known {
			s.m.unknownMeters.Inc()
			s.log.Debug("event of an unconfigured meter aggregated as sum", zap.String("feature_type", e.FeatureType))
		}
	}
	return nil, nil
}

func (s *Service) sideMessage(topic string, m message, code, reason string) *kafka.Message {
	dl := svckit.DeadLetter(m.Message, topic, code, reason)
	return &dl
}

// pendingFlush is a flush whose writes run on their own goroutine while
// the apply loop goes on (a flush's ClickHouse round trips used to stall
// the loop, and with it every quota state, for their whole duration: the
// tail of the freshness figures). It writes copies of the rows taken at
// its start, with the checkpoint of that moment: every effect up to that
// checkpoint is in the copies or was written before.
type pendingFlush struct {
	orig   [len(state.Grains)][]*state.Row // the rows in memory
	copies [len(state.Grains)][]*state.Row // what is written: the rows at the start
	cps    []state.Checkpoint
	side   []kafka.Message
	start  time.Time
	done   chan error
}

// startFlush snapshots what changed since the last flush and starts
// writing it; nil when nothing changed. Only one flush runs at a time.
func (s *Service) startFlush(ctx context.Context, gen *kafka.Generation, st *state.State, side *[]kafka.Message) *pendingFlush {
	dirty := st.Dirty()
	cps := st.Checkpoints()
	idle := len(*side) == 0 && sameCheckpoints(cps, s.written)
	for _, rows := range dirty {
		idle = idle && len(rows) == 0
	}
	if idle {
		return nil // nothing new since the last flush
	}
	f := &pendingFlush{orig: dirty, cps: cps, side: *side, start: time.Now(), done: make(chan error, 1)}
	*side = nil
	for g, rows := range dirty {
		buf := make([]state.Row, len(rows))
		f.copies[g] = make([]*state.Row, len(rows))
		for i, r := range rows {
			buf[i] = *r
			f.copies[g][i] = &buf[i]
		}
	}
	go func() { f.done <- s.writeFlush(ctx, gen, f) }()
	return f
}

// writeFlush makes a flush durable: side messages, then the rows of each
// grain, then the checkpoint. A crash between any two steps is harmless:
// rows carry their offsets, and the checkpoint only moves after all of
// them.
func (s *Service) writeFlush(ctx context.Context, gen *kafka.Generation, f *pendingFlush) error {
	if err := s.at("flush"); err != nil {
		return err
	}
	if len(f.side) > 0 {
		if err := s.retry(ctx, "write late/DLQ events", func(ctx context.Context) error { return s.side.Write(ctx, f.side...) }); err != nil {
			return err
		}
	}
	for _, g := range state.Grains {
		rows := f.copies[g]
		if err := s.retry(ctx, "write "+g.Table(), func(ctx context.Context) error { return s.store.WriteRows(ctx, g, rows) }); err != nil {
			return err
		}
		if err := s.at("after_rows_" + g.String()); err != nil {
			return err
		}
	}
	if err := s.retry(ctx, "write checkpoint", func(ctx context.Context) error {
		return s.store.WriteCheckpoints(ctx, s.cfg.GroupID, s.cfg.Topic, f.cps)
	}); err != nil {
		return err
	}
	if err := s.at("after_checkpoint"); err != nil {
		return err
	}
	// Kafka's committed offsets are for lag monitoring only: the checkpoint
	// in ClickHouse is where the aggregator resumes.
	offsets := map[int]int64{}
	for _, c := range f.cps {
		offsets[int(c.Partition)] = c.Offset + 1
	}
	if err := gen.CommitOffsets(map[string]map[int]int64{s.cfg.Topic: offsets}); err != nil {
		s.log.Debug("commit offsets (monitoring only)", zap.Error(err))
	}
	return nil
}

// finishFlush records a completed flush in the state, on the apply loop's
// goroutine: the versions written, and clean rows, except those an event
// changed since the copy (they stay queued for the next flush).
func (s *Service) finishFlush(st *state.State, f *pendingFlush, err error) error {
	if err != nil {
		return err
	}
	s.written = f.cps
	n := 0
	var clean []*state.Row
	for g := range f.orig {
		for i, r := range f.orig[g] {
			c := f.copies[g][i]
			r.Version = c.Version
			if r.Offset == c.Offset && r.Partition == c.Partition && r.Events == c.Events {
				clean = append(clean, r)
			}
		}
		n += len(f.orig[g])
	}
	st.MarkClean(clean)
	evicted := st.Evict()
	if n > 0 {
		s.m.rowsWritten.Add(float64(n))
		s.m.flushSeconds.Observe(time.Since(f.start).Seconds())
		s.log.Debug("flushed", zap.Int("rows", n), zap.Int("evicted", evicted), zap.Duration("took", time.Since(f.start)))
	}
	return nil
}

// flush makes everything applied so far durable and waits for it.
func (s *Service) flush(ctx context.Context, gen *kafka.Generation, st *state.State, side *[]kafka.Message) error {
	f := s.startFlush(ctx, gen, st, side)
	if f == nil {
		return nil
	}
	return s.finishFlush(st, f, <-f.done)
}

func sameCheckpoints(a, b []state.Checkpoint) bool {
	if len(a) != len(b) {
		return false
	}
	m := make(map[int32]int64, len(b))
	for _, c := range b {
		m[c.Partition] = c.Offset
	}
	for _, c := range a {
		if o, ok := m[c.Partition]; !ok || o != c.Offset {
			return false
		}
	}
	return true
}

// owner is what a member knows of its generation: the partitions it owns
// and where they were checkpointed, for the publish fence.
type owner struct {
	gen        *kafka.Generation
	topic      string
	partitions map[int32]bool
	starts     map[int]int64 // checkpointed offset per owned partition at the start (-1: none)
	// A fence proves the generation current when it was sent; the proof
	// is trusted for `every` (the heartbeat interval) on the monotonic
	// clock, which keeps running while the process is frozen: a member
	// resumed after SIGSTOP always asks again before it publishes.
	every  time.Duration
	fenced time.Time
	// Positions (schemas.QuotaPosition): snaps are the applied offsets of
	// the owned partitions taken at each publish tick; one becomes
	// publishable once a quota_coalesce has passed (every quota dirty
	// when it was taken has been due since). sent is what was published;
	// posRetry pauses publishing after a failure.
	snaps    []posSnap
	sent     map[int32]int64
	posRetry time.Time
}

type posSnap struct {
	at      time.Time
	offsets map[int32]int64
}

// errFenced: the group no longer recognises this member's generation (it
// was frozen past its session, or the group rebalanced).
var errFenced = errors.New("generation ended: quota states not published")

// fence asks the group coordinator whether this member's generation is
// still current, before anything is published under it. kafka-go notices
// the end of a generation only at its next heartbeat (up to a second
// later, and a member resumed after SIGSTOP runs its pending ticks first),
// so the publisher asks: an OffsetCommit carries the generation id and
// member id, and the coordinator refuses it (ILLEGAL_GENERATION,
// UNKNOWN_MEMBER_ID) once the generation is over. It commits the last
// durable checkpoint, which is what flush commits anyway (committed
// offsets are for lag monitoring only). An answer counts for one heartbeat
// interval (a request per publish tick cost a round trip on the one
// goroutine that applies events, and tripled freshness on a busy machine):
// no other member can own the partitions sooner than a session after the
// last heartbeat, and a frozen member finds the interval long past.
func (o *owner) fence(written []state.Checkpoint) error {
	if !o.fenced.IsZero() && time.Since(o.fenced) < o.every {
		return nil
	}
	sent := time.Now()
	offsets := make(map[int]int64, len(o.partitions))
	for p, ckpt := range o.starts {
		offsets[p] = ckpt + 1 // -1 (none) commits 0: harmless, nothing resumes from it
	}
	for _, c := range written {
		if o.partitions[c.Partition] {
			offsets[int(c.Partition)] = c.Offset + 1
		}
	}
	if err := o.gen.CommitOffsets(map[string]map[int]int64{o.topic: offsets}); err != nil {
		return fmt.Errorf("%w: generation %d: %w", errFenced, o.gen.ID, err)
	}
	o.fenced = sent
	return nil
}

// publishQuotas writes changed quota totals to the compacted topic: only
// those of partitions this member owns, and only while its generation is
// current, so that no member publishes a tenant's state from a copy the
// tenant's owner has since moved past.
func (s *Service) publishQuotas(ctx context.Context, st *state.State, own *owner) error {
	now := time.Now()
	if s.posW != nil {
		own.snapshot(now, st.Checkpoints())
	}
	if err := s.publishStates(ctx, st, own, now); err != nil || !s.statesPublished {
		return err
	}
	return s.publishPositions(ctx, own, now)
}

// snapshot records the applied offsets of the owned partitions at now.
func (o *owner) snapshot(now time.Time, cps []state.Checkpoint) {
	offs := make(map[int32]int64, len(cps))
	for _, c := range cps {
		if o.partitions[c.Partition] && c.Offset >= 0 {
			offs[c.Partition] = c.Offset
		}
	}
	if len(o.snaps) >= 1024 { // states failing for long: drop the oldest (a newer one promises more, a little later)
		o.snaps = o.snaps[1:]
	}
	o.snaps = append(o.snaps, posSnap{at: now, offsets: offs})
}

// publishPositions publishes, for each owned partition, the offsets of the
// newest snapshot taken at least quota_coalesce ago. Why that is a true
// promise: a quota changed by an event up to the snapshot's offset was
// dirty (or already published) when the snapshot was taken, its last
// publication was no later, so DueQuotas has returned it at every tick
// since a coalesce passed, and this tick's states were acknowledged
// (publishQuotas calls this only then; a failed write requeues them as due
// at once). It runs under the same generation fence as the states.
func (s *Service) publishPositions(ctx context.Context, own *owner, now time.Time) error {
	i := -1
	for j, sn := range own.snaps {
		if now.Sub(sn.at) >= s.cfg.QuotaCoalesce {
			i = j
		}
	}
	if i < 0 || now.Before(own.posRetry) {
		return nil
	}
	snap := own.snaps[i]
	own.snaps = own.snaps[i+1:]
	if own.sent == nil {
		own.sent = map[int32]int64{}
	}
	var msgs []kafka.Message
	for p, off := range snap.offsets {
		if sent, ok := own.sent[p]; ok && sent >= off {
			continue
		}
		qp := schemas.QuotaPosition{Topic: s.cfg.Topic, Partition: p, AppliedThrough: off, PublishedAt: now.UTC(),
			SchemaVersion: schemas.QuotaPositionSchemaVersion}
		msgs = append(msgs, kafka.Message{Key: []byte(qp.Key()), Value: qp.AppendJSON(nil)})
	}
	if len(msgs) == 0 {
		return nil
	}
	if err := own.fence(s.written); err != nil {
		s.m.quotaFenced.Inc()
		return err
	}
	if err := s.posW.WriteMessages(ctx, msgs...); err != nil {
		// Caches keep the pending usage meanwhile (conservative); pause so
		// that a missing topic does not cost the apply loop a round trip
		// per tick.
		s.m.positionErrors.Inc()
		own.posRetry = now.Add(10 * time.Second)
		s.log.Warn("publish quota positions failed; retrying in 10s", zap.String("topic", s.cfg.PositionTopic), zap.Error(err))
		return nil
	}
	for p, off := range snap.offsets {
		own.sent[p] = max(own.sent[p], off)
	}
	s.m.positionsPublished.Add(float64(len(msgs)))
	return nil
}

// publishStates publishes the due quota states and sets statesPublished
// when every due state was acknowledged (or none was due).
func (s *Service) publishStates(ctx context.Context, st *state.State, own *owner, now time.Time) error {
	s.statesPublished = false
	due := st.DueQuotas(now, s.cfg.QuotaCoalesce)
	kept := due[:0]
	for _, q := range due {
		if q.Offset >= 0 && own.partitions[q.Partition] {
			kept = append(kept, q)
		}
	}
	if due = kept; len(due) == 0 {
		s.statesPublished = true
		return nil
	}
	if err := own.fence(s.written); err != nil {
		st.Requeue(due)
		s.m.quotaFenced.Inc()
		s.log.Warn("generation ended: this member publishes no quota state under it", zap.Int("keys", len(due)), zap.Error(err))
		return err
	}
	msgs := make([]kafka.Message, len(due))
	states := make([]schemas.QuotaState, len(due))
	for i, q := range due {
		states[i] = s.quotaState(q, now.UTC())
		// Time: the record says when its state was taken (kafka-go leaves
		// it unset otherwise), which splits freshness into its stages.
		msgs[i] = kafka.Message{Key: []byte(states[i].Key()), Value: states[i].AppendJSON(nil), Time: now}
	}
	if err := s.quotaW.WriteMessages(ctx, msgs...); err != nil {
		st.Requeue(due)
		s.m.quotaErrors.Inc()
		s.log.Warn("publish quota state failed; will retry", zap.Int("keys", len(due)), zap.Error(err))
		return nil
	}
	s.m.quotaPublished.Add(float64(len(due)))
	s.statesPublished = true
	s.mu.Lock()
	for i, qs := range states {
		if qs.Final {
			delete(s.latest, string(msgs[i].Key))
		} else {
			s.latest[string(msgs[i].Key)] = msgs[i].Value
		}
	}
	s.mu.Unlock()
	return s.at("after_publish")
}

func (s *Service) quotaState(q state.Quota, now time.Time) schemas.QuotaState {
	return QuotaState(s.plans, q, now)
}

// QuotaState is the QuotaState message of a quota total under p's plans
// (also what reconcile publishes for the totals it repairs).
func QuotaState(p *plans.Config, q state.Quota, now time.Time) schemas.QuotaState {
	plan, quota, a := p.QuotaFor(q.Tenant, q.Meter)
	quota = plans.WithGrants(quota, a, q.Meter, q.PeriodID) // a one-off grant raises this period's limit only
	ev := plans.Evaluate(quota, q.Usage)
	qs := schemas.QuotaState{
		TenantID: q.Tenant, FeatureType: q.Meter, Period: q.PeriodID, Plan: plan,
		Usage: q.Usage, Limit: quota.Limit, Remaining: ev.Remaining, Percentage: ev.Percentage, OverageUsed: ev.OverageUsed,
		Level: ev.Level, PeriodStart: q.PeriodStart, PeriodEnd: q.PeriodEnd, Final: q.Final,
		UpdatedAt: now, SchemaVersion: schemas.CurrentSchemaVersion,
	}
	if q.Offset >= 0 {
		qs.SourceOffsets = map[int32]int64{q.Partition: q.Offset}
	}
	return qs
}

// QuotaStates returns the last published state of every open quota, sorted
// by key. It is safe to call from any goroutine.
func (s *Service) QuotaStates() []schemas.QuotaState {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]schemas.QuotaState, 0, len(s.latest))
	for _, data := range s.latest {
		q, err := schemas.DecodeQuotaState(data)
		if err != nil {
			s.log.Error("status page: a published quota state does not decode", zap.Error(err))
			continue
		}
		out = append(out, q)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key() < out[j].Key() })
	return out
}

func (s *Service) at(point string) error {
	if s.hook == nil {
		return nil
	}
	if err := s.hook(point); err != nil {
		return fmt.Errorf("%w: %w", errFatal, err) // a simulated crash ends Run
	}
	return nil
}

// retry runs fn until it succeeds or ctx ends, backing off between
// RetryMin and RetryMax, and logs and counts each failure.
func (s *Service) retry(ctx context.Context, what string, fn func(context.Context) error) error {
	err := backoff.Retry(ctx, backoff.Policy{Min: s.cfg.RetryMin, Max: s.cfg.RetryMax}, fn, func(attempt int, pause time.Duration, err error) {
		s.m.writeErrors.Inc()
		s.log.Warn(what+" failed; retrying", zap.Int("attempt", attempt), zap.Duration("backoff", pause), zap.Error(err))
	})
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}
