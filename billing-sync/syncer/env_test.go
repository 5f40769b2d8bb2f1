package syncer_test

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

// stripeMock returns stripe-mock's address (scripts/stripe-mock.sh start).
func stripeMock(t testing.TB) string {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test skipped in -short mode")
	}
	v := os.Getenv("USAGE_TEST_STRIPE_MOCK")
	if v == "" {
		t.Fatal("USAGE_TEST_STRIPE_MOCK is not set: run `eval $(scripts/stripe-mock.sh start)` (make test does)")
	}
	return v
}

// stripeSpec is Stripe's OpenAPI spec, loaded and compiled once per test
// binary: compiling the customer schema's closure takes seconds on two
// cores, and the spec never changes while the tests run.
var stripeSpec = sync.OnceValues(stripespec.Load)

type env struct {
	t     testing.TB
	conn  driver.Conn
	fake  *stripefake.Fake
	url   string
	plans *plans.Config
	cfg   syncer.Config
	api   *stripeapi.Client
	apiCf stripeapi.Config
	off   atomic.Int64
}

const plansYAML = `
meters:
  api_calls: { aggregation: sum }
  tokens:    { aggregation: sum }
  storage:   { aggregation: max }
plans:
  FREE: { meters: {} }
default_plan: FREE
`

func newEnv(t testing.TB) *env {
	t.Helper()
	upstream := stripeMock(t)
	conn, _ := testenv.ClickHouse(t)
	if err := chconn.Migrate(context.Background(), conn, zap.NewNop()); err != nil {
		t.Fatal(err)
	}
	p, err := plans.Parse([]byte(plansYAML))
	if err != nil {
		t.Fatal(err)
	}
	spec, err := stripeSpec()
	if err != nil {
		t.Fatal(err)
	}
	fake := stripefake.New()
	fake.Upstream = upstream
	// Every answer of the fake is held to Stripe's spec too (see
	// noDoubleWrites, which fails on any violation).
	fake.CheckResponse = spec.CheckResponse
	fake.AddMeter("mtr_api", "api_calls")
	fake.AddMeter("mtr_tokens", "tokens")
	fake.AddPrice(stripefake.Price{ID: "price_api", MeterID: "mtr_api"})
	fake.AddPrice(stripefake.Price{ID: "price_tokens", MeterID: "mtr_tokens"})
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	cfg := syncer.DefaultConfig()
	cfg.Meters = map[string]syncer.Meter{
		"api_calls": {MeterID: "mtr_api"},
		"tokens":    {MeterID: "mtr_tokens", Scale: "0.001"},
		"storage":   {Mode: syncer.UsageRecords, Price: "price_storage"},
	}
	cfg.Settle = 0
	cfg.CloseAfter = 0
	cfg.CheckAggregates = false // these tests seed only the raw table
	if err := cfg.Normalize(p); err != nil {
		t.Fatal(err)
	}
	apiCfg := stripeapi.DefaultConfig()
	apiCfg.APIKey, apiCfg.URL, apiCfg.Rate, apiCfg.Burst = "sk_test_123", srv.URL, 500, 50
	apiCfg.RetryMin, apiCfg.RetryMax, apiCfg.Timeout = 5*time.Millisecond, 50*time.Millisecond, 2*time.Second
	e := &env{t: t, conn: conn, fake: fake, url: srv.URL, plans: p, cfg: cfg, apiCf: apiCfg}
	e.api = stripeapi.New(apiCfg, zap.NewNop(), nil)
	return e
}

// customer adds a Stripe customer for tenant (found by metadata) and a
// storage subscription item.
func (e *env) customer(tenant string) string {
	cus := "cus_" + tenant
	e.fake.AddCustomer(cus, tenant)
	e.fake.AddSubscriptionItem(cus, "si_"+tenant, "price_storage")
	// Meter events are invoiced only through an item on a price on the meter.
	e.fake.AddSubscriptionItem(cus, "si_api_"+tenant, "price_api")
	e.fake.AddSubscriptionItem(cus, "si_tokens_"+tenant, "price_tokens")
	return cus
}

func (e *env) syncer(opts ...syncer.Option) *syncer.Syncer {
	return syncer.New(e.cfg, e.plans, usage.New(e.conn), audit.New(e.conn, nil), e.api, zaptest.NewLogger(e.t, zaptest.Level(zap.WarnLevel)), opts...)
}

type ev struct {
	tenant, meter string
	qty           string
	at            time.Time
}

// insert writes raw events the way usage-consumer does.
func (e *env) insert(evs ...ev) {
	e.t.Helper()
	ctx := context.Background()
	b, err := e.conn.PrepareBatch(ctx, `INSERT INTO usage_events (id, tenant_id, user_id, feature_type, quantity, event_time, event_time_ns,
 billing_period, metadata_keys, metadata_values, schema_version, ingested_at, kafka_partition, kafka_offset, version)`)
	if err != nil {
		e.t.Fatal(err)
	}
	for _, x := range evs {
		off := e.off.Add(1)
		if err := b.Append(fmt.Sprintf("ev-%d", off), x.tenant, "u1", x.meter, decimal.RequireFromString(x.qty), x.at.UTC().Truncate(time.Second),
			uint32(x.at.Nanosecond()), x.at.UTC().Format("2006-01"), []string{}, []string{}, uint8(1), time.Now().UTC().Truncate(time.Second),
			int32(0), off, uint64(1<<63)-uint64(off)); err != nil {
			e.t.Fatal(err)
		}
	}
	if err := b.Send(); err != nil {
		e.t.Fatal(err)
	}
}

// noDoubleWrites fails when any identifier or key was accepted twice.
func (e *env) noDoubleWrites() int {
	e.t.Helper()
	n := 0
	for id, c := range e.fake.Writes() {
		n += c
		if c > 1 {
			e.t.Errorf("%s accepted %d times", id, c)
		}
	}
	if v := e.fake.Violations(); len(v) > 0 {
		e.t.Errorf("violations: %v", v)
	}
	return n
}
