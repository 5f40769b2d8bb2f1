package migrations

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Every migration has a cluster variant; a table becomes a replicated local
// table plus a Distributed table sharded by tenant (or its first sorting
// column), a view stays as written.
func TestClusterVariant(t *testing.T) {
	ms, err := All()
	if err != nil {
		t.Fatal(err)
	}
	v := Variant{Cluster: "usage", Database: "usage"}
	for _, m := range ms {
		stmts, err := v.Statements(m)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(m.SQL, "CREATE VIEW") {
			if len(stmts) != 1 || stmts[0] != m.SQL {
				t.Errorf("%s: view rewritten: %q", m.Name, stmts)
			}
			continue
		}
		if len(stmts) != 2 || !strings.Contains(stmts[0], "ENGINE = Replicated") ||
			!strings.Contains(stmts[0], "'/clickhouse/tables/{shard}/usage/") || !strings.Contains(stmts[1], "ENGINE = Distributed(usage, usage, ") {
			t.Errorf("%s: %q", m.Name, stmts)
		}
	}
	got, err := v.Statements(Migration{Name: "t", SQL: "CREATE TABLE IF NOT EXISTS t\n(\n    tenant_id String,\n    version UInt64\n)\nENGINE = ReplacingMergeTree(version)\nORDER BY (tenant_id)"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"CREATE TABLE IF NOT EXISTS t_local\n(\n    tenant_id String,\n    version UInt64\n)\nENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/usage/t_local', '{replica}', version)\nORDER BY (tenant_id)",
		"CREATE TABLE IF NOT EXISTS t AS t_local\nENGINE = Distributed(usage, usage, t_local, sipHash64(tenant_id))",
	}
	if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("got %q\nwant %q", got, want)
	}
	got, err = v.Statements(Migration{Name: "c", SQL: "CREATE TABLE IF NOT EXISTS c (g String, p Int32) ENGINE = MergeTree() ORDER BY (g, p)"})
	if err != nil || len(got) != 2 || !strings.HasSuffix(got[1], "sipHash64(g))") || !strings.Contains(got[0], "ReplicatedMergeTree('/clickhouse/tables/{shard}/usage/c_local', '{replica}')") {
		t.Errorf("no tenant column: %q, %v", got, err)
	}
	if _, err := (Variant{Cluster: "bad name", Database: "usage"}).Statements(ms[0]); err == nil || !strings.Contains(err.Error(), "clickhouse.cluster") {
		t.Errorf("bad cluster name: %v", err)
	}
	if _, err := v.Statements(Migration{Name: "alter", SQL: "ALTER TABLE t ADD COLUMN x String"}); err == nil || !strings.Contains(err.Error(), "no cluster variant") {
		t.Errorf("unknown statement: %v", err)
	}
	if s, _ := (Variant{}).Statements(ms[0]); len(s) != 1 || s[0] != ms[0].SQL {
		t.Errorf("single-server variant changed the SQL: %q", s)
	}
}

// The cluster variant parses on a current ClickHouse engine (chdb, with
// scripts/check_sql_chdb.py --parse-only: an embedded engine has no
// ZooKeeper, macros or cluster to create the tables with). The 18.16 server
// runs it for real in cluster/ (TestReplicatedClickHouse).
func TestClusterVariantOnCurrentEngine(t *testing.T) {
	if testing.Short() {
		t.Skip("runs chdb")
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	py := filepath.Join(root, ".cache", "venv", "bin", "python")
	if _, err := os.Stat(py); err != nil {
		t.Fatalf("%s: %v (scripts/deps.sh chdb installs it)", py, err)
	}
	ms, err := All()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, m := range ms {
		stmts, err := (Variant{Cluster: "usage", Database: "usage"}).Statements(m)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range stmts {
			b.WriteString(s + ";\n")
		}
	}
	file := filepath.Join(t.TempDir(), "cluster.sql")
	if err := os.WriteFile(file, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(py, filepath.Join(root, "scripts", "check_sql_chdb.py"), "--parse-only", file).CombinedOutput()
	if err != nil {
		t.Fatalf("chdb: %v\n%s", err, out)
	}
	t.Logf("%s", strings.TrimSpace(string(out)))
}
