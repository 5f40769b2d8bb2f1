package scenario_test

import (
	"testing"
	"time"

	"github.com/usagemeter/usagemeter/billing-sync/stripefake"
)

// A correction of a window W gets a 500 after Stripe applied it (Retry)
// in the last pass of W's grace; the next pass comes when W is out of
// its range: W's open intent counts as held (no carry of the same units
// into a later window) and is still re-sent (idempotent) to resolve it.
func TestAppliedRetryOutOfRangeResolved(t *testing.T) {
	w := newWorld(t, anchor)
	w.subscribe("acme", "sub_acme", "", anchor, "price_api")
	wStart := time.Date(2027, 1, 17, 23, 0, 0, 0, time.UTC)
	wEnd := wStart.Add(time.Hour)
	w.insert("acme", "api_calls", "5", wStart.Add(30*time.Minute))
	s := w.syncer()
	w.clock.Set(wEnd.Add(30 * time.Minute))
	w.pass(s)
	if got := w.fake.MeterTotal("cus_acme", "api_calls", anchor, w.clock.Now()); got != 5 {
		t.Fatalf("first pass: %d, want 5", got)
	}
	// A late event for W, near the end of its grace (72 h).
	w.insert("acme", "api_calls", "3", wStart.Add(40*time.Minute))
	w.clock.Set(wEnd.Add(71*time.Hour + 30*time.Minute))
	w.fake.Inject(stripefake.Fault{Prefix: "/v1/billing/meter_events", Count: 3, Status: 500, AfterWrite: true})
	rep, err := s.Sync(w.ctx)
	t.Logf("correction pass: err=%v failed=%d writes=%d", err, rep.Failed, rep.Writes)
	// Stripe is back; an hour of usage after W in the same period.
	w.insert("acme", "api_calls", "1", wEnd.Add(71*time.Hour+45*time.Minute))
	w.clock.Set(wEnd.Add(73*time.Hour + 30*time.Minute))
	rep, err = s.Sync(w.ctx)
	t.Logf("next pass: err=%v failed=%d writes=%d resent=%d", err, rep.Failed, rep.Writes, rep.Resent)
	got := w.fake.MeterTotal("cus_acme", "api_calls", anchor, w.clock.Now())
	ch := w.chSum("acme", "api_calls", anchor, w.clock.Now())
	if ch.IntPart() != got || got != 9 {
		t.Errorf("Stripe holds %d api_calls for the period, ClickHouse %s, want 9", got, ch)
	}
	if rep.Resent != 1 {
		t.Errorf("W's open intent, out of the pass's range, re-sent %d times, want 1 (left open it never resolves)", rep.Resent)
	}
	// Once resolved, nothing more is sent.
	w.clock.Set(w.clock.Now().Add(time.Hour))
	rep, err = s.Sync(w.ctx)
	if err != nil || rep.Writes != 0 || rep.Resent != 0 {
		t.Errorf("pass after: err=%v writes=%d resent=%d, want none", err, rep.Writes, rep.Resent)
	}
	if got := w.fake.MeterTotal("cus_acme", "api_calls", anchor, w.clock.Now()); got != 9 {
		t.Errorf("after one more pass Stripe holds %d, want 9", got)
	}
}
