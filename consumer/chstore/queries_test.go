package chstore

import (
	"strings"
	"testing"
	"time"
)

func TestTotalsQuerySQL(t *testing.T) {
	since := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	sql, args := TotalsQuery{Since: since, TenantID: "acme'; DROP TABLE x", Limit: 5}.toSQL()
	if strings.Contains(sql, "acme") || strings.Contains(sql, "DROP") {
		t.Fatalf("user input concatenated into SQL:\n%s", sql)
	}
	if strings.Count(sql, "?") != len(args) || len(args) != 3 || args[1] != "acme'; DROP TABLE x" || args[2] != 5 {
		t.Fatalf("placeholders and args disagree: %s %v", sql, args)
	}
	if !strings.Contains(sql, "FROM usage_events_dedup") || !strings.Contains(sql, "AND tenant_id = ?") {
		t.Fatalf("unexpected SQL:\n%s", sql)
	}
	sql, args = TotalsQuery{Since: since}.toSQL()
	if strings.Contains(sql, "tenant_id = ?") || len(args) != 2 || args[1] != 1000 {
		t.Fatalf("unfiltered query wrong: %s %v", sql, args)
	}
}
