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

// TestScenarioQuotaAndBillingAgreeOnTheSecond (issue 12 item 1, last
// sentence): a subscription anchored on the 15th at 14:32:10. The plan
// hook's assignment record carries that anchor to the second; the period
// every quota reader takes from it (plans.Assignment.PeriodFor: the
// aggregator's usage_period and QuotaState, the quota cache, usage-api)
// puts an event at 14:32:09 on 15 Feb in the period that began 15 Jan
// 14:32:10 and one at 14:32:10 in the next; billing-sync bills the same
// two units into the same two Stripe periods (the January-February
// invoice charges the 3 units of 14:32:09, the next period holds the 5 of
// 14:32:10).
func TestScenarioQuotaAndBillingAgreeOnTheSecond(t *testing.T) {
	anc := time.Date(2027, 1, 15, 14, 32, 10, 0, time.UTC)
	w := newWorld(t, anc)
	broker := testenv.Kafka(t)
	topic := testenv.Name("assign")
	testenv.CreateTopic(t, broker, topic, 1, "cleanup.policy", "compact")
	hp, err := plans.Load("../../schemas/plans/plans.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	w.fake.AddPrice(stripefake.Price{ID: "price_pro", LookupKey: "pro_monthly"})
	cfg := planhook.DefaultConfig()
	cfg.Secret, cfg.Brokers, cfg.AssignmentTopic = "whsec_scenario", []string{broker}, topic
	cfg.Prices = []planhook.Price{{LookupKey: "pro_monthly", Plan: "PRO"}}
	hook, err := planhook.New(w.ctx, cfg, hp, func(context.Context, string) (string, bool) { return "", false }, w.api, zap.NewNop(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer hook.Close()
	w.subscribe("acme", "sub_acme", "", anc, "price_pro", "price_api")
	body := []byte(fmt.Sprintf(`{"id":"evt_1","object":"event","api_version":"2023-10-16","created":%d,"type":"customer.subscription.created",
"livemode":false,"pending_webhooks":1,"data":{"object":{"id":"sub_acme","object":"subscription","customer":"cus_acme","status":"active",
"metadata":{},"items":{"object":"list","data":[]}}}}`, w.clock.Now().Unix()))
	sp := webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: body, Secret: cfg.Secret, Timestamp: time.Now()})
	req := httptest.NewRequest(http.MethodPost, cfg.Path, bytes.NewReader(body))
	req.Header.Set("Stripe-Signature", sp.Header)
	rec := httptest.NewRecorder()
	hook.ServeHTTP(rec, req)
	if rec.Code != 200 {
		t.Fatalf("webhook: %d %s", rec.Code, rec.Body.String())
	}
	a := latestAssignment(t, broker, topic, "acme")
	if a == nil || !a.Anchor.Equal(anc) || a.AnchorDay != 15 {
		t.Fatalf("assignment %+v: want the anchor %s to the second", a, anc.Format(time.RFC3339))
	}

	before, at := anc.AddDate(0, 1, -1).Add(24*time.Hour-time.Second), anc.AddDate(0, 1, 0) // 15 Feb 14:32:09 and 14:32:10
	q := plans.Quota{Period: plans.Anchored}
	p1, p2 := a.PeriodFor(q, before), a.PeriodFor(q, at)
	if p1.ID != "2027-01-15" || !p1.Start.Equal(anc) || !p1.End.Equal(at) || p2.ID != "2027-02-15" || !p2.Start.Equal(at) {
		t.Fatalf("quota periods: %#v and %#v; want 2027-01-15 [%s, %s) and 2027-02-15 from %s", p1, p2,
			anc.Format(time.RFC3339), at.Format(time.RFC3339), at.Format(time.RFC3339))
	}

	w.insert("acme", "api_calls", "3", before)
	w.insert("acme", "api_calls", "5", at)
	s := w.syncer()
	w.runTo(s, at.Add(3*time.Hour), 48*time.Hour, at.Add(20*time.Minute))
	if got := w.charged("sub_acme", p1.Start, item("acme", "price_api")); got != 3 {
		t.Errorf("the invoice of quota period %s charges %d api_calls, want the 3 at 14:32:09", p1.ID, got)
	}
	if got := w.fake.MeterTotal("cus_acme", "api_calls", p2.Start, p2.End); got != 5 {
		t.Errorf("Stripe holds %d api_calls in quota period %s, want the 5 at 14:32:10", got, p2.ID)
	}
	if got := w.fake.MeterTotal("cus_acme", "api_calls", p1.Start, p1.End); got != 3 {
		t.Errorf("Stripe holds %d api_calls in quota period %s, want 3", got, p1.ID)
	}
}

// latestAssignment reads the assignment topic to its end: tenant's last
// assignment (nil: none).
func latestAssignment(t *testing.T, broker, topic, tenant string) *plans.Assignment {
	t.Helper()
	end := testenv.EndOffsets(t, broker, topic, 1)[0]
	if end == 0 {
		return nil
	}
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{broker}, Topic: topic, Partition: 0, MaxWait: 100 * time.Millisecond})
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out *plans.Assignment
	for {
		m, err := r.ReadMessage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if tn, a, err := plans.ParseAssignmentRecord(m.Key, m.Value); err == nil && tn == tenant {
			out = a
		}
		if m.Offset+1 >= end {
			return out
		}
	}
}
