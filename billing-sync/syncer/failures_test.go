package syncer_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/usagemeter/usagemeter/billing-sync/stripefake"
	"github.com/usagemeter/usagemeter/billing-sync/syncer"
)

// A 500 that Stripe stored under the key (the request began executing) is
// replayed to every retry under that key for 24 h. Meter events go out
// again under a new key with the same identifier: applied once whether or
// not the first try was, and billed exactly.
func TestStoredServerErrorMeterEventResentUnderNewKey(t *testing.T) {
	for _, after := range []bool{true, false} {
		name := "applied before the 500"
		if !after {
			name = "not applied"
		}
		t.Run(name, func(t *testing.T) {
			e := newEnv(t)
			ctx := context.Background()
			e.customer("acme")
			e.insert(ev{"acme", "api_calls", "7", hoursAgo(3)})
			e.fake.Inject(stripefake.Fault{Prefix: "/v1/billing/meter_events", Count: 1, Status: 500, AfterWrite: after, Store: true})
			rep, err := e.syncer().Sync(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if got := e.fake.Total("cus_acme", "api_calls"); got != 7 || rep.Failed != 0 {
				t.Fatalf("Stripe holds %d (want 7), %d failed", got, rep.Failed)
			}
			e.noDoubleWrites()
			rep, err = e.syncer().Sync(ctx)
			if err != nil || rep.Writes != 0 {
				t.Fatalf("a second pass: %v, %d writes", err, rep.Writes)
			}
		})
	}
}

// Stripe-Should-Retry: false (a stored 500 of a usage record) is honoured:
// the call is not retried under the key it would only replay.
func TestShouldRetryFalseIsHonoured(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.customer("acme")
	e.insert(ev{"acme", "storage", "500", thisMonthHour(2)})
	e.fake.Inject(stripefake.Fault{Prefix: "/v1/subscription_items/", Count: 1, Status: 500, Store: true})
	start := time.Now()
	rep, err := e.syncer().Sync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n := e.fake.Calls()["usage_record"]; n != 1 || rep.Failed != 1 {
		t.Fatalf("%d usage record calls, %d failed; want 1 call, not retried under a key Stripe says cannot succeed", n, rep.Failed)
	}
	t.Logf("pass with a stored 500 took %v", time.Since(start).Round(time.Millisecond))
}

// A write Stripe refused for good is not re-planned every pass: the window
// is reported "refused" (and counted) until our value changes.
func TestRefusedWriteNotReplannedUntilValueChanges(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.customer("acme")
	e.insert(ev{"acme", "api_calls", "5", hoursAgo(3)})
	e.fake.Inject(stripefake.Fault{Prefix: "/v1/billing/meter_events", Count: 1, Status: 400})
	s := e.syncer()
	if rep, err := s.Sync(ctx); err != nil || rep.Failed != 1 {
		t.Fatalf("first pass: %v, %+v", err, rep)
	}
	calls := e.fake.Calls()["meter_event"]
	for range 2 {
		rep, err := s.Sync(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if rep.Writes != 0 || rep.Refused != 1 || len(rep.Unfixable) != 1 || rep.Unfixable[0].Status != "refused" {
			t.Fatalf("a later pass: %d writes, %d refused, %+v; want none sent and the window reported refused", rep.Writes, rep.Refused, rep.Unfixable)
		}
	}
	if n := e.fake.Calls()["meter_event"]; n != calls {
		t.Fatalf("the refused write was sent again: %d -> %d calls", calls, n)
	}
	e.insert(ev{"acme", "api_calls", "2", hoursAgo(3).Add(time.Minute)}) // our value changes: planned again
	if _, err := s.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if got := e.fake.Total("cus_acme", "api_calls"); got != 7 {
		t.Fatalf("after the value changed: Stripe %d, want 7", got)
	}
}

// One tenant's failed look-up skips that tenant only; two customers with
// one tenant_id refuse that tenant, named; found customers are searched
// once per customer_ttl, not every pass.
func TestLookupErrorsAndAmbiguousCustomersStayPerTenant(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	for _, tn := range []string{"a1", "a2", "a3"} {
		e.customer(tn)
		e.insert(ev{tn, "api_calls", "4", hoursAgo(3)})
	}
	e.fake.AddCustomer("cus_a3_dup", "a3") // a second customer claims a3
	e.fake.Inject(stripefake.Fault{Prefix: "/v1/customers/search", Count: 1, Status: 400})
	clock := time.Now()
	e.cfg.CustomerTTL = time.Hour
	s := e.syncerAt(func() time.Time { return clock })
	rep, err := s.Sync(ctx)
	if err != nil {
		t.Fatalf("a failed look-up stopped the pass: %v", err)
	}
	if len(rep.LookupErrors) != 1 || rep.LookupErrors[0] != "a1/api_calls" {
		t.Errorf("lookup errors %v, want a1/api_calls", rep.LookupErrors)
	}
	if len(rep.Ambiguous) != 1 || !strings.Contains(rep.Ambiguous[0], "a3/api_calls") || !strings.Contains(rep.Ambiguous[0], "cus_a3_dup") {
		t.Errorf("ambiguous %v, want a3 named with both customers", rep.Ambiguous)
	}
	if got := e.fake.Total("cus_a2", "api_calls"); got != 4 {
		t.Errorf("a2 (unaffected) billed %d, want 4", got)
	}
	if e.fake.Total("cus_a3", "api_calls")+e.fake.Total("cus_a3_dup", "api_calls") != 0 {
		t.Errorf("the ambiguous tenant was billed")
	}
	searches := e.fake.Calls()["customers_search"]
	clock = clock.Add(time.Minute)
	if _, err := s.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if got := e.fake.Total("cus_a1", "api_calls"); got != 4 {
		t.Errorf("a1 after its look-up recovered: %d, want 4", got)
	}
	// a1 searched again (it failed); a2 and a3 (still refused) cached.
	if n := e.fake.Calls()["customers_search"] - searches; n != 1 {
		t.Errorf("second pass made %d searches, want 1 (a1; a2 and a3 cached)", n)
	}
	searches = e.fake.Calls()["customers_search"]
	clock = clock.Add(2 * time.Hour) // past customer_ttl: every tenant searched once more
	if _, err := s.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if n := e.fake.Calls()["customers_search"] - searches; n != 3 {
		t.Errorf("after customer_ttl: %d searches, want 3", n)
	}
	e.noDoubleWrites()
}

func (e *env) syncerAt(now func() time.Time) *syncer.Syncer { return e.syncer(syncer.WithClock(now)) }
