package chstore

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/shopspring/decimal"
	"go.uber.org/zap/zaptest"

	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/svckit/chconn"
	"github.com/usagemeter/usagemeter/testenv"
)

// Events decoded by DecodeView round-trip exactly: quantities from 10^-9
// to 10^18 - 10^-9 (the decimal cache hit and missed, twice per insert),
// metadata arrays in document order.
func TestAppendViewRoundTrip(t *testing.T) {
	cfg := chconn.DefaultConfig()
	cfg.Addr = []string{testenv.ClickHouseAddr(t)}
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
	qtys := []string{"0.000000001", "1", "1", "7", "12.5", "0", "999999999999999999.999999999", "123456789012345678.000000001", "7", "4294967296.5"}
	v := schemas.NewValidator()
	var view schemas.EventView
	var b EventBatch
	want := map[string][2]string{} // id -> quantity, "k=v,..." in document order
	for round := range 2 {
		b.Reset()
		for i, q := range qtys {
			id := fmt.Sprintf("e%d-%d", round, i)
			var meta []string
			for k := range i % 4 {
				meta = append(meta, fmt.Sprintf(`"z%d":"v%d"`, 3-k, k)) // descending: not sorted
			}
			raw := fmt.Sprintf(`{"id":%q,"tenant_id":"acme","feature_type":"tokens","quantity":%q,"timestamp":"2026-11-20T10:00:00.5Z","metadata":{%s}}`,
				id, q, strings.Join(meta, ","))
			if err := v.DecodeView([]byte(raw), &view); err != nil {
				t.Fatal(err)
			}
			b.AppendView(&view, 0, int64(round*100+i))
			var kv []string
			for _, m := range view.Metadata {
				kv = append(kv, m.Key+"="+m.Value)
			}
			want[id] = [2]string{decimal.RequireFromString(q).StringFixed(9), strings.Join(kv, ",")}
		}
		if err := s.Insert(ctx, &b); err != nil {
			t.Fatal(err)
		}
	}
	rows, err := s.conn.Query(ctx, `SELECT id, toString(quantity), arrayStringConcat(arrayMap((k, v) -> concat(k, '=', v), metadata_keys, metadata_values), ',') FROM usage_events`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		var id, q, meta string
		if err := rows.Scan(&id, &q, &meta); err != nil {
			t.Fatal(err)
		}
		n++
		if !decimal.RequireFromString(q).Equal(decimal.RequireFromString(want[id][0])) || meta != want[id][1] {
			t.Errorf("%s: quantity %s metadata %q, want %s %q", id, q, meta, want[id][0], want[id][1])
		}
	}
	if n != len(want) {
		t.Fatalf("%d rows, want %d", n, len(want))
	}
}
