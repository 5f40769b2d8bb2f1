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
