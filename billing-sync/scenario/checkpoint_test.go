package scenario_test

import (
	"testing"
	"time"

	"github.com/usagemeter/usagemeter/testenv"
)

// TestCheckpointHoldsThePeriodBeforeTheEdge (issue 12 item 8): once a
// pass wrote its checkpoint, later `run` passes read only from the edge.
// The proof: the raw events before the edge are deleted, and the next
// pass still bills the period right: 700 tokens before the edge (0 units,
// 0.7 carried) and 400 after it bill floor(1.1) = 1 unit, which only the
// checkpoint's running total can give (a read from the edge alone sees
// 0.4 and bills 0).
func TestCheckpointHoldsThePeriodBeforeTheEdge(t *testing.T) {
	w := newWorld(t, anchor)
	w.subscribe("acme", "sub_acme", "", anchor, "price_tokens")
	w.insert("acme", "tokens", "700", anchor.Add(26*time.Hour))
	s := w.syncer()
	w.clock.Set(anchor.Add(6 * 24 * time.Hour))
	w.pass(s) // reads everything, writes the checkpoint at the day edge before the grace
	if err := w.conn.Exec(w.ctx, "ALTER TABLE usage_events DELETE WHERE tenant_id = 'acme' AND feature_type = 'tokens'"); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 20*time.Second, "the old events deleted", func() (bool, error) {
		var n uint64
		err := w.conn.QueryRow(w.ctx, "SELECT count() FROM usage_events WHERE tenant_id = 'acme'").Scan(&n)
		return n == 0, err
	})
	w.insert("acme", "tokens", "400", w.clock.Now().Add(-2*time.Hour))
	w.clock.Advance(time.Hour)
	w.pass(s)
	if got := w.fake.MeterTotal("cus_acme", "tokens", anchor, w.clock.Now()); got != 1 {
		t.Errorf("Stripe holds %d tokens units, want 1 (0.7 before the edge from the checkpoint + 0.4 after)", got)
	}
}

// TestCheckpointHoldsUsageRecordPeriods (issue 12 item 8, usage_records):
// the same checkpoint bounds a usage_records meter's passes. storage is a
// max meter: acme had 900 before the edge and 400 after, beta 500 before
// it and nothing since. With the raw events before the edge deleted, the
// next pass keeps Stripe at the periods' maxima (900 and 500) from the
// checkpoint; a pass reading from the edge alone would set 400 and 0.
func TestCheckpointHoldsUsageRecordPeriods(t *testing.T) {
	w := newWorld(t, anchor)
	w.subscribe("acme", "sub_acme", "", anchor, "price_storage")
	w.subscribe("beta", "sub_beta", "", anchor, "price_storage")
	w.insert("acme", "storage", "900", anchor.Add(26*time.Hour))
	w.insert("beta", "storage", "500", anchor.Add(27*time.Hour))
	s := w.syncer()
	w.clock.Set(anchor.Add(6 * 24 * time.Hour))
	w.pass(s)
	if got := w.fake.UsageTotal(item("acme", "price_storage")); got != 900 {
		t.Fatalf("first pass: Stripe holds %d for acme, want 900", got)
	}
	if err := w.conn.Exec(w.ctx, "ALTER TABLE usage_events DELETE WHERE feature_type = 'storage'"); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 20*time.Second, "the old events deleted", func() (bool, error) {
		var n uint64
		err := w.conn.QueryRow(w.ctx, "SELECT count() FROM usage_events WHERE feature_type = 'storage'").Scan(&n)
		return n == 0, err
	})
	w.insert("acme", "storage", "400", w.clock.Now().Add(-2*time.Hour))
	w.clock.Advance(time.Hour)
	rep := w.pass(s)
	for tenant, want := range map[string]int64{"acme": 900, "beta": 500} {
		if got := w.fake.UsageTotal(item(tenant, "price_storage")); got != want {
			t.Errorf("%s: Stripe holds %d storage units, want %d (the period's max, from the checkpoint)", tenant, got, want)
		}
	}
	if rep.Writes != 0 {
		t.Errorf("the pass after the checkpoint wrote %d times, want 0 (nothing changed the maxima)", rep.Writes)
	}
}
