package faults

import (
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/shopspring/decimal"

	"github.com/usagemeter/usagemeter/schemas"
)

// TestExpect pins the independent count the fault cases compare with: the
// routing and quantity rules, and each (tenant, id) once.
func TestExpect(t *testing.T) {
	msg := func(id, tenant, key string, partition int, qty string) kafka.Message {
		ev := schemas.UsageEvent{ID: id, TenantID: tenant, FeatureType: "api_calls",
			Quantity: decimal.RequireFromString(qty), Timestamp: time.Date(2026, 11, 28, 10, 0, 0, 0, time.UTC)}
		m := kafka.Message{Partition: partition, Value: ev.AppendJSON(nil)}
		if key != "-" {
			m.Key = []byte(key)
		}
		return m
	}
	acme, globex := murmur2Partition("acme"), murmur2Partition("globex")
	if acme != 0 || globex != 3 { // the Java client's partitions for these keys, 4 partitions
		t.Fatalf("murmur2 partitions: acme %d, globex %d; want 0 and 3", acme, globex)
	}
	e, err := expect([]kafka.Message{
		msg("a1", "acme", "acme", acme, "1.5"),
		msg("a1", "acme", "acme", acme, "1.5"), // a retry
		msg("a2", "acme", "acme", acme, "2"),
		msg("g1", "globex", "globex", globex, "0.001"),
		msg("k1", "acme", "-", acme, "1"),                                // no key: re-routed, counted
		msg("k2", "acme", "globex", globex, "1"),                         // another tenant's key: re-routed, counted
		msg("p1", "acme", "acme", 2, "1"),                                // CRC32's partition for acme: re-routed, counted
		msg("p1", "acme", "acme", acme, "1"),                             // p1's re-routed copy: the same event
		msg("q1", "acme", "acme", acme, "1000000000000000000"),           // 19 integer digits
		msg("q2", "acme", "acme", acme, "999999999999999999.999999999"),  // 18: allowed
		msg("q3", "acme", "acme", acme, "99999999999999999999999999999"), // 29 nines
		msg("a1", "globex", "globex", globex, "7"),                       // same id, other tenant: its own event
	})
	if err != nil {
		t.Fatal(err)
	}
	wantRefused := map[string]string{"q1": tagInvalidQuantity, "q3": tagInvalidQuantity}
	if len(e.refused) != len(wantRefused) {
		t.Errorf("refused %v, want %v", e.refused, wantRefused)
	}
	for id, tag := range wantRefused {
		if e.refused[id] != tag {
			t.Errorf("%s refused as %q, want %q", id, e.refused[id], tag)
		}
	}
	want := map[key]tally{
		{tenant: "acme", meter: "api_calls"}:   {events: 6, sum: decimal.RequireFromString("1000000000000000006.499999999")},
		{tenant: "globex", meter: "api_calls"}: {events: 2, sum: decimal.RequireFromString("7.001")},
	}
	if g := e.gap(want, true); !g.zero() || e.messages != 12 || len(e.ids) != 8 {
		t.Errorf("messages %d, ids %d, totals %v: %s", e.messages, len(e.ids), e.totals, g.first)
	}
}
