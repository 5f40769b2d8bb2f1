// Package chstore writes raw usage events to ClickHouse: it opens the
// connection (creating the database and applying migrations), and inserts
// batches into usage_events.
package chstore

import (
	"context"
	"fmt"
	"time"

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

// firstWriteWins makes ReplacingMergeTree keep the lowest offset of an id.
const firstWriteWins = uint64(1) << 63

// EventBatch accumulates accepted events column by column, the layout the
// native protocol sends, so a flush copies nothing. Reset keeps the
// capacity for the next batch.
type EventBatch struct {
	ids, tenants, users, meters, periods []string
	quantities                           []decimal.Decimal
	times                                []time.Time
	nanos                                []uint32
	keys, values                         [][]string
	versions                             []uint8
	partitions                           []int32
	offsets                              []int64
	dedup                                []uint64
}

// Append adds one event read from the given Kafka position.
func (b *EventBatch) Append(e *schemas.UsageEvent, partition int32, offset int64) {
	b.ids = append(b.ids, e.ID)
	b.tenants = append(b.tenants, e.TenantID)
	b.users = append(b.users, e.UserID)
	b.meters = append(b.meters, e.FeatureType)
	b.periods = append(b.periods, e.BillingPeriod)
	b.quantities = append(b.quantities, e.Quantity)
	b.times = append(b.times, e.Timestamp.Truncate(time.Second))
	b.nanos = append(b.nanos, uint32(e.Timestamp.Nanosecond()))
	k, v := splitMetadata(e.Metadata)
	b.keys = append(b.keys, k)
	b.values = append(b.values, v)
	b.versions = append(b.versions, uint8(e.SchemaVersion))
	b.partitions = append(b.partitions, partition)
	b.offsets = append(b.offsets, offset)
	b.dedup = append(b.dedup, firstWriteWins-uint64(offset))
}

// Len is the number of events in the batch.
func (b *EventBatch) Len() int { return len(b.ids) }

// Reset empties the batch, keeping its memory.
func (b *EventBatch) Reset() {
	*b = EventBatch{
		ids: b.ids[:0], tenants: b.tenants[:0], users: b.users[:0], meters: b.meters[:0], periods: b.periods[:0],
		quantities: b.quantities[:0], times: b.times[:0], nanos: b.nanos[:0], keys: b.keys[:0], values: b.values[:0],
		versions: b.versions[:0], partitions: b.partitions[:0], offsets: b.offsets[:0], dedup: b.dedup[:0],
	}
}

// Insert writes the batch as one insert. It is all or nothing from the
// caller's point of view: on error nothing may be assumed written, and
// retrying the same batch is safe because the table deduplicates by
// (tenant_id, id).
func (s *Store) Insert(ctx context.Context, b *EventBatch) error {
	n := b.Len()
	if n == 0 {
		return nil
	}
	batch, err := s.conn.PrepareBatch(ctx, insertEvents)
	if err != nil {
		return fmt.Errorf("prepare insert into usage_events: %w", err)
	}
	defer func() { _ = batch.Abort() }()
	ingested := make([]time.Time, n)
	now := time.Now().UTC().Truncate(time.Second)
	for i := range ingested {
		ingested[i] = now
	}
	cols := []any{b.ids, b.tenants, b.users, b.meters, b.quantities, b.times, b.nanos, b.periods,
		b.keys, b.values, b.versions, ingested, b.partitions, b.offsets, b.dedup}
	for i, col := range cols {
		if err := batch.Column(i).Append(col); err != nil {
			return fmt.Errorf("append column %d to usage_events batch: %w", i, err)
		}
	}
	if err := batch.Send(); err != nil {
		return fmt.Errorf("insert %d rows into usage_events: %w", n, err)
	}
	return nil
}

func splitMetadata(m map[string]string) ([]string, []string) {
	if len(m) == 0 {
		return []string{}, []string{}
	}
	keys := make([]string, 0, len(m))
	values := make([]string, 0, len(m))
	for k, v := range m {
		keys = append(keys, k)
		values = append(values, v)
	}
	return keys, values
}
