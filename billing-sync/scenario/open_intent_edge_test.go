package scenario_test

import (
	"testing"
	"time"

	"github.com/usagemeter/usagemeter/billing-sync/stripefake"
)

// TestOpenIntentHoldsTheCheckpointEdge: a correction of window W applies
// on Stripe but every answer is a 500, for three passes, while the day's
// checkpoint edge would move past W. The edge stays while W's intent is
// open (the next pass reads the ledger from the edge: it would not see the
// intent, and the checkpoint's held value leaves it out), so once Stripe
// answers, W's intent is resolved and a later unit bills 1, not 4: Stripe
// 9 = ClickHouse 9 (with the edge moved: 12).
func TestOpenIntentHoldsTheCheckpointEdge(t *testing.T) {
	w := newWorld(t, anchor)
	w.subscribe("acme", "sub_acme", "", anchor, "price_api")
	wStart := time.Date(2027, 1, 17, 23, 0, 0, 0, time.UTC)
	wEnd := wStart.Add(time.Hour)
	w.insert("acme", "api_calls", "5", wStart.Add(30*time.Minute))
	s := w.syncer()
	w.clock.Set(wEnd.Add(30 * time.Minute))
	w.pass(s)
	w.insert("acme", "api_calls", "3", wStart.Add(40*time.Minute))
	w.fake.Inject(stripefake.Fault{Prefix: "/v1/billing/meter_events", Count: 9, Status: 500, AfterWrite: true})
	// +71.5 h (in W's grace), +72.5 h, +73.5 h (the edge would move to
	// the next day): each pass's write is applied and answered 500.
	for _, at := range []time.Duration{71*time.Hour + 30*time.Minute, 72*time.Hour + 30*time.Minute, 73*time.Hour + 30*time.Minute} {
		w.clock.Set(wEnd.Add(at))
		rep, err := s.Sync(w.ctx)
		if err != nil || rep.Failed == 0 {
			t.Fatalf("pass at W.end+%s: err=%v failed=%d, want a failed write", at, err, rep.Failed)
		}
	}
	w.insert("acme", "api_calls", "1", wEnd.Add(73*time.Hour+45*time.Minute))
	for _, at := range []time.Duration{74*time.Hour + 30*time.Minute, 75*time.Hour + 30*time.Minute, 76*time.Hour + 30*time.Minute} {
		w.clock.Set(wEnd.Add(at))
		w.pass(s)
	}
	got := w.fake.MeterTotal("cus_acme", "api_calls", anchor, w.clock.Now())
	w.equal("api_calls of the period", got, w.chSum("acme", "api_calls", anchor, w.clock.Now()))
	if got != 9 {
		t.Errorf("Stripe holds %d, want 9", got)
	}
}
