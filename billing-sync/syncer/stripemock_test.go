package syncer_test

import (
	"context"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/usagemeter/usagemeter/billing-sync/audit"
	"github.com/usagemeter/usagemeter/billing-sync/stripeapi"
	"github.com/usagemeter/usagemeter/billing-sync/syncer"
	"github.com/usagemeter/usagemeter/billing-sync/usage"
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
	s := syncer.New(e.cfg, e.plans, usage.New(e.conn), audit.New(e.conn, nil), currentPeriods{e.api}, zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)))
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
	if _, err := e.api.FinalizedInvoices(ctx, "cus_acme"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.api.Meter(ctx, "mtr_api"); err != nil {
		t.Fatal(err)
	}
	if err := e.api.CancelMeterEvent(ctx, "cus_acme", "api_calls", "bs1-x", "bs1-cancel-x"); err != nil {
		t.Fatal(err)
	}
}

// currentPeriods lists subscriptions through stripe-mock (the request is
// validated) but bills into a current one: stripe-mock's fixture
// subscription was canceled in 2009.
type currentPeriods struct{ *stripeapi.Client }

func (c currentPeriods) AllSubscriptions(ctx context.Context) (map[string][]stripeapi.Subscription, error) {
	if _, err := c.Client.AllSubscriptions(ctx); err != nil {
		return nil, err
	}
	now := time.Now().UTC()
	start := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)
	return map[string][]stripeapi.Subscription{"cus_acme": {{ID: "sub_acme", Customer: "cus_acme", Status: "active", Anchor: start, Created: start,
		PeriodStart: start, PeriodEnd: start.AddDate(0, 1, 0), Items: []stripeapi.SubscriptionItem{
			{ID: "si_api", PriceID: "price_api", MeterID: "mtr_api"}, {ID: "si_tokens", PriceID: "price_tokens", MeterID: "mtr_tokens"},
			{ID: "si_storage", PriceID: "price_storage"}}}}}, nil
}
