package stripefake_test

import (
	"context"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/client"
	"go.uber.org/zap"

	"github.com/usagemeter/usagemeter/billing-sync/stripeapi"
	"github.com/usagemeter/usagemeter/billing-sync/stripefake"
	"github.com/usagemeter/usagemeter/billing-sync/stripespec"
)

// TestSubscriptionModel drives the fake's subscription model with a
// controllable clock, through stripe-go: an anchor on the 15th at 14:32
// across two rollovers, invoices that stay drafts for the grace and then
// charge what arrived by then (a late event is accepted by the meter but
// never reaches the finalized invoice), item changes, a cancel with its
// final invoice, statuses, and a meter's settings. Every response is
// checked against Stripe's spec and, with USAGE_TEST_STRIPE_MOCK, every
// write is sent to stripe-mock too.
func TestSubscriptionModel(t *testing.T) {
	spec, err := stripespec.Load()
	if err != nil {
		t.Fatal(err)
	}
	anchor := time.Date(2026, 3, 15, 14, 32, 0, 0, time.UTC)
	clock := stripefake.NewClock(anchor.Add(time.Hour))
	fake := stripefake.New()
	fake.Now = clock.Now
	fake.Upstream = os.Getenv("USAGE_TEST_STRIPE_MOCK")
	var mu sync.Mutex
	seen := map[string]int{}
	fake.CheckResponse = func(method, path string, status int, body []byte) error {
		mu.Lock()
		seen[kind(method, path, status)]++
		mu.Unlock()
		return spec.CheckResponse(method, path, status, body)
	}
	fake.AddMeter("mtr_api", "api_calls")
	fake.SetMeterSettings("mtr_tokens", "count", "hour")
	fake.AddMeter("mtr_tokens", "tokens")
	fake.AddPrice(stripefake.Price{ID: "price_api", MeterID: "mtr_api", LookupKey: "pro_api"})
	fake.AddPrice(stripefake.Price{ID: "price_storage"})
	fake.AddCustomer("cus_acme", "acme")
	fake.AddSubscription(stripefake.Subscription{ID: "sub_acme", Customer: "cus_acme", Anchor: anchor, Created: anchor,
		Items: []stripefake.Item{{ID: "si_api", Price: "price_api"}, {ID: "si_storage", Price: "price_storage"}}})
	fake.AddSubscription(stripefake.Subscription{ID: "sub_old", Customer: "cus_acme", Status: stripefake.IncompleteExpired, Created: anchor})
	srv := newServer(t, fake)

	cfg := stripeapi.DefaultConfig()
	cfg.APIKey, cfg.URL, cfg.Rate, cfg.Burst = "sk_test_123", srv, 1000, 100
	cfg.MaxAttempts, cfg.RetryMin, cfg.RetryMax, cfg.Timeout = 1, time.Millisecond, 5*time.Millisecond, 30*time.Second // the first check of a schema compiles it: seconds on a busy machine
	api := stripeapi.New(cfg, zap.NewNop(), nil)
	sc := client.New("sk_test_123", &stripe.Backends{API: stripe.GetBackendWithConfig(stripe.APIBackend, &stripe.BackendConfig{
		URL: stripe.String(srv), MaxNetworkRetries: stripe.Int64(0), LeveledLogger: &stripe.LeveledLogger{Level: stripe.LevelNull}})})
	ctx := context.Background()
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	send := func(ident string, v int64, ts time.Time) error {
		return api.SendMeterEvent(ctx, stripeapi.MeterEvent{EventName: "api_calls", Customer: "cus_acme", Identifier: ident, Value: v, Timestamp: ts, IdempotencyKey: ident})
	}

	subs, err := api.Subscriptions(ctx, "cus_acme")
	must("subscriptions", err)
	if len(subs) != 2 || subs[0].ID != "sub_acme" || subs[1].Status != stripefake.IncompleteExpired {
		t.Fatalf("subscriptions (status=all) %+v", subs)
	}
	first := subs[0]
	wantEnd := time.Date(2026, 4, 15, 14, 32, 0, 0, time.UTC)
	if !first.PeriodStart.Equal(anchor) || !first.PeriodEnd.Equal(wantEnd) || !first.Anchor.Equal(anchor) {
		t.Errorf("period %s..%s anchor %s, want %s..%s", first.PeriodStart, first.PeriodEnd, first.Anchor, anchor, wantEnd)
	}
	if len(first.Items) != 2 || first.Items[0].MeterID != "mtr_api" || first.Items[1].MeterID != "" || first.Items[0].LookupKey != "pro_api" {
		t.Errorf("items %+v", first.Items)
	}
	// Usage in the first period: 10 two minutes before its end, a
	// usage record set at the period start.
	clock.Set(wantEnd.Add(-time.Minute))
	must("event", send("e1", 10, wantEnd.Add(-2*time.Minute)))
	must("usage record", api.SetUsage(ctx, "si_storage", 7, anchor, "u1"))
	// Rollover 1: the period ends at 14:32:00 sharp; usage in the grace
	// still counts for it, the draft is not finalized yet.
	clock.Set(wantEnd.Add(30 * time.Minute))
	must("event in the grace", send("e2", 5, wantEnd.Add(-time.Hour)))
	must("usage record in the grace", api.SetUsage(ctx, "si_storage", 9, anchor, "u2"))
	must("event of the new period", send("e3", 3, wantEnd))
	if inv := fake.Invoices("cus_acme"); len(inv) != 1 || inv[0].Status != "draft" {
		t.Fatalf("invoices in the grace %+v, want one draft", inv)
	}
	s, err := sc.Subscriptions.Get("sub_acme", nil)
	must("get subscription", err)
	if s.CurrentPeriodStart != wantEnd.Unix() || s.CurrentPeriodEnd != time.Date(2026, 5, 15, 14, 32, 0, 0, time.UTC).Unix() {
		t.Errorf("after rollover: period %d..%d", s.CurrentPeriodStart, s.CurrentPeriodEnd)
	}
	// Finalized: a late event for the first period is accepted by the
	// meter (35 days back) but never reaches its invoice.
	clock.Set(wantEnd.Add(2 * time.Hour))
	must("late event", send("e4", 100, wantEnd.Add(-2*time.Hour)))
	if err := api.SetUsage(ctx, "si_storage", 11, anchor, "u3"); err == nil {
		t.Error("a usage record for a finalized period was accepted")
	}
	inv, err := api.FinalizedInvoices(ctx, "cus_acme")
	must("invoices", err)
	if len(inv) != 1 || !inv[0].PeriodStart.Equal(anchor) || !inv[0].PeriodEnd.Equal(wantEnd) || inv[0].FinalizedAt.IsZero() {
		t.Fatalf("finalized invoices %+v", inv)
	}
	got := map[string]int64{}
	for _, l := range inv[0].Lines {
		got[l.Item] = l.Quantity
	}
	if got["si_api"] != 15 || got["si_storage"] != 9 {
		t.Errorf("first invoice charged %v, want si_api 15 (10 + 5 in the grace, not the late 100), si_storage 9 (set)", got)
	}
	// Item changes: the storage item moves to a new price, an add-on item
	// is added then removed; a removed item takes no usage records.
	_, err = sc.SubscriptionItems.Update("si_storage", &stripe.SubscriptionItemParams{Price: stripe.String("price_storage_v2")})
	must("item price change", err)
	added, err := sc.SubscriptionItems.New(&stripe.SubscriptionItemParams{Subscription: stripe.String("sub_acme"), Price: stripe.String("price_addon")})
	must("item added", err)
	_, err = sc.SubscriptionItems.Del(added.ID, nil)
	must("item removed", err)
	if err := api.SetUsage(ctx, added.ID, 1, wantEnd, "u4"); err == nil {
		t.Error("a usage record on a removed item was accepted")
	}
	// Rollover 2 (30 days in April: 15 May 14:32), then a cancel
	// mid-period with its final invoice.
	second := time.Date(2026, 5, 15, 14, 32, 0, 0, time.UTC)
	clock.Set(second.Add(10 * 24 * time.Hour))
	must("event in the third period", send("e5", 4, second.Add(24*time.Hour)))
	canceled, err := sc.Subscriptions.Cancel("sub_acme", nil)
	must("cancel", err)
	if canceled.Status != stripe.SubscriptionStatusCanceled || canceled.CanceledAt != clock.Now().Unix() {
		t.Errorf("canceled: %s at %d", canceled.Status, canceled.CanceledAt)
	}
	if _, err := sc.Subscriptions.Get("sub_nope", nil); err == nil {
		t.Error("an unknown subscription answered")
	}
	clock.Advance(2 * time.Hour)
	all := fake.Invoices("cus_acme")
	if len(all) != 3 {
		t.Fatalf("invoices %+v, want 3 (two periods and the final one)", all)
	}
	charged := func(in stripefake.Invoice, item string) int64 {
		for _, l := range in.Lines {
			if l.Item == item {
				return l.Quantity
			}
		}
		return -1
	}
	if q := charged(all[1], "si_api"); q != 3 || !all[1].PeriodStart.Equal(wantEnd) || !all[1].PeriodEnd.Equal(second) {
		t.Errorf("second invoice %+v: si_api %d, want 3 (the late 100 is in no invoice)", all[1], q)
	}
	if q := charged(all[2], "si_api"); q != 4 || !all[2].PeriodEnd.Equal(second.Add(10*24*time.Hour)) || all[2].Status != "open" {
		t.Errorf("final invoice %+v: si_api %d, want 4 ending at the cancel", all[2], q)
	}
	if n := fake.Total("cus_acme", "api_calls"); n != 122 {
		t.Errorf("the meter holds %d, want 122 (every event, invoiced or not)", n)
	}
	ms, err := api.Meter(ctx, "mtr_tokens")
	must("meter", err)
	if ms.Formula != "count" || ms.EventTimeWindow != "hour" || ms.EventName != "tokens" {
		t.Errorf("meter settings %+v", ms)
	}
	if _, err := api.Meter(ctx, "mtr_nope"); err == nil {
		t.Error("an unknown meter answered")
	}
	if v := fake.Violations(); len(v) > 0 {
		t.Fatalf("violations:\n%s", strings.Join(v, "\n"))
	}
	for _, k := range []string{"GET /v1/subscriptions 200", "GET /v1/subscriptions/sub_acme 200", "GET /v1/subscriptions/sub_nope 404",
		"DELETE /v1/subscriptions/sub_acme 200", "POST /v1/subscription_items/{id} 200", "POST /v1/subscription_items 200",
		"DELETE /v1/subscription_items/{id} 200", "GET /v1/invoices 200", "GET /v1/billing/meters/{id} 200", "GET /v1/billing/meters/{id} 404",
		"POST /v1/subscription_items/{id}/usage_records 400", "POST /v1/subscription_items/{id}/usage_records 404"} {
		if seen[k] == 0 {
			t.Errorf("no %s response was checked", k)
		}
	}
}

// TestAnchorOnThe31st: Stripe clamps a monthly period to the month's last
// day and returns to the anchor day after.
func TestAnchorOnThe31st(t *testing.T) {
	clock := stripefake.NewClock(time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC))
	fake := stripefake.New()
	fake.Now = clock.Now
	fake.InvoiceGrace = 0
	anchor := time.Date(2026, 1, 31, 9, 0, 0, 0, time.UTC)
	fake.AddSubscription(stripefake.Subscription{ID: "sub", Customer: "cus", Anchor: anchor, Created: anchor})
	clock.Set(time.Date(2026, 4, 1, 0, 0, 0, 0, time.UTC))
	var ends []string
	for _, in := range fake.Invoices("cus") {
		ends = append(ends, in.PeriodEnd.Format("01-02 15:04"))
	}
	if got := strings.Join(ends, ","); got != "02-28 09:00,03-31 09:00" {
		t.Errorf("period ends %s, want 02-28 09:00,03-31 09:00", got)
	}
}

func newServer(t *testing.T, f *stripefake.Fake) string {
	t.Helper()
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return srv.URL
}
