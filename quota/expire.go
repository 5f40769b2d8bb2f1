package quota

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"
	"go.uber.org/zap"

	"github.com/usagemeter/usagemeter/schemas"
)

// Pending that the quota state should have absorbed expires (issue 13
// item 6). The aggregator publishes, per partition of the events topic,
// the offset through which every quota state is published
// (schemas.QuotaPosition). An event the middleware tracked is registered
// with Hold; once the broker acknowledged it (the outbox's sync delivery),
// the high-water mark of its partition read after the acknowledgement
// bounds its offset; once a position read after every state published
// before it covers that bound, the event is in a state the cache holds, or
// never will be (DLQ, a duplicate id, late): what of it is still pending
// is dropped. MaxPendingAge expires acknowledged events when positions do
// not arrive (no aggregator publishing them, a stopped aggregator).

// pendingEvent is one tracked event whose amount is (partly) pending.
type pendingEvent struct {
	key    string // tenant/id
	tenant string
	b      *bucket
	rem    Amount // what of it is still pending (b.mu)
	// acked is when the broker acknowledged it (zero before); seq orders
	// acknowledgements against high-water-mark reads; bound is an offset
	// at or after the event's on its partition (-1: not known yet).
	acked     time.Time
	seq       uint64
	partition int32
	bound     int64
}

// maxHeldEvents bounds the registry (about 150 bytes each) when positions
// stop and max_pending_age is 0 or long: beyond it events are not held.
const maxHeldEvents = 1 << 20

// pendingEvents is the cache's registry of tracked events.
type pendingEvents struct {
	mu      sync.Mutex
	byKey   map[string]*pendingEvent
	seq     uint64
	covered map[int32]int64 // events partition -> applied_through of the newest position
	parts   []int           // partitions of the events topic (nil until read)
	stats   struct{ byPosition, byAge int64 }
}

// Hold registers the event an allowed decision stands for (the
// middleware calls it before the event enters the outbox), so that its
// pending amount can expire once the aggregator's position covers it.
// Call Acknowledged when the broker took it.
func (c *Cache) Hold(d Decision, e *schemas.UsageEvent) {
	if !d.Allowed || d.b == nil || d.qty.IsZero() || e.ID == "" || (c.cfg.PositionTopic == "" && c.cfg.MaxPendingAge == 0) {
		return // nothing could ever expire it
	}
	pe := &pendingEvent{key: idKey(e.TenantID, e.ID), tenant: e.TenantID, b: d.b, rem: d.qty, partition: -1, bound: -1}
	c.pend.mu.Lock()
	if _, dup := c.pend.byKey[pe.key]; dup || len(c.pend.byKey) >= maxHeldEvents {
		// Not held: its amount stays pending until the period ends
		// (refused early, never free).
		c.pend.mu.Unlock()
		return
	}
	c.pend.byKey[pe.key] = pe
	c.pend.mu.Unlock()
	d.b.mu.Lock()
	d.b.events = append(d.b.events, pe)
	d.b.mu.Unlock()
}

// Unhold forgets a held event that will not be delivered (the outbox
// refused it); its amount stays pending.
func (c *Cache) Unhold(e *schemas.UsageEvent) {
	c.pend.mu.Lock()
	pe := c.pend.byKey[idKey(e.TenantID, e.ID)]
	delete(c.pend.byKey, idKey(e.TenantID, e.ID))
	c.pend.mu.Unlock()
	if pe != nil {
		pe.b.mu.Lock()
		pe.b.events = slices.DeleteFunc(pe.b.events, func(o *pendingEvent) bool { return o == pe })
		pe.b.mu.Unlock()
	}
}

// Acknowledged tells the cache the broker acknowledged these events
// (acks=all): an Outbox delivering through a sync tracker calls it.
func (c *Cache) Acknowledged(events []schemas.UsageEvent) {
	now := c.now()
	c.pend.mu.Lock()
	defer c.pend.mu.Unlock()
	c.pend.seq++
	for i := range events {
		if pe := c.pend.byKey[idKey(events[i].TenantID, events[i].ID)]; pe != nil && pe.acked.IsZero() {
			pe.acked, pe.seq = now, c.pend.seq
		}
	}
}

// absorb takes a state's usage increase d off b's pending (not below 0) and
// off its held events, oldest first, by what it took: an event whose part
// was absorbed is not given back again when it expires.
func absorb(b *bucket, d Amount) {
	taken := subPending(b, d)
	if taken.IsZero() {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, pe := range b.events {
		if taken.IsZero() {
			return
		}
		t := pe.rem
		if t.Cmp(taken) > 0 {
			t = taken
		}
		pe.rem, taken = pe.rem.Sub(t), taken.Sub(t)
	}
}

// expire drops pe: what of it is still pending is given back.
func (c *Cache) expireOne(pe *pendingEvent) {
	pe.b.mu.Lock()
	rem := pe.rem
	pe.rem = Amount{}
	pe.b.events = slices.DeleteFunc(pe.b.events, func(o *pendingEvent) bool { return o == pe })
	pe.b.mu.Unlock()
	if !rem.IsZero() {
		subPending(pe.b, rem)
	}
}

// expireDue expires the acknowledged events a position covers or that
// were acknowledged MaxPendingAge ago.
func (c *Cache) expireDue() {
	now := c.now()
	var due []*pendingEvent
	c.pend.mu.Lock()
	for k, pe := range c.pend.byKey {
		if pe.acked.IsZero() {
			continue // not delivered yet: no state can hold it
		}
		cov, ok := c.pend.covered[pe.partition]
		switch {
		case pe.bound >= 0 && ok && cov >= pe.bound:
			c.pend.stats.byPosition++
		case c.cfg.MaxPendingAge > 0 && now.Sub(pe.acked) >= c.cfg.MaxPendingAge:
			c.pend.stats.byAge++
		default:
			continue
		}
		delete(c.pend.byKey, k)
		due = append(due, pe)
	}
	c.pend.mu.Unlock()
	for _, pe := range due {
		c.expireOne(pe)
	}
}

// pendingLoop bounds the offsets of acknowledged events by the events
// topic's high-water marks and expires what is due, every PollInterval.
func (c *Cache) pendingLoop(ctx context.Context, client *kafka.Client) {
	t := time.NewTicker(c.cfg.PollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c.boundAcked(ctx, client)
		c.expireDue()
	}
}

// boundAcked reads the events topic's high-water marks once some
// acknowledged event has no bound yet: an event acknowledged before the
// read (acks=all) is below the mark of its partition.
func (c *Cache) boundAcked(ctx context.Context, client *kafka.Client) {
	c.pend.mu.Lock()
	parts, cut, need := c.pend.parts, c.pend.seq, false
	for _, pe := range c.pend.byKey {
		need = need || (!pe.acked.IsZero() && pe.bound < 0)
	}
	c.pend.mu.Unlock()
	if !need || c.cfg.EventsTopic == "" {
		return
	}
	if parts == nil {
		md, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{c.cfg.EventsTopic}})
		if err != nil || len(md.Topics) != 1 || md.Topics[0].Error != nil || len(md.Topics[0].Partitions) == 0 {
			return // expiry by age only until the topic answers
		}
		for i := range len(md.Topics[0].Partitions) {
			parts = append(parts, i)
		}
		c.pend.mu.Lock()
		c.pend.parts = parts
		c.pend.mu.Unlock()
	}
	pctx, cancel := context.WithTimeout(ctx, max(time.Second, 4*c.cfg.PollInterval))
	ends, err := c.listEnds(pctx, client, c.cfg.EventsTopic, len(parts))
	cancel()
	if err != nil {
		return
	}
	c.pend.mu.Lock()
	defer c.pend.mu.Unlock()
	for _, pe := range c.pend.byKey {
		if pe.acked.IsZero() || pe.bound >= 0 || pe.seq > cut {
			continue
		}
		// The tenant's partition, as every publisher of the pipeline puts it.
		p := kafka.Murmur2Balancer{}.Balance(kafka.Message{Key: []byte(pe.tenant)}, parts...)
		pe.partition, pe.bound = int32(p), ends[p]-1
	}
}

// readPositions follows the position topic until ctx is done. A missing
// topic is asked for again every 10 s; meanwhile acknowledged events
// expire by MaxPendingAge only.
func (c *Cache) readPositions(ctx context.Context, client *kafka.Client) {
	warned := false
	for ctx.Err() == nil {
		md, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{c.cfg.PositionTopic}})
		if err == nil && len(md.Topics) == 1 && md.Topics[0].Error == nil && len(md.Topics[0].Partitions) > 0 {
			var wg sync.WaitGroup
			for p := range len(md.Topics[0].Partitions) {
				wg.Go(func() { c.readPositionPartition(ctx, client, p) })
			}
			wg.Wait()
			return
		}
		if !warned {
			c.log.Info("quota cache: no position topic yet; pending expires by max_pending_age only",
				zap.String("topic", c.cfg.PositionTopic))
			warned = true
		}
		select {
		case <-ctx.Done():
		case <-time.After(10 * time.Second):
		}
	}
}

func (c *Cache) readPositionPartition(ctx context.Context, client *kafka.Client, p int) {
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: c.cfg.Brokers, Topic: c.cfg.PositionTopic, Partition: p,
		MinBytes: 1, MaxBytes: 1 << 20, MaxWait: 250 * time.Millisecond,
		ReadBackoffMin: 50 * time.Millisecond, ReadBackoffMax: time.Second})
	defer r.Close()
	for {
		m, err := r.FetchMessage(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
			continue
		}
		pos, err := schemas.DecodeQuotaPosition(m.Value)
		if err != nil {
			c.stats.invalid.Add(1)
			c.log.Warn("quota cache: invalid quota position", zap.Int64("offset", m.Offset), zap.Error(err))
			continue
		}
		if pos.Topic != c.cfg.EventsTopic {
			continue
		}
		if !c.statesBefore(ctx, client) {
			return
		}
		c.pend.mu.Lock()
		if cur, ok := c.pend.covered[pos.Partition]; !ok || pos.AppliedThrough > cur {
			c.pend.covered[pos.Partition] = pos.AppliedThrough
		}
		c.pend.mu.Unlock()
		c.expireDue()
	}
}

// statesBefore waits until the state readers have read every record the
// quota-state topic held when it is called: the states the aggregator
// published before a position just read. False when ctx ended.
func (c *Cache) statesBefore(ctx context.Context, client *kafka.Client) bool {
	var ends []int64
	for ends == nil {
		pctx, cancel := context.WithTimeout(ctx, max(time.Second, 4*c.cfg.PollInterval))
		e, err := c.listEnds(pctx, client, c.state.name, len(c.state.next))
		cancel()
		if err == nil {
			ends = e
			break
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(c.cfg.PollInterval):
		}
	}
	for {
		ch := c.waitCh()
		if behind(&c.state, ends) == 0 {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-ch:
		}
	}
}

// ExpiryStats are counts of held events whose pending was expired.
type ExpiryStats struct {
	Held       int   // registered now (undelivered, or not yet covered)
	ByPosition int64 // covered by the aggregator's position
	ByAge      int64 // acknowledged MaxPendingAge ago without a position covering them
}

// ExpiryStats returns the counts.
func (c *Cache) ExpiryStats() ExpiryStats {
	c.pend.mu.Lock()
	defer c.pend.mu.Unlock()
	return ExpiryStats{Held: len(c.pend.byKey), ByPosition: c.pend.stats.byPosition, ByAge: c.pend.stats.byAge}
}
