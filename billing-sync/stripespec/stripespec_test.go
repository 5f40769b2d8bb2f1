package stripespec_test

import (
	"strings"
	"testing"
	"time"

	"github.com/usagemeter/usagemeter/billing-sync/stripespec"
)

// The validator must be strict, or a passing fake proves nothing: each
// body here breaks one rule of Stripe's spec and must be refused, next to
// a correct one that must pass.
func TestCheckResponseRefusesWhatTheSpecForbids(t *testing.T) {
	start := time.Now()
	spec, err := stripespec.Load()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("spec loaded in %v, %d operations", time.Since(start), len(spec.Operations()))
	const event = `{"object":"billing.meter_event","created":1700000000,"event_name":"api_calls","identifier":"bs1-x","livemode":false,"payload":{"stripe_customer_id":"cus_1","value":"5"},"timestamp":1700000000}`
	const summaries = `{"object":"list","data":[{"object":"billing.meter_event_summary","id":"mtrusg_1","livemode":false,"meter":"mtr_1","aggregated_value":5,"start_time":1700000000,"end_time":1700003600}],"has_more":false,"url":"/v1/billing/meters/mtr_1/event_summaries"}`
	const usageSummaries = `{"object":"list","data":[{"object":"usage_record_summary","id":"sis_1","livemode":false,"invoice":null,"period":{"start":1,"end":2},"subscription_item":"si_1","total_usage":7}],"has_more":false,"url":"/v1/subscription_items/si_1/usage_record_summaries"}`
	cases := []struct {
		name, method, path string
		status             int
		body               string
		bad                string // "" = valid; else a word the error must contain
	}{
		{"meter event", "POST", "/v1/billing/meter_events", 200, event, ""},
		{"meter event without identifier", "POST", "/v1/billing/meter_events", 200, strings.Replace(event, `"identifier":"bs1-x",`, "", 1), "identifier"},
		{"meter event with an invented field", "POST", "/v1/billing/meter_events", 200, strings.Replace(event, `"livemode"`, `"customer":"cus_1","livemode"`, 1), "customer"},
		{"meter event value as a number", "POST", "/v1/billing/meter_events", 200, strings.Replace(event, `"value":"5"`, `"value":5`, 1), "value"},
		{"summaries", "GET", "/v1/billing/meters/mtr_1/event_summaries", 200, summaries, ""},
		{"summary value as a string", "GET", "/v1/billing/meters/mtr_1/event_summaries", 200, strings.Replace(summaries, `"aggregated_value":5`, `"aggregated_value":"5"`, 1), "aggregated_value"},
		{"summaries without has_more", "GET", "/v1/billing/meters/mtr_1/event_summaries", 200, strings.Replace(summaries, `"has_more":false,`, "", 1), "has_more"},
		{"usage record summaries, invoice null", "GET", "/v1/subscription_items/si_1/usage_record_summaries", 200, usageSummaries, ""},
		{"usage record summary with null total", "GET", "/v1/subscription_items/si_1/usage_record_summaries", 200, strings.Replace(usageSummaries, `"total_usage":7`, `"total_usage":null`, 1), "total_usage"},
		{"error", "POST", "/v1/billing/meter_events", 400, `{"error":{"type":"invalid_request_error","code":"x","message":"m"}}`, ""},
		{"error with an unknown type", "POST", "/v1/billing/meter_events", 429, `{"error":{"type":"rate_limit","message":"m"}}`, "type"},
		{"unknown path", "POST", "/v1/billing/meter_eventz", 200, `{}`, "no such operation"},
	}
	for _, c := range cases {
		err := spec.CheckResponse(c.method, c.path, c.status, []byte(c.body))
		switch {
		case c.bad == "" && err != nil:
			t.Errorf("%s: refused: %v", c.name, err)
		case c.bad != "" && err == nil:
			t.Errorf("%s: accepted, want an error about %s", c.name, c.bad)
		case c.bad != "" && !strings.Contains(err.Error(), c.bad):
			t.Errorf("%s: error %v does not name %s", c.name, err, c.bad)
		}
	}
	t.Logf("checked in %v", time.Since(start))
}
