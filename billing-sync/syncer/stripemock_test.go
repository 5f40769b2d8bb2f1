package syncer_test

import (
	"context"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/usagemeter/usagemeter/billing-sync/stripeapi"
	"github.com/usagemeter/usagemeter/billing-sync/syncer"
)

// Every request the service makes, in both modes, sent straight to
// stripe-mock, which validates it against Stripe's OpenAPI spec:
// meter events, cancel adjustments, usage records, summaries, customers,
// subscriptions.
func TestEveryRequestAcceptedByStripeMock(t *testing.T) {
	e := newEnv(t)
	e.apiCf.URL = stripeMock(t)
	e.apiCf.MaxAttempts = 1
	e.api = stripeapi.New(e.apiCf, zap.NewNop(), nil)
	e.cfg.Customers = []syncer.Customer{{Tenant: "acme", Customer: "cus_acme"}}
	e.cfg.LookupCustomers = true // stripe-mock's customers are listed too
	e.insert(ev{"acme", "api_calls", "7", hoursAgo(2)}, ev{"acme", "tokens", "2500", hoursAgo(2)}, ev{"acme", "storage", "9", thisMonthHour(1)})
	s := e.syncer()
	ctx := context.Background()
	for i, pass := range []func() (*syncer.Report, error){
		func() (*syncer.Report, error) { return s.Sync(ctx) },
		// stripe-mock's summaries hold fixed values: reconcile observes them
		// and sends cancels and corrections, which it must accept as well.
		func() (*syncer.Report, error) { return s.Reconcile(ctx, time.Time{}, time.Time{}) },
	} {
		rep, err := pass()
		if err != nil {
			t.Fatalf("pass %d: %v", i, err)
		}
		if rep.Failed != 0 || rep.Writes == 0 && i == 0 {
			t.Fatalf("pass %d against stripe-mock: %+v", i, rep)
		}
	}
	if _, err := e.api.SubscriptionItemFor(ctx, "cus_acme", "price_storage"); err != nil {
		t.Fatal(err)
	}
	if err := e.api.CancelMeterEvent(ctx, "cus_acme", "api_calls", "bs1-x", "bs1-cancel-x"); err != nil {
		t.Fatal(err)
	}
}
