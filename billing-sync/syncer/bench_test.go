package syncer_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/usagemeter/usagemeter/billing-sync/audit"
	"github.com/usagemeter/usagemeter/billing-sync/stripeapi"
	"github.com/usagemeter/usagemeter/billing-sync/stripefake"
	"github.com/usagemeter/usagemeter/billing-sync/syncer"
	"github.com/usagemeter/usagemeter/billing-sync/usage"
)

// BenchmarkPass10kTenants: one pass over 10,000 tenants x 3 meters (two
// meter_events, one usage_records) against the fake, at a configured rate
// of 3000 calls/s. Reports wall time, Stripe calls and the highest rate
// the fake saw in any one-second window.
//
//	go test -run '^$' -bench BenchmarkPass10kTenants -benchtime 1x ./billing-sync/syncer/
func BenchmarkPass10kTenants(b *testing.B) {
	const tenants = 10_000
	const rateLimit = 3000
	for range b.N {
		b.StopTimer()
		e := newEnv(b)
		fake := stripefake.New()
		fake.AddMeter("mtr_api", "api_calls")
		fake.AddMeter("mtr_tokens", "tokens")
		fake.AddPrice(stripefake.Price{ID: "price_api", MeterID: "mtr_api"})
		fake.AddPrice(stripefake.Price{ID: "price_tokens", MeterID: "mtr_tokens"})
		srv := httptest.NewServer(fake)
		var evs []ev
		cfg := e.cfg
		cfg.Customers = nil
		at := thisMonthHour(2)
		for i := range tenants {
			t := fmt.Sprintf("tenant-%05d", i)
			cfg.Customers = append(cfg.Customers, syncer.Customer{Tenant: t, Customer: "cus_" + t, Items: map[string]string{"storage": "si_" + t}})
			fake.AddSubscriptionItem("cus_"+t, "si_"+t, "price_storage")
			fake.AddSubscriptionItem("cus_"+t, "si_api_"+t, "price_api")
			fake.AddSubscriptionItem("cus_"+t, "si_tokens_"+t, "price_tokens")
			evs = append(evs, ev{t, "api_calls", "3", hoursAgo(2)}, ev{t, "tokens", "1500", hoursAgo(2)}, ev{t, "storage", "42", at})
		}
		e.insert(evs...)
		apiCfg := e.apiCf
		apiCfg.URL, apiCfg.Rate, apiCfg.Burst = srv.URL, rateLimit, 50
		api := stripeapi.New(apiCfg, zap.NewNop(), nil)
		cfg.LookupCustomers = false
		cfg.Workers = 32
		s := syncer.New(cfg, e.plans, usage.New(e.conn), audit.New(e.conn, nil), api, zap.NewNop())
		b.StartTimer()
		start := time.Now()
		rep, err := s.Sync(context.Background())
		wall := time.Since(start)
		b.StopTimer()
		if err != nil {
			b.Fatal(err)
		}
		calls := 0
		for _, n := range fake.Calls() {
			calls += n
		}
		peak := fake.MaxRate(time.Second)
		if rep.Writes != 3*tenants || rep.Failed != 0 {
			b.Fatalf("pass: %d writes, %d failed, want %d and 0", rep.Writes, rep.Failed, 3*tenants)
		}
		// The limiter bounds when calls are released: at most rate + burst
		// in any second. The fake sees arrivals, which loopback scheduling
		// can bunch by at most the calls in flight (one per worker).
		if peak > rateLimit+apiCfg.Burst+cfg.Workers {
			b.Errorf("peak %d calls in one second exceeds the configured %d/s (+%d burst, +%d in flight)", peak, rateLimit, apiCfg.Burst, cfg.Workers)
		}
		// A second pass writes nothing and makes no Stripe call.
		start2 := time.Now()
		rep2, err := s.Sync(context.Background())
		if err != nil || rep2.Writes != 0 {
			b.Fatalf("second pass: %+v %v", rep2, err)
		}
		calls2 := -calls
		for _, n := range fake.Calls() {
			calls2 += n
		}
		b.ReportMetric(wall.Seconds(), "pass_s")
		b.ReportMetric(float64(calls), "stripe_calls")
		b.ReportMetric(float64(peak), "peak_calls/s")
		b.ReportMetric(float64(rateLimit), "limit_calls/s")
		b.ReportMetric(time.Since(start2).Seconds(), "noop_pass_s")
		b.ReportMetric(float64(calls2), "noop_pass_stripe_calls")
		srv.Close()
	}
}
