package server_test

import (
	"context"
	"encoding/csv"
	"html"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shopspring/decimal"
	"go.uber.org/zap"

	"github.com/usagemeter/usagemeter/api/usageread"
	"github.com/usagemeter/usagemeter/schemas/plans"
	"github.com/usagemeter/usagemeter/svckit/chconn"
	"github.com/usagemeter/usagemeter/testenv"
)

// An anchored plan whose anchor day (31) clamps at short months' ends.
const anchoredPlans = `
meters:
  ai_generation: { aggregation: sum }
plans:
  TEAM: { meters: { ai_generation: { limit: 100, period: anchored } } }
default_plan: TEAM
tenants:
  tenant-a: { plan: TEAM, anchor_day: 31 }
`

// TestUsagePageAnchoredPeriodAfterAShortMonth: on 2027-03-10 a tenant
// anchored on the 31st is in the period 2027-02-28 to 2027-03-31 (the
// anchor clamps to February's last day), as plans (Assignment.PeriodFor)
// says for the aggregator and the caches. Its end minus one month would be 2027-03-03
// (March 31 less a month normalises past February): three days of the
// period would be missing from the page's chart, CSV and forecast.
func TestUsagePageAnchoredPeriodAfterAShortMonth(t *testing.T) {
	conn, _ := testenv.ClickHouse(t)
	ctx := context.Background()
	if err := chconn.Migrate(ctx, conn, zap.NewNop()); err != nil {
		t.Fatal(err)
	}
	now := time.Date(2027, 3, 10, 12, 0, 0, 0, time.UTC)
	start, end := time.Date(2027, 2, 28, 0, 0, 0, 0, time.UTC), time.Date(2027, 3, 31, 0, 0, 0, 0, time.UTC)
	// 2 a day from 2027-02-25 (three days of the previous period) to today.
	b, err := conn.PrepareBatch(ctx, `INSERT INTO usage_1d (tenant_id, feature_type, subject, window_start, aggregation, value,
 events, latest_ns, source_partition, source_offset, updated_at, version)`)
	if err != nil {
		t.Fatal(err)
	}
	var wantDays []string
	for day := start.AddDate(0, 0, -3); !day.After(now); day = day.AddDate(0, 0, 1) {
		if err := b.Append("tenant-a", "ai_generation", "u1", day, "sum", decimal.NewFromInt(2), uint64(2), int64(0), int32(0), int64(day.Day()), day, uint64(2)); err != nil {
			t.Fatal(err)
		}
		if !day.Before(start) {
			wantDays = append(wantDays, day.Format("2006-01-02"))
		}
	}
	if err := b.Send(); err != nil {
		t.Fatal(err)
	}
	pb, err := conn.PrepareBatch(ctx, `INSERT INTO usage_period (tenant_id, feature_type, subject, period_id, period_start,
 period_end, plan, aggregation, value, events, latest_ns, source_partition, source_offset, updated_at, version)`)
	if err != nil {
		t.Fatal(err)
	}
	stored := 2 * len(wantDays)
	if err := pb.Append("tenant-a", "ai_generation", "u1", "2027-02-28", start, end, "TEAM", "sum", decimal.NewFromInt(int64(stored)),
		uint64(stored), int64(0), int32(0), int64(1), now, uint64(2)); err != nil {
		t.Fatal(err)
	}
	if err := pb.Send(); err != nil {
		t.Fatal(err)
	}
	p, err := plans.Parse([]byte(anchoredPlans))
	if err != nil {
		t.Fatal(err)
	}
	if got := p.Tenants["tenant-a"].PeriodFor(p.Plans["TEAM"].Meters["ai_generation"], now); !got.Start.Equal(start) || !got.End.Equal(end) {
		t.Fatalf("plans says %#v: the test's dates are wrong", got)
	}
	e := newEnvClock(t, p, usageread.NewReader(conn, p), func() time.Time { return now })

	a := e.get("/usage/tenant-a", keyA)
	if a.status != 200 {
		t.Fatalf("page: %d %s", a.status, a.raw)
	}
	one := func(re string) string {
		t.Helper()
		m := regexp.MustCompile(re).FindStringSubmatch(a.raw)
		if m == nil {
			t.Fatalf("no %s in the page:\n%s", re, a.raw)
		}
		return html.UnescapeString(m[1])
	}
	if s, e := one(`id="period-start">([^<]*)<`), one(`id="period-end">([^<]*)<`); s != "2027-02-28" || e != "2027-03-31" {
		t.Fatalf("page period %s to %s, want 2027-02-28 to 2027-03-31", s, e)
	}
	// One chart point per day of the period so far, and only those.
	var days []string
	for _, m := range regexp.MustCompile(`class="pt"[^>]*data-day="([^"]*)" data-value="2"`).FindAllStringSubmatch(a.raw, -1) {
		days = append(days, m[1])
	}
	if !slices.Equal(days, wantDays) {
		t.Fatalf("chart days %v, want %v", days, wantDays)
	}
	// A flat 2 a day over the period's 31 days; the stored total beside the
	// cache's 0.
	if total, st := one(`class="total">([^<]*)<`), one(`class="stored">([^<]*)<`); total != "62" || st != "22" {
		t.Fatalf("forecast %s (want 62 = 2 x 31 days), stored %s (want 22)", total, st)
	}
	// The daily CSV link covers the period and equals ClickHouse.
	href := one(`id="csv-daily" href="([^"]*)"`)
	if !strings.Contains(href, "from=2027-02-28T00:00:00Z") || !strings.Contains(href, "to=2027-03-31T00:00:00Z") {
		t.Fatalf("csv link %s", href)
	}
	c := e.do("GET", href, keyA, "")
	rows, err := csv.NewReader(strings.NewReader(c.raw)).ReadAll()
	if c.status != 200 || err != nil {
		t.Fatalf("csv: %d %v %s", c.status, err, c.raw)
	}
	if want := direct(t, conn, "tenant-a", start, end); len(want) != len(wantDays)+1 || !slices.EqualFunc(rows, want, slices.Equal) {
		t.Fatalf("csv\n got %v\nwant %v", rows, want)
	}
}
