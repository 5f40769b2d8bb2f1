package planhook_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	"go.uber.org/zap"

	"github.com/usagemeter/usagemeter/billing-sync/planhook"
	"github.com/usagemeter/usagemeter/billing-sync/stripeapi"
	"github.com/usagemeter/usagemeter/billing-sync/stripefake"
	"github.com/usagemeter/usagemeter/schemas/plans"
	"github.com/usagemeter/usagemeter/testenv"
)

// subEvent is a customer.subscription.* event for subscription sub of
// customer (the handler reads the rest from Stripe).
func subEvent(id string, created int64, typ, sub, customer string) []byte {
	return []byte(fmt.Sprintf(`{"id":%q,"object":"event","api_version":"2023-10-16","created":%d,"type":%q,"livemode":false,"pending_webhooks":1,
"data":{"object":{"id":%q,"object":"subscription","customer":%q,"status":"active","metadata":{},"items":{"object":"list","data":[]}}}}`,
		id, created, typ, sub, customer))
}

// The plan follows all the customer's subscriptions as Stripe holds them:
// cancelling an add-on keeps the plan, an upgrade by a new subscription
// (then cancelling the old one, also within one second, also delivered out
// of order) ends on the new plan, statuses map deliberately, a customer not
// seen yet is looked up (a failed look-up answers 5xx so Stripe retries),
// and prices outside webhook.prices are counted.
func TestPlanFromAllSubscriptions(t *testing.T) {
	broker := testenv.Kafka(t)
	topic := testenv.Name("assign")
	testenv.CreateTopic(t, broker, topic, 1, "cleanup.policy", "compact")
	p, err := plans.Load("../../schemas/plans/plans.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	fake := stripefake.New()
	fake.AddCustomer("cus_acme", "acme")
	fake.AddCustomer("cus_new", "newco")
	fake.AddPrice(stripefake.Price{ID: "price_pro", LookupKey: "pro_monthly"})
	fake.AddPrice(stripefake.Price{ID: "price_ent", LookupKey: "enterprise"})
	fake.AddPrice(stripefake.Price{ID: "price_seats", LookupKey: "extra_seats"}) // an add-on: no plan
	srv := httptest.NewServer(fake)
	defer srv.Close()
	apiCfg := stripeapi.DefaultConfig()
	apiCfg.APIKey, apiCfg.URL, apiCfg.MaxAttempts, apiCfg.Rate = "sk_test_hook", srv.URL, 1, 1000
	api := stripeapi.New(apiCfg, zap.NewNop(), nil)

	cfg := planhook.DefaultConfig()
	cfg.Secret, cfg.Brokers, cfg.AssignmentTopic = secret, []string{broker}, topic
	// Lowest plan first: the last mapped price wins.
	cfg.Prices = []planhook.Price{{LookupKey: "pro_monthly", Plan: "PRO"}, {LookupKey: "enterprise", Plan: "ENTERPRISE"}}
	known := func(_ context.Context, cus string) (string, bool) { return "acme", cus == "cus_acme" }
	reg := prometheus.NewRegistry()
	h, err := planhook.New(context.Background(), cfg, p, known, api, zap.NewNop(), reg)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	hsrv := httptest.NewServer(h)
	defer hsrv.Close()
	created := int64(1000)
	send := func(typ, sub, customer string, want int) {
		t.Helper()
		created++
		if code := post(t, hsrv.URL, subEvent(fmt.Sprintf("evt_%d", created), created, typ, sub, customer), secret); code != want {
			t.Fatalf("%s %s: %d, want %d", typ, sub, code, want)
		}
	}
	latest := func(tenant string) *plans.Assignment {
		t.Helper()
		var last *plans.Assignment
		for _, a := range recordsOf(t, broker, topic)[tenant] {
			last = a
		}
		return last
	}
	expect := func(step, tenant, plan string) {
		t.Helper()
		if a := latest(tenant); a == nil || a.Plan != plan {
			t.Fatalf("%s: %s is on %+v, want %s", step, tenant, a, plan)
		}
	}
	add := func(id, price string) {
		fake.AddSubscription(stripefake.Subscription{ID: id, Customer: "cus_acme", Items: []stripefake.Item{{ID: "si_" + id, Price: price}}})
	}

	add("sub_base", "price_pro")
	send("customer.subscription.created", "sub_base", "cus_acme", 200)
	expect("base plan bought", "acme", "PRO")
	add("sub_seats", "price_seats")
	send("customer.subscription.created", "sub_seats", "cus_acme", 200)
	must(t, fake.CancelSubscription("sub_seats"))
	send("customer.subscription.deleted", "sub_seats", "cus_acme", 200)
	expect("add-on cancelled", "acme", "PRO")

	// Upgrade: a new ENTERPRISE subscription, then the old one cancelled.
	add("sub_ent", "price_ent")
	send("customer.subscription.created", "sub_ent", "cus_acme", 200)
	expect("upgrade bought", "acme", "ENTERPRISE")
	must(t, fake.CancelSubscription("sub_base"))
	send("customer.subscription.deleted", "sub_base", "cus_acme", 200)
	expect("old subscription cancelled after the upgrade", "acme", "ENTERPRISE")

	// Statuses: past_due keeps the plan (dunning); an incomplete upgrade
	// grants nothing and takes nothing; paused takes it away.
	must(t, fake.SetStatus("sub_ent", stripefake.PastDue))
	send("customer.subscription.updated", "sub_ent", "cus_acme", 200)
	expect("past_due", "acme", "ENTERPRISE")
	fake.AddSubscription(stripefake.Subscription{ID: "sub_pro2", Customer: "cus_acme", Status: stripefake.Incomplete,
		Items: []stripefake.Item{{ID: "si_pro2", Price: "price_pro"}}})
	send("customer.subscription.created", "sub_pro2", "cus_acme", 200)
	expect("incomplete subscription beside a past_due one", "acme", "ENTERPRISE")
	must(t, fake.SetStatus("sub_ent", stripefake.Paused))
	send("customer.subscription.paused", "sub_ent", "cus_acme", 200)
	expect("paused, the other incomplete", "acme", "FREE")

	// Two changes within one second (one version): the second event reads
	// the newer truth and is written, not dropped as stale.
	must(t, fake.SetStatus("sub_pro2", stripefake.Active))
	send("customer.subscription.updated", "sub_pro2", "cus_acme", 200)
	expect("incomplete became active", "acme", "PRO")
	must(t, fake.SetStatus("sub_ent", stripefake.Active))
	created-- // same second
	send("customer.subscription.resumed", "sub_ent", "cus_acme", 200)
	expect("resumed in the same second", "acme", "ENTERPRISE")

	// An older event delivered late changes nothing.
	n := len(recordsOf(t, broker, topic)["acme"])
	created -= 10
	send("customer.subscription.created", "sub_base", "cus_acme", 200)
	created += 10
	if got := len(recordsOf(t, broker, topic)["acme"]); got != n {
		t.Fatalf("an out-of-order event wrote a record (%d -> %d)", n, got)
	}

	// A customer not seen yet: looked up; while the look-up fails, 5xx.
	fake.AddSubscription(stripefake.Subscription{ID: "sub_new", Customer: "cus_new", Items: []stripefake.Item{{ID: "si_new", Price: "price_pro"}}})
	fake.Inject(stripefake.Fault{Prefix: "/v1/customers/cus_new", Count: 1, Status: 500})
	send("customer.subscription.created", "sub_new", "cus_new", 500)
	if a := latest("newco"); a != nil {
		t.Fatalf("a record was written although the look-up failed: %+v", a)
	}
	created-- // Stripe retries the same event
	send("customer.subscription.created", "sub_new", "cus_new", 200)
	expect("customer looked up", "newco", "PRO")

	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	unmapped := 0.0
	for _, mf := range mfs {
		if mf.GetName() == "billing_webhook_unmapped_prices_total" {
			for _, m := range mf.GetMetric() {
				unmapped += m.GetCounter().GetValue()
			}
		}
	}
	if unmapped < 1 {
		t.Errorf("the add-on's price was not counted as unmapped")
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// recordsOf reads the assignment topic, per tenant in order.
func recordsOf(t *testing.T, broker, topic string) map[string][]*plans.Assignment {
	t.Helper()
	out := map[string][]*plans.Assignment{}
	end := testenv.EndOffsets(t, broker, topic, 1)[0]
	if end == 0 {
		return out
	}
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{broker}, Topic: topic, Partition: 0, MaxWait: 100 * time.Millisecond})
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		m, err := r.ReadMessage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		tenant, a, err := plans.ParseAssignmentRecord(m.Key, m.Value)
		if err != nil {
			t.Fatal(err)
		}
		out[tenant] = append(out[tenant], a)
		if m.Offset+1 >= end {
			return out
		}
	}
}
