package stripefake_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/client"
	"go.uber.org/zap"

	"github.com/usagemeter/usagemeter/billing-sync/stripeapi"
	"github.com/usagemeter/usagemeter/billing-sync/stripefake"
	"github.com/usagemeter/usagemeter/billing-sync/stripespec"
)

// TestCancelAtPeriodEnd: a cancel requested with cancel_at_period_end
// keeps the subscription active until its period ends (canceled_at is the
// request, cancel_at the period end, no ended_at); then it is canceled
// with ended_at = the period end and a final invoice for that period.
// Every response is checked against Stripe's spec.
func TestCancelAtPeriodEnd(t *testing.T) {
	spec, err := stripespec.Load()
	if err != nil {
		t.Fatal(err)
	}
	anchor := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	end := anchor.AddDate(0, 1, 0)
	req := time.Date(2026, 11, 10, 0, 0, 0, 0, time.UTC)
	clock := stripefake.NewClock(req)
	fake := stripefake.New()
	fake.Now = clock.Now
	fake.CheckResponse = spec.CheckResponse
	fake.AddMeter("mtr_api", "api_calls")
	fake.AddPrice(stripefake.Price{ID: "price_api", MeterID: "mtr_api"})
	fake.AddCustomer("cus_acme", "acme")
	fake.AddSubscription(stripefake.Subscription{ID: "sub_acme", Customer: "cus_acme", Anchor: anchor, Created: anchor,
		Items: []stripefake.Item{{ID: "si_api", Price: "price_api"}}})
	srv := newServer(t, fake)
	sc := client.New("sk_test_123", &stripe.Backends{API: stripe.GetBackendWithConfig(stripe.APIBackend, &stripe.BackendConfig{
		URL: stripe.String(srv), MaxNetworkRetries: stripe.Int64(0), LeveledLogger: &stripe.LeveledLogger{Level: stripe.LevelNull}})})
	cfg := stripeapi.DefaultConfig()
	cfg.APIKey, cfg.URL, cfg.Rate, cfg.Burst = "sk_test_123", srv, 1000, 100
	cfg.MaxAttempts, cfg.RetryMin, cfg.RetryMax, cfg.Timeout = 1, time.Millisecond, 5*time.Millisecond, 30*time.Second
	api := stripeapi.New(cfg, zap.NewNop(), nil)
	ctx := context.Background()

	s, err := sc.Subscriptions.Update("sub_acme", &stripe.SubscriptionParams{CancelAtPeriodEnd: stripe.Bool(true)})
	if err != nil {
		t.Fatalf("cancel_at_period_end: %v", err)
	}
	if s.Status != stripe.SubscriptionStatusActive || !s.CancelAtPeriodEnd || s.CancelAt != end.Unix() || s.CanceledAt != req.Unix() || s.EndedAt != 0 {
		t.Errorf("after the request: status %s cancel_at_period_end %v cancel_at %d canceled_at %d ended_at %d; want active, true, %d, %d, 0",
			s.Status, s.CancelAtPeriodEnd, s.CancelAt, s.CanceledAt, s.EndedAt, end.Unix(), req.Unix())
	}
	if _, err := sc.Subscriptions.Update("sub_acme", &stripe.SubscriptionParams{Description: stripe.String("x")}); err == nil {
		t.Error("an unmodelled parameter was accepted")
	}
	if n := len(fake.Invoices("cus_acme")); n != 0 {
		t.Errorf("%d invoices before the period end, want 0", n)
	}

	clock.Set(end.Add(time.Hour))
	subs, err := api.Subscriptions(ctx, "cus_acme")
	if err != nil {
		t.Fatal(err)
	}
	if len(subs) != 1 || subs[0].Status != "canceled" || !subs[0].EndedAt.Equal(end) || !subs[0].CanceledAt.Equal(req) {
		t.Fatalf("after the period end: %+v; want canceled, ended_at %s, canceled_at %s", subs, end, req)
	}
	inv := fake.Invoices("cus_acme")
	if len(inv) != 1 || !inv[0].PeriodStart.Equal(anchor) || !inv[0].PeriodEnd.Equal(end) {
		t.Errorf("invoices %+v, want the final one for %s-%s", inv, anchor, end)
	}
	if _, err := sc.Subscriptions.Update("sub_acme", &stripe.SubscriptionParams{CancelAtPeriodEnd: stripe.Bool(false)}); err == nil {
		t.Error("a canceled subscription took cancel_at_period_end")
	}
	if v := fake.Violations(); len(v) > 0 {
		t.Fatalf("the fake answered outside Stripe's spec:\n%s", strings.Join(v, "\n"))
	}
}
