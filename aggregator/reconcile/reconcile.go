// Package reconcile recomputes the aggregate tables for a time range from
// the deduplicated raw table, the source of truth, and rewrites every row
// that differs. It folds in what the streaming path leaves out by design:
// events later than the allowed lateness, and duplicates older than the
// dedup horizon (counted twice by streaming, once in usage_events_dedup).
//
// It recomputes with the aggregator's own code (package state), so the two
// cannot disagree on what an aggregate means, and it stamps each repaired row
// with the highest raw offset it includes, so a restarted aggregator skips
// those events instead of adding them again.
//
// Run it while usage-aggregator is stopped (it refuses otherwise): a running
// aggregator holds open rows in memory and would overwrite the repairs.
package reconcile

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/shopspring/decimal"
	"go.uber.org/zap"

	"github.com/usagemeter/usagemeter/aggregator/aggstore"
	"github.com/usagemeter/usagemeter/aggregator/state"
	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/schemas/plans"
)

// Report says what a pass found.
type Report struct {
	From, To time.Time
	Events   int                    // raw events read
	Compared [len(state.Grains)]int // rows compared per grain
	Repaired [len(state.Grains)]int // rows rewritten per grain
	// Quotas are the exact totals of every period a repair changed: the
	// caller publishes them to usage.quota-state, so caches and billing
	// see the repair (Final when the period and its grace are over).
	Quotas []state.Quota
}

// Total is the number of rows rewritten.
func (r Report) Total() int {
	n := 0
	for _, x := range r.Repaired {
		n += x
	}
	return n
}

// rawQuery streams deduplicated raw events of [From, To) in source order,
// so that "latest" resolves ties exactly as the streaming path does.
type rawQuery struct{ From, To time.Time }

func (q rawQuery) toSQL() (string, []any) {
	return `SELECT id, tenant_id, user_id, feature_type, toString(quantity), event_time, event_time_ns,
 metadata_keys, metadata_values, kafka_partition, kafka_offset
FROM usage_events FINAL
WHERE event_time >= ? AND event_time < ?
ORDER BY kafka_partition, kafka_offset`, []any{q.From.UTC(), q.To.UTC()}
}

// Run reconciles [from, to), widened to whole UTC days. Period rows of every
// period overlapping the range are recomputed over their whole period.
func Run(ctx context.Context, conn driver.Conn, p *plans.Config, from, to time.Time, log *zap.Logger) (Report, error) {
	from = day(from)
	if t := day(to); t.Before(to) {
		to = t.AddDate(0, 0, 1)
	}
	rep := Report{From: from, To: to}
	// Whole periods: anchored periods start at most a month before `from`
	// and end at most a month after `to`.
	rawFrom, rawTo := from.AddDate(0, -1, 0), to.AddDate(0, 1, 0)
	st := state.New(state.Config{Plans: p, AllowedLateness: math.MaxInt64, DedupHorizon: 1}, time.Time{},
		func(state.Key) (*state.Row, error) { return nil, nil })
	sql, args := rawQuery{rawFrom, rawTo}.toSQL()
	rows, err := conn.Query(ctx, sql, args...)
	if err != nil {
		return rep, fmt.Errorf("read raw events: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			e            schemas.UsageEvent
			qty          string
			ts           time.Time
			ns           uint32
			keys, values []string
			partition    int32
			offset       int64
		)
		if err := rows.Scan(&e.ID, &e.TenantID, &e.UserID, &e.FeatureType, &qty, &ts, &ns, &keys, &values, &partition, &offset); err != nil {
			return rep, fmt.Errorf("scan raw event: %w", err)
		}
		if e.Quantity, err = decimal.NewFromString(qty); err != nil {
			return rep, fmt.Errorf("raw quantity %q: %w", qty, err)
		}
		e.Timestamp = ts.UTC().Add(time.Duration(ns))
		e.Metadata = make(map[string]string, len(keys))
		for i := range keys {
			e.Metadata[keys[i]] = values[i]
		}
		if _, err := st.Apply(&e, partition, offset); err != nil {
			return rep, err
		}
		rep.Events++
	}
	if err := rows.Err(); err != nil {
		return rep, fmt.Errorf("read raw events: %w", err)
	}
	store := aggstore.New(conn)
	expected := st.Dirty()
	for _, g := range state.Grains {
		stored, err := store.Range(ctx, g, from, to)
		if err != nil {
			return rep, err
		}
		have := make(map[state.Key]*state.Row, len(stored))
		for _, r := range stored {
			have[r.Key] = r
		}
		var repair []*state.Row
		for _, r := range expected[g] {
			if !inRange(r, from, to) {
				continue
			}
			rep.Compared[g]++
			h, ok := have[r.Key]
			delete(have, r.Key)
			if ok && h.Value.Equal(r.Value) && h.Events == r.Events {
				continue
			}
			if ok {
				r.Version = h.Version // the repair must win over it
			}
			repair = append(repair, r)
		}
		// Rows with no raw event behind them: zero them, keeping their
		// offset so a restarted aggregator does not re-add what it had.
		for _, h := range have {
			rep.Compared[g]++
			if h.Events == 0 && h.Value.IsZero() {
				continue
			}
			h.Value, h.Events = decimal.Zero, 0
			repair = append(repair, h)
		}
		if err := store.WriteRepairs(ctx, g, repair); err != nil {
			return rep, err
		}
		if g == state.Period {
			rep.Quotas = repairedQuotas(st, p, repair, time.Now())
		}
		rep.Repaired[g] = len(repair)
		if len(repair) > 0 {
			log.Info("repaired rows", zap.String("table", g.Table()), zap.Int("rows", len(repair)))
		}
	}
	return rep, nil
}

func repairedQuotas(st *state.State, p *plans.Config, repaired []*state.Row, now time.Time) []state.Quota {
	seen := map[state.QuotaKey]bool{}
	var out []state.Quota
	for _, r := range repaired {
		k := state.QuotaKey{Tenant: r.Tenant, Meter: r.Meter, PeriodID: r.PeriodID}
		if seen[k] {
			continue
		}
		seen[k] = true
		q, ok := st.QuotaOf(k)
		if !ok { // every event of the period is gone: the total is zero
			q = state.Quota{QuotaKey: k, PeriodStart: time.Unix(r.Start, 0).UTC(), PeriodEnd: time.Unix(r.PeriodEnd, 0).UTC(),
				Aggregation: r.Aggregation, Partition: r.Partition, Offset: r.Offset}
		}
		_, quota, _ := p.QuotaFor(k.Tenant, k.Meter)
		q.Final = now.After(q.PeriodEnd.Add(quota.GracePeriod))
		out = append(out, q)
	}
	return out
}

func inRange(r *state.Row, from, to time.Time) bool {
	start := time.Unix(r.Start, 0)
	if r.Grain == state.Period {
		return start.Before(to) && time.Unix(r.PeriodEnd, 0).After(from)
	}
	return !start.Before(from) && start.Before(to)
}

func day(t time.Time) time.Time {
	t = t.UTC()
	return time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
}
