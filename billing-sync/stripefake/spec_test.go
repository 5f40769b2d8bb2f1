package stripefake_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/usagemeter/usagemeter/billing-sync/stripeapi"
	"github.com/usagemeter/usagemeter/billing-sync/stripefake"
	"github.com/usagemeter/usagemeter/billing-sync/stripespec"
)

// TestResponsesMatchStripeSpec drives every endpoint of the fake the way
// billing-sync does (through stripeapi, i.e. stripe-go) plus the error
// paths and customer search, and checks each response body against the
// response schema of its operation in Stripe's OpenAPI spec (stripe-mock
// v0.190.0's spec3.json). stripe-go decodes leniently (a missing field is
// a zero value), so only this check catches a fake whose answers drift
// from Stripe's shape. The test also requires that every kind of response
// was seen, so an endpoint the fake stops serving cannot pass unnoticed.
func TestResponsesMatchStripeSpec(t *testing.T) {
	spec, err := stripespec.Load()
	if err != nil {
		t.Fatal(err)
	}
	fake := stripefake.New()
	var mu sync.Mutex
	seen := map[string]int{}
	fake.CheckResponse = func(method, path string, status int, body []byte) error {
		mu.Lock()
		seen[kind(method, path, status)]++
		mu.Unlock()
		return spec.CheckResponse(method, path, status, body)
	}
	fake.AddMeter("mtr_api", "api_calls")
	fake.AddCustomer("cus_acme", "acme")
	fake.AddCustomer("cus_globex", "globex")
	fake.AddSubscriptionItem("cus_acme", "si_acme", "price_storage")
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)

	cfg := stripeapi.DefaultConfig()
	cfg.APIKey, cfg.URL, cfg.Rate, cfg.Burst = "sk_test_123", srv.URL, 1000, 100
	cfg.MaxAttempts, cfg.RetryMin, cfg.RetryMax, cfg.Timeout = 3, time.Millisecond, 5*time.Millisecond, 2*time.Second
	api := stripeapi.New(cfg, zap.NewNop(), nil)
	ctx := context.Background()
	hour := time.Now().UTC().Truncate(time.Hour).Add(-2 * time.Hour)
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	ev := stripeapi.MeterEvent{EventName: "api_calls", Customer: "cus_acme", Identifier: "bs1-a", Value: 5, Timestamp: hour, IdempotencyKey: "bs1-a"}
	must("meter event", api.SendMeterEvent(ctx, ev))
	must("meter event replayed", api.SendMeterEvent(ctx, ev))
	ev.IdempotencyKey = "other-key" // same identifier, new key: resource_already_exists (400)
	must("duplicate identifier", api.SendMeterEvent(ctx, ev))
	// 429 before the write, then a 500 after it: both error bodies are checked.
	fake.Inject(stripefake.Fault{Prefix: "/v1/billing/meter_events", Count: 1, Status: 429})
	fake.Inject(stripefake.Fault{Prefix: "/v1/billing/meter_events", Count: 1, Status: 500, AfterWrite: true})
	must("meter event through faults", api.SendMeterEvent(ctx, stripeapi.MeterEvent{EventName: "api_calls", Customer: "cus_acme",
		Identifier: "bs1-b", Value: 2, Timestamp: hour.Add(time.Hour), IdempotencyKey: "bs1-b"}))
	if err := api.SendMeterEvent(ctx, stripeapi.MeterEvent{EventName: "api_calls", Customer: "cus_acme", Identifier: "bs1-old",
		Value: 1, Timestamp: time.Now().Add(-40 * 24 * time.Hour), IdempotencyKey: "bs1-old"}); err == nil {
		t.Error("a meter event 40 days back was accepted")
	}
	must("cancel", api.CancelMeterEvent(ctx, "cus_acme", "api_calls", "bs1-b", "bs1-cancel-b"))
	if err := api.CancelMeterEvent(ctx, "cus_acme", "api_calls", "bs1-b", "bs1-cancel-b-again"); err == nil {
		t.Error("a second cancel of one event was accepted")
	}
	sums, err := api.MeterSummaries(ctx, "mtr_api", "cus_acme", "api_calls", hour.Add(-time.Hour), hour.Add(3*time.Hour))
	must("summaries", err)
	if sums[hour.Unix()] != 5 || len(sums) != 1 {
		t.Errorf("summaries %v, want 5 at %d only (the cancelled event is gone)", sums, hour.Unix())
	}
	if _, err := api.MeterSummaries(ctx, "mtr_nope", "cus_acme", "api_calls", hour, hour.Add(time.Hour)); err == nil {
		t.Error("summaries of an unknown meter answered")
	}
	start := time.Date(time.Now().UTC().Year(), time.Now().UTC().Month(), 1, 0, 0, 0, 0, time.UTC)
	must("usage record", api.SetUsage(ctx, "si_acme", 7, start, "bs1-u"))
	must("usage record replayed", api.SetUsage(ctx, "si_acme", 7, start, "bs1-u"))
	if err := api.SetUsage(ctx, "si_missing", 7, start, "bs1-u2"); err == nil {
		t.Error("a usage record on an unknown item was accepted")
	}
	us, err := api.UsageSummaries(ctx, "si_acme")
	must("usage summaries", err)
	if len(us) != 1 || us[0].Total != 7 {
		t.Errorf("usage summaries %+v, want one period of 7", us)
	}
	byTenant, err := api.CustomersByTenant(ctx)
	must("customers", err)
	if byTenant["acme"] != "cus_acme" || byTenant["globex"] != "cus_globex" {
		t.Errorf("customers %v", byTenant)
	}
	item, err := api.SubscriptionItemFor(ctx, "cus_acme", "price_storage")
	must("subscriptions", err)
	if item != "si_acme" {
		t.Errorf("subscription item %q", item)
	}
	// Customer search (stripeapi lists instead, but the fake serves it and
	// its answers are held to the spec as well), and a refused query.
	for _, c := range []struct {
		query  string
		status int
		want   string
	}{
		{`metadata['tenant_id']:'globex'`, 200, `"id":"cus_globex"`},
		{`metadata["tenant_id"]:"nobody"`, 200, `"data":[]`},
		{`email:'x@example.com'`, 400, `invalid_request_error`},
	} {
		status, body := get(t, srv.URL+"/v1/customers/search?query="+url.QueryEscape(c.query), "sk_test_123")
		if status != c.status || !strings.Contains(body, c.want) {
			t.Errorf("search %s: %d %s, want %d with %s", c.query, status, body, c.status, c.want)
		}
	}
	if status, _ := get(t, srv.URL+"/v1/customers", ""); status != 401 {
		t.Errorf("no API key: %d, want 401", status)
	}

	if v := fake.Violations(); len(v) > 0 {
		t.Fatalf("the fake answered outside Stripe's spec:\n%s", strings.Join(v, "\n"))
	}
	if n := fake.Replays(); n["bs1-a"] != 1 || n["bs1-u"] != 1 {
		t.Errorf("replays %v, want bs1-a and bs1-u once each", n)
	}
	if d := fake.DuplicateIdentifiers(); d["bs1-a"] != 1 {
		t.Errorf("duplicate identifiers %v, want bs1-a once", d)
	}
	for _, k := range []string{
		"POST /v1/billing/meter_events 200", "POST /v1/billing/meter_events 400", "POST /v1/billing/meter_events 429",
		"POST /v1/billing/meter_events 500", "POST /v1/billing/meter_event_adjustments 200", "POST /v1/billing/meter_event_adjustments 400",
		"GET /v1/billing/meters/{id}/event_summaries 200", "GET /v1/billing/meters/{id}/event_summaries 404",
		"POST /v1/subscription_items/{id}/usage_records 200", "POST /v1/subscription_items/{id}/usage_records 404",
		"GET /v1/subscription_items/{id}/usage_record_summaries 200", "GET /v1/customers 200", "GET /v1/customers 401",
		"GET /v1/customers/search 200", "GET /v1/customers/search 400", "GET /v1/subscriptions 200",
	} {
		if seen[k] == 0 {
			t.Errorf("no %s response was checked", k)
		}
	}
	var kinds []string
	for k, n := range seen {
		kinds = append(kinds, k+" x"+strconv.Itoa(n))
	}
	sort.Strings(kinds)
	t.Logf("responses checked against the spec: %s", strings.Join(kinds, ", "))
}

// kind names a response by method, path with ids replaced, and status.
func kind(method, path string, status int) string {
	segs := strings.Split(path, "/")
	for i := 1; i < len(segs); i++ {
		if segs[i-1] == "meters" || segs[i-1] == "subscription_items" {
			segs[i] = "{id}"
		}
	}
	return method + " " + strings.Join(segs, "/") + " " + strconv.Itoa(status)
}

func get(t *testing.T, u, key string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}
