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

// fullReads hides the ledger's checkpoints: every pass reads from the
// start of the periods open at its edge.
type fullReads struct{ syncer.Ledger }

// BenchmarkPassHistory (issue 12 item 8): a `run` pass over 10,000
// tenants when their Stripe periods began a day, a week and a month ago,
// for each mode: api_calls as meter events (a ledger that already billed
// every hour) and storage (max) as usage records (a ledger whose period
// already holds the value), one event per tenant every 6 hours. The first
// pass reads everything and writes the checkpoint; the pass measured an
// hour later reads only from the checkpoint edge. full_pass_s is the same
// pass with checkpoints hidden. The month is one period (31 Dec to 31 Jan).
//
//	go test -run '^$' -bench BenchmarkPassHistory -benchtime 1x -timeout 30m ./billing-sync/syncer/
func BenchmarkPassHistory(b *testing.B) {
	for _, mode := range []string{syncer.MeterEvents, syncer.UsageRecords} {
		for _, c := range []struct {
			name string
			days int
		}{{"day", 1}, {"week", 7}, {"month", 30}} {
			b.Run(mode+"/"+c.name, func(b *testing.B) {
				for range b.N {
					benchHistory(b, mode, c.days)
				}
			})
		}
	}
}

func benchHistory(b *testing.B, mode string, days int) {
	b.StopTimer()
	const tenants = 10_000
	e := newEnv(b)
	now := time.Date(2027, 1, 31, 12, 30, 0, 0, time.UTC)
	clock := stripefake.NewClock(now)
	fake := stripefake.New()
	fake.Now = clock.Now
	fake.AddMeter("mtr_api", "api_calls")
	fake.AddPrice(stripefake.Price{ID: "price_api", MeterID: "mtr_api"})
	fake.AddPrice(stripefake.Price{ID: "price_storage"})
	srv := httptest.NewServer(fake)
	defer srv.Close()
	anchor := now.Add(-time.Duration(days)*24*time.Hour - 30*time.Minute)
	meter, price := "api_calls", "price_api"
	if mode == syncer.UsageRecords {
		meter, price = "storage", "price_storage"
	}
	cfg := e.cfg
	cfg.Meters = map[string]syncer.Meter{meter: e.cfg.Meters[meter]}
	cfg.Customers, cfg.LookupCustomers, cfg.Workers = nil, false, 32
	var evs []ev
	var rows []audit.Row
	for i := range tenants {
		t := fmt.Sprintf("tenant-%05d", i)
		cfg.Customers = append(cfg.Customers, syncer.Customer{Tenant: t, Customer: "cus_" + t})
		fake.AddSubscription(stripefake.Subscription{ID: "sub_" + t, Customer: "cus_" + t, Anchor: anchor, Created: anchor,
			Items: []stripefake.Item{{ID: "si_" + t, Price: price}}})
		for at := anchor.Add(10 * time.Minute); at.Before(now.Add(-time.Hour)); at = at.Add(6 * time.Hour) {
			evs = append(evs, ev{t, meter, "3", at})
			if mode == syncer.MeterEvents {
				h := at.Truncate(time.Hour)
				rows = append(rows, audit.Row{Tenant: t, Meter: meter, Mode: mode, WindowStart: h, WindowEnd: h.Add(time.Hour),
					Customer: "cus_" + t, Target: meter, Action: audit.Send, Ours: 3, Stripe: 3, Delta: 3, Result: audit.OK, At: at.Add(time.Hour)})
			}
		}
		if mode == syncer.UsageRecords { // the period already holds its max
			rows = append(rows, audit.Row{Tenant: t, Meter: meter, Mode: mode, WindowStart: anchor, WindowEnd: anchor.AddDate(0, 1, 0),
				Customer: "cus_" + t, Target: "si_" + t, Action: audit.Set, Ours: 3, Stripe: 3, Delta: 3, Result: audit.OK, At: anchor.Add(time.Hour)})
		}
	}
	for i := 0; i < len(evs); i += 100_000 { // blocks of 100k rows: the server is shared
		e.insert(evs[i:min(i+100_000, len(evs))]...)
	}
	ledger := audit.New(e.conn, clock.Now)
	for len(rows) > 0 {
		n := min(len(rows), 100_000)
		if err := ledger.Write(context.Background(), rows[:n]); err != nil {
			b.Fatal(err)
		}
		rows = rows[n:]
	}
	apiCfg := e.apiCf
	apiCfg.URL, apiCfg.Rate, apiCfg.Burst = srv.URL, 3000, 50
	api := stripeapi.New(apiCfg, zap.NewNop(), nil)
	ctx := context.Background()
	pass := func(l syncer.Ledger) (time.Duration, *syncer.Report) {
		s := syncer.New(cfg, e.plans, usage.New(e.conn), l, api, zap.NewNop(), syncer.WithClock(clock.Now))
		start := time.Now()
		rep, err := s.Sync(ctx)
		if err != nil {
			b.Fatal(err)
		}
		return time.Since(start), rep
	}
	first, rep := pass(ledger) // reads everything, writes the checkpoint
	if rep.Writes != 0 || len(rep.NoSubscription) != 0 {
		b.Fatalf("first pass: %d writes, no_subscription %d: the seeded ledger should hold everything", rep.Writes, len(rep.NoSubscription))
	}
	clock.Advance(time.Hour)
	full, _ := pass(fullReads{ledger})
	b.StartTimer()
	took, rep := pass(ledger)
	b.StopTimer()
	if rep.Writes != 0 {
		b.Fatalf("measured pass wrote %d", rep.Writes)
	}
	b.ReportMetric(took.Seconds(), "pass_s")
	b.ReportMetric(full.Seconds(), "full_pass_s")
	b.ReportMetric(first.Seconds(), "first_pass_s")
	b.ReportMetric(float64(len(evs)), "raw_events")
}
