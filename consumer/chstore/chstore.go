// Package chstore writes raw usage events to ClickHouse: it opens the
// connection (creating the database and applying migrations), and inserts
// batches into usage_events.
package chstore

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/column"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/shopspring/decimal"
	"go.uber.org/zap"

	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/svckit/chconn"
)

// Store inserts raw events. It is safe for concurrent use.
type Store struct {
	conn driver.Conn
	log  *zap.Logger

	mu   sync.Mutex
	idle *insertBatch // the last batch sent, for the next Insert to refill
}

// Open connects (creating the database when missing) and returns the Store.
// It does not apply migrations; call Migrate.
func Open(ctx context.Context, cfg chconn.Config, log *zap.Logger) (*Store, error) {
	conn, err := chconn.Open(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return &Store{conn: conn, log: log}, nil
}

// Migrate applies the embedded migrations that are not applied yet.
func (s *Store) Migrate(ctx context.Context) error { return chconn.Migrate(ctx, s.conn, s.log) }

// Conn exposes the connection, for queries in tests and tools.
func (s *Store) Conn() driver.Conn { return s.conn }

// Close closes the connection.
func (s *Store) Close() error { return s.conn.Close() }

// insertEvents lists the columns explicitly: ClickHouse 18.16 rejects a
// batch insert without a column list.
const insertEvents = `INSERT INTO usage_events (id, tenant_id, user_id, feature_type, quantity, event_time, event_time_ns,
 billing_period, metadata_keys, metadata_values, schema_version, ingested_at, kafka_partition, kafka_offset, version)`

// Column positions in insertEvents.
const (
	colMetadataKeys   = 8
	colMetadataValues = 9
	insertColumns     = 15
)

// firstWriteWins makes ReplacingMergeTree keep the lowest offset of an id.
const firstWriteWins = uint64(1) << 63

// EventBatch accumulates accepted events column by column, the layout the
// native protocol sends. Metadata is kept flat (all keys, all values, and
// where each row's entries end), so an event adds no slices of its own, and
// quantities are schemas.Fixed9 (no big.Int per event) until the insert.
// Reset keeps the capacity for the next batch.
type EventBatch struct {
	ids, tenants, users, meters, periods []string
	quantities                           []schemas.Fixed9
	times, ingested                      []time.Time
	nanos                                []uint32
	keys, values                         []string // every row's metadata, in row order
	ends                                 []int    // row i's entries are keys[ends[i-1]:ends[i]]
	versions                             []uint8
	partitions                           []int32
	offsets                              []int64
	dedup                                []uint64

	// decimals is the quantity column as clickhouse-go takes it, rebuilt
	// per insert; decs caches the decimals of recent values.
	decimals []decimal.Decimal
	decs     decimalCache
}

// AppendView adds one event decoded by schemas.Validator.DecodeView, read
// from the given Kafka position; metadata is stored in document order.
func (b *EventBatch) AppendView(e *schemas.EventView, partition int32, offset int64) {
	for _, m := range e.Metadata {
		b.keys = append(b.keys, m.Key)
		b.values = append(b.values, m.Value)
	}
	b.appendRow(e.ID, e.TenantID, e.UserID, e.FeatureType, e.BillingPeriod, e.Quantity, e.Timestamp, e.SchemaVersion, partition, offset)
}

// Append adds one valid event read from the given Kafka position. It fails
// only for a quantity Decimal(38, 9) cannot hold exactly (negative, more
// than 9 decimals, 29 integer digits), which no valid event has.
func (b *EventBatch) Append(e *schemas.UsageEvent, partition int32, offset int64) error {
	q, ok := schemas.Fixed9FromDecimal(e.Quantity)
	if !ok {
		return fmt.Errorf("event %s: quantity %s does not fit Decimal(38, 9)", e.ID, e.Quantity)
	}
	for k, v := range e.Metadata {
		b.keys = append(b.keys, k)
		b.values = append(b.values, v)
	}
	b.appendRow(e.ID, e.TenantID, e.UserID, e.FeatureType, e.BillingPeriod, q, e.Timestamp, e.SchemaVersion, partition, offset)
	return nil
}

// appendRow adds a row's columns; its metadata entries are already in
// keys and values.
func (b *EventBatch) appendRow(id, tenant, user, meter, period string, q schemas.Fixed9, ts time.Time, version int, partition int32, offset int64) {
	b.ids = append(b.ids, id)
	b.tenants = append(b.tenants, tenant)
	b.users = append(b.users, user)
	b.meters = append(b.meters, meter)
	b.periods = append(b.periods, period)
	b.quantities = append(b.quantities, q)
	b.times = append(b.times, ts) // DateTime keeps the whole seconds (Unix()); the rest goes to event_time_ns
	b.nanos = append(b.nanos, uint32(ts.Nanosecond()))
	b.ends = append(b.ends, len(b.keys))
	b.versions = append(b.versions, uint8(version))
	b.partitions = append(b.partitions, partition)
	b.offsets = append(b.offsets, offset)
	b.dedup = append(b.dedup, firstWriteWins-uint64(offset))
}

// Len is the number of events in the batch.
func (b *EventBatch) Len() int { return len(b.ids) }

// Reset empties the batch, keeping its memory.
func (b *EventBatch) Reset() {
	clear(b.decimals) // drop the big.Int references
	*b = EventBatch{
		ids: b.ids[:0], tenants: b.tenants[:0], users: b.users[:0], meters: b.meters[:0], periods: b.periods[:0],
		quantities: b.quantities[:0], times: b.times[:0], ingested: b.ingested[:0], nanos: b.nanos[:0],
		keys: b.keys[:0], values: b.values[:0], ends: b.ends[:0],
		versions: b.versions[:0], partitions: b.partitions[:0], offsets: b.offsets[:0], dedup: b.dedup[:0],
		decimals: b.decimals[:0], decs: b.decs,
	}
}

// decimalCache maps recent quantities to their decimal.Decimal, direct
// mapped: metering traffic repeats a few values (1, a token count), and
// each decimal costs a big.Int. A decimal is never modified once built
// (clickhouse-go copies the coefficient), so rows may share one.
type decimalCache struct {
	keys [256]schemas.Fixed9
	vals [256]decimal.Decimal
}

// decimal returns q as a decimal with exponent -9: clickhouse-go's
// Decimal(38, 9) column then needs no rescaling multiplication.
func (c *decimalCache) decimal(q schemas.Fixed9) decimal.Decimal {
	i := (q.Lo ^ q.Hi) * 0x9e3779b97f4a7c15 >> 56
	if c.keys[i] == q && c.vals[i].Exponent() == -schemas.QuantityScale {
		return c.vals[i]
	}
	d := q.Decimal()
	c.keys[i], c.vals[i] = q, d
	return d
}

// appendTo appends the batch to the columns of an insertEvents batch, with
// ingested_at = now.
func (b *EventBatch) appendTo(cols []column.Interface, now time.Time) error {
	b.ingested = b.ingested[:0]
	for range b.Len() {
		b.ingested = append(b.ingested, now)
	}
	b.decimals = b.decimals[:0]
	for _, q := range b.quantities {
		b.decimals = append(b.decimals, b.decs.decimal(q))
	}
	whole := []any{b.ids, b.tenants, b.users, b.meters, b.decimals, b.times, b.nanos, b.periods,
		nil, nil, b.versions, b.ingested, b.partitions, b.offsets, b.dedup}
	for i, col := range whole {
		if col == nil {
			continue
		}
		if _, err := cols[i].Append(col); err != nil {
			return fmt.Errorf("append column %d to usage_events batch: %w", i, err)
		}
	}
	// Row by row: Array.Append of a [][]string walks it by reflection; a
	// []string row takes clickhouse-go's reflection-free path.
	start := 0
	for _, end := range b.ends {
		if err := cols[colMetadataKeys].AppendRow(b.keys[start:end]); err != nil {
			return fmt.Errorf("append metadata_keys to usage_events batch: %w", err)
		}
		if err := cols[colMetadataValues].AppendRow(b.values[start:end]); err != nil {
			return fmt.Errorf("append metadata_values to usage_events batch: %w", err)
		}
		start = end
	}
	return nil
}

// insertBatch is a prepared insertEvents batch, kept after a successful Send
// so that the next Insert refills its column buffers instead of growing new
// ones from empty: clickhouse-go re-sends a sent batch on a fresh INSERT
// (batch.Send after Send acquires a connection and sends the query again),
// and its columns' Reset keeps their capacity.
type insertBatch struct {
	ctx   context.Context // the batch's context: Send watches it
	batch driver.Batch
	cols  []column.Interface
}

// takeBatch returns the kept batch if it was prepared with a context that
// ends when ctx ends and has its deadline, or nil.
func (s *Store) takeBatch(ctx context.Context) *insertBatch {
	s.mu.Lock()
	ib := s.idle
	s.idle = nil
	s.mu.Unlock()
	if ib == nil || ib.ctx.Done() != ctx.Done() {
		return nil
	}
	d1, ok1 := ib.ctx.Deadline()
	d2, ok2 := ctx.Deadline()
	if ok1 != ok2 || !d1.Equal(d2) {
		return nil
	}
	return ib
}

// Insert writes the batch as one insert. It is all or nothing from the
// caller's point of view: on error nothing may be assumed written, and
// retrying the same batch is safe because the table deduplicates by
// (tenant_id, id). Values carried by ctx (query settings) are not used.
func (s *Store) Insert(ctx context.Context, b *EventBatch) error {
	n := b.Len()
	if n == 0 {
		return nil
	}
	ib := s.takeBatch(ctx)
	if ib != nil {
		for _, c := range ib.cols {
			c.Reset()
		}
	} else {
		batch, err := s.conn.PrepareBatch(ctx, insertEvents)
		if err != nil {
			return fmt.Errorf("prepare insert into usage_events: %w", err)
		}
		ib = &insertBatch{ctx: ctx, batch: batch, cols: batch.Columns()}
		if len(ib.cols) != insertColumns {
			_ = batch.Abort()
			return fmt.Errorf("prepare insert into usage_events: %d columns, want %d", len(ib.cols), insertColumns)
		}
	}
	if err := b.appendTo(ib.cols, time.Now().UTC().Truncate(time.Second)); err != nil {
		_ = ib.batch.Abort()
		return err
	}
	if err := ib.batch.Send(); err != nil {
		return fmt.Errorf("insert %d rows into usage_events: %w", n, err)
	}
	s.mu.Lock()
	s.idle = ib
	s.mu.Unlock()
	return nil
}
