package scenario_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/stripe/stripe-go/v76/webhook"
	"go.uber.org/zap"

	"github.com/usagemeter/usagemeter/billing-sync/planhook"
	"github.com/usagemeter/usagemeter/billing-sync/stripefake"
	"github.com/usagemeter/usagemeter/schemas/plans"
	"github.com/usagemeter/usagemeter/testenv"
)

// An add-on cancelled mid-period, then an upgrade made by creating a new
// subscription and cancelling the old one: the plan (from the webhook, read
// from all the customer's subscriptions) stays PRO and then becomes
// ENTERPRISE, never FREE; the usage is billed in the periods of the
// subscription that invoiced it, and each finalized invoice charges
// ClickHouse's total for its period.
func TestScenarioAddOnCancelAndUpgradeBySubscription(t *testing.T) {
	w := newWorld(t, anchor)
	broker := testenv.Kafka(t)
	topic := testenv.Name("assign")
	testenv.CreateTopic(t, broker, topic, 1, "cleanup.policy", "compact")
	hp, err := plans.Load("../../schemas/plans/plans.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	w.fake.AddPrice(stripefake.Price{ID: "price_pro", LookupKey: "pro_monthly"})
	w.fake.AddPrice(stripefake.Price{ID: "price_ent", LookupKey: "enterprise_monthly"})
	w.fake.AddPrice(stripefake.Price{ID: "price_seats", LookupKey: "extra_seats"})
	cfg := planhook.DefaultConfig()
	cfg.Secret, cfg.Brokers, cfg.AssignmentTopic = "whsec_scenario", []string{broker}, topic
	cfg.Prices = []planhook.Price{{LookupKey: "pro_monthly", Plan: "PRO"}, {LookupKey: "enterprise_monthly", Plan: "ENTERPRISE"}}
	hook, err := planhook.New(w.ctx, cfg, hp, func(context.Context, string) (string, bool) { return "", false }, w.api, zap.NewNop(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer hook.Close()
	n := 0
	event := func(typ, sub string) {
		t.Helper()
		n++
		body := []byte(fmt.Sprintf(`{"id":"evt_%d","object":"event","api_version":"2023-10-16","created":%d,"type":%q,"livemode":false,
"pending_webhooks":1,"data":{"object":{"id":%q,"object":"subscription","customer":"cus_acme","status":"active","metadata":{},
"items":{"object":"list","data":[]}}}}`, n, w.clock.Now().Unix(), typ, sub))
		sp := webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: body, Secret: cfg.Secret, Timestamp: time.Now()})
		req := httptest.NewRequest(http.MethodPost, cfg.Path, bytes.NewReader(body))
		req.Header.Set("Stripe-Signature", sp.Header)
		rec := httptest.NewRecorder()
		hook.ServeHTTP(rec, req)
		if rec.Code != 200 {
			t.Fatalf("%s %s: %d %s", typ, sub, rec.Code, rec.Body.String())
		}
	}
	planNow := func(step, want string) {
		t.Helper()
		if got := latestPlan(t, broker, topic, "acme"); got != want {
			t.Fatalf("%s: acme is on %q, want %s", step, got, want)
		}
	}

	// PRO with metered api_calls; an add-on (seats) with metered tokens.
	w.subscribe("acme", "sub_base", "", anchor, "price_pro", "price_api")
	w.subscribe("acme", "sub_addon", "", anchor, "price_seats", "price_tokens")
	event("customer.subscription.created", "sub_base")
	event("customer.subscription.created", "sub_addon")
	planNow("bought", "PRO")
	cancelAddon, upgrade := anchor.Add(9*24*time.Hour), anchor.Add(20*24*time.Hour+3*time.Hour+17*time.Minute)
	var calls []time.Time
	for d := 0; d < 50; d++ {
		calls = append(calls, anchor.Add(time.Duration(d)*24*time.Hour+5*time.Hour))
	}
	for i, ts := range calls {
		w.insert("acme", "api_calls", fmt.Sprint(1+i%7), ts)
	}
	w.insert("acme", "tokens", "2500", anchor.Add(3*24*time.Hour))
	s := w.syncer()

	w.runTo(s, cancelAddon, 48*time.Hour)
	noErr(t, w.fake.CancelSubscription("sub_addon"))
	event("customer.subscription.deleted", "sub_addon")
	planNow("add-on cancelled", "PRO")

	w.runTo(s, upgrade, 48*time.Hour)
	w.fake.AddSubscription(stripefake.Subscription{ID: "sub_ent", Customer: "cus_acme", Anchor: upgrade, Created: upgrade,
		Items: []stripefake.Item{{ID: "si_acme_ent", Price: "price_ent"}, {ID: "si_acme_ent_api", Price: "price_api"}}})
	event("customer.subscription.created", "sub_ent")
	noErr(t, w.fake.CancelSubscription("sub_base"))
	event("customer.subscription.deleted", "sub_base")
	planNow("upgraded by a new subscription, the old one cancelled", "ENTERPRISE")

	entEnd := upgrade.AddDate(0, 1, 0)
	w.runTo(s, entEnd.Add(3*time.Hour), 48*time.Hour, entEnd.Add(20*time.Minute))
	w.equal("sub_base's final invoice (api_calls to the upgrade)", w.charged("sub_base", anchor, item("acme", "price_api")),
		w.chSum("acme", "api_calls", anchor, upgrade))
	w.equal("sub_addon's final invoice (tokens, per thousand)", w.charged("sub_addon", anchor, item("acme", "price_tokens")),
		w.chSum("acme", "tokens", anchor, cancelAddon).Shift(-3).Floor())
	w.equal("sub_ent's first invoice (api_calls after the upgrade)", w.charged("sub_ent", upgrade, "si_acme_ent_api"),
		w.chSum("acme", "api_calls", upgrade, entEnd))
}

func noErr(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// latestPlan reads the assignment topic to its end: tenant's last plan.
func latestPlan(t *testing.T, broker, topic, tenant string) string {
	t.Helper()
	end := testenv.EndOffsets(t, broker, topic, 1)[0]
	if end == 0 {
		return ""
	}
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{broker}, Topic: topic, Partition: 0, MaxWait: 100 * time.Millisecond})
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	plan := ""
	for {
		m, err := r.ReadMessage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if tn, a, err := plans.ParseAssignmentRecord(m.Key, m.Value); err == nil && tn == tenant {
			plan = a.Plan
		}
		if m.Offset+1 >= end {
			return plan
		}
	}
}
