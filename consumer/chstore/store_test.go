package chstore

import (
	"context"
	"sort"
	"strconv"
	"strings"
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

// The Store refills one prepared batch for every Insert (its column buffers
// are reset, not regrown). Every row of every insert must come back exactly:
// a shorter batch after a longer one leaves nothing of the longer one
// behind, metadata rows of 0, 1 and 3 entries keep their own entries, and a
// batch of another context is not reused.
func TestStoreReusesItsBatchExactly(t *testing.T) {
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
	if err := s.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	base := time.Date(2026, 11, 20, 10, 0, 0, 0, time.UTC)
	type want struct {
		tenant, user, meter, qty, period, meta string
		sec                                    int64
		ns                                     uint32
		partition                              int32
		offset                                 int64
	}
	wants := map[string]want{}
	var b EventBatch
	var first *insertBatch
	offset := int64(0)
	for round, n := range []int{50, 7, 1, 30} {
		b.Reset()
		for i := range n {
			offset++
			meta := map[string]string{}
			for k := range (i + round) % 4 {
				meta["k"+strconv.Itoa(k)] = "v" + strconv.Itoa(round) + "-" + strconv.Itoa(i) + "-" + strconv.Itoa(k)
			}
			e := schemas.UsageEvent{ID: "r" + strconv.Itoa(round) + "-" + strconv.Itoa(i), TenantID: "t" + strconv.Itoa(i%3),
				UserID: strings.Repeat("u", i%2), FeatureType: "m" + strconv.Itoa(round),
				Quantity:  decimal.New(int64(offset)*1000+int64(i), -9).Add(decimal.New(int64(round), 17)),
				Timestamp: base.Add(time.Duration(offset)*time.Second + time.Duration(i)), BillingPeriod: "2026-11", SchemaVersion: 1, Metadata: meta}
			b.Append(&e, int32(round), offset)
			keys := make([]string, 0, len(meta))
			for k := range meta {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			var mtext []string
			for _, k := range keys {
				mtext = append(mtext, k+"="+meta[k])
			}
			wants[e.ID] = want{e.TenantID, e.UserID, e.FeatureType, e.Quantity.String(), e.BillingPeriod, strings.Join(mtext, ","),
				e.Timestamp.Unix(), uint32(e.Timestamp.Nanosecond()), int32(round), offset}
		}
		if err := s.Insert(ctx, &b); err != nil {
			t.Fatal(err)
		}
		if s.idle == nil {
			t.Fatal("no batch kept after a successful insert")
		}
		if first == nil {
			first = s.idle
		} else if s.idle != first {
			t.Fatalf("round %d: the batch was prepared again instead of reused", round)
		}
	}
	// Another context (here: one that can be cancelled) gets its own batch.
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if err := s.Insert(cctx, &b); err != nil {
		t.Fatal(err)
	}
	if s.idle == first {
		t.Fatal("a batch of another context was reused")
	}
	rows, err := s.conn.Query(ctx, `SELECT id, tenant_id, user_id, feature_type, toString(quantity), billing_period,
		arrayStringConcat(arrayMap((k, v) -> concat(k, '=', v), arraySort(metadata_keys), arraySort((v, k) -> k, metadata_values, metadata_keys)), ','),
		toUnixTimestamp(event_time), event_time_ns, kafka_partition, kafka_offset, version FROM usage_events`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	got := 0
	for rows.Next() {
		var id string
		var w want
		var sec uint32
		var version uint64
		if err := rows.Scan(&id, &w.tenant, &w.user, &w.meter, &w.qty, &w.period, &w.meta, &sec, &w.ns, &w.partition, &w.offset, &version); err != nil {
			t.Fatal(err)
		}
		w.sec = int64(sec)
		got++
		exp, ok := wants[id]
		if !ok {
			t.Fatalf("unexpected row %s", id)
		}
		exp.qty = decimal.RequireFromString(exp.qty).StringFixed(9)
		if w.qty != exp.qty {
			// 18.16 prints Decimal(38, 9) with its trailing zeros.
			if !decimal.RequireFromString(w.qty).Equal(decimal.RequireFromString(exp.qty)) {
				t.Errorf("%s: quantity %s, want %s", id, w.qty, exp.qty)
			}
			w.qty = exp.qty
		}
		if w != exp || version != firstWriteWins-uint64(exp.offset) {
			t.Errorf("%s:\n got %+v (version %d)\nwant %+v", id, w, version, exp)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if want := len(wants) + b.Len(); got != want { // the last batch twice
		t.Fatalf("%d rows, want %d", got, want)
	}
}
