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
