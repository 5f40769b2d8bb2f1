package scenario_test

import (
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"github.com/usagemeter/usagemeter/billing-sync/syncer"
)

// anchor: a subscription whose period starts on the 15th at 14:32:00,
// not at midnight on the 1st (issue 12 item 1).
var anchor = time.Date(2027, 1, 15, 14, 32, 0, 0, time.UTC)

// TestAnchoredPeriodsAcrossTwoRollovers bills two and a half months of
// usage into a subscription anchored on the 15th at 14:32, including
// events at 14:10 and 14:50 of each boundary hour. Right after the pass
// 20 minutes past each period end, Stripe holds exactly ClickHouse's
// total of that period (meter events) and its max (usage record); after
// the invoice's grace, the finalized invoice charged exactly those; in
// the end the current period matches too and drift finds nothing.
func TestAnchoredPeriodsAcrossTwoRollovers(t *testing.T) {
	w := newWorld(t, anchor)
	w.subscribe("acme", "sub_acme", "", anchor, "price_api", "price_storage")
	p1, p2, p3 := anchor, anchor.AddDate(0, 1, 0), anchor.AddDate(0, 2, 0) // 15 Feb, 15 Mar 14:32
	var api, storage []time.Time
	for d := 0; d < 68; d++ {
		day := time.Date(2027, 1, 15, 0, 0, 0, 0, time.UTC).AddDate(0, 0, d)
		api = append(api, day.Add(time.Duration(3+d%17)*time.Hour+time.Duration(d%50)*time.Minute))
		storage = append(storage, day.Add(time.Duration(5+d%13)*time.Hour))
	}
	for _, b := range []time.Time{p2, p3} { // both sides of each boundary, in its hour
		api = append(api, b.Add(-22*time.Minute), b.Add(18*time.Minute), b.Add(-time.Second), b)
		storage = append(storage, b.Add(-10*time.Minute), b.Add(10*time.Minute))
	}
	var late []time.Time
	for _, ts := range api {
		if !ts.Before(anchor) {
			late = append(late, ts)
		}
	}
	for i, ts := range late {
		w.insert("acme", "api_calls", decimal.NewFromInt(int64(1+i%9)).String(), ts)
	}
	for i, ts := range storage {
		if !ts.Before(anchor) {
			w.insert("acme", "storage", decimal.NewFromInt(int64(100+(i*37)%500)).String(), ts)
		}
	}
	s := w.syncer()
	for _, per := range [][2]time.Time{{p1, p2}, {p2, p3}} {
		start, end := per[0], per[1]
		w.runTo(s, end.Add(20*time.Minute), 24*time.Hour)
		// Right after the pass: the period is billed before its invoice finalizes.
		w.equal("api_calls of the period ending "+end.Format(time.RFC3339), w.fake.MeterTotal("cus_acme", "api_calls", start, end),
			w.chSum("acme", "api_calls", start, end))
		w.runTo(s, end.Add(2*time.Hour), time.Hour)
		w.equal("invoiced api_calls", w.charged("sub_acme", start, item("acme", "price_api")), w.chSum("acme", "api_calls", start, end))
		w.equal("invoiced storage", w.charged("sub_acme", start, item("acme", "price_storage")), w.chMax("acme", "storage", start, end))
	}
	end := time.Date(2027, 3, 25, 0, 30, 0, 0, time.UTC)
	w.runTo(s, end, 24*time.Hour)
	closed := time.Date(2027, 3, 25, 0, 0, 0, 0, time.UTC)
	w.equal("api_calls of the current period", w.fake.MeterTotal("cus_acme", "api_calls", p3, closed), w.chSum("acme", "api_calls", p3, closed))
	if ds := w.drift(s, p2, end); len(ds) != 0 {
		t.Errorf("drift: %+v", ds)
	}
}

// TestLateEventAfterFinalization: usage for a period whose invoice is
// finalized is never sent (Stripe would take the meter event and invoice
// it to nobody; it refuses the usage record): the pass reports it as
// invoice_finalized, and drift names the difference between ClickHouse
// and what the finalized invoice charged (invoiced_differs), to the unit.
func TestLateEventAfterFinalization(t *testing.T) {
	w := newWorld(t, anchor)
	w.subscribe("acme", "sub_acme", "", anchor, "price_api", "price_storage")
	p2 := anchor.AddDate(0, 1, 0)
	w.insert("acme", "api_calls", "30", anchor.Add(3*time.Hour), p2.Add(-5*time.Hour))
	w.insert("acme", "storage", "70", anchor.Add(4*time.Hour))
	s := w.syncer()
	w.runTo(s, p2.Add(2*time.Hour), 12*time.Hour, p2.Add(20*time.Minute))
	w.equal("invoiced api_calls", w.charged("sub_acme", anchor, item("acme", "price_api")), w.chSum("acme", "api_calls", anchor, p2))
	sent := w.fake.MeterTotal("cus_acme", "api_calls", anchor, p2)

	// Late: 40 calls and a storage peak of 999 in the finalized period.
	w.insert("acme", "api_calls", "40", p2.Add(-4*time.Hour))
	w.insert("acme", "storage", "999", p2.Add(-3*time.Hour))
	rep := w.pass(s)
	if got := w.fake.MeterTotal("cus_acme", "api_calls", anchor, p2); got != sent {
		t.Errorf("a late event of a finalized period was sent: Stripe's meter holds %d, was %d", got, sent)
	}
	statuses := map[string]syncer.Drift{}
	for _, d := range rep.Unfixable {
		statuses[d.Meter+"/"+d.Status] = d
	}
	if d, ok := statuses["api_calls/invoice_finalized"]; !ok || d.Ours-d.Stripe != 40 {
		t.Errorf("pass reported %+v, want api_calls invoice_finalized with 40 units", rep.Unfixable)
	}
	if d, ok := statuses["storage/invoice_finalized"]; !ok || d.Ours != 999 || d.Stripe != 70 {
		t.Errorf("pass reported %+v, want storage invoice_finalized 999 vs 70", rep.Unfixable)
	}
	invoiced := map[string]syncer.Drift{}
	for _, d := range w.drift(s, anchor, w.clock.Now()) {
		if d.Status == "invoiced_differs" {
			invoiced[d.Meter] = d
		}
	}
	api, storage := invoiced["api_calls"], invoiced["storage"]
	w.equal("api_calls, ours in drift", api.Ours, w.chSum("acme", "api_calls", anchor, p2))
	w.equal("api_calls, invoiced in drift", api.Stripe, w.chSum("acme", "api_calls", anchor, p2).Sub(decimal.NewFromInt(40)))
	w.equal("storage, ours in drift", storage.Ours, w.chMax("acme", "storage", anchor, p2))
	if storage.Stripe != 70 || !api.Start.Equal(anchor) || !api.End.Equal(p2) {
		t.Errorf("invoiced_differs: api %+v storage %+v", api, storage)
	}
	// Nothing is re-planned: another pass writes nothing.
	if rep := w.pass(s); rep.Writes != 0 {
		t.Errorf("a later pass wrote %d", rep.Writes)
	}
}

// TestNoSubscription: a customer with no subscription, and one whose only
// subscription is incomplete_expired, are not billed (Stripe would record
// their meter events and invoice nobody): the pass lists them in
// NoSubscription and drift names the units (no_subscription) equal to
// ClickHouse's; a tenant with one is billed exactly.
func TestNoSubscription(t *testing.T) {
	w := newWorld(t, anchor)
	w.subscribe("acme", "sub_acme", "", anchor, "price_api", "price_storage")
	w.fake.AddCustomer("cus_solo", "solo")
	w.subscribe("lapsed", "sub_lapsed", "incomplete_expired", anchor, "price_api", "price_storage")
	at := anchor.Add(26 * time.Hour)
	for _, tenant := range []string{"acme", "solo", "lapsed"} {
		w.insert(tenant, "api_calls", "12", at, at.Add(time.Minute))
	}
	s := w.syncer()
	w.clock.Set(at.Add(2 * time.Hour))
	rep := w.pass(s)
	got := map[string]bool{}
	for _, x := range rep.NoSubscription {
		got[x] = true
	}
	if !got["solo/api_calls"] || !got["lapsed/api_calls"] || got["acme/api_calls"] {
		t.Errorf("no_subscription %v, want solo and lapsed", rep.NoSubscription)
	}
	for _, cus := range []string{"cus_solo", "cus_lapsed"} {
		if n := w.fake.MeterTotal(cus, "api_calls", anchor, w.clock.Now()); n != 0 {
			t.Errorf("%s: %d units sent that no invoice charges", cus, n)
		}
	}
	w.equal("acme billed", w.fake.MeterTotal("cus_acme", "api_calls", anchor, w.clock.Now()), w.chSum("acme", "api_calls", anchor, w.clock.Now()))
	named := map[string]int64{}
	for _, d := range w.drift(s, anchor, w.clock.Now()) {
		if d.Status != "no_subscription" {
			t.Errorf("drift %+v", d)
		}
		named[d.Tenant] = d.Ours
	}
	for _, tenant := range []string{"solo", "lapsed"} {
		w.equal(tenant+" named in drift", named[tenant], w.chSum(tenant, "api_calls", anchor, w.clock.Now()))
	}
}

// TestScaleRoundingWithLateEvents: tokens at 0.001 per unit. Hours of
// 400, 700 and 900 bill 0, 1, 1; a day later (no cancel possible any
// more) 600 more arrive in the first hour: the period total is
// floor(2.6) = 2, so nothing may be sent (spreading remainders again
// would send 1 for the first hour and bill 3). Then 500 more in the
// second hour: floor(3.1) = 3, one more unit. Checked after each pass and
// on the finalized invoice.
func TestScaleRoundingWithLateEvents(t *testing.T) {
	w := newWorld(t, anchor)
	w.subscribe("acme", "sub_acme", "", anchor, "price_tokens")
	p2 := anchor.AddDate(0, 1, 0)
	h := anchor.Add(48 * time.Hour).Truncate(time.Hour)
	w.insert("acme", "tokens", "400", h.Add(10*time.Minute))
	w.insert("acme", "tokens", "700", h.Add(70*time.Minute))
	w.insert("acme", "tokens", "900", h.Add(130*time.Minute))
	s := w.syncer()
	units := func() int64 { return w.fake.MeterTotal("cus_acme", "tokens", anchor, p2) }
	floor := func() decimal.Decimal {
		return w.chSum("acme", "tokens", anchor, p2).Mul(decimal.RequireFromString("0.001")).Floor()
	}
	for i := 1; i <= 3; i++ {
		w.clock.Set(h.Add(time.Duration(i)*time.Hour + 20*time.Minute))
		w.pass(s)
	}
	w.equal("tokens billed in order", units(), floor())
	w.clock.Advance(26 * time.Hour)
	w.insert("acme", "tokens", "600", h.Add(20*time.Minute))
	w.pass(s)
	w.equal("tokens after a late event in the first hour", units(), floor())
	w.clock.Advance(time.Hour)
	w.insert("acme", "tokens", "500", h.Add(80*time.Minute))
	w.pass(s)
	w.equal("tokens after a late event in the second hour", units(), floor())
	w.runTo(s, p2.Add(2*time.Hour), 24*time.Hour)
	w.equal("invoiced tokens", w.charged("sub_acme", anchor, item("acme", "price_tokens")), floor())
}
