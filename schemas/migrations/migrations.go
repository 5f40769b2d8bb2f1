// Package migrations holds the ClickHouse schema as numbered, embedded .sql
// files (one statement each) and applies them idempotently, recording each
// in the schema_migrations table.
//
// The SQL runs on the Debian ClickHouse 18.16 server and on current
// releases (checked with chdb in make test), so it avoids what 18.16 lacks:
// DateTime64, Map, JSON, TTL, CODEC, LowCardinality.
package migrations

import (
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"io/fs"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

//go:embed *.sql
var files embed.FS

// Conn is the part of a ClickHouse connection the runner needs. It matches
// clickhouse-go/v2's driver.Conn, so this package needs no driver.
type Conn interface {
	Exec(ctx context.Context, query string, args ...any) error
	Select(ctx context.Context, dest any, query string, args ...any) error
}

// Migration is one numbered statement.
type Migration struct {
	Version  uint32
	Name     string
	SQL      string
	Checksum string
}

var fileName = regexp.MustCompile(`^(\d{4})_([a-z0-9_]+)\.sql$`)

// All returns the embedded migrations in version order.
func All() ([]Migration, error) {
	entries, err := fs.ReadDir(files, ".")
	if err != nil {
		return nil, fmt.Errorf("list migrations: %w", err)
	}
	var ms []Migration
	for _, e := range entries {
		m := fileName.FindStringSubmatch(e.Name())
		if m == nil {
			return nil, fmt.Errorf("migration file %q: name must be NNNN_name.sql", e.Name())
		}
		body, err := files.ReadFile(e.Name())
		if err != nil {
			return nil, fmt.Errorf("read migration %s: %w", e.Name(), err)
		}
		v, _ := strconv.ParseUint(m[1], 10, 32)
		sum := sha256.Sum256(body)
		ms = append(ms, Migration{Version: uint32(v), Name: m[2], SQL: strings.TrimSpace(string(body)), Checksum: hex.EncodeToString(sum[:8])})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].Version < ms[j].Version })
	for i := 1; i < len(ms); i++ {
		if ms[i].Version == ms[i-1].Version {
			return nil, fmt.Errorf("two migrations numbered %04d", ms[i].Version)
		}
	}
	return ms, nil
}

const (
	createTable = `CREATE TABLE IF NOT EXISTS schema_migrations
(
    version    UInt32,
    name       String,
    checksum   String,
    applied_at DateTime('UTC')
)
ENGINE = ReplacingMergeTree()
ORDER BY version`
	selectApplied = `SELECT version, checksum FROM schema_migrations FINAL`
	// INSERT ... SELECT, not VALUES: with VALUES, clickhouse-go waits for a
	// data block that ClickHouse 18.16 never asks for, and the call hangs.
	insertApplied = `INSERT INTO schema_migrations (version, name, checksum, applied_at) SELECT ?, ?, ?, now()`
)

type applied struct {
	Version  uint32 `ch:"version"`
	Checksum string `ch:"checksum"`
}

// Apply runs every migration not yet recorded, in order, and returns the
// versions it applied. A recorded migration whose file changed since is an
// error: applied migrations are immutable, add a new one instead.
// Statements are idempotent (IF NOT EXISTS), so two processes racing here
// both succeed.
func Apply(ctx context.Context, conn Conn) ([]uint32, error) {
	return apply(ctx, conn, Variant{})
}

func apply(ctx context.Context, conn Conn, v Variant) ([]uint32, error) {
	ms, err := All()
	if err != nil {
		return nil, err
	}
	if err := conn.Exec(ctx, createTable); err != nil {
		return nil, fmt.Errorf("create schema_migrations: %w", err)
	}
	var rows []applied
	if err := conn.Select(ctx, &rows, selectApplied); err != nil {
		return nil, fmt.Errorf("read schema_migrations: %w", err)
	}
	done := make(map[uint32]string, len(rows))
	for _, r := range rows {
		done[r.Version] = r.Checksum
	}
	var ran []uint32
	for _, m := range ms {
		if sum, ok := done[m.Version]; ok {
			if sum != m.Checksum {
				return ran, fmt.Errorf("migration %04d_%s was changed after it was applied (checksum %s, recorded %s)", m.Version, m.Name, m.Checksum, sum)
			}
			continue
		}
		stmts, err := v.Statements(m)
		if err != nil {
			return ran, err
		}
		for _, sql := range stmts {
			if err := conn.Exec(ctx, sql); err != nil {
				return ran, fmt.Errorf("apply migration %04d_%s: %w", m.Version, m.Name, err)
			}
		}
		if err := conn.Exec(ctx, insertApplied, m.Version, m.Name, m.Checksum); err != nil {
			return ran, fmt.Errorf("record migration %04d_%s: %w", m.Version, m.Name, err)
		}
		ran = append(ran, m.Version)
	}
	return ran, nil
}

var identifier = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,63}$`)

// CreateDatabaseSQL returns the statement creating database name. Identifiers
// cannot be bound as parameters, so the name is checked against a strict
// pattern instead and quoted.
func CreateDatabaseSQL(name string) (string, error) {
	if !identifier.MatchString(name) {
		return "", fmt.Errorf("database name %q: must match %s", name, identifier)
	}
	return "CREATE DATABASE IF NOT EXISTS `" + name + "`", nil
}
