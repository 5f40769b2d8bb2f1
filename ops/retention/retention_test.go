package retention_test

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/shopspring/decimal"
	"go.uber.org/zap"

	"github.com/usagemeter/usagemeter/ops/retention"
	"github.com/usagemeter/usagemeter/schemas/migrations"
	"github.com/usagemeter/usagemeter/testenv"
)

func monthStart(t time.Time, add int) time.Time {
	return time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC).AddDate(0, add, 0)
}

func insertEvents(t *testing.T, conn driver.Conn, at time.Time, n int) {
	t.Helper()
	b, err := conn.PrepareBatch(context.Background(), `INSERT INTO usage_events (id, tenant_id, feature_type, quantity, event_time, billing_period)`)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if err := b.Append(fmt.Sprintf("e-%d-%d", at.Unix(), i), "acme", "api_calls", decimal.NewFromInt(1), at.Add(time.Duration(i)*time.Minute), at.Format("2006-01")); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Send(); err != nil {
		t.Fatal(err)
	}
}

func insertWindows(t *testing.T, conn driver.Conn, table string, at time.Time) {
	t.Helper()
	q := `INSERT INTO ` + table + ` (tenant_id, feature_type, subject, window_start, aggregation, value, events)`
	if table == "usage_period" {
		q = `INSERT INTO usage_period (tenant_id, feature_type, subject, period_id, period_start, period_end, aggregation, value, events)`
	}
	b, err := conn.PrepareBatch(context.Background(), q)
	if err != nil {
		t.Fatal(err)
	}
	if table == "usage_period" {
		err = b.Append("acme", "api_calls", "", at.Format("2006-01"), at, at.AddDate(0, 1, 0), "sum", decimal.NewFromInt(5), uint64(5))
	} else {
		err = b.Append("acme", "api_calls", "", at, "sum", decimal.NewFromInt(5), uint64(5))
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Send(); err != nil {
		t.Fatal(err)
	}
}

func insertLedger(t *testing.T, conn driver.Conn, window time.Time, results ...string) {
	t.Helper()
	insertLedgerWindow(t, conn, window, window.Add(time.Hour), results...)
}

func insertLedgerWindow(t *testing.T, conn driver.Conn, window, end time.Time, results ...string) {
	t.Helper()
	b, err := conn.PrepareBatch(context.Background(), `INSERT INTO billing_audit (tenant_id, meter, window_start, window_end, seq, action, result, at, at_ns)`)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range results { // one intent, its rows in order: the last is its state
		at := time.Now().Add(time.Duration(i) * time.Second)
		if err := b.Append("acme", "api_calls", window, end, uint32(0), "send", r, at, at.UnixNano()); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Send(); err != nil {
		t.Fatal(err)
	}
}

// partitions lists table:partition of the active parts, sorted.
func partitions(t *testing.T, conn driver.Conn) string {
	t.Helper()
	var rows []struct {
		Table string `ch:"table"`
		ID    string `ch:"partition_id"`
	}
	if err := conn.Select(context.Background(), &rows, `SELECT DISTINCT table, partition_id FROM system.parts
WHERE active AND database = currentDatabase() AND has(['usage_events', 'usage_1m', 'usage_period', 'billing_audit'], table)`); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range rows {
		out = append(out, r.Table+":"+r.ID)
	}
	sort.Strings(out)
	return strings.Join(out, " ")
}

// On the real server: partitions past their retention whose billing is
// closed are dropped; a month billing has not finished (a pending ledger
// row, or the calendar: a period may still end) is kept whatever its age;
// the ledger itself is never touched; a second run drops nothing.
func TestApplyDropsOldPartitionsAndKeepsOpenPeriods(t *testing.T) {
	conn, _ := testenv.ClickHouse(t)
	ctx := context.Background()
	if _, err := migrations.Apply(ctx, conn); err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	id := func(add int) string { return monthStart(now, add).Format("200601") }
	// Raw events: 10 per month.
	for _, m := range []int{-25, -20, -14, -3, 0} {
		insertEvents(t, conn, monthStart(now, m).Add(time.Hour), 10)
	}
	for _, m := range []int{-3, -1, 0} {
		insertWindows(t, conn, "usage_1m", monthStart(now, m).Add(time.Hour))
	}
	for _, m := range []int{-6, -2} {
		insertWindows(t, conn, "usage_period", monthStart(now, m).Add(36*time.Hour))
	}
	insertLedger(t, conn, monthStart(now, -25).Add(time.Hour), "pending", "ok")   // billed: closed
	insertLedger(t, conn, monthStart(now, -14).Add(time.Hour), "pending")         // may have been sent: open
	insertLedger(t, conn, monthStart(now, -14).Add(2*time.Hour), "pending", "ok") // (one open window is enough)
	// A usage record's window is a whole Stripe period: one from the 20th of
	// month -21 to the 20th of month -20, still pending, keeps month -20.
	insertLedgerWindow(t, conn, monthStart(now, -21).AddDate(0, 0, 19), monthStart(now, -20).AddDate(0, 0, 19), "pending")

	cfg := retention.DefaultConfig()
	cfg.Keep = map[string]int{"usage_events": 365, "usage_1m": 7, "usage_period": 1, "billing_audit": 0}
	p := retention.Planner{Conn: conn, Cfg: cfg, Log: zap.NewNop()}
	plan, err := p.Plan(ctx, now)
	if err != nil {
		t.Fatal(err)
	}
	var planned []string
	for _, x := range plan {
		if x.Drop {
			planned = append(planned, x.Table+":"+x.ID)
		}
	}
	sort.Strings(planned)
	wantDrop := []string{"usage_1m:" + id(-3), "usage_events:" + id(-25), "usage_period:" + id(-6)}
	sort.Strings(wantDrop)
	if fmt.Sprint(planned) != fmt.Sprint(wantDrop) {
		t.Fatalf("plan drops %v, want %v\nplan: %+v", planned, wantDrop, plan)
	}
	before := partitions(t, conn)
	dropped, err := p.Apply(ctx, now)
	if err != nil {
		t.Fatal(err)
	}
	if len(dropped) != 3 {
		t.Fatalf("dropped %d partitions, want 3: %+v", len(dropped), dropped)
	}
	var want []string
	for _, x := range strings.Fields(before) {
		if !strings.Contains(" "+strings.Join(wantDrop, " ")+" ", " "+x+" ") {
			want = append(want, x)
		}
	}
	if got := partitions(t, conn); got != strings.Join(want, " ") {
		t.Fatalf("partitions after apply:\n%s\nwant\n%s", got, strings.Join(want, " "))
	}
	for table, rows := range map[string]uint64{"usage_events": 40, "usage_1m": 2, "usage_period": 1, "billing_audit": 6} {
		if n, err := testenv.CountRows(ctx, conn, "FROM "+table); err != nil || n != rows {
			t.Errorf("%s: %d rows (%v), want %d", table, n, err, rows)
		}
	}
	if n, _ := testenv.CountRows(ctx, conn, "FROM usage_events WHERE toYYYYMM(event_time) = ?", uint32(monthStart(now, -14).Year()*100+int(monthStart(now, -14).Month()))); n != 10 {
		t.Errorf("the month billing has not finished: %d raw rows, want 10", n)
	}
	again, err := p.Apply(ctx, now)
	if err != nil || len(again) != 0 {
		t.Fatalf("second apply dropped %d (%v), want 0", len(again), err)
	}
	// Once the ledger's window is billed, the month goes too.
	insertLedger(t, conn, monthStart(now, -14).Add(time.Hour), "pending", "ok")
	if d, err := p.Apply(ctx, now); err != nil || len(d) != 1 || d[0].ID != id(-14) {
		t.Fatalf("after billing the open window: dropped %+v (%v), want usage_events:%s", d, err, id(-14))
	}
}

func TestConfigNamesTheKey(t *testing.T) {
	for _, c := range []struct {
		keep map[string]int
		want string
	}{
		{map[string]int{"usage_evnts": 3}, "retention.keep.usage_evnts: not a table partitioned by month"},
		{map[string]int{"aggregator_checkpoints": 3}, "retention.keep.aggregator_checkpoints: not a table partitioned by month"},
		{map[string]int{"usage_1m": -1}, "retention.keep.usage_1m: -1 days is negative"},
	} {
		err := retention.Config{Keep: c.keep}.Validate()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want %q", c.keep, err, c.want)
		}
	}
}

// insertAudit writes one audit row at `at` into plan_changes and one into
// quota_grants, as usage-api's admin page does.
func insertAudit(t *testing.T, conn driver.Conn, at time.Time) {
	t.Helper()
	ctx := context.Background()
	b, err := conn.PrepareBatch(ctx, `INSERT INTO plan_changes (tenant_id, plan, previous_plan, anchor_day, version, actor, reason, topic, partition, offset, at)`)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Append("acme", "PRO", "FREE", uint8(1), at.Unix(), "ab12cd34", "upgrade", "usage.plan-assignments", int32(0), int64(1), at); err != nil {
		t.Fatal(err)
	}
	if err := b.Send(); err != nil {
		t.Fatal(err)
	}
	g, err := conn.PrepareBatch(ctx, `INSERT INTO quota_grants (tenant_id, feature_type, period_id, amount, plan, version, actor, reason, topic, partition, offset, at)`)
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Append("acme", "ai_generation", at.Format("2006-01"), decimal.NewFromInt(10), "FREE", at.Unix(), "ab12cd34", "goodwill", "usage.plan-assignments", int32(0), int64(2), at); err != nil {
		t.Fatal(err)
	}
	if err := g.Send(); err != nil {
		t.Fatal(err)
	}
}

// auditPartitions lists the active partitions of plan_changes and
// quota_grants, as table:YYYYMM, sorted.
func auditPartitions(t *testing.T, conn driver.Conn) []string {
	t.Helper()
	var rows []struct {
		Table string `ch:"table"`
		ID    string `ch:"partition_id"`
	}
	if err := conn.Select(context.Background(), &rows, `SELECT DISTINCT table, partition_id FROM system.parts
WHERE active AND database = currentDatabase() AND has(['plan_changes', 'quota_grants'], table)`); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range rows {
		out = append(out, r.Table+":"+r.ID)
	}
	sort.Strings(out)
	return out
}

// The admin page's audit tables are retained by default for 24 months
// (730 days), with the same guards as every table: on the real server,
// months past it go, younger months stay, a month billing has not
// finished stays whatever its age, and a second run drops nothing.
func TestApplyRetainsAuditTables(t *testing.T) {
	conn, _ := testenv.ClickHouse(t)
	ctx := context.Background()
	if _, err := migrations.Apply(ctx, conn); err != nil {
		t.Fatal(err)
	}
	cfg := retention.DefaultConfig()
	if cfg.Keep["plan_changes"] != 730 || cfg.Keep["quota_grants"] != 730 {
		t.Fatalf("default keep: plan_changes %d, quota_grants %d days, want 730 (24 months)", cfg.Keep["plan_changes"], cfg.Keep["quota_grants"])
	}
	now := time.Now().UTC()
	id := func(add int) string { return monthStart(now, add).Format("200601") }
	// Month -25 ends at least 730 days ago; month -23 ends less than 700 days ago.
	for _, m := range []int{-30, -27, -25, -23, -1, 0} {
		insertAudit(t, conn, monthStart(now, m).Add(36*time.Hour))
	}
	insertLedger(t, conn, monthStart(now, -27).Add(time.Hour), "pending") // billing may still write month -27
	p := retention.Planner{Conn: conn, Cfg: cfg, Log: zap.NewNop()}
	dropped, err := p.Apply(ctx, now)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range dropped {
		if d.Table == "plan_changes" || d.Table == "quota_grants" {
			got = append(got, d.Table+":"+d.ID)
		}
	}
	sort.Strings(got)
	want := []string{"plan_changes:" + id(-30), "plan_changes:" + id(-25), "quota_grants:" + id(-30), "quota_grants:" + id(-25)}
	sort.Strings(want)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("dropped %v, want %v", got, want)
	}
	var left []string
	for _, m := range []int{-27, -23, -1, 0} {
		left = append(left, "plan_changes:"+id(m), "quota_grants:"+id(m))
	}
	sort.Strings(left)
	if after := auditPartitions(t, conn); fmt.Sprint(after) != fmt.Sprint(left) {
		t.Fatalf("partitions after apply %v, want %v", after, left)
	}
	for _, table := range []string{"plan_changes", "quota_grants"} {
		if n, err := testenv.CountRows(ctx, conn, "FROM "+table); err != nil || n != 4 {
			t.Errorf("%s: %d rows (%v), want 4", table, n, err)
		}
	}
	if again, err := p.Apply(ctx, now); err != nil || len(again) != 0 {
		t.Fatalf("second apply dropped %+v (%v), want nothing", again, err)
	}
}
