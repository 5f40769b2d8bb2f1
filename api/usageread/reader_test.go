package usageread

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/shopspring/decimal"
	"go.uber.org/zap"

	"github.com/usagemeter/usagemeter/schemas/plans"
	"github.com/usagemeter/usagemeter/svckit/chconn"
	"github.com/usagemeter/usagemeter/testenv"
)

const plansYAML = `
meters:
  api_calls: { aggregation: sum }
  exports:   { aggregation: count }
  storage:   { aggregation: max }
  users:     { aggregation: latest }
  projects:  { aggregation: unique_count, unique_by: metadata.project_id }
plans:
  FREE: { meters: { api_calls: { limit: 100 } } }
default_plan: FREE
`

// seedRow is one usage_1d row as the aggregator writes it.
type seedRow struct {
	tenant, meter, subject string
	day                    int // of November 2026
	agg                    plans.Aggregation
	value                  string
	events                 uint64
	latestNs               int64
	version                uint64
}

var seedDays = []seedRow{
	{"t-a", "api_calls", "u1", 10, plans.Sum, "999", 9, 0, 1}, // replaced by the next row (FINAL)
	{"t-a", "api_calls", "u1", 10, plans.Sum, "3.5", 2, 0, 5},
	{"t-a", "api_calls", "u2", 10, plans.Sum, "1.25", 1, 0, 5},
	{"t-a", "api_calls", "u1", 11, plans.Sum, "10", 4, 0, 5},
	{"t-a", "storage", "u1", 10, plans.Max, "5000", 1, 0, 5},
	{"t-a", "storage", "u2", 10, plans.Max, "7000", 3, 0, 5},
	{"t-a", "storage", "u1", 11, plans.Max, "100", 1, 0, 5},
	{"t-a", "users", "u1", 10, plans.Latest, "3", 1, 100, 5},
	{"t-a", "users", "u2", 10, plans.Latest, "8", 1, 50, 5},
	{"t-a", "projects", "p1", 10, plans.UniqueCount, "1", 2, 0, 5},
	{"t-a", "projects", "p2", 10, plans.UniqueCount, "1", 1, 0, 5},
	{"t-b", "api_calls", "u9", 10, plans.Sum, "77", 1, 0, 5},
}

func day(d int) time.Time { return time.Date(2026, 11, d, 0, 0, 0, 0, time.UTC) }

func setup(t *testing.T) (driver.Conn, *Reader) {
	t.Helper()
	conn, _ := testenv.ClickHouse(t)
	ctx := context.Background()
	if err := chconn.Migrate(ctx, conn, zap.NewNop()); err != nil {
		t.Fatal(err)
	}
	b, err := conn.PrepareBatch(ctx, `INSERT INTO usage_1d (tenant_id, feature_type, subject, window_start, aggregation, value,
 events, latest_ns, source_partition, source_offset, updated_at, version)`)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range seedDays {
		if err := b.Append(r.tenant, r.meter, r.subject, day(r.day), string(r.agg), decimal.RequireFromString(r.value),
			r.events, r.latestNs, int32(0), int64(r.version), day(r.day), r.version); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Send(); err != nil {
		t.Fatal(err)
	}
	p, err := plans.Parse([]byte(plansYAML))
	if err != nil {
		t.Fatal(err)
	}
	return conn, NewReader(conn, p)
}

// expectByMeter folds the seed as each aggregation says, independently of
// the SQL: the current version of each row, then sum / max / newest.
func expectByMeter(tenant string) []Row {
	type key struct {
		day         int
		meter, subj string
	}
	cur := map[key]seedRow{}
	for _, r := range seedDays {
		k := key{r.day, r.meter, r.subject}
		if r.tenant == tenant && r.version >= cur[k].version {
			cur[k] = r
		}
	}
	type wk struct {
		day   int
		meter string
	}
	acc := map[wk]*Row{}
	newest := map[wk]int64{}
	for k, r := range cur {
		w := wk{k.day, k.meter}
		v := decimal.RequireFromString(r.value)
		a, ok := acc[w]
		if !ok {
			a = &Row{Window: day(k.day), Meter: k.meter, Aggregation: string(r.agg), Value: "0"}
			acc[w] = a
			newest[w] = -1
		}
		old := decimal.RequireFromString(a.Value)
		switch r.agg {
		case plans.Max:
			if !ok || v.GreaterThan(old) {
				a.Value = v.String()
			}
		case plans.Latest:
			if r.latestNs > newest[w] {
				a.Value, newest[w] = v.String(), r.latestNs
			}
		default:
			a.Value = old.Add(v).String()
		}
		a.Events += r.events
	}
	var out []Row
	for _, r := range acc {
		out = append(out, *r)
	}
	slices.SortFunc(out, func(a, b Row) int {
		if c := a.Window.Compare(b.Window); c != 0 {
			return c
		}
		return strings.Compare(a.Meter, b.Meter)
	})
	return out
}

func TestReadByMeterUsesEachAggregation(t *testing.T) {
	_, rd := setup(t)
	ctx := context.Background()
	req := Request{Tenant: "t-a", From: day(1), To: day(30), Granularity: Day, GroupBy: ByMeter, Limit: 100}
	page, err := rd.Read(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	want := expectByMeter("t-a")
	if !slices.Equal(page.Rows, want) || page.Next != "" {
		t.Fatalf("rows\n got %+v\nwant %+v (next %q)", page.Rows, want, page.Next)
	}
	// The gauge is its peak (7000), never the sum (12100) the old page showed.
	if page.Rows[2].Meter != "storage" || page.Rows[2].Value != "7000" {
		t.Fatalf("storage on day 10 = %+v, want its max 7000", page.Rows[2])
	}

	// Pages of 4 rows concatenate to the same rows; the last has no cursor.
	var all []Row
	req.Limit = 4
	for i := 0; ; i++ {
		p, err := rd.Read(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, p.Rows...)
		if p.Next == "" {
			break
		}
		if i > 3 {
			t.Fatal("pagination does not end")
		}
		if req.Offset, err = DecodeCursor(p.Next); err != nil {
			t.Fatal(err)
		}
	}
	if !slices.Equal(all, want) {
		t.Fatalf("paged rows\n got %+v\nwant %+v", all, want)
	}
}

func TestReadByUserLeavesOutMetadataSubjects(t *testing.T) {
	_, rd := setup(t)
	page, err := rd.Read(context.Background(), Request{Tenant: "t-a", From: day(10), To: day(11), Granularity: Day, GroupBy: ByUser, Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range page.Rows {
		got = append(got, r.Meter+"/"+r.Group+"="+r.Value)
	}
	want := []string{"api_calls/u1=3.5", "api_calls/u2=1.25", "storage/u1=5000", "storage/u2=7000", "users/u1=3", "users/u2=8"}
	if !slices.Equal(got, want) {
		t.Fatalf("by user: got %v, want %v", got, want)
	}
}

// A tenant id, metadata key or meter built to break out of a string
// literal is only ever a bound value: it matches nothing (or its own
// rows), never another tenant's, and the tables survive.
func TestHostileValuesAreOnlyValues(t *testing.T) {
	conn, rd := setup(t)
	ctx := context.Background()
	seedEvents(t, conn)
	for _, tenant := range []string{`t-b' OR '1'='1`, `t-a\' OR 1=1 --`, "t-a'); DROP TABLE usage_1d; --", `t-b"`, "t-a\x00"} {
		for _, g := range []string{ByMeter, ByUser} {
			p, err := rd.Read(ctx, Request{Tenant: tenant, From: day(1), To: day(30), Granularity: Day, GroupBy: g, Limit: 100})
			if err != nil {
				t.Fatalf("tenant %q: %v", tenant, err)
			}
			if len(p.Rows) != 0 {
				t.Fatalf("tenant %q read %d rows: %+v", tenant, len(p.Rows), p.Rows)
			}
		}
		if _, err := Parse(Params{Tenant: tenant}, day(20)); err == nil || err.(*FieldError).Field != "tenant" {
			t.Fatalf("Parse accepted tenant %q: %v", tenant, err)
		}
	}
	hostileKey := "k'); DROP TABLE usage_events; --"
	p, err := rd.Read(ctx, Request{Tenant: "t-a", From: day(10), To: day(11), Granularity: Day, GroupBy: metadataPrefix + hostileKey,
		MetadataKey: hostileKey, Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	if got := groups(p.Rows); !slices.Equal(got, []string{"api_calls/=7/2", "api_calls/v1=2/1", "exports/=1/1"}) {
		t.Fatalf("by hostile key: %v", got)
	}
	for _, tbl := range []string{"usage_1d", "usage_events"} {
		if n, err := testenv.CountRows(ctx, conn, tbl); err != nil || n == 0 {
			t.Fatalf("%s after hostile reads: %d rows, %v", tbl, n, err)
		}
	}
}

func TestReadByMetadataKey(t *testing.T) {
	conn, rd := setup(t)
	seedEvents(t, conn)
	p, err := rd.Read(context.Background(), Request{Tenant: "t-a", From: day(10), To: day(11), Granularity: Day,
		GroupBy: "metadata.model", MetadataKey: "model", Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	// e1 (sent twice) 2 + e2 3 = gpt 5; e3 claude 4; exports counts its one
	// event whatever its quantity; storage (a gauge) and t-b are left out.
	if got := groups(p.Rows); !slices.Equal(got, []string{"api_calls/claude=4/1", "api_calls/gpt=5/2", "exports/gpt=1/1"}) {
		t.Fatalf("by model: %v", got)
	}
}

func groups(rows []Row) []string {
	var out []string
	for _, r := range rows {
		out = append(out, r.Meter+"/"+r.Group+"="+r.Value+"/"+strconvU(r.Events))
	}
	return out
}

func strconvU(n uint64) string { return decimal.NewFromUint64(n).String() }

func seedEvents(t *testing.T, conn driver.Conn) {
	t.Helper()
	ctx := context.Background()
	b, err := conn.PrepareBatch(ctx, `INSERT INTO usage_events (id, tenant_id, user_id, feature_type, quantity, event_time,
 event_time_ns, billing_period, metadata_keys, metadata_values, schema_version, ingested_at, kafka_partition, kafka_offset, version)`)
	if err != nil {
		t.Fatal(err)
	}
	hostile := "k'); DROP TABLE usage_events; --"
	for i, e := range []struct {
		id, tenant, meter, qty string
		keys, values           []string
	}{
		{"e1", "t-a", "api_calls", "2", []string{"model", hostile}, []string{"gpt", "v1"}},
		{"e1", "t-a", "api_calls", "2", []string{"model", hostile}, []string{"gpt", "v1"}}, // redelivered: one event
		{"e2", "t-a", "api_calls", "3", []string{"model"}, []string{"gpt"}},
		{"e3", "t-a", "api_calls", "4", []string{"model"}, []string{"claude"}},
		{"e4", "t-a", "exports", "100", []string{"model"}, []string{"gpt"}},
		{"e5", "t-a", "storage", "5000", []string{"model"}, []string{"gpt"}},
		{"e6", "t-b", "api_calls", "50", []string{"model"}, []string{"gpt"}},
	} {
		ts := day(10).Add(time.Duration(i) * time.Hour)
		if err := b.Append(e.id, e.tenant, "u1", e.meter, decimal.RequireFromString(e.qty), ts, uint32(0), "2026-11",
			e.keys, e.values, uint8(1), ts, int32(0), int64(i), uint64(i+1)); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Send(); err != nil {
		t.Fatal(err)
	}
}
