// Package aggstore reads and writes the aggregator's rows and checkpoints in
// ClickHouse. Every query is a small struct whose toSQL returns the text and
// its bound arguments, so the SQL is unit-tested as text and run against the
// server in integration tests.
package aggstore

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/shopspring/decimal"

	"github.com/usagemeter/usagemeter/aggregator/state"
	"github.com/usagemeter/usagemeter/schemas/plans"
)

// Store wraps a connection to the database holding the aggregate tables
// (created by the migrations in schemas/migrations).
type Store struct {
	conn driver.Conn
	now  func() time.Time
}

// New returns a Store on conn.
func New(conn driver.Conn) *Store { return &Store{conn: conn, now: time.Now} }

const windowColumns = `tenant_id, feature_type, subject, window_start, aggregation, value, events, latest_ns,
 source_partition, source_offset, updated_at, version`

const periodColumns = `tenant_id, feature_type, subject, period_id, period_start, period_end, plan, aggregation, value,
 events, latest_ns, source_partition, source_offset, updated_at, version`

// WriteRows writes rows of one grain as a single insert, each with the
// version RowVersion gives it, and records that version in the row.
func (s *Store) WriteRows(ctx context.Context, g state.Grain, rows []*state.Row) error {
	return s.writeRows(ctx, g, rows, RowVersion)
}

// RowVersion is the version the aggregator writes a row with. It follows
// the data: twice (the source offset + 1), so that after a rebalance a late
// flush by the partition's previous owner, which reflects fewer events,
// loses in FINAL to the new owner's row, whatever the clocks say. It is
// also above the version the row has in storage, so a row keeps moving
// forward if its tenant ever moves to another partition (lower offsets).
// Even versions are the aggregator's, odd ones reconcile's (RepairVersion).
func RowVersion(r *state.Row) uint64 {
	return max(2*uint64(r.Offset+1), r.Version+2)
}

// RepairVersion is the version reconcile writes a repaired row with: just
// above the stored row it replaces, and below any later aggregator write.
func RepairVersion(r *state.Row) uint64 {
	if r.Version == 0 {
		return 2*uint64(r.Offset+1) + 1
	}
	return r.Version + 1
}

// WriteRepairs writes rows computed by reconcile; Version must be the
// stored row's (0 when there is none).
func (s *Store) WriteRepairs(ctx context.Context, g state.Grain, rows []*state.Row) error {
	return s.writeRows(ctx, g, rows, RepairVersion)
}

func (s *Store) writeRows(ctx context.Context, g state.Grain, rows []*state.Row, versionOf func(*state.Row) uint64) error {
	if len(rows) == 0 {
		return nil
	}
	cols := windowColumns
	if g == state.Period {
		cols = periodColumns
	}
	batch, err := s.conn.PrepareBatch(ctx, "INSERT INTO "+g.Table()+" ("+cols+")")
	if err != nil {
		return fmt.Errorf("prepare insert into %s: %w", g.Table(), err)
	}
	defer func() { _ = batch.Abort() }()
	updated := s.now().UTC().Truncate(time.Second)
	versions := make([]uint64, len(rows))
	for i, r := range rows {
		version := versionOf(r)
		versions[i] = version
		start := time.Unix(r.Start, 0).UTC()
		if g == state.Period {
			err = batch.Append(r.Tenant, r.Meter, r.Subject, r.PeriodID, start, time.Unix(r.PeriodEnd, 0).UTC(), r.Plan,
				string(r.Aggregation), r.Value, r.Events, r.LatestNs, r.Partition, r.Offset, updated, version)
		} else {
			err = batch.Append(r.Tenant, r.Meter, r.Subject, start, string(r.Aggregation), r.Value, r.Events, r.LatestNs,
				r.Partition, r.Offset, updated, version)
		}
		if err != nil {
			return fmt.Errorf("append to %s batch: %w", g.Table(), err)
		}
	}
	if err := batch.Send(); err != nil {
		return fmt.Errorf("insert %d rows into %s: %w", len(rows), g.Table(), err)
	}
	for i, r := range rows {
		r.Version = versions[i]
	}
	return nil
}

// rowsQuery selects the current (FINAL) rows of one grain: those whose
// window or period ends after Since and that were fed by one of
// Partitions, or the one row matching Key.
type rowsQuery struct {
	Grain      state.Grain
	Since      time.Time  // when Key is nil
	Partitions []int32    // when Key is nil; must not be empty
	Key        *state.Key // a single row
}

func (q rowsQuery) toSQL() (string, []any) {
	table := q.Grain.Table()
	var sql string
	if q.Grain == state.Period {
		sql = `SELECT tenant_id, feature_type, subject, period_start, aggregation, toString(value), events, latest_ns,
 source_partition, source_offset, period_id, period_end, plan, version FROM ` + table + ` FINAL`
	} else {
		sql = `SELECT tenant_id, feature_type, subject, window_start, aggregation, toString(value), events, latest_ns,
 source_partition, source_offset, '', toDateTime(0), '', version FROM ` + table + ` FINAL`
	}
	startCol := "window_start"
	if q.Grain == state.Period {
		startCol = "period_start"
	}
	if q.Key != nil {
		return sql + ` WHERE tenant_id = ? AND feature_type = ? AND subject = ? AND ` + startCol + ` = ?`,
			[]any{q.Key.Tenant, q.Key.Meter, q.Key.Subject, time.Unix(q.Key.Start, 0).UTC()}
	}
	// A member loads only the rows of the partitions it owns: it must not
	// hold (and so never republish) another member's tenants.
	owned := ` AND has(?, source_partition)`
	if q.Grain == state.Period {
		return sql + ` WHERE period_end > ?` + owned, []any{q.Since.UTC(), q.Partitions}
	}
	// A window starting before Since - length has ended by Since.
	return sql + ` WHERE window_start > ?` + owned, []any{q.Since.Add(-state.GrainLength(q.Grain)).UTC(), q.Partitions}
}

// LoadOpen reads every row of every grain whose window or period ends
// after since and whose source partition is one of partitions: the rows a
// resumed aggregator that owns those partitions may still change.
func (s *Store) LoadOpen(ctx context.Context, since time.Time, partitions []int32) ([]*state.Row, error) {
	if len(partitions) == 0 {
		return nil, nil
	}
	var out []*state.Row
	for _, g := range state.Grains {
		rows, err := s.query(ctx, rowsQuery{Grain: g, Since: since, Partitions: partitions})
		if err != nil {
			return nil, err
		}
		out = append(out, rows...)
	}
	return out, nil
}

// Fetch reads one row; nil when it does not exist.
func (s *Store) Fetch(ctx context.Context, k state.Key) (*state.Row, error) {
	rows, err := s.query(ctx, rowsQuery{Grain: k.Grain, Key: &k})
	if err != nil || len(rows) == 0 {
		return nil, err
	}
	return rows[0], nil
}

func (s *Store) query(ctx context.Context, q rowsQuery) ([]*state.Row, error) {
	sql, args := q.toSQL()
	return s.scan(ctx, q.Grain, sql, args)
}

func (s *Store) scan(ctx context.Context, g state.Grain, sql string, args []any) ([]*state.Row, error) {
	q := struct{ Grain state.Grain }{g}
	rs, err := s.conn.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", q.Grain.Table(), err)
	}
	defer rs.Close()
	var out []*state.Row
	for rs.Next() {
		var (
			r          = &state.Row{}
			start, end time.Time
			agg, value string
		)
		if err := rs.Scan(&r.Tenant, &r.Meter, &r.Subject, &start, &agg, &value, &r.Events, &r.LatestNs,
			&r.Partition, &r.Offset, &r.PeriodID, &end, &r.Plan, &r.Version); err != nil {
			return nil, fmt.Errorf("scan %s: %w", q.Grain.Table(), err)
		}
		r.Grain, r.Start, r.Aggregation = q.Grain, start.Unix(), plans.Aggregation(agg)
		if q.Grain == state.Period {
			r.PeriodEnd = end.Unix()
		}
		if r.Value, err = decimal.NewFromString(value); err != nil {
			return nil, fmt.Errorf("%s value %q: %w", q.Grain.Table(), value, err)
		}
		out = append(out, r)
	}
	return out, rs.Err()
}

// WriteCheckpoints records where the group resumes, after its rows.
func (s *Store) WriteCheckpoints(ctx context.Context, group, topic string, cps []state.Checkpoint) error {
	if len(cps) == 0 {
		return nil
	}
	batch, err := s.conn.PrepareBatch(ctx, "INSERT INTO aggregator_checkpoints (consumer_group, topic, partition, offset, watermark, updated_at, version)")
	if err != nil {
		return fmt.Errorf("prepare checkpoint insert: %w", err)
	}
	defer func() { _ = batch.Abort() }()
	now := s.now()
	for _, c := range cps {
		// Like rows, a checkpoint's version follows its offset: a late write
		// by a partition's previous owner never moves it back.
		version := uint64(c.Offset + 2)
		wm := c.Watermark.UTC()
		if wm.IsZero() {
			wm = time.Unix(0, 0).UTC()
		}
		if err := batch.Append(group, topic, c.Partition, c.Offset, wm, now.UTC().Truncate(time.Second), version); err != nil {
			return fmt.Errorf("append checkpoint: %w", err)
		}
	}
	if err := batch.Send(); err != nil {
		return fmt.Errorf("write checkpoints: %w", err)
	}
	return nil
}

type checkpointsQuery struct{ Group, Topic string }

func (q checkpointsQuery) toSQL() (string, []any) {
	return `SELECT partition, offset, watermark FROM aggregator_checkpoints FINAL WHERE consumer_group = ? AND topic = ?`,
		[]any{q.Group, q.Topic}
}

// Checkpoints reads the group's resume points.
func (s *Store) Checkpoints(ctx context.Context, group, topic string) ([]state.Checkpoint, error) {
	sql, args := checkpointsQuery{group, topic}.toSQL()
	rs, err := s.conn.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("read checkpoints: %w", err)
	}
	defer rs.Close()
	var out []state.Checkpoint
	for rs.Next() {
		var c state.Checkpoint
		if err := rs.Scan(&c.Partition, &c.Offset, &c.Watermark); err != nil {
			return nil, fmt.Errorf("scan checkpoint: %w", err)
		}
		out = append(out, c)
	}
	return out, rs.Err()
}

// rangeQuery selects the current rows of one grain whose window starts in
// [From, To), or, for periods, whose period overlaps it.
type rangeQuery struct {
	Grain    state.Grain
	From, To time.Time
}

func (q rangeQuery) toSQL() (string, []any) {
	base, _ := rowsQuery{Grain: q.Grain, Since: q.From}.toSQL()
	base = base[:strings.Index(base, " WHERE ")]
	if q.Grain == state.Period {
		return base + ` WHERE period_start < ? AND period_end > ?`, []any{q.To.UTC(), q.From.UTC()}
	}
	return base + ` WHERE window_start >= ? AND window_start < ?`, []any{q.From.UTC(), q.To.UTC()}
}

// Range reads the rows of a grain in [from, to).
func (s *Store) Range(ctx context.Context, g state.Grain, from, to time.Time) ([]*state.Row, error) {
	sql, args := rangeQuery{Grain: g, From: from, To: to}.toSQL()
	return s.scan(ctx, g, sql, args)
}
