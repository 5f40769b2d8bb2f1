package syncer_test

import (
	"context"
	"testing"
	"time"

	"github.com/usagemeter/usagemeter/billing-sync/stripefake"
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
