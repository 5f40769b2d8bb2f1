package cluster

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/usagemeter/usagemeter/svckit/chconn"
	"github.com/usagemeter/usagemeter/testenv"
)

// TestReplicatedClickHouse: the pipeline (a consumer and an aggregator
// member, the real binaries, clickhouse.cluster=usage, both servers in
// clickhouse.addr, logged in as a user with a password; a wrong password
// is refused) writes through the cluster schema; server 2 is
// SIGKILLed mid-stream and restarted; the totals are exact read from
// either server (each reads both shards through the Distributed tables),
// and each server holds only its shard's tenants locally.
func TestReplicatedClickHouse(t *testing.T) {
	e := need(t)
	p := newPipeline(t, e, e.clickhouse, "usage")
	conns := map[string]driver.Conn{}
	for i, addr := range e.clickhouse {
		conns["server "+strconv.Itoa(i+1)] = testenv.Open(t, addr, p.db)
	}
	// The schema is the cluster one on both servers.
	for name, conn := range conns {
		var engine string
		if err := conn.QueryRow(t.Context(), "SELECT engine FROM system.tables WHERE database = ? AND name = 'usage_events'", p.db).Scan(&engine); err != nil {
			t.Fatalf("%s: engine of usage_events: %v", name, err)
		}
		var local string
		if err := conn.QueryRow(t.Context(), "SELECT engine FROM system.tables WHERE database = ? AND name = 'usage_events_local'", p.db).Scan(&local); err != nil {
			t.Fatalf("%s: engine of usage_events_local: %v", name, err)
		}
		if engine != "Distributed" || local != "ReplicatedReplacingMergeTree" {
			t.Fatalf("%s: usage_events is %s over %s, want Distributed over ReplicatedReplacingMergeTree", name, engine, local)
		}
	}
	// The same command with a wrong password is refused by the server.
	if out, err := p.command(t.Context(), e.consumer, append(p.consumerEnv(), "USAGE_CLICKHOUSE_PASSWORD=wrong"), "migrate"); err == nil ||
		!strings.Contains(out, "Wrong password") {
		t.Errorf("usage-consumer migrate with a wrong ClickHouse password: %v\n%s", err, out)
	}
	p.startConsumer("consumer-0")
	p.startAggregator("aggregator-0")
	s, err := startStream(p.brokers, p.topic, testenv.Name("ch"), 300)
	if err != nil {
		t.Fatal(err)
	}
	sleep(4 * time.Second)
	e.run(t, "kill", "clickhouse", "2")
	// The outage is real: server 1 cannot read shard 2 now (and the
	// consumer's inserts for shard 2's tenants fail and are retried).
	if _, err := testenv.CountRows(t.Context(), conns["server 1"], "FROM usage_events"); err == nil {
		t.Error("server 1 read every shard with server 2 killed")
	}
	sleep(5 * time.Second)
	e.run(t, "start", "clickhouse")
	sleep(3 * time.Second)
	if err := s.finish(); err != nil {
		t.Fatal(err)
	}
	acked, _ := s.counts()
	t.Logf("published %d events", acked)
	p.converge(90*time.Second, conns)
	// Sharded by tenant: every tenant's raw rows live on exactly one server.
	where := map[string]int{}
	for name, conn := range conns {
		rows, err := conn.Query(t.Context(), "SELECT DISTINCT tenant_id FROM usage_events_local")
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var tenant string
			if err := rows.Scan(&tenant); err != nil {
				t.Fatal(err)
			}
			where[tenant]++
			t.Logf("%s holds %s", name, tenant)
		}
		rows.Close()
	}
	for tenant, n := range where {
		if n != 1 {
			t.Errorf("tenant %s is on %d servers, want 1", tenant, n)
		}
	}
}

// TestClickHouseTLS: chconn with clickhouse.tls (the server's CA), user and
// password connects to server 1's TLS native port; without TLS, or without
// that CA, it fails.
func TestClickHouseTLS(t *testing.T) {
	e := need(t)
	cfg := chconn.DefaultConfig()
	cfg.Addr, cfg.Username, cfg.Password, cfg.Database = e.chTLS[:1], e.chUser, e.chPass, testenv.Name("tls")
	cfg.DialTimeout = 3 * time.Second
	cfg.TLS.Enabled, cfg.TLS.CAFile = true, e.tls.cert
	conn, err := chconn.Open(t.Context(), cfg)
	if err != nil {
		t.Fatalf("TLS with the CA: %v", err)
	}
	var n uint8
	if err := conn.QueryRow(t.Context(), "SELECT 1").Scan(&n); err != nil || n != 1 {
		t.Errorf("SELECT 1 over TLS: %d, %v", n, err)
	}
	_ = conn.Exec(t.Context(), "DROP DATABASE IF EXISTS `"+cfg.Database+"`")
	_ = conn.Close()
	for what, c := range map[string]chconn.Config{"no TLS": func() chconn.Config { c := cfg; c.TLS.Enabled, c.TLS.CAFile = false, ""; return c }(),
		"TLS without the CA": func() chconn.Config { c := cfg; c.TLS.CAFile = ""; return c }()} {
		if conn, err := chconn.Open(t.Context(), c); err == nil {
			_ = conn.Close()
			t.Errorf("%s: connected to the TLS port", what)
		} else {
			t.Logf("%s: refused: %v", what, err)
		}
	}
}
