package planhook_test

import (
	"context"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/shopspring/decimal"
	"go.uber.org/zap"

	"github.com/usagemeter/usagemeter/billing-sync/planhook"
	"github.com/usagemeter/usagemeter/billing-sync/stripeapi"
	"github.com/usagemeter/usagemeter/billing-sync/stripefake"
	"github.com/usagemeter/usagemeter/schemas/plans"
	"github.com/usagemeter/usagemeter/testenv"
)

// Other writers share the assignment topic: usage-api's admin publishes
// plan changes and one-off grants with Unix-second versions. A Stripe
// change that arrives after them (a webhook retried later, its event older
// than their record) still applies Stripe's truth, and keeps the tenant's
// grants instead of wiping them.
func TestStripeChangeKeepsGrantsAndBeatsNewerRecords(t *testing.T) {
	broker, topic, fake, _, hsrv := acmeHook(t)

	fake.AddSubscription(stripefake.Subscription{ID: "sub_pro", Customer: "cus_acme", Items: []stripefake.Item{{ID: "si_pro", Price: "price_pro"}}})
	if code := post(t, hsrv.URL, subEvent("evt_1", 1000, "customer.subscription.created", "sub_pro", "cus_acme"), secret); code != 200 {
		t.Fatalf("first event: %d", code)
	}
	// usage-api grants +10 ai_generation for this period, after the
	// handler started (it read the topic then), with a newer version.
	grant := plans.Assignment{Plan: "PRO", Version: 5000, Grants: &plans.Grants{List: []plans.Grant{
		{Meter: "ai_generation", Period: time.Now().UTC().Format("2006-01"), Amount: decimal.NewFromInt(10)}}}}
	k, v := plans.AssignmentRecord("acme", &grant)
	w := &kafka.Writer{Addr: kafka.TCP(broker), Topic: topic, Balancer: &kafka.Murmur2Balancer{}, RequiredAcks: kafka.RequireAll}
	if err := w.WriteMessages(context.Background(), kafka.Message{Key: k, Value: v}); err != nil {
		t.Fatal(err)
	}
	_ = w.Close()

	// The upgrade's webhook: its event (created 2000) is older than the
	// grant's record (5000).
	fake.AddSubscription(stripefake.Subscription{ID: "sub_ent", Customer: "cus_acme", Items: []stripefake.Item{{ID: "si_ent", Price: "price_ent"}}})
	must(t, fake.CancelSubscription("sub_pro"))
	if code := post(t, hsrv.URL, subEvent("evt_2", 2000, "customer.subscription.created", "sub_ent", "cus_acme"), secret); code != 200 {
		t.Fatalf("upgrade event: %d", code)
	}
	recs := recordsOf(t, broker, topic)["acme"]
	last := recs[len(recs)-1]
	if last.Plan != "ENTERPRISE" || last.Version <= grant.Version {
		t.Fatalf("after the upgrade acme's newest record is %+v, want ENTERPRISE with a version above %d", last, grant.Version)
	}
	if last.Grants == nil || len(last.Grants.List) != 1 || !last.Grants.List[0].Amount.Equal(decimal.NewFromInt(10)) {
		t.Fatalf("the upgrade dropped the grant: %+v", last.Grants)
	}
}

// acmeHook is a webhook handler on a private, 2-partition assignment topic
// with a fake Stripe that knows customer cus_acme (tenant acme) and the
// PRO and ENTERPRISE prices; everything closes when the test ends.
func acmeHook(t *testing.T) (broker, topic string, fake *stripefake.Fake, h *planhook.Handler, hsrv *httptest.Server) {
	t.Helper()
	broker = testenv.Kafka(t)
	topic = testenv.Name("assign")
	testenv.CreateTopic(t, broker, topic, 2, "cleanup.policy", "compact")
	p, err := plans.Load("../../schemas/plans/plans.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	fake = stripefake.New()
	fake.AddCustomer("cus_acme", "acme")
	fake.AddPrice(stripefake.Price{ID: "price_pro", LookupKey: "pro_monthly"})
	fake.AddPrice(stripefake.Price{ID: "price_ent", LookupKey: "enterprise"})
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	apiCfg := stripeapi.DefaultConfig()
	apiCfg.APIKey, apiCfg.URL, apiCfg.MaxAttempts, apiCfg.Rate = "sk_test_hook", srv.URL, 1, 1000
	cfg := planhook.DefaultConfig()
	cfg.Secret, cfg.Brokers, cfg.AssignmentTopic = secret, []string{broker}, topic
	cfg.Prices = []planhook.Price{{LookupKey: "pro_monthly", Plan: "PRO"}, {LookupKey: "enterprise", Plan: "ENTERPRISE"}}
	known := func(_ context.Context, cus string) (string, bool) { return "acme", cus == "cus_acme" }
	h, err = planhook.New(context.Background(), cfg, p, known, stripeapi.New(apiCfg, zap.NewNop(), nil), zap.NewNop(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close() })
	hsrv = httptest.NewServer(h)
	t.Cleanup(hsrv.Close)
	return broker, topic, fake, h, hsrv
}
