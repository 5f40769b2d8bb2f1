package scenario_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/shopspring/decimal"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/usagemeter/usagemeter/billing-sync/audit"
	"github.com/usagemeter/usagemeter/billing-sync/stripeapi"
	"github.com/usagemeter/usagemeter/billing-sync/stripefake"
	"github.com/usagemeter/usagemeter/billing-sync/stripespec"
	"github.com/usagemeter/usagemeter/billing-sync/syncer"
	"github.com/usagemeter/usagemeter/billing-sync/usage"
	"github.com/usagemeter/usagemeter/schemas/plans"
	"github.com/usagemeter/usagemeter/svckit/chconn"
	"github.com/usagemeter/usagemeter/testenv"
)

// spec is Stripe's OpenAPI spec, compiled once per test binary.
var spec = sync.OnceValues(stripespec.Load)

const plansYAML = `
meters:
  api_calls: { aggregation: sum }
  tokens:    { aggregation: sum }
  storage:   { aggregation: max }
plans:
  FREE: { meters: {} }
default_plan: FREE
`

// world is one scenario: a clock, a fake Stripe on it (every answer held
// to Stripe's spec, every write also sent to stripe-mock), a private
// ClickHouse database, and syncers on the same clock.
//
// Meters: api_calls (meter events on mtr_api, price price_api), tokens
// (meter events on mtr_tokens at scale 0.001, price price_tokens),
// storage (usage records, max, legacy price price_storage). A
// subscription's item on price P of tenant T is "si_T_P".
type world struct {
	t     *testing.T
	ctx   context.Context
	conn  driver.Conn
	clock *stripefake.Clock
	fake  *stripefake.Fake
	plans *plans.Config
	cfg   syncer.Config
	api   *stripeapi.Client
	off   atomic.Int64
}

func newWorld(t *testing.T, start time.Time) *world {
	t.Helper()
	if testing.Short() {
		t.Skip("scenario suite skipped in -short mode")
	}
	upstream := os.Getenv("USAGE_TEST_STRIPE_MOCK")
	if upstream == "" {
		t.Fatal("USAGE_TEST_STRIPE_MOCK is not set: run `eval $(scripts/stripe-mock.sh start)` (make test does)")
	}
	conn, _ := testenv.ClickHouse(t)
	ctx := context.Background()
	if err := chconn.Migrate(ctx, conn, zap.NewNop()); err != nil {
		t.Fatal(err)
	}
	p, err := plans.Parse([]byte(plansYAML))
	if err != nil {
		t.Fatal(err)
	}
	sp, err := spec()
	if err != nil {
		t.Fatal(err)
	}
	clock := stripefake.NewClock(start)
	fake := stripefake.New()
	fake.Now, fake.Upstream, fake.CheckResponse = clock.Now, upstream, sp.CheckResponse
	fake.AddMeter("mtr_api", "api_calls")
	fake.AddMeter("mtr_tokens", "tokens")
	fake.AddPrice(stripefake.Price{ID: "price_api", MeterID: "mtr_api"})
	fake.AddPrice(stripefake.Price{ID: "price_tokens", MeterID: "mtr_tokens"})
	fake.AddPrice(stripefake.Price{ID: "price_storage"})
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)

	cfg := syncer.DefaultConfig()
	cfg.Meters = map[string]syncer.Meter{
		"api_calls": {MeterID: "mtr_api", Price: "price_api"},
		"tokens":    {MeterID: "mtr_tokens", Price: "price_tokens", Scale: "0.001"},
		"storage":   {Mode: syncer.UsageRecords, Price: "price_storage"},
	}
	cfg.Settle = 0
	cfg.CheckAggregates = false // the scenarios seed only the raw table
	if err := cfg.Normalize(p); err != nil {
		t.Fatal(err)
	}
	apiCfg := stripeapi.DefaultConfig()
	apiCfg.APIKey, apiCfg.URL, apiCfg.Rate, apiCfg.Burst = "sk_test_123", srv.URL, 1000, 100
	apiCfg.RetryMin, apiCfg.RetryMax, apiCfg.Timeout, apiCfg.MaxAttempts = time.Millisecond, 10*time.Millisecond, 5*time.Second, 3
	w := &world{t: t, ctx: ctx, conn: conn, clock: clock, fake: fake, plans: p, cfg: cfg,
		api: stripeapi.New(apiCfg, zap.NewNop(), nil)}
	t.Cleanup(w.noDoubleWrites)
	return w
}

// syncer returns a syncer on the world's clock (its ledger too).
func (w *world) syncer() *syncer.Syncer {
	return syncer.New(w.cfg, w.plans, usage.New(w.conn), audit.New(w.conn, w.clock.Now), w.api,
		zaptest.NewLogger(w.t, zaptest.Level(zap.ErrorLevel)), syncer.WithClock(w.clock.Now))
}

// subscribe creates tenant's customer (found by metadata tenant_id) if
// needed and a subscription with items on prices.
func (w *world) subscribe(tenant, sub, status string, anchor time.Time, prices ...string) {
	w.fake.AddCustomer("cus_"+tenant, tenant)
	var items []stripefake.Item
	for _, p := range prices {
		items = append(items, stripefake.Item{ID: item(tenant, p), Price: p})
	}
	w.fake.AddSubscription(stripefake.Subscription{ID: sub, Customer: "cus_" + tenant, Status: status, Anchor: anchor, Created: anchor, Items: items})
}

func item(tenant, price string) string { return "si_" + tenant + "_" + price }

// insert writes raw events the way usage-consumer does.
func (w *world) insert(tenant, meter, qty string, at ...time.Time) {
	w.t.Helper()
	b, err := w.conn.PrepareBatch(w.ctx, `INSERT INTO usage_events (id, tenant_id, user_id, feature_type, quantity, event_time, event_time_ns,
 billing_period, metadata_keys, metadata_values, schema_version, ingested_at, kafka_partition, kafka_offset, version)`)
	if err != nil {
		w.t.Fatal(err)
	}
	for _, ts := range at {
		off := w.off.Add(1)
		if err := b.Append(fmt.Sprintf("ev-%d", off), tenant, "u1", meter, decimal.RequireFromString(qty), ts.UTC().Truncate(time.Second),
			uint32(ts.Nanosecond()), ts.UTC().Format("2006-01"), []string{}, []string{}, uint8(1), time.Now().UTC().Truncate(time.Second),
			int32(0), off, uint64(1<<63)-uint64(off)); err != nil {
			w.t.Fatal(err)
		}
	}
	if err := b.Send(); err != nil {
		w.t.Fatal(err)
	}
}

// pass runs one Sync at the clock's time; any failed write fails the test.
func (w *world) pass(s *syncer.Syncer) *syncer.Report {
	w.t.Helper()
	rep, err := s.Sync(w.ctx)
	if err != nil {
		w.t.Fatalf("pass at %s: %v", w.clock.Now().Format(time.RFC3339), err)
	}
	if rep.Failed != 0 {
		w.t.Fatalf("pass at %s: %d writes failed", w.clock.Now().Format(time.RFC3339), rep.Failed)
	}
	return rep
}

// runTo moves the clock to until in steps, a pass after each step, and
// one at every extra instant on the way (e.g. just after a period end).
func (w *world) runTo(s *syncer.Syncer, until time.Time, step time.Duration, extra ...time.Time) {
	w.t.Helper()
	for w.clock.Now().Before(until) {
		next := w.clock.Now().Add(step)
		for _, x := range extra {
			if x.After(w.clock.Now()) && x.Before(next) {
				next = x
			}
		}
		if next.After(until) {
			next = until
		}
		w.clock.Set(next)
		w.pass(s)
	}
}

// chSum is ClickHouse's own total of a meter for a tenant in [from, to):
// the independent source the fake's numbers must equal.
func (w *world) chSum(tenant, meter string, from, to time.Time) decimal.Decimal {
	return w.chAgg("sum", tenant, meter, from, to)
}

// chMax is the period value of a max meter.
func (w *world) chMax(tenant, meter string, from, to time.Time) decimal.Decimal {
	return w.chAgg("max", tenant, meter, from, to)
}

func (w *world) chAgg(fn, tenant, meter string, from, to time.Time) decimal.Decimal {
	w.t.Helper()
	var v string
	if err := w.conn.QueryRow(w.ctx, `SELECT toString(`+fn+`(quantity)) FROM usage_events FINAL
WHERE tenant_id = ? AND feature_type = ? AND event_time >= ? AND event_time < ?`, tenant, meter, from.UTC(), to.UTC()).Scan(&v); err != nil {
		w.t.Fatal(err)
	}
	d, err := decimal.NewFromString(v)
	if err != nil {
		w.t.Fatalf("%s of %s/%s: %q: %v", fn, tenant, meter, v, err)
	}
	return d
}

// equal fails unless Stripe's number equals ClickHouse's, to the unit.
func (w *world) equal(what string, stripe int64, ch decimal.Decimal) {
	w.t.Helper()
	if !ch.Equal(decimal.NewFromInt(stripe)) {
		w.t.Errorf("%s at %s: Stripe %d, ClickHouse %s", what, w.clock.Now().Format(time.RFC3339), stripe, ch)
	}
}

// charged is what the finalized invoice of sub's period starting at start
// charged on item; the invoice must exist and be finalized.
func (w *world) charged(sub string, start time.Time, item string) int64 {
	w.t.Helper()
	q, ok := w.fake.Charged(sub, start, item)
	if !ok {
		w.t.Fatalf("no finalized invoice of %s for the period from %s at %s", sub, start.Format(time.RFC3339), w.clock.Now().Format(time.RFC3339))
	}
	return q
}

// drift runs Drift over [from, to) on the clock.
func (w *world) drift(s *syncer.Syncer, from, to time.Time) []syncer.Drift {
	w.t.Helper()
	ds, err := s.Drift(w.ctx, from, to)
	if err != nil {
		w.t.Fatal(err)
	}
	return ds
}

// noDoubleWrites: no identifier or key accepted twice, no answer off
// Stripe's spec, no request stripe-mock refused.
func (w *world) noDoubleWrites() {
	for id, c := range w.fake.Writes() {
		if c > 1 {
			w.t.Errorf("%s accepted %d times", id, c)
		}
	}
	if v := w.fake.Violations(); len(v) > 0 {
		w.t.Errorf("violations: %v", v)
	}
}
