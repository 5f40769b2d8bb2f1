// Package retention drops whole monthly partitions of the pipeline's
// ClickHouse tables once they are older than each table's configured
// retention, and never while billing may still read them. ClickHouse 18.16
// has no TTL; dropping a partition is the cheap, atomic way to delete (no
// mutation, no rewrite).
package retention

import (
	"context"
	"fmt"
	"regexp"
	"sort"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"go.uber.org/zap"
)

// Config is the retention of each table, and when billing is done with a
// month.
type Config struct {
	// Keep is the retention per table, in days; 0 keeps the table for
	// ever. Only tables partitioned by month (toYYYYMM) may be listed.
	Keep map[string]int `mapstructure:"keep"`
	// BillingCloseAfter is how long after a month ends billing may still
	// change it: the longest billing period (31 days, a period that starts
	// in that month ends at most that much later) plus Stripe's invoice
	// finalization grace (1 h). No partition closes earlier, whatever its
	// retention.
	BillingCloseAfter time.Duration `mapstructure:"billing_close_after"`
	// Every is the schedule of `retention apply --every`: 0 runs once.
	Every time.Duration `mapstructure:"every"`
}

// DefaultConfig: raw events 13 months (a year and the month compared with
// it), one-minute windows 35 days, hours 400 days, days, periods and the
// billing ledger for ever, the DLQ fallback, replay records and webhook
// deliveries a year, and the admin page's audit of plan changes and quota
// grants 24 months (730 days: who changed a tenant's limits, for two
// years of invoices and disputes).
func DefaultConfig() Config {
	return Config{
		Keep: map[string]int{
			"usage_events": 396, "usage_1m": 35, "usage_1h": 400, "usage_1d": 0, "usage_period": 0,
			"dead_letters": 365, "dlq_replays": 365, "alert_deliveries": 365, "billing_audit": 0,
			"plan_changes": 730, "quota_grants": 730,
		},
		BillingCloseAfter: 31*24*time.Hour + time.Hour,
	}
}

// Tables partitioned by month, and how much later than its partition's
// month a row's time can end: a usage_period row is partitioned by its
// period start, and its period ends up to a month later. plan_changes and
// quota_grants (usage-api's audit, migrations 0013 and 0014) are
// partitioned by when the change was made; a grant's period ends at most a
// month later, which billing_close_after already waits for.
var partitioned = map[string]time.Duration{
	"usage_events": 0, "usage_1m": 0, "usage_1h": 0, "usage_1d": 0, "usage_period": 31 * 24 * time.Hour,
	"dead_letters": 0, "dlq_replays": 0, "alert_deliveries": 0, "billing_audit": 0,
	"plan_changes": 0, "quota_grants": 0,
}

// Validate names the key at fault.
func (c Config) Validate() error {
	for t, d := range c.Keep {
		if _, ok := partitioned[t]; !ok {
			return fmt.Errorf("retention.keep.%s: not a table partitioned by month (want one of %v)", t, tableNames())
		}
		if d < 0 {
			return fmt.Errorf("retention.keep.%s: %d days is negative (0 keeps it for ever)", t, d)
		}
	}
	if c.BillingCloseAfter < 0 {
		return fmt.Errorf("retention.billing_close_after: %s is negative", c.BillingCloseAfter)
	}
	if c.Every < 0 {
		return fmt.Errorf("retention.every: %s is negative", c.Every)
	}
	return nil
}

func tableNames() []string {
	var out []string
	for t := range partitioned {
		out = append(out, t)
	}
	sort.Strings(out)
	return out
}

// Partition is one month of one table and what the plan does with it.
type Partition struct {
	Table   string
	ID      string // YYYYMM
	Rows    uint64
	Bytes   uint64
	End     time.Time // when the newest time the partition can hold ends
	Drop    bool
	Because string
}

var monthID = regexp.MustCompile(`^\d{6}$`)

// partsQuery lists the active parts of the retained tables.
type partsQuery struct {
	Tables []string
}

func (q partsQuery) toSQL() (string, []any) {
	return `SELECT table, partition_id, sum(rows) AS rows, sum(bytes_on_disk) AS bytes FROM system.parts
WHERE active AND database = currentDatabase() AND has(?, table) GROUP BY table, partition_id ORDER BY table, partition_id`,
		[]any{q.Tables}
}

// openBillingQuery finds months a billing window overlaps whose latest
// ledger row is not final: billing-sync will still write it (pending:
// the call may have happened; retry: it re-sends next pass; unknown:
// reconcile resolves it from Stripe), so its usage must stay. A window is
// an hour (meter events) or a whole Stripe period (usage records, at most
// a month, so it touches at most two calendar months): both its first and
// its last month count.
type openBillingQuery struct{}

func (openBillingQuery) toSQL() (string, []any) {
	return `SELECT toString(arrayJoin(if(first = last, [first], [first, last]))) AS month, count() AS open FROM (
  SELECT toYYYYMM(window_start) AS first, toYYYYMM(greatest(window_start, window_end - 1)) AS last FROM (
    SELECT tenant_id, meter, window_start, seq, any(window_end) AS window_end, argMax(result, at_ns) AS latest FROM billing_audit
    WHERE action != 'checkpoint' GROUP BY tenant_id, meter, window_start, seq)
  WHERE latest IN ('pending', 'retry', 'unknown'))
GROUP BY month`, nil
}

// Planner decides which partitions to drop.
type Planner struct {
	Conn driver.Conn
	Cfg  Config
	Log  *zap.Logger
}

// Plan lists every partition of the retained tables with its decision, as
// of now.
func (p Planner) Plan(ctx context.Context, now time.Time) ([]Partition, error) {
	if err := p.Cfg.Validate(); err != nil {
		return nil, err
	}
	var tables []string
	for t, d := range p.Cfg.Keep {
		if d > 0 {
			tables = append(tables, t)
		}
	}
	if len(tables) == 0 {
		return nil, nil
	}
	sql, args := partsQuery{Tables: tables}.toSQL()
	var parts []struct {
		Table string `ch:"table"`
		ID    string `ch:"partition_id"`
		Rows  uint64 `ch:"rows"`
		Bytes uint64 `ch:"bytes"`
	}
	if err := p.Conn.Select(ctx, &parts, sql, args...); err != nil {
		return nil, fmt.Errorf("list partitions: %w", err)
	}
	open, err := p.openBilling(ctx)
	if err != nil {
		return nil, err
	}
	var out []Partition
	for _, x := range parts {
		pt := Partition{Table: x.Table, ID: x.ID, Rows: x.Rows, Bytes: x.Bytes}
		if !monthID.MatchString(x.ID) {
			pt.Because = "not a monthly partition: kept"
			out = append(out, pt)
			continue
		}
		start, err := time.Parse("200601", x.ID)
		if err != nil {
			return nil, fmt.Errorf("partition %s of %s: %w", x.ID, x.Table, err)
		}
		pt.End = start.AddDate(0, 1, 0).Add(partitioned[x.Table])
		keep := time.Duration(p.Cfg.Keep[x.Table]) * 24 * time.Hour
		switch {
		case now.Before(pt.End.Add(keep)):
			pt.Because = fmt.Sprintf("within retention (%d days) until %s", p.Cfg.Keep[x.Table], pt.End.Add(keep).Format(time.RFC3339))
		case now.Before(pt.End.Add(p.Cfg.BillingCloseAfter)):
			pt.Because = "billing period may still be open until " + pt.End.Add(p.Cfg.BillingCloseAfter).Format(time.RFC3339)
		case open[x.ID] > 0:
			pt.Because = fmt.Sprintf("billing has %d unfinished windows in this month (billing_audit)", open[x.ID])
		default:
			pt.Drop, pt.Because = true, fmt.Sprintf("older than %d days and billing closed", p.Cfg.Keep[x.Table])
		}
		out = append(out, pt)
	}
	return out, nil
}

func (p Planner) openBilling(ctx context.Context) (map[string]uint64, error) {
	sql, args := openBillingQuery{}.toSQL()
	var rows []struct {
		Month string `ch:"month"`
		Open  uint64 `ch:"open"`
	}
	if err := p.Conn.Select(ctx, &rows, sql, args...); err != nil {
		// No ledger, no billing: the calendar rule alone applies.
		return nil, fmt.Errorf("read billing_audit (run the migrations first): %w", err)
	}
	out := map[string]uint64{}
	for _, r := range rows {
		out[r.Month] = r.Open
	}
	return out, nil
}

// dropQuery drops one partition. A table name cannot be bound, so it is
// checked against the fixed list of partitioned tables and the partition
// id against YYYYMM before it reaches the statement; the id itself is bound.
type dropQuery struct {
	Table, ID string
}

func (q dropQuery) toSQL() (string, []any, error) {
	if _, ok := partitioned[q.Table]; !ok {
		return "", nil, fmt.Errorf("table %q: not a retained table", q.Table)
	}
	if !monthID.MatchString(q.ID) {
		return "", nil, fmt.Errorf("partition %q of %s: not YYYYMM", q.ID, q.Table)
	}
	var month uint32
	_, _ = fmt.Sscan(q.ID, &month)
	return "ALTER TABLE " + q.Table + " DROP PARTITION ?", []any{month}, nil
}

// Apply drops the partitions plan marks, in order, and returns the ones it
// dropped. It re-plans first: the decision is made at the moment of the
// drop, never from a stale list.
func (p Planner) Apply(ctx context.Context, now time.Time) ([]Partition, error) {
	plan, err := p.Plan(ctx, now)
	if err != nil {
		return nil, err
	}
	var dropped []Partition
	for _, pt := range plan {
		if !pt.Drop {
			continue
		}
		sql, args, err := dropQuery{Table: pt.Table, ID: pt.ID}.toSQL()
		if err != nil {
			return dropped, err
		}
		if err := p.Conn.Exec(ctx, sql, args...); err != nil {
			return dropped, fmt.Errorf("drop partition %s of %s: %w", pt.ID, pt.Table, err)
		}
		p.Log.Info("dropped partition", zap.String("table", pt.Table), zap.String("partition", pt.ID),
			zap.Uint64("rows", pt.Rows), zap.String("because", pt.Because))
		dropped = append(dropped, pt)
	}
	return dropped, nil
}
