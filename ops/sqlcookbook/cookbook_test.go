// Package sqlcookbook tests docs/sql.md: every table documented with every
// column, and every query run on seeded data on ClickHouse 18.16 (as the
// read-only analyst user) and on a current engine (chdb), each result
// checked against one computed in Go from the seed.
package sqlcookbook

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/shopspring/decimal"

	"github.com/usagemeter/usagemeter/schemas/migrations"
	"github.com/usagemeter/usagemeter/testenv"
)

var (
	queryBlock = regexp.MustCompile("(?s)```sql\n-- name: ([a-z_]+)\n(.*?)```")
	section    = regexp.MustCompile(`(?m)^### (.+)$`)
	backticked = regexp.MustCompile("`([a-z_0-9]+)`")
)

type cookbook struct {
	queries map[string]string
	order   []string
	columns map[string]map[string]bool // documented table -> identifiers in its section
}

func readCookbook(t *testing.T) cookbook {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testenv.RepoRoot(t), "docs", "sql.md"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	cb := cookbook{queries: map[string]string{}, columns: map[string]map[string]bool{}}
	for _, m := range queryBlock.FindAllStringSubmatch(text, -1) {
		if _, dup := cb.queries[m[1]]; dup {
			t.Fatalf("docs/sql.md: two queries named %s", m[1])
		}
		cb.queries[m[1]] = strings.TrimSpace(m[2])
		cb.order = append(cb.order, m[1])
	}
	tablesPart, _, _ := strings.Cut(text, "\n## Queries")
	locs := section.FindAllStringSubmatchIndex(tablesPart, -1)
	for i, l := range locs {
		end := len(tablesPart)
		if i+1 < len(locs) {
			end = locs[i+1][0]
		}
		idents := map[string]bool{}
		for _, m := range backticked.FindAllStringSubmatch(tablesPart[l[1]:end], -1) {
			idents[m[1]] = true
		}
		heading := strings.TrimSuffix(tablesPart[l[2]:l[3]], " (view)")
		for _, name := range strings.Split(heading, ", ") {
			cb.columns[name] = idents
		}
	}
	return cb
}

// The issue asks for at least ten queries, covering these questions.
func TestCookbookHasTheQueries(t *testing.T) {
	cb := readCookbook(t)
	want := []string{"totals_this_month", "top_tenants_this_month", "api_calls_by_endpoint", "ai_by_model", "daily_series",
		"month_over_month", "peak_minute", "active_users", "near_limits", "late_events", "rejected_by_tag", "raw_vs_aggregates"}
	for _, q := range want {
		if cb.queries[q] == "" {
			t.Errorf("docs/sql.md has no query %s", q)
		}
	}
	if len(cb.queries) < 10 {
		t.Errorf("docs/sql.md has %d queries, want at least 10", len(cb.queries))
	}
}

func canon(v any) string {
	switch x := v.(type) {
	case nil:
		return "NULL"
	case time.Time:
		return dt(x)
	case decimal.Decimal:
		return x.String()
	case json.Number:
		return canon(x.String())
	case string:
		if dd, err := decimal.NewFromString(x); err == nil {
			return dd.String()
		}
		return x
	case bool:
		return map[bool]string{true: "1", false: "0"}[x]
	}
	return canon(fmt.Sprint(v))
}

// query runs sql and returns its rows as canonical strings.
func query(ctx context.Context, conn driver.Conn, sql string) (rows, error) {
	rs, err := conn.Query(ctx, sql)
	if err != nil {
		return nil, err
	}
	defer rs.Close()
	types := rs.ColumnTypes()
	var out rows
	for rs.Next() {
		dest := make([]any, len(types))
		for i, ct := range types {
			dest[i] = reflect.New(ct.ScanType()).Interface()
		}
		if err := rs.Scan(dest...); err != nil {
			return nil, err
		}
		row := make([]string, len(dest))
		for i, p := range dest {
			v := reflect.ValueOf(p).Elem()
			for v.Kind() == reflect.Pointer {
				if v.IsNil() {
					break
				}
				v = v.Elem()
			}
			if v.Kind() == reflect.Pointer && v.IsNil() {
				row[i] = "NULL"
				continue
			}
			row[i] = canon(v.Interface())
		}
		out = append(out, row)
	}
	return out, rs.Err()
}

func insert(ctx context.Context, conn driver.Conn, tb table) error {
	b, err := conn.PrepareBatch(ctx, "INSERT INTO "+tb.name+" ("+strings.Join(tb.cols, ", ")+")")
	if err != nil {
		return fmt.Errorf("prepare %s: %w", tb.name, err)
	}
	for _, r := range tb.rows {
		if err := b.Append(r...); err != nil {
			return fmt.Errorf("append to %s: %w", tb.name, err)
		}
	}
	if err := b.Send(); err != nil {
		return fmt.Errorf("insert into %s: %w", tb.name, err)
	}
	return nil
}

func compare(t *testing.T, engine, name string, got, want rows) {
	t.Helper()
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("%s: query %s\n got: %v\nwant: %v", engine, name, got, want)
	}
}

// On ClickHouse 18.16 as the analyst user: every documented table and
// column exists and every existing one is documented; every query gives
// exactly the result computed from the seed; the analyst cannot write.
func TestQueriesOnClickHouseAsAnalyst(t *testing.T) {
	cb := readCookbook(t)
	srv := testenv.StartClickHouse(t) // a private server: the analyst user comes from scripts/clickhouse.sh's config
	admin, db := testenv.ClickHouseAt(t, srv.Addr)
	ctx := context.Background()
	if _, err := migrations.Apply(ctx, admin); err != nil {
		t.Fatal(err)
	}
	var cols []struct {
		Table  string `ch:"table"`
		Column string `ch:"name"`
	}
	if err := admin.Select(ctx, &cols, "SELECT table, name FROM system.columns WHERE database = currentDatabase()"); err != nil {
		t.Fatal(err)
	}
	missing := map[string]bool{}
	for _, c := range cols {
		doc, ok := cb.columns[c.Table]
		if !ok {
			if !missing[c.Table] {
				t.Errorf("docs/sql.md: table %s has no section (### %s) listing its columns", c.Table, c.Table)
			}
			missing[c.Table] = true
			continue
		}
		if !doc[c.Column] {
			t.Errorf("docs/sql.md: column %s.%s is not documented", c.Table, c.Column)
		}
	}
	s := newSeed(time.Now().UTC())
	for _, tb := range s.tables {
		if err := insert(ctx, admin, tb); err != nil {
			t.Fatal(err)
		}
	}
	analyst, err := clickhouse.Open(&clickhouse.Options{Addr: []string{srv.Addr},
		Auth: clickhouse.Auth{Database: db, Username: "analyst", Password: "analyst"}})
	if err != nil {
		t.Fatal(err)
	}
	defer analyst.Close()
	want := s.expected()
	for _, name := range cb.order {
		got, err := query(ctx, analyst, cb.queries[name])
		if err != nil {
			t.Errorf("ClickHouse 18.16: query %s: %v", name, err)
			continue
		}
		if _, ok := want[name]; !ok {
			t.Errorf("query %s has no expected result in seed_test.go", name)
			continue
		}
		compare(t, "ClickHouse 18.16", name, got, want[name])
	}
	for _, stmt := range []string{"INSERT INTO dlq_replays (replay_id) SELECT 'x'", "ALTER TABLE usage_events DROP PARTITION 202001",
		"DROP TABLE dead_letters", "CREATE TABLE x (a UInt8) ENGINE = Memory"} {
		if err := analyst.Exec(ctx, stmt); err == nil || !strings.Contains(strings.ToLower(err.Error()), "readonly") {
			t.Errorf("analyst ran %q: %v; want a readonly refusal", stmt, err)
		}
	}
}

// On a current engine (chdb): the same migrations, seed and queries, the
// same expected results.
func TestQueriesOnChdb(t *testing.T) {
	if testing.Short() {
		t.Skip("runs chdb")
	}
	cb := readCookbook(t)
	root := testenv.RepoRoot(t)
	py := filepath.Join(root, ".cache", "venv", "bin", "python")
	if _, err := os.Stat(py); err != nil {
		t.Fatalf("%s: %v (scripts/deps.sh chdb installs it)", py, err)
	}
	ms, err := migrations.All()
	if err != nil {
		t.Fatal(err)
	}
	s := newSeed(time.Now().UTC())
	type insertSpec struct {
		Table string           `json:"table"`
		Rows  []map[string]any `json:"rows"`
	}
	spec := struct {
		Migrations []string          `json:"migrations"`
		Inserts    []insertSpec      `json:"inserts"`
		Queries    map[string]string `json:"queries"`
	}{Queries: cb.queries}
	for _, m := range ms {
		spec.Migrations = append(spec.Migrations, m.SQL)
	}
	for _, tb := range s.tables {
		is := insertSpec{Table: tb.name}
		for _, r := range tb.rows {
			obj := map[string]any{}
			for i, c := range tb.cols {
				switch v := r[i].(type) {
				case time.Time:
					obj[c] = dt(v)
				case decimal.Decimal:
					obj[c] = v.String()
				default:
					obj[c] = v
				}
			}
			is.Rows = append(is.Rows, obj)
		}
		spec.Inserts = append(spec.Inserts, is)
	}
	in, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(py, filepath.Join(root, "ops", "sqlcookbook", "testdata", "run_chdb.py"))
	cmd.Stdin = bytes.NewReader(in)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chdb: %v\n%s", err, stderr.String())
	}
	var res struct {
		Engine  string                         `json:"engine"`
		Results map[string][][]json.RawMessage `json:"results"`
	}
	dec := json.NewDecoder(bytes.NewReader(out))
	dec.UseNumber()
	if err := dec.Decode(&res); err != nil {
		t.Fatalf("chdb output: %v\n%s", err, out)
	}
	t.Logf("chdb engine: ClickHouse %s", res.Engine)
	want := s.expected()
	for _, name := range cb.order {
		var got rows
		for _, raw := range res.Results[name] {
			row := make([]string, len(raw))
			for i, cell := range raw {
				var v any
				d := json.NewDecoder(bytes.NewReader(cell))
				d.UseNumber()
				if err := d.Decode(&v); err != nil {
					t.Fatal(err)
				}
				row[i] = canon(v)
			}
			got = append(got, row)
		}
		compare(t, "chdb "+res.Engine, name, got, want[name])
	}
	if missing := slices.DeleteFunc(slices.Clone(cb.order), func(n string) bool { _, ok := res.Results[n]; return ok }); len(missing) > 0 {
		t.Errorf("chdb returned nothing for %v", missing)
	}
}
