package planhook_test

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
	"github.com/usagemeter/usagemeter/schemas/plans"
	"github.com/usagemeter/usagemeter/testenv"
)

const secret = "whsec_test_secret"

func event(id string, created int64, typ, lookupKey string) []byte {
	return []byte(fmt.Sprintf(`{"id":%q,"object":"event","api_version":"2023-10-16","created":%d,"type":%q,"livemode":false,"pending_webhooks":1,
"data":{"object":{"id":"sub_1","object":"subscription","customer":"cus_acme","status":"active","billing_cycle_anchor":1731628800,
"metadata":{},"items":{"object":"list","data":[{"id":"si_1","object":"subscription_item","price":{"id":"price_x","object":"price","lookup_key":%q}}]}}}}`,
		id, created, typ, lookupKey))
}

func post(t *testing.T, url string, body []byte, sign string) int {
	t.Helper()
	sp := webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: body, Secret: sign, Timestamp: time.Now()})
	req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	req.Header.Set("Stripe-Signature", sp.Header)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func records(t *testing.T, broker, topic string) []*plans.Assignment {
	t.Helper()
	end := testenv.EndOffsets(t, broker, topic, 1)[0]
	if end == 0 {
		return nil
	}
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{broker}, Topic: topic, Partition: 0, MaxWait: 100 * time.Millisecond})
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out []*plans.Assignment
	for {
		m, err := r.ReadMessage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		tenant, a, err := plans.ParseAssignmentRecord(m.Key, m.Value)
		if err != nil || tenant != "acme" {
			t.Fatalf("record %s=%s: %v", m.Key, m.Value, err)
		}
		out = append(out, a)
		if m.Offset+1 >= end {
			return out
		}
	}
}

func TestSignedWebhookAssignsPlanForgedRefusedStaleIgnored(t *testing.T) {
	broker := testenv.Kafka(t)
	topic := testenv.Name("assign")
	testenv.CreateTopic(t, broker, topic, 1, "cleanup.policy", "compact")
	p, err := plans.Load("../../schemas/plans/plans.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg := planhook.DefaultConfig()
	cfg.Secret, cfg.Brokers, cfg.AssignmentTopic = secret, []string{broker}, topic
	cfg.Prices = []planhook.Price{{LookupKey: "pro_monthly", Plan: "PRO"}, {LookupKey: "enterprise", Plan: "ENTERPRISE"}}
	tenantOf := func(_ context.Context, cus string) (string, bool) {
		return map[string]string{"cus_acme": "acme"}[cus], cus == "cus_acme"
	}
	start := func() (*planhook.Handler, string) {
		h, err := planhook.New(context.Background(), cfg, p, tenantOf, nil, zap.NewNop(), nil)
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewServer(h)
		t.Cleanup(func() { srv.Close(); _ = h.Close() })
		return h, srv.URL
	}
	_, url := start()
	if code := post(t, url, event("evt_2", 2000, "customer.subscription.updated", "enterprise"), secret); code != 200 {
		t.Fatalf("signed webhook: %d", code)
	}
	got := records(t, broker, topic)
	if len(got) != 1 || got[0].Plan != "ENTERPRISE" || got[0].Version != 2000 || got[0].AnchorDay != 15 {
		t.Fatalf("records %+v", got)
	}
	if code := post(t, url, event("evt_x", 3000, "customer.subscription.updated", "pro_monthly"), "whsec_forged"); code != 400 {
		t.Fatalf("forged webhook: %d, want 400", code)
	}
	// An older event replayed, to this process and to a restarted one
	// (which learns the newest version from the topic): nothing written.
	if code := post(t, url, event("evt_1", 1000, "customer.subscription.created", "pro_monthly"), secret); code != 200 {
		t.Fatalf("replayed webhook: %d", code)
	}
	_, url2 := start()
	if code := post(t, url2, event("evt_1", 1000, "customer.subscription.created", "pro_monthly"), secret); code != 200 {
		t.Fatalf("replayed webhook after restart: %d", code)
	}
	if got := records(t, broker, topic); len(got) != 1 {
		t.Fatalf("stale webhooks wrote %d records: %+v", len(got)-1, got)
	}
	// A newer deletion moves the tenant to the default plan, versioned.
	if code := post(t, url2, event("evt_3", 4000, "customer.subscription.deleted", "enterprise"), secret); code != 200 {
		t.Fatalf("deleted webhook: %d", code)
	}
	got = records(t, broker, topic)
	if last := got[len(got)-1]; len(got) != 2 || last.Plan != "FREE" || last.Version != 4000 {
		t.Fatalf("records %+v", got)
	}
}
