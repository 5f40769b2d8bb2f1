package server_test

import (
	"context"
	"encoding/csv"
	"fmt"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/shopspring/decimal"
	"go.uber.org/zap"

	"github.com/usagemeter/usagemeter/api/usageread"
	"github.com/usagemeter/usagemeter/schemas/plans"
	"github.com/usagemeter/usagemeter/svckit/chconn"
	"github.com/usagemeter/usagemeter/testenv"
)

// seedUsers are the user ids of seedDaily: besides u1, ids a spreadsheet
// would run as formulas (the contract accepts any printable user_id).
func seedUsers() []string {
	return []string{"u1", `=HYPERLINK("https://x.invalid","u2")`, "+1+2", "-2+3", "@SUM(A1)"}
}

// seedDaily writes usage_1d rows as the aggregator does: for each tenant,
// day d of the last 5 days, api_calls by seedUsers and storage (a gauge).
func seedDaily(t *testing.T, conn driver.Conn, tenants ...string) time.Time {
	t.Helper()
	ctx := context.Background()
	b, err := conn.PrepareBatch(ctx, `INSERT INTO usage_1d (tenant_id, feature_type, subject, window_start, aggregation, value,
 events, latest_ns, source_partition, source_offset, updated_at, version)`)
	if err != nil {
		t.Fatal(err)
	}
	today := time.Now().UTC().Truncate(24 * time.Hour)
	for ti, tenant := range tenants {
		for d := 0; d < 5; d++ {
			day := today.AddDate(0, 0, -d)
			for ui, user := range seedUsers() {
				v := decimal.New(int64(100*ti+10*d+ui+1), -1) // 0.1 steps: exact decimals
				if err := b.Append(tenant, "api_calls", user, day, "sum", v, uint64(d+1), int64(0), int32(0), int64(d), day, uint64(2)); err != nil {
					t.Fatal(err)
				}
				if err := b.Append(tenant, "storage", user, day, "max", decimal.NewFromInt(int64(1000*(ui+1)+d)), uint64(1), int64(0), int32(0), int64(d), day, uint64(2)); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	if err := b.Send(); err != nil {
		t.Fatal(err)
	}
	return today
}

func usageEnv(t *testing.T) (*env, driver.Conn, time.Time) {
	t.Helper()
	conn, _ := testenv.ClickHouse(t)
	if err := chconn.Migrate(context.Background(), conn, zap.NewNop()); err != nil {
		t.Fatal(err)
	}
	today := seedDaily(t, conn, "tenant-a", "tenant-b")
	p, err := plans.Load(filepath.Join(testenv.RepoRoot(t), "schemas", "plans", "plans.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	return newEnvUsage(t, p, usageread.NewReader(conn, p)), conn, today
}

// direct is the same rows read with a plain query of our own: the sum of
// api_calls and the max of storage per day.
func direct(t *testing.T, conn driver.Conn, tenant string, from, to time.Time) [][]string {
	t.Helper()
	rs, err := conn.Query(context.Background(), `SELECT window_start, feature_type, toString(sum(value)), toString(max(value)), sum(events)
 FROM usage_1d FINAL WHERE tenant_id = ? AND window_start >= ? AND window_start < ? GROUP BY window_start, feature_type
 ORDER BY window_start, feature_type`, tenant, from, to)
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	out := [][]string{usageread.CSVHeader}
	for rs.Next() {
		var w time.Time
		var meter, sum, mx string
		var events uint64
		if err := rs.Scan(&w, &meter, &sum, &mx, &events); err != nil {
			t.Fatal(err)
		}
		v, agg := sum, "sum"
		if meter == "storage" {
			v, agg = mx, "max"
		}
		out = append(out, []string{w.UTC().Format(time.RFC3339), meter, agg, spreadsheetText(""), decimal.RequireFromString(v).String(), fmt.Sprint(events)})
	}
	return out
}

// directUsers is group_by=user read with a plain query of our own: the
// rows of table (usage_1d by window_start, usage_period by period_start
// overlapping [from, to)) per meter and subject, the subject made safe
// for a spreadsheet as the CSV must.
func directUsers(t *testing.T, conn driver.Conn, table, tenant string, from, to time.Time) [][]string {
	t.Helper()
	q := `SELECT window_start, feature_type, aggregation, subject, toString(value), events FROM usage_1d FINAL
 WHERE tenant_id = ? AND window_start >= ? AND window_start < ? ORDER BY window_start, feature_type, subject`
	args := []any{tenant, from, to}
	if table == "usage_period" {
		q = `SELECT period_start, feature_type, aggregation, subject, toString(value), events FROM usage_period FINAL
 WHERE tenant_id = ? AND period_start < ? AND period_end > ? ORDER BY period_start, feature_type, subject`
		args = []any{tenant, to, from}
	}
	rs, err := conn.Query(context.Background(), q, args...)
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	out := [][]string{usageread.CSVHeader}
	for rs.Next() {
		var w time.Time
		var meter, agg, subject, v string
		var events uint64
		if err := rs.Scan(&w, &meter, &agg, &subject, &v, &events); err != nil {
			t.Fatal(err)
		}
		out = append(out, []string{w.UTC().Format(time.RFC3339), meter, agg, spreadsheetText(subject), decimal.RequireFromString(v).String(), fmt.Sprint(events)})
	}
	if err := rs.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// spreadsheetText is OWASP's rule for CSV cells of tenant text, written
// here on its own: a cell starting with = + - @ tab or CR gets a leading
// single quote.
func spreadsheetText(s string) string {
	if len(s) > 0 && strings.ContainsAny(s[:1], "=+-@\t\r") {
		return "'" + s
	}
	return s
}

func TestUsageCSVEqualsClickHouseAndPages(t *testing.T) {
	e, conn, today := usageEnv(t)
	from, to := today.AddDate(0, 0, -4), today.AddDate(0, 0, 1)
	q := "?granularity=day&from=" + from.Format(time.RFC3339) + "&to=" + to.Format(time.RFC3339)
	a := e.do("GET", "/v1/usage/tenant-a"+q+"&format=csv", keyA, "")
	if a.status != 200 || !strings.HasPrefix(a.header.Get("Content-Type"), "text/csv") {
		t.Fatalf("csv: %d %s", a.status, a.raw)
	}
	got, err := csv.NewReader(strings.NewReader(a.raw)).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	want := direct(t, conn, "tenant-a", from, to)
	if len(want) != 11 || !slices.EqualFunc(got, want, slices.Equal) {
		t.Fatalf("csv\n got %v\nwant %v", got, want)
	}
	// JSON pages of 3 rows: 10 rows in 4 pages, the same rows.
	var rows [][]string
	cursor := ""
	for i := 0; i < 5; i++ {
		a := e.do("GET", "/v1/usage/tenant-a"+q+"&limit=3"+cursor, keyAdmin, "")
		if a.status != 200 {
			t.Fatalf("page %d: %d %s", i, a.status, a.raw)
		}
		for _, r := range a.body["rows"].([]any) {
			m := r.(map[string]any)
			rows = append(rows, []string{m["window_start"].(string), m["meter"].(string), m["aggregation"].(string), "",
				m["value"].(string), fmt.Sprint(m["events"])})
		}
		next, _ := a.body["next_cursor"].(string)
		if next == "" {
			break
		}
		cursor = "&cursor=" + next
	}
	if !slices.EqualFunc(rows, want[1:], slices.Equal) {
		t.Fatalf("paged json\n got %v\nwant %v", rows, want[1:])
	}
	// By user: the user ids are tenant text, so a formula-like id reaches
	// the CSV behind a single quote (the JSON keeps it as sent), while the
	// values stay numbers.
	a = e.do("GET", "/v1/usage/tenant-a"+q+"&group_by=user&format=csv", keyA, "")
	if a.status != 200 {
		t.Fatalf("csv by user: %d %s", a.status, a.raw)
	}
	if got, err = csv.NewReader(strings.NewReader(a.raw)).ReadAll(); err != nil {
		t.Fatal(err)
	}
	want = directUsers(t, conn, "usage_1d", "tenant-a", from, to)
	if len(want) != 1+5*2*len(seedUsers()) || !slices.EqualFunc(got, want, slices.Equal) {
		t.Fatalf("csv by user\n got %q\nwant %q", got, want)
	}
	quoted := 0
	for _, row := range got[1:] {
		if strings.HasPrefix(row[3], "'") {
			quoted++
		}
		if _, err := decimal.NewFromString(row[4]); err != nil || strings.HasPrefix(row[4], "'") {
			t.Fatalf("value %q is not a number", row[4])
		}
	}
	if quoted != 5*2*(len(seedUsers())-1) {
		t.Fatalf("%d cells quoted, want every row of the 4 formula-like users: %q", quoted, got)
	}
	j := e.do("GET", "/v1/usage/tenant-a"+q+"&group_by=user&meter=api_calls&limit=10000", keyA, "")
	groups := map[string]bool{}
	for _, r := range j.body["rows"].([]any) {
		groups[r.(map[string]any)["group"].(string)] = true
	}
	if len(groups) != len(seedUsers()) || !groups[seedUsers()[1]] {
		t.Fatalf("json groups %v, want the user ids as sent", groups)
	}
}

func TestUsageTenantIsolationAndHostileParams(t *testing.T) {
	e, _, today := usageEnv(t)
	for _, path := range []string{"/v1/usage/tenant-b", "/v1/usage/tenant-b?format=csv", "/v1/usage/tenant-b?group_by=user&format=csv"} {
		if a := e.do("GET", path, keyA, ""); a.status != 403 || a.body["code"] != "FORBIDDEN" || strings.Contains(a.raw, "api_calls") {
			t.Fatalf("tenant-a key on %s: %d %s", path, a.status, a.raw)
		}
		if a := e.do("GET", path, "", ""); a.status != 401 {
			t.Fatalf("no key on %s: %d", path, a.status)
		}
		if a := e.do("GET", path, keyAdmin, ""); a.status != 200 || !strings.Contains(a.raw, "api_calls") {
			t.Fatalf("admin on %s: %d %s", path, a.status, a.raw)
		}
	}
	// tenant-a's own answer holds only tenant-a's values (tenant-b's are >= 10).
	a := e.do("GET", "/v1/usage/tenant-a?group_by=user&meter=api_calls&from="+today.AddDate(0, 0, -1).Format(time.RFC3339), keyA, "")
	if a.status != 200 || len(a.body["rows"].([]any)) != 2*len(seedUsers()) {
		t.Fatalf("own rows: %d %s", a.status, a.raw)
	}
	for _, r := range a.body["rows"].([]any) {
		if v := decimal.RequireFromString(r.(map[string]any)["value"].(string)); v.GreaterThanOrEqual(decimal.NewFromInt(10)) {
			t.Fatalf("tenant-a read a row of tenant-b: %v", r)
		}
	}
	for _, c := range []struct{ query, field string }{
		{"group_by=" + url.QueryEscape("subject) FROM usage_1d --"), "group_by"},
		{"group_by=" + url.QueryEscape("metadata.a\x01"), "group_by"},
		{"granularity=" + url.QueryEscape("day' OR 1=1"), "granularity"},
		{"meter=" + url.QueryEscape("api_calls' OR '1'='1"), "meter"},
		{"limit=100000", "limit"},
		{"granularity=minute&from=2026-01-01T00:00:00Z&to=2026-02-01T00:00:00Z", "to"},
		{"format=xml", "format"},
	} {
		a := e.do("GET", "/v1/usage/tenant-a?"+c.query, keyA, "")
		if a.status != 400 || a.body["field"] != c.field {
			t.Fatalf("%s: %d %s, want 400 naming %s", c.query, a.status, a.raw, c.field)
		}
	}
	// A hostile-looking metadata key is a valid key: bound, matching nothing.
	a = e.do("GET", "/v1/usage/tenant-a?group_by="+url.QueryEscape("metadata.k'); DROP TABLE usage_1d; --"), keyA, "")
	if a.status != 200 || len(a.body["rows"].([]any)) != 0 {
		t.Fatalf("hostile key: %d %s", a.status, a.raw)
	}
	// A hostile tenant id in the path is refused before anything is read.
	for _, tenant := range []string{"tenant-a'%20OR%20'1'%3D'1", "tenant-a%00", "tenant-a%27--"} {
		if a := e.do("GET", "/v1/usage/"+tenant, keyAdmin, "").status; a != 400 {
			t.Fatalf("tenant %s: %d", tenant, a)
		}
	}
}

// TestUsageCSVByMetadataQuotesFormulas: metadata values are tenant text
// too. The CSV of group_by=metadata.<key> (the page's "by key" link) equals
// the seeded events folded here by day and value, each formula-like value
// behind a single quote, and the values stay numbers.
func TestUsageCSVByMetadataQuotesFormulas(t *testing.T) {
	e, conn, today := usageEnv(t)
	ctx := context.Background()
	b, err := conn.PrepareBatch(ctx, `INSERT INTO usage_events (id, tenant_id, user_id, feature_type, quantity, event_time,
 event_time_ns, billing_period, metadata_keys, metadata_values, schema_version, ingested_at, kafka_partition, kafka_offset, version)`)
	if err != nil {
		t.Fatal(err)
	}
	at := today.Add(-12 * time.Hour) // yesterday, noon
	for i, ev := range []struct{ id, model, qty string }{
		{"m1", "=1+1", "2"}, {"m2", "=1+1", "3"}, {"m3", "gpt", "4"}, {"m4", "@x", "5"}, {"m5", "-1", "1"},
	} {
		if err := b.Append(ev.id, "tenant-a", "u1", "api_calls", decimal.RequireFromString(ev.qty), at.Add(time.Duration(i)*time.Minute), uint32(0),
			at.Format("2006-01"), []string{"model"}, []string{ev.model}, uint8(1), at, int32(0), int64(i), uint64(1)); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Send(); err != nil {
		t.Fatal(err)
	}
	day := at.Truncate(24 * time.Hour).Format(time.RFC3339)
	want := [][]string{usageread.CSVHeader, // ordered by the value as ClickHouse sorts bytes: - = @ g
		{day, "api_calls", "sum", spreadsheetText("-1"), "1", "1"},
		{day, "api_calls", "sum", spreadsheetText("=1+1"), "5", "2"},
		{day, "api_calls", "sum", spreadsheetText("@x"), "5", "1"},
		{day, "api_calls", "sum", spreadsheetText("gpt"), "4", "1"}}
	q := "/v1/usage/tenant-a?format=csv&granularity=day&group_by=metadata.model&from=" + today.AddDate(0, 0, -1).Format(time.RFC3339) +
		"&to=" + today.Format(time.RFC3339)
	a := e.do("GET", q, keyA, "")
	got, err := csv.NewReader(strings.NewReader(a.raw)).ReadAll()
	if a.status != 200 || err != nil {
		t.Fatalf("csv: %d %v %s", a.status, err, a.raw)
	}
	if !slices.EqualFunc(got, want, slices.Equal) || got[1][3] != "'-1" {
		t.Fatalf("csv by model\n got %q\nwant %q", got, want)
	}
}
