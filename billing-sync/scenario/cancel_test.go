package scenario_test

import (
	"testing"
	"time"
)

// TestCancelAtPeriodEndBillsToPeriodEnd: a cancel requested ten days into
// a period with cancel_at_period_end keeps the subscription active to the
// period end; Stripe sets canceled_at to the request. Usage after the
// request is still billed and invoiced (the final invoice charges exactly
// ClickHouse's total of the period); usage after the period end is not.
func TestCancelAtPeriodEndBillsToPeriodEnd(t *testing.T) {
	w := newWorld(t, anchor)
	w.subscribe("acme", "sub_acme", "", anchor, "price_api")
	p2 := anchor.AddDate(0, 1, 0)
	req := anchor.AddDate(0, 0, 10)
	for d := 1; d < 31; d += 3 {
		w.insert("acme", "api_calls", "2", anchor.AddDate(0, 0, d).Add(time.Hour))
	}
	w.insert("acme", "api_calls", "7", p2.Add(-time.Minute), p2.Add(time.Minute)) // last minute in, first minute out
	s := w.syncer()
	w.runTo(s, req, 24*time.Hour)
	if err := w.fake.CancelAtPeriodEnd("sub_acme"); err != nil {
		t.Fatal(err)
	}
	w.runTo(s, p2.Add(20*time.Minute), 24*time.Hour)
	w.equal("api_calls of the period (cancel requested "+req.Format(time.RFC3339)+")",
		w.fake.MeterTotal("cus_acme", "api_calls", anchor, p2), w.chSum("acme", "api_calls", anchor, p2))
	if after := w.chSum("acme", "api_calls", req, p2); after.IsZero() {
		t.Fatal("no usage between the request and the period end: the test proves nothing")
	}
	w.runTo(s, p2.Add(2*time.Hour), time.Hour)
	w.equal("final invoice", w.charged("sub_acme", anchor, item("acme", "price_api")), w.chSum("acme", "api_calls", anchor, p2))
	if got := w.fake.MeterTotal("cus_acme", "api_calls", p2, p2.Add(time.Hour)); got != 0 {
		t.Errorf("usage after the subscription ended billed: %d", got)
	}
}
