package planhook_test

import (
	"context"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/shopspring/decimal"

	"github.com/usagemeter/usagemeter/billing-sync/planhook"
	"github.com/usagemeter/usagemeter/billing-sync/stripefake"
	"github.com/usagemeter/usagemeter/schemas/plans"
)

// A standby (a process without the billing lease) answers 503 and writes
// nothing, so Stripe retries and reaches the one writer; and a grant that
// usage-api publishes between the handler's read and its write is seen:
// the handler reads again, so its record keeps the grant and gets a
// version above the grant's (before: version 2000 < 5000, the stale
// record won and the Stripe change was lost, or the grant was dropped).
func TestOneWriterAndAGrantBetweenReadAndWrite(t *testing.T) {
	broker, topic, fake, h, hsrv := acmeHook(t)

	fake.AddSubscription(stripefake.Subscription{ID: "sub_pro", Customer: "cus_acme", Items: []stripefake.Item{{ID: "si_pro", Price: "price_pro"}}})
	h.SetGate(planhook.Standby)
	if code := post(t, hsrv.URL, subEvent("evt_1", 1000, "customer.subscription.created", "sub_pro", "cus_acme"), secret); code != 503 {
		t.Fatalf("standby: %d, want 503", code)
	}
	if n := len(recordsOf(t, broker, topic)["acme"]); n != 0 {
		t.Fatalf("a standby wrote %d records", n)
	}
	h.SetGate(nil) // now the lease holder
	if code := post(t, hsrv.URL, subEvent("evt_1", 1000, "customer.subscription.created", "sub_pro", "cus_acme"), secret); code != 200 {
		t.Fatalf("writer: %d", code)
	}

	grant := plans.Assignment{Plan: "PRO", Version: 5000, Grants: &plans.Grants{List: []plans.Grant{
		{Meter: "ai_generation", Period: time.Now().UTC().Format("2006-01"), Amount: decimal.NewFromInt(10)}}}}
	landed := false
	h.SetBeforeWrite(func() {
		if landed {
			return
		}
		landed = true
		k, v := plans.AssignmentRecord("acme", &grant)
		w := &kafka.Writer{Addr: kafka.TCP(broker), Topic: topic, Balancer: &kafka.Murmur2Balancer{}, RequiredAcks: kafka.RequireAll}
		if err := w.WriteMessages(context.Background(), kafka.Message{Key: k, Value: v}); err != nil {
			t.Error(err)
		}
		_ = w.Close()
	})
	fake.AddSubscription(stripefake.Subscription{ID: "sub_ent", Customer: "cus_acme", Items: []stripefake.Item{{ID: "si_ent", Price: "price_ent"}}})
	must(t, fake.CancelSubscription("sub_pro"))
	if code := post(t, hsrv.URL, subEvent("evt_2", 2000, "customer.subscription.created", "sub_ent", "cus_acme"), secret); code != 200 {
		t.Fatalf("upgrade event: %d", code)
	}
	if !landed {
		t.Fatal("the grant was not published between the read and the write")
	}
	var newest *plans.Assignment // what every reader keeps: the highest version
	for _, a := range recordsOf(t, broker, topic)["acme"] {
		if newest == nil || a.Version > newest.Version {
			newest = a
		}
	}
	if newest.Plan != "ENTERPRISE" || newest.Version <= grant.Version {
		t.Fatalf("acme's newest record is %+v, want ENTERPRISE with a version above the grant's %d", newest, grant.Version)
	}
	if newest.Grants == nil || len(newest.Grants.List) != 1 || !newest.Grants.List[0].Amount.Equal(decimal.NewFromInt(10)) {
		t.Fatalf("the upgrade dropped the grant: %+v", newest.Grants)
	}
}
