package migrations

import (
	"context"
	"fmt"
	"regexp"
	"strings"
)

// Variant selects the schema a migration creates. The zero Variant is the
// single-server schema (the files as written). With Cluster set, every
// table becomes a replicated local table on each server plus a Distributed
// table of the file's name in front of it, sharded by tenant:
//
//	name_local: Replicated<Engine>('/clickhouse/tables/{shard}/<db>/name_local', '{replica}', <args>)
//	name:       Distributed(<cluster>, <db>, name_local, sipHash64(<shard key>))
//
// The shard key is tenant_id when the table's ORDER BY holds it, else the
// first ORDER BY column: either way every row of one sorting key lands on
// one shard, so ReplacingMergeTree's FINAL still removes every duplicate
// (it only merges within a shard). Views are kept as written: they read the
// Distributed tables. The servers need {shard} and {replica} macros, the
// cluster in remote_servers and ZooKeeper (scripts/cluster.sh writes them),
// and insert_distributed_sync=1 in the services' profile, so that an insert
// returns only once its shard holds the rows (else a consumer could commit
// offsets for rows still queued on the server it wrote to).
type Variant struct {
	Cluster  string // remote_servers name; "" is the single-server schema
	Database string // where the tables live (the Distributed engine needs it)
}

var (
	createTableRe = regexp.MustCompile(`(?is)^(.*?)CREATE TABLE IF NOT EXISTS ([A-Za-z_][A-Za-z0-9_]*)(\s*\(.*\)\s*)ENGINE\s*=\s*(ReplacingMergeTree|MergeTree|SummingMergeTree|AggregatingMergeTree)\(([^)]*)\)(.*)$`)
	createViewRe  = regexp.MustCompile(`(?is)^(\s*--[^\n]*\n)*\s*CREATE (MATERIALIZED )?VIEW `)
	orderByRe     = regexp.MustCompile(`(?is)ORDER BY\s*\(?\s*([A-Za-z_][A-Za-z0-9_]*)`)
	tenantColRe   = regexp.MustCompile(`(?is)ORDER BY\s*\([^)]*\btenant_id\b`)
)

// Statements returns what migration m runs under v, in order.
func (v Variant) Statements(m Migration) ([]string, error) {
	if v.Cluster == "" {
		return []string{m.SQL}, nil
	}
	if !identifier.MatchString(v.Cluster) {
		return nil, fmt.Errorf("clickhouse.cluster %q: must match %s", v.Cluster, identifier)
	}
	if !identifier.MatchString(v.Database) {
		return nil, fmt.Errorf("clickhouse.database %q: must match %s", v.Database, identifier)
	}
	if createViewRe.MatchString(m.SQL) {
		return []string{m.SQL}, nil
	}
	p := createTableRe.FindStringSubmatch(m.SQL)
	if p == nil {
		return nil, fmt.Errorf("migration %04d_%s: no cluster variant: only CREATE TABLE IF NOT EXISTS ... ENGINE = *MergeTree(...) and CREATE VIEW are rewritten", m.Version, m.Name)
	}
	table, cols, engine, args, rest := p[2], p[3], p[4], strings.TrimSpace(p[5]), p[6]
	local := table + "_local"
	shardKey := "tenant_id"
	if !tenantColRe.MatchString(rest) {
		o := orderByRe.FindStringSubmatch(rest)
		if o == nil {
			return nil, fmt.Errorf("migration %04d_%s: table %s has no ORDER BY to shard by", m.Version, m.Name, table)
		}
		shardKey = o[1]
	}
	repArgs := "'/clickhouse/tables/{shard}/" + v.Database + "/" + local + "', '{replica}'"
	if args != "" {
		repArgs += ", " + args
	}
	return []string{
		p[1] + "CREATE TABLE IF NOT EXISTS " + local + cols + "ENGINE = Replicated" + engine + "(" + repArgs + ")" + rest,
		"CREATE TABLE IF NOT EXISTS " + table + " AS " + local + "\nENGINE = Distributed(" + v.Cluster + ", " + v.Database + ", " +
			local + ", sipHash64(" + shardKey + "))",
	}, nil
}

// ApplyVariant is Apply for the schema v selects. In the cluster variant
// it must run on every server of the cluster (each holds its own local
// tables and its own schema_migrations).
func ApplyVariant(ctx context.Context, conn Conn, v Variant) ([]uint32, error) {
	return apply(ctx, conn, v)
}
