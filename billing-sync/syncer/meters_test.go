package syncer_test

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/usagemeter/usagemeter/billing-sync/stripeapi"
	"github.com/usagemeter/usagemeter/billing-sync/stripefake"
	"github.com/usagemeter/usagemeter/billing-sync/syncer"
)

// TestCheckMetersRefusesModesTheMeterCannotBill: each meter_events
// meter's settings are read at start (GET /v1/billing/meters/{id}); a
// count formula, a pre-aggregating event_time_window, another event name
// or an unknown meter refuse to start, naming the key and the reason.
func TestCheckMetersRefusesModesTheMeterCannotBill(t *testing.T) {
	fake := stripefake.New()
	fake.AddMeter("mtr_sum", "api_calls")
	fake.AddMeter("mtr_count", "api_calls")
	fake.SetMeterSettings("mtr_count", "count", "")
	fake.AddMeter("mtr_hourly", "api_calls")
	fake.SetMeterSettings("mtr_hourly", "sum", "hour")
	fake.AddMeter("mtr_other", "tokens")
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	apiCfg := stripeapi.DefaultConfig()
	apiCfg.APIKey, apiCfg.URL, apiCfg.MaxAttempts, apiCfg.Timeout = "sk_test_123", srv.URL, 1, 2*time.Second
	api := stripeapi.New(apiCfg, zap.NewNop(), nil)
	for _, c := range []struct{ meter, want string }{
		{"mtr_sum", ""},
		{"mtr_count", `billing.meters.api_calls.mode: meter_events needs a meter whose formula is sum; mtr_count aggregates by "count"`},
		{"mtr_hourly", "billing.meters.api_calls.mode: meter mtr_hourly pre-aggregates by hour"},
		{"mtr_other", `billing.meters.api_calls.event_name: "api_calls", but meter mtr_other takes "tokens"`},
		{"mtr_missing", "billing.meters.api_calls.meter_id: read meter mtr_missing"},
	} {
		cfg := syncer.DefaultConfig()
		cfg.Meters = map[string]syncer.Meter{"api_calls": {MeterID: c.meter, Price: "price_api"}, "storage": {Mode: syncer.UsageRecords, Price: "p"}}
		if err := cfg.Normalize(nil); err != nil {
			t.Fatal(err)
		}
		err := syncer.New(cfg, nil, nil, nil, api, zap.NewNop()).CheckMeters(context.Background())
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v", c.meter, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: %v, want %q", c.meter, err, c.want)
		}
	}
	if n := fake.Calls()["meter"]; n != 5 {
		t.Errorf("%d meter reads, want 5 (one per meter_events meter per check)", n)
	}
}

// TestNormalizeNamesMissingMeterAndPrice: a meter_events meter needs its
// meter_id (settings checked, summaries read), a usage_records one its
// price (the item that takes the records).
func TestNormalizeNamesMissingMeterAndPrice(t *testing.T) {
	cfg := syncer.DefaultConfig()
	cfg.Meters = map[string]syncer.Meter{"api_calls": {}, "storage": {Mode: syncer.UsageRecords}}
	err := cfg.Normalize(nil)
	for _, want := range []string{"billing.meters.api_calls.meter_id: required", "billing.meters.storage.price: required"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%v, want %q", err, want)
		}
	}
}
