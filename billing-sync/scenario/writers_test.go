package scenario_test

import (
	"errors"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stripe/stripe-go/v76"

	"github.com/usagemeter/usagemeter/billing-sync/stripeapi"
	"github.com/usagemeter/usagemeter/billing-sync/stripefake"
)

// Idempotency keys and identifiers last 24 h by the fake's clock, as on
// Stripe: an hour after use the same key with other parameters is a key
// reuse; 25 h after, the same key executes again. The syncer never re-sends
// an intent that old: a write whose answer was lost stays pending, run
// leaves it alone once past cancel_window, and reconcile resolves it from
// Stripe's summary; the period is invoiced exactly once.
func TestScenarioIdempotencyKeysPast24h(t *testing.T) {
	w := newWorld(t, anchor)
	w.subscribe("acme", "sub_acme", "", anchor, "price_api")
	p2 := anchor.AddDate(0, 1, 0)

	// The fake's rule, through stripe-go.
	send := func(ident string, v int64) error {
		return w.api.SendMeterEvent(w.ctx, stripeapi.MeterEvent{EventName: "api_calls", Customer: "cus_probe", Identifier: ident,
			Value: v, Timestamp: w.clock.Now(), IdempotencyKey: "probe-key"})
	}
	w.fake.AddCustomer("cus_probe", "probe")
	if err := send("probe-1", 1); err != nil {
		t.Fatal(err)
	}
	w.clock.Advance(time.Hour)
	var se *stripe.Error
	if err := send("probe-2", 2); !errors.As(err, &se) || se.Type != stripe.ErrorTypeIdempotency {
		t.Fatalf("the key reused within 24 h: %v, want idempotency_error", err)
	}
	w.clock.Advance(24 * time.Hour)
	if err := send("probe-2", 2); err != nil {
		t.Fatalf("the key reused after 25 h: %v, want executed", err)
	}

	// A write applied by Stripe whose answers were all lost (500 after the
	// write, every attempt): the intent stays pending.
	h := w.clock.Now().Truncate(time.Hour).Add(-3 * time.Hour)
	w.insert("acme", "api_calls", "9", h.Add(10*time.Minute))
	w.fake.Inject(stripefake.Fault{Prefix: "/v1/billing/meter_events", Count: 3, Status: 500, AfterWrite: true})
	s := w.syncer()
	rep, err := s.Sync(w.ctx)
	if err != nil || rep.Failed != 1 {
		t.Fatalf("pass with lost answers: %v, %+v", err, rep)
	}
	if got := w.fake.MeterTotal("cus_acme", "api_calls", anchor, p2); got != 9 {
		t.Fatalf("Stripe holds %d, want the 9 it applied", got)
	}
	// 25 h later the key and the identifier have expired on Stripe: a
	// blind re-send would bill again. run does not re-send...
	w.clock.Advance(25 * time.Hour)
	rep = w.pass(s)
	if rep.Writes != 0 {
		t.Fatalf("run re-sent an intent past its key's life: %d writes", rep.Writes)
	}
	// ... reconcile reads Stripe back, and nothing is billed twice.
	if _, err := s.Reconcile(w.ctx, time.Time{}, time.Time{}); err != nil {
		t.Fatal(err)
	}
	w.insert("acme", "api_calls", "4", w.clock.Now().Truncate(time.Hour).Add(-2*time.Hour))
	w.runTo(s, p2.Add(3*time.Hour), 48*time.Hour, p2.Add(20*time.Minute))
	w.equal("invoiced api_calls", w.charged("sub_acme", anchor, item("acme", "price_api")), w.chSum("acme", "api_calls", anchor, p2))
}

// A 500 that Stripe stored under the key, before and after the write was
// applied: the meter event goes out again under a new key with the same
// identifier, and the period's invoice charges ClickHouse's total.
func TestScenarioStoredServerError(t *testing.T) {
	w := newWorld(t, anchor)
	w.subscribe("acme", "sub_acme", "", anchor, "price_api")
	p2 := anchor.AddDate(0, 1, 0)
	w.insert("acme", "api_calls", "5", anchor.Add(2*time.Hour), anchor.Add(30*time.Hour))
	w.insert("acme", "api_calls", "3", anchor.Add(50*time.Hour))
	s := w.syncer()
	w.clock.Set(anchor.Add(4 * time.Hour))
	w.fake.Inject(stripefake.Fault{Prefix: "/v1/billing/meter_events", Count: 1, Status: 500, AfterWrite: true, Store: true})
	w.pass(s)
	w.clock.Set(anchor.Add(40 * time.Hour))
	w.fake.Inject(stripefake.Fault{Prefix: "/v1/billing/meter_events", Count: 1, Status: 500, Store: true})
	w.pass(s)
	w.runTo(s, p2.Add(3*time.Hour), 48*time.Hour, p2.Add(20*time.Minute))
	w.equal("invoiced api_calls", w.charged("sub_acme", anchor, item("acme", "price_api")), w.chSum("acme", "api_calls", anchor, p2))
	if dups := w.fake.DuplicateIdentifiers(); len(dups) != 1 {
		t.Errorf("duplicate identifiers %v: want the one re-sent after its first try was applied", dups)
	}
}

// A subscription item replaced mid-period (a new item on the price, the old
// one deleted) while the syncer's subscription cache still names the old
// one: the write to the old item is refused (resource_missing), the cache
// is dropped, and the very next pass writes the period to the new item;
// the old item receives nothing more.
func TestScenarioItemReplacedMidPeriod(t *testing.T) {
	w := newWorld(t, anchor)
	w.cfg.SubscriptionTTL = 24 * time.Hour // the cache outlives the change
	w.subscribe("acme", "sub_acme", "", anchor, "price_storage")
	old := item("acme", "price_storage")
	p2 := anchor.AddDate(0, 1, 0)
	w.insert("acme", "storage", "300", anchor.Add(2*time.Hour))
	s := w.syncer()
	w.clock.Set(anchor.Add(4 * time.Hour))
	w.pass(s)
	if got := w.fake.UsageTotal(old); got != 300 {
		t.Fatalf("old item holds %d, want 300", got)
	}
	// The item is replaced through the API, as a dashboard change would.
	call := func(method, path, form string) {
		req := httptest.NewRequest(method, path, strings.NewReader(form))
		req.Header.Set("Authorization", "Bearer sk_test_123")
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		rec := httptest.NewRecorder()
		w.fake.ServeHTTP(rec, req)
		if rec.Code != 200 {
			t.Fatalf("%s %s: %d %s", method, path, rec.Code, rec.Body.String())
		}
	}
	call("POST", "/v1/subscription_items", "subscription=sub_acme&price=price_storage")
	call("DELETE", "/v1/subscription_items/"+old, "")
	w.insert("acme", "storage", "450", anchor.Add(5*time.Hour))
	w.clock.Set(anchor.Add(7 * time.Hour))
	rep, err := s.Sync(w.ctx)
	if err != nil || rep.Failed != 1 {
		t.Fatalf("the pass with a stale cache: %v, %d failed; want the old item's write refused", err, rep.Failed)
	}
	w.clock.Advance(time.Minute)
	rep = w.pass(s)
	newItem := "si_sub_acme_1" // the fake's id of the first item created through the API
	if got := w.fake.UsageTotal(newItem); got != 450 || rep.Writes != 1 {
		t.Fatalf("new item holds %d after %d writes, want the period's 450 at once", got, rep.Writes)
	}
	if got := w.fake.UsageTotal(old); got != 300 {
		t.Fatalf("the old item changed after it was deleted: %d", got)
	}
	w.runTo(s, p2.Add(3*time.Hour), 48*time.Hour, p2.Add(20*time.Minute))
	w.equal("invoiced storage (max) on the new item", w.charged("sub_acme", anchor, newItem), w.chMax("acme", "storage", anchor, p2))
}
