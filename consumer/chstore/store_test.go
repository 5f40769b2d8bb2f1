package chstore

import (
	"context"
	"testing"
	"time"

	"github.com/shopspring/decimal"
	"go.uber.org/zap/zaptest"

	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/svckit/chconn"
	"github.com/usagemeter/usagemeter/testenv"
)

// Against the real server: migrations are idempotent, inserts round-trip
// exactly, the dedup view counts an id once and keeps its first write, and
// one tenant's id never hides another tenant's event.
func TestStoreAgainstClickHouse(t *testing.T) {
	addr := testenv.ClickHouseAddr(t)
	cfg := chconn.DefaultConfig()
	cfg.Addr = []string{addr}
	cfg.Database = testenv.Name("t")
	ctx := context.Background()
	s, err := Open(ctx, cfg, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.conn.Exec(ctx, "DROP DATABASE "+cfg.Database); _ = s.Close() })
	for range 2 {
		if err := s.Migrate(ctx); err != nil {
			t.Fatal(err)
		}
	}
	var applied uint64
	if err := s.conn.QueryRow(ctx, "SELECT count() FROM schema_migrations FINAL").Scan(&applied); err != nil || applied < 2 {
		t.Fatalf("schema_migrations holds %d rows: %v", applied, err)
	}

	ts := time.Date(2026, 11, 20, 10, 0, 0, 123456789, time.UTC)
	ev := func(tenant, id, qty string) schemas.UsageEvent {
		return schemas.UsageEvent{ID: id, TenantID: tenant, FeatureType: "tokens", Quantity: decimal.RequireFromString(qty),
			Timestamp: ts, BillingPeriod: "2026-11", SchemaVersion: 1, Metadata: map[string]string{"model": "m1"}}
	}
	type row struct {
		e      schemas.UsageEvent
		offset int64
	}
	rows := []row{
		{ev("acme", "e1", "0.000000001"), 10},
		{ev("acme", "e2", "12345678901234567890.123456789"), 11},
		{ev("acme", "e1", "5"), 12},   // conflicting duplicate: first write wins
		{ev("globex", "e1", "7"), 13}, // same id, other tenant: a different event
	}
	var b EventBatch
	for _, r := range rows {
		b.Append(&r.e, 0, r.offset)
	}
	if err := s.Insert(ctx, &b); err != nil {
		t.Fatal(err)
	}
	b.Reset()
	for _, r := range rows[:2] { // a replayed batch
		b.Append(&r.e, 0, r.offset)
	}
	if b.Len() != 2 {
		t.Fatalf("Reset left %d rows", b.Len())
	}
	if err := s.Insert(ctx, &b); err != nil {
		t.Fatal(err)
	}
	totals, err := s.Totals(ctx, TotalsQuery{Since: ts.Add(-time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"acme": "12345678901234567890.12345679", "globex": "7"}
	if len(totals) != 2 {
		t.Fatalf("totals: %+v", totals)
	}
	for _, tot := range totals {
		if !decimal.RequireFromString(tot.Quantity).Equal(decimal.RequireFromString(want[tot.TenantID])) {
			t.Errorf("%s: total %s, want %s", tot.TenantID, tot.Quantity, want[tot.TenantID])
		}
	}
	var ns uint32
	var model string
	if err := s.conn.QueryRow(ctx, "SELECT event_time_ns, metadata_values[indexOf(metadata_keys, 'model')] FROM usage_events_dedup WHERE id = 'e2'").Scan(&ns, &model); err != nil {
		t.Fatal(err)
	}
	if ns != 123456789 || model != "m1" {
		t.Fatalf("event_time_ns=%d model=%q", ns, model)
	}
	one, err := s.Totals(ctx, TotalsQuery{Since: ts.Add(-time.Hour), TenantID: "globex"})
	if err != nil || len(one) != 1 || one[0].TenantID != "globex" || one[0].Events != 1 {
		t.Fatalf("tenant filter: %+v %v", one, err)
	}
}
