package quota

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/usagemeter/usagemeter/schemas"
)

// ErrOutboxFull: the outbox holds MaxEvents undelivered events (with the
// reserved slots); the middleware refuses new requests until it drains.
var ErrOutboxFull = errors.New("quota outbox full: usage not yet delivered reached max_events")

// ErrOutboxClosed: the outbox can no longer keep an event: Close was
// called, or (without Dir) Run returned, so nothing would deliver it.
var ErrOutboxClosed = errors.New("quota outbox closed: the event would not be kept")

// OutboxConfig configures an Outbox.
type OutboxConfig struct {
	// Dir keeps the undelivered events in a file (outbox.jsonl plus a
	// cursor), so a restarted process delivers what it served before.
	// Empty: memory only (lost if the process dies before the broker is
	// back).
	Dir string `mapstructure:"dir"`
	// MaxEvents bounds the undelivered events (default 100000, about 300
	// bytes each). When full, Reserve fails and the middleware answers
	// 503 TRACKING_BACKLOG before serving: served usage is never dropped.
	MaxEvents int `mapstructure:"max_events"`
	// Fsync syncs the file after every append: the events survive a power
	// loss, at the cost of a disk flush per request. Without it they
	// survive a crash of the process (the OS holds the writes).
	Fsync bool `mapstructure:"fsync"`
	// Batch is the most events one delivery publishes (default 500).
	Batch int `mapstructure:"batch"`
	// RetryMin and RetryMax bound the backoff between failed deliveries
	// (defaults 100 ms and 5 s).
	RetryMin time.Duration `mapstructure:"retry_min"`
	RetryMax time.Duration `mapstructure:"retry_max"`
}

func (c *OutboxConfig) defaults() error {
	if c.MaxEvents == 0 {
		c.MaxEvents = 100_000
	}
	if c.Batch == 0 {
		c.Batch = 500
	}
	if c.RetryMin == 0 {
		c.RetryMin = 100 * time.Millisecond
	}
	if c.RetryMax == 0 {
		c.RetryMax = 5 * time.Second
	}
	switch {
	case c.MaxEvents < 1:
		return fmt.Errorf("outbox.max_events: %d, want >= 1", c.MaxEvents)
	case c.Batch < 1:
		return fmt.Errorf("outbox.batch: %d, want >= 1", c.Batch)
	case c.RetryMin <= 0 || c.RetryMax < c.RetryMin:
		return fmt.Errorf("outbox.retry_min/retry_max: %s/%s, want 0 < min <= max", c.RetryMin, c.RetryMax)
	}
	return nil
}

// BatchTracker publishes several events at once (the outbox delivers in
// batches when its Tracker has it; ProducerTracker does).
type BatchTracker interface {
	TrackBatch(ctx context.Context, events []schemas.UsageEvent) error
}

// Outbox is the bounded, durable retry path for tracked usage: the
// middleware puts every served request's event here (it never waits for
// the broker) and Run delivers them through a Tracker, retrying with
// backoff until the broker takes them. Events keep their id, so a
// redelivery after a crash is counted once downstream. An Outbox is a
// Tracker itself: its Track queues.
type Outbox struct {
	cfg OutboxConfig
	t   Tracker
	log *zap.Logger

	mu        sync.Mutex
	queue     []schemas.UsageEvent // undelivered, in file order after the cursor
	reserved  int                  // slots promised to requests being served
	f         *os.File             // the log, nil in memory or once closed
	closed    bool                 // Close called, or Run returned without Dir: Put, Requeue and Reserve fail
	delivered int64                // lines of the file already delivered (the cursor)
	wake      chan struct{}
	v         *schemas.Validator
	// delivered are told of every batch the broker acknowledged
	// (OnDelivered); never called for an async tracker.
	onDelivered []func([]schemas.UsageEvent)

	stats struct{ queued, delivered, failures, full, requeued, closed atomic.Int64 }
}

// OutboxStats are counts since NewOutbox.
type OutboxStats struct {
	Pending                                    int // undelivered events now
	Queued, Delivered, Failures, Full, Requeue int64
	// Closed counts events Put or Requeue refused with ErrOutboxClosed.
	Closed int64
}

// NewOutbox returns an outbox delivering through t (a sync publisher:
// Run treats a nil error as delivered). With cfg.Dir it first loads the
// events a previous process left undelivered.
func NewOutbox(cfg OutboxConfig, t Tracker, log *zap.Logger) (*Outbox, error) {
	if err := cfg.defaults(); err != nil {
		return nil, fmt.Errorf("quota outbox: %w", err)
	}
	if t == nil {
		return nil, errors.New("quota outbox: a Tracker is required")
	}
	if log == nil {
		log = zap.NewNop()
	}
	o := &Outbox{cfg: cfg, t: t, log: log, wake: make(chan struct{}, 1), v: schemas.NewValidator()}
	if cfg.Dir != "" {
		if err := o.load(); err != nil {
			return nil, fmt.Errorf("quota outbox %s: %w", cfg.Dir, err)
		}
	}
	return o, nil
}

// load reads the events after the cursor and opens the log for appends.
func (o *Outbox) load() error {
	if err := os.MkdirAll(o.cfg.Dir, 0o755); err != nil {
		return err
	}
	if b, err := os.ReadFile(o.cursorPath()); err == nil {
		n, perr := strconv.ParseInt(string(bytes.TrimSpace(b)), 10, 64)
		if perr != nil || n < 0 {
			return fmt.Errorf("cursor %q: not a line count", b)
		}
		o.delivered = n
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	f, err := os.OpenFile(o.logPath(), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), schemas.DefaultMaxEventBytes*2)
	var line int64
	var events []schemas.UsageEvent
	for sc.Scan() {
		line++
		if line <= o.delivered {
			continue
		}
		e, err := o.v.Decode(sc.Bytes())
		if err != nil { // a line torn by a crash mid-write: its request was never answered
			o.log.Warn("quota outbox: unreadable line skipped", zap.Int64("line", line), zap.Error(err))
			continue
		}
		events = append(events, e)
	}
	if err := sc.Err(); err != nil {
		_ = f.Close()
		return err
	}
	o.f = f
	o.queue = events
	// Rewrite the file as exactly the undelivered events: the cursor
	// counts lines of this file from now on.
	if err := o.rewrite(); err != nil {
		_ = f.Close()
		return err
	}
	if len(events) > 0 {
		o.log.Info("quota outbox: undelivered usage from a previous run", zap.Int("events", len(events)))
	}
	return nil
}

func (o *Outbox) logPath() string    { return filepath.Join(o.cfg.Dir, "outbox.jsonl") }
func (o *Outbox) cursorPath() string { return filepath.Join(o.cfg.Dir, "outbox.cursor") }

// rewrite replaces the log with the queue and the cursor with 0; mu held
// or not yet shared. The cursor is written first: a crash (or a failed
// write) between the two then leaves cursor 0 over the old log, which
// only redelivers events (same ids, counted once downstream); the other
// order would leave the old cursor N over the new log and skip its first
// N undelivered events.
func (o *Outbox) rewrite() error {
	var buf []byte
	for i := range o.queue {
		buf = o.queue[i].AppendJSON(buf)
		buf = append(buf, '\n')
	}
	tmp := o.logPath() + ".tmp"
	if err := os.WriteFile(tmp, buf, 0o644); err != nil {
		return err
	}
	prev := o.delivered
	o.delivered = 0
	if err := o.writeCursor(); err != nil {
		o.delivered = prev // the file still holds prev: the old log stays as it was
		_ = os.Remove(tmp)
		return err
	}
	// From here the cursor file says 0: o.delivered stays 0 even if the
	// rename fails (a cursor behind the truth only redelivers).
	if err := os.Rename(tmp, o.logPath()); err != nil {
		return err
	}
	f, err := os.OpenFile(o.logPath(), os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	_ = o.f.Close()
	o.f = f
	return nil
}

func (o *Outbox) writeCursor() error {
	tmp := o.cursorPath() + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.FormatInt(o.delivered, 10)+"\n"), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, o.cursorPath())
}

// Reserve takes a slot for a request about to be served, or reports false
// when the outbox is full. Every Reserve is followed by Put(reserved) or
// Unreserve.
func (o *Outbox) Reserve() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return false
	}
	if len(o.queue)+o.reserved >= o.cfg.MaxEvents {
		o.stats.full.Add(1)
		return false
	}
	o.reserved++
	return true
}

// Unreserve gives back a slot whose request will not be tracked.
func (o *Outbox) Unreserve() {
	o.mu.Lock()
	o.reserved = max(0, o.reserved-1)
	o.mu.Unlock()
}

// Track queues e for delivery (an Outbox is a Tracker): it fills e.ID and
// e.Timestamp when empty, and fails with ErrOutboxFull when full.
func (o *Outbox) Track(_ context.Context, e *schemas.UsageEvent) error { return o.Put(e, false) }

// Put queues e, in a slot taken by Reserve when reserved (then it never
// fails for lack of room). It returns once e is in the file (with Dir),
// also after Run returned (the next process delivers it), and fails with
// ErrOutboxClosed after Close (or, without Dir, once Run returned).
func (o *Outbox) Put(e *schemas.UsageEvent, reserved bool) error { return o.put(e, reserved, nil) }

// put is Put calling queued (when not nil) under the outbox's lock once e
// will be queued, just before it is: the middleware holds the event there,
// so held events are in queue order, which is their offset order on the
// partition (a state's increase is taken off them in that order).
func (o *Outbox) put(e *schemas.UsageEvent, reserved bool, queued func()) error {
	if e.ID == "" {
		e.ID = schemas.NewID()
	}
	if e.Timestamp.IsZero() {
		e.Timestamp = time.Now().UTC()
	}
	line, err := o.v.AppendEvent(nil, e) // validates (the consumer's rules) and normalises e
	if err != nil {
		if reserved {
			o.Unreserve()
		}
		return fmt.Errorf("quota outbox: event %s refused: %w", e.ID, err)
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if reserved {
		o.reserved = max(0, o.reserved-1)
	}
	if o.closed {
		o.stats.closed.Add(1)
		return fmt.Errorf("event %s: %w", e.ID, ErrOutboxClosed)
	}
	if !reserved && len(o.queue)+o.reserved >= o.cfg.MaxEvents {
		o.stats.full.Add(1)
		return fmt.Errorf("event %s: %w", e.ID, ErrOutboxFull)
	}
	if queued != nil {
		queued()
	}
	if err := o.append(line); err != nil {
		return fmt.Errorf("quota outbox: event %s not stored: %w", e.ID, err)
	}
	o.queue = append(o.queue, *e)
	o.stats.queued.Add(1)
	o.signal()
	return nil
}

// append writes one line to the log; mu held.
func (o *Outbox) append(line []byte) error {
	if o.cfg.Dir == "" {
		return nil
	}
	if o.f == nil { // never silently memory-only when durability was asked for
		return ErrOutboxClosed
	}
	line = append(line, '\n')
	if _, err := o.f.Write(line); err != nil {
		return err
	}
	if o.cfg.Fsync {
		return o.f.Sync()
	}
	return nil
}

func (o *Outbox) signal() {
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

// Requeue takes back events an async publisher failed to deliver; pass it
// as producer.WithAsync's callback (or call it from yours). They are
// queued beyond MaxEvents if need be: they were served already. It fails
// with ErrOutboxClosed (keeping none) after Close, or without Dir once
// Run returned; an event the log could not store is still queued in
// memory and reported in the error.
func (o *Outbox) Requeue(err error, events []schemas.UsageEvent) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		o.stats.closed.Add(int64(len(events)))
		o.log.Error("quota outbox: requeue after close, events not kept", zap.Int("events", len(events)), zap.Error(err))
		return fmt.Errorf("requeue of %d events: %w", len(events), ErrOutboxClosed)
	}
	var errs []error
	for i := range events {
		line, aerr := o.v.AppendEvent(nil, &events[i])
		if aerr != nil {
			o.log.Error("quota outbox: an undeliverable event is dropped", zap.String("id", events[i].ID), zap.Error(aerr))
			continue
		}
		if aerr := o.append(line); aerr != nil {
			o.log.Error("quota outbox: requeue not stored", zap.String("id", events[i].ID), zap.Error(aerr))
			errs = append(errs, fmt.Errorf("event %s not stored: %w", events[i].ID, aerr))
		}
		o.queue = append(o.queue, events[i])
	}
	o.stats.requeued.Add(int64(len(events)))
	o.log.Warn("quota outbox: async delivery failed, events requeued", zap.Int("events", len(events)), zap.Error(err))
	o.signal()
	return errors.Join(errs...)
}

// OnDelivered registers f to be told of every batch the broker
// acknowledged (the middleware passes Cache.Acknowledged, so that pending
// usage can expire once the aggregator's position covers it). A tracker
// whose Track returns before the broker answers (ProducerTracker with
// Async set) acknowledges nothing: f is never called then.
func (o *Outbox) OnDelivered(f func([]schemas.UsageEvent)) {
	o.mu.Lock()
	o.onDelivered = append(o.onDelivered, f)
	o.mu.Unlock()
}

// asyncTracker is a Tracker that may return before the broker acknowledged.
type asyncTracker interface{ IsAsync() bool }

// acknowledges reports whether OnDelivered hears of deliveries (the
// tracker answers after the broker's acks).
func (o *Outbox) acknowledges() bool {
	at, ok := o.t.(asyncTracker)
	return !ok || !at.IsAsync()
}

// Len is the number of undelivered events.
func (o *Outbox) Len() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.queue)
}

// Stats returns the counts.
func (o *Outbox) Stats() OutboxStats {
	return OutboxStats{Pending: o.Len(), Queued: o.stats.queued.Load(), Delivered: o.stats.delivered.Load(),
		Failures: o.stats.failures.Load(), Full: o.stats.full.Load(), Requeue: o.stats.requeued.Load(),
		Closed: o.stats.closed.Load()}
}

// Run delivers queued events until ctx is done, in order, a batch at a
// time, retrying a failed batch with exponential backoff. With Dir the log
// stays open when it returns: a handler still serving (a shutdown that
// timed out) puts its event there for the next process; Close closes it.
// Without Dir nothing would deliver a later event, so the outbox closes.
func (o *Outbox) Run(ctx context.Context) error {
	defer func() {
		if o.cfg.Dir == "" {
			o.close()
		}
	}()
	delay := o.cfg.RetryMin
	for {
		o.mu.Lock()
		batch := append([]schemas.UsageEvent(nil), o.queue[:min(len(o.queue), o.cfg.Batch)]...)
		o.mu.Unlock()
		if len(batch) == 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-o.wake:
				continue
			}
		}
		if err := o.deliver(ctx, batch); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			o.stats.failures.Add(1)
			o.log.Warn("quota outbox: delivery failed, retrying", zap.Int("events", len(batch)), zap.Duration("in", delay), zap.Error(err))
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(delay):
			}
			delay = min(2*delay, o.cfg.RetryMax)
			continue
		}
		delay = o.cfg.RetryMin
		if o.acknowledges() {
			o.mu.Lock()
			fs := o.onDelivered
			o.mu.Unlock()
			for _, f := range fs {
				f(batch)
			}
		}
		o.done(len(batch))
	}
}

func (o *Outbox) deliver(ctx context.Context, batch []schemas.UsageEvent) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if bt, ok := o.t.(BatchTracker); ok {
		return bt.TrackBatch(ctx, batch)
	}
	for i := range batch {
		if err := o.t.Track(ctx, &batch[i]); err != nil {
			return err // the earlier ones are redelivered: same ids, counted once
		}
	}
	return nil
}

// done drops n delivered events from the head and moves the cursor; an
// empty queue truncates the file.
func (o *Outbox) done(n int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.queue = o.queue[n:]
	o.stats.delivered.Add(int64(n))
	if o.f == nil {
		if len(o.queue) == 0 {
			o.queue = nil
		}
		return
	}
	o.delivered += int64(n)
	var err error
	if len(o.queue) == 0 {
		err = o.rewrite()
	} else {
		err = o.writeCursor()
	}
	if err != nil { // the events are delivered; a stale cursor only redelivers them (same ids)
		o.log.Warn("quota outbox: cursor not stored", zap.Error(err))
	}
}

// Close closes the log: Reserve, Put and Requeue fail from then on. Call it
// after Run returned and the handlers finished (what is undelivered stays
// in Dir for the next process).
func (o *Outbox) Close() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.closed = true
	if o.f == nil {
		return nil
	}
	err := o.f.Close()
	o.f = nil
	if err != nil {
		return fmt.Errorf("quota outbox: close %s: %w", o.logPath(), err)
	}
	return nil
}

func (o *Outbox) close() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.closed = true
	if o.f != nil {
		_ = o.f.Close()
		o.f = nil
	}
}
