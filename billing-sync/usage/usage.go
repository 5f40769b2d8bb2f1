// Package usage reads what billing-sync bills from ClickHouse: per tenant,
// meter and hour, from the raw deduplicated events (usage_events FINAL, the
// source of truth), and the aggregator's hourly rows (usage_1h FINAL) to
// cross-check them. Every query is a struct whose toSQL returns the text
// and its bound arguments.
package usage

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/shopspring/decimal"

	"github.com/usagemeter/usagemeter/schemas/plans"
)

// Hour is one tenant's usage of one meter in one UTC hour.
type Hour struct {
	Tenant   string
	Meter    string
	Start    time.Time
	Value    decimal.Decimal // the hour's value under the meter's aggregation
	Events   uint64
	LatestNs int64    // event time of the newest event (latest meters)
	Subjects []string // unique_count meters: the distinct subjects seen
}

// Store reads usage from one database.
type Store struct{ conn driver.Conn }

// New returns a Store on conn.
func New(conn driver.Conn) *Store { return &Store{conn: conn} }

// hoursQuery aggregates the raw events of one meter per tenant and hour in
// [From, To). It reads usage_events FINAL (each (tenant_id, id) once).
type hoursQuery struct {
	Meter    string
	Agg      plans.Aggregation
	UniqueBy string
	From, To time.Time
	// Tenant, when set, reads one tenant and folds [From, To) into one
	// row (a piece of an hour cut by a billing period boundary).
	Tenant string
}

func (q hoursQuery) toSQL() (string, []any) {
	value := "toString(sum(quantity))"
	subjects := "emptyArrayString()"
	switch q.Agg {
	case plans.Count:
		value = "toString(count())"
	case plans.Max:
		value = "toString(max(quantity))"
	case plans.Latest:
		value = "toString(argMax(quantity, toInt64(event_time) * 1000000000 + event_time_ns))"
	case plans.UniqueCount:
		value = "toString(uniqExact(subject))"
		subjects = "groupUniqArray(subject)"
	}
	subject := "user_id"
	if strings.HasPrefix(q.UniqueBy, "metadata.") {
		subject = "metadata_values[indexOf(metadata_keys, ?)]"
	}
	hour, where := "toStartOfHour(event_time)", ""
	if q.Tenant != "" {
		hour, where = "min(event_time)", " AND tenant_id = ?"
	}
	sql := `SELECT tenant_id, ` + hour + ` AS hour, ` + value + `, count(),
 max(toInt64(event_time) * 1000000000 + event_time_ns), ` + subjects + `
FROM (SELECT tenant_id, quantity, event_time, event_time_ns, ` + subject + ` AS subject
      FROM usage_events FINAL
      WHERE feature_type = ? AND event_time >= ? AND event_time < ?` + where
	var args []any
	if subject != "user_id" {
		args = append(args, strings.TrimPrefix(q.UniqueBy, "metadata."))
	}
	args = append(args, q.Meter, q.From.UTC(), q.To.UTC())
	if q.Tenant != "" {
		return sql + `)
GROUP BY tenant_id`, append(args, q.Tenant)
	}
	return sql + `)
GROUP BY tenant_id, hour
ORDER BY tenant_id, hour`, args
}

// Hours returns the meter's hourly usage per tenant in [from, to) from the
// raw table, ordered by tenant and hour.
func (s *Store) Hours(ctx context.Context, meter string, m plans.Meter, from, to time.Time) ([]Hour, error) {
	sql, args := hoursQuery{Meter: meter, Agg: m.Aggregation, UniqueBy: m.UniqueBy, From: from, To: to}.toSQL()
	rs, err := s.conn.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("read usage of %s: %w", meter, err)
	}
	defer rs.Close()
	var out []Hour
	for rs.Next() {
		h := Hour{Meter: meter}
		var v string
		if err := rs.Scan(&h.Tenant, &h.Start, &v, &h.Events, &h.LatestNs, &h.Subjects); err != nil {
			return nil, fmt.Errorf("scan usage of %s: %w", meter, err)
		}
		if h.Value, err = decimal.NewFromString(v); err != nil {
			return nil, fmt.Errorf("usage of %s: value %q: %w", meter, v, err)
		}
		h.Start = h.Start.UTC()
		out = append(out, h)
	}
	return out, rs.Err()
}

// Range returns one tenant's usage of the meter in [from, to) as one
// value (Start = from; zero when there was none): the two pieces of an
// hour that a subscription's period boundary (any second) cuts.
func (s *Store) Range(ctx context.Context, meter string, m plans.Meter, tenant string, from, to time.Time) (Hour, error) {
	sql, args := hoursQuery{Meter: meter, Agg: m.Aggregation, UniqueBy: m.UniqueBy, From: from, To: to, Tenant: tenant}.toSQL()
	out := Hour{Tenant: tenant, Meter: meter, Start: from.UTC()}
	rs, err := s.conn.Query(ctx, sql, args...)
	if err != nil {
		return out, fmt.Errorf("read usage of %s for %s: %w", meter, tenant, err)
	}
	defer rs.Close()
	for rs.Next() {
		var v string
		var first time.Time
		if err := rs.Scan(&out.Tenant, &first, &v, &out.Events, &out.LatestNs, &out.Subjects); err != nil {
			return out, fmt.Errorf("scan usage of %s for %s: %w", meter, tenant, err)
		}
		if out.Value, err = decimal.NewFromString(v); err != nil {
			return out, fmt.Errorf("usage of %s for %s: value %q: %w", meter, tenant, v, err)
		}
	}
	return out, rs.Err()
}

// aggregateQuery sums the aggregator's hourly rows over subjects, for the
// sum and count meters whose hours add up (a cross-check of the raw table).
type aggregateQuery struct {
	Meter    string
	From, To time.Time
}

func (q aggregateQuery) toSQL() (string, []any) {
	return `SELECT tenant_id, window_start, toString(sum(value)), sum(events)
FROM usage_1h FINAL
WHERE feature_type = ? AND window_start >= ? AND window_start < ?
GROUP BY tenant_id, window_start
ORDER BY tenant_id, window_start`, []any{q.Meter, q.From.UTC(), q.To.UTC()}
}

// AggregatedHours returns usage_1h's totals of a sum or count meter.
func (s *Store) AggregatedHours(ctx context.Context, meter string, from, to time.Time) ([]Hour, error) {
	sql, args := aggregateQuery{Meter: meter, From: from, To: to}.toSQL()
	rs, err := s.conn.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("read usage_1h of %s: %w", meter, err)
	}
	defer rs.Close()
	var out []Hour
	for rs.Next() {
		h := Hour{Meter: meter}
		var v string
		if err := rs.Scan(&h.Tenant, &h.Start, &v, &h.Events); err != nil {
			return nil, fmt.Errorf("scan usage_1h of %s: %w", meter, err)
		}
		if h.Value, err = decimal.NewFromString(v); err != nil {
			return nil, fmt.Errorf("usage_1h of %s: value %q: %w", meter, v, err)
		}
		h.Start = h.Start.UTC()
		out = append(out, h)
	}
	return out, rs.Err()
}
