package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/shopspring/decimal"

	"github.com/usagemeter/usagemeter/billing-sync/stripefake"
	"github.com/usagemeter/usagemeter/billing-sync/stripespec"
	"github.com/usagemeter/usagemeter/producer"
	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/testenv"
)

const partitions = 4

// plansYAML is shared by usage-aggregator and usage-billing-sync. ai_generation
// is billed only by the SIGKILL case, builds only by the two-writers case,
// the others only by the both-modes case,
// so the two cases share the pipeline (and its database) without sharing a
// ledger window.
const plansYAML = `meters:
  api_calls:     { aggregation: sum }
  tokens:        { aggregation: sum }
  exports:       { aggregation: sum }
  storage:       { aggregation: max }
  ai_generation: { aggregation: sum }
  builds:        { aggregation: sum }
unknown_meters: reject
plans:
  METERED: { meters: { api_calls: { limit: -1 }, tokens: { limit: -1 }, exports: { limit: -1 }, storage: { limit: -1 }, ai_generation: { limit: -1 }, builds: { limit: -1 } } }
default_plan: METERED
`

// stripeMockURL is stripe-mock's address: scripts/test.sh starts it
// (scripts/stripe-mock.sh) and exports USAGE_TEST_STRIPE_MOCK. Absent, the
// test fails (outside -short): money paths are not skipped silently.
func stripeMockURL(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test skipped in -short mode")
	}
	v := os.Getenv("USAGE_TEST_STRIPE_MOCK")
	if v == "" {
		t.Fatal("USAGE_TEST_STRIPE_MOCK is not set: run `eval $(scripts/stripe-mock.sh start)` before go test (scripts/test.sh does)")
	}
	return v
}

// world is the running pipeline of one test: private topics and database,
// the consumer and the aggregator, and what was published.
type world struct {
	bins       binaries
	dir        string
	broker     string
	clickhouse string
	db         string
	conn       driver.Conn
	plansFile  string
	spec       *stripespec.Spec
	upstream   string
	published  []schemas.UsageEvent // unique events (duplicates were published too)
	topic      string
	lease      string // private lease topic and group of this world's billing-sync processes
}

// TestRealPipeline publishes usage through the Go SDK into the real
// consumer and aggregator, then bills it with the real usage-billing-sync
// binary against a fake Stripe over HTTP (every accepted write forwarded
// to stripe-mock, every answer checked against Stripe's spec):
//   - BothModes: meter events and usage records in one pass, zero drift,
//     a second pass and a reconcile write nothing;
//   - SIGKILLMidPass: the binary killed while writes are in flight, then
//     re-run: every identifier accepted once, totals equal ClickHouse's,
//     zero drift.
func TestRealPipeline(t *testing.T) {
	upstream := stripeMockURL(t)
	w := &world{broker: testenv.Kafka(t), clickhouse: testenv.ClickHouseAddr(t), upstream: upstream, dir: t.TempDir()}
	specStart := time.Now()
	spec, err := stripespec.Load()
	if err != nil {
		t.Fatal(err)
	}
	w.spec = spec
	t.Logf("Stripe's spec loaded in %v", time.Since(specStart).Round(time.Millisecond))
	w.bins = build(t)
	w.conn, w.db = testenv.ClickHouse(t)
	w.plansFile = filepath.Join(w.dir, "plans.yaml")
	if err := os.WriteFile(w.plansFile, []byte(plansYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	name := testenv.Name("bse2e")
	topic, dlq, late, quota, asg := name+".events", name+".dlq", name+".late", name+".quota", name+".plans"
	testenv.CreateTopic(t, w.broker, topic, partitions)
	testenv.CreateTopic(t, w.broker, dlq, partitions)
	testenv.CreateTopic(t, w.broker, late, partitions)
	testenv.CreateTopic(t, w.broker, quota, partitions, "cleanup.policy", "compact")
	testenv.CreateTopic(t, w.broker, asg, 1, "cleanup.policy", "compact")
	common := []string{"USAGE_CLICKHOUSE_ADDR=" + w.clickhouse, "USAGE_CLICKHOUSE_DATABASE=" + w.db, fmt.Sprintf("USAGE_TOPIC_PARTITIONS=%d", partitions)}
	consumerEnv := cleanEnv(append([]string{"USAGE_KAFKA_BROKERS=" + w.broker, "USAGE_KAFKA_TOPIC=" + topic,
		"USAGE_KAFKA_GROUP_ID=" + name + ".raw", "USAGE_KAFKA_DLQ_TOPIC=" + dlq}, common...)...)
	aggEnv := cleanEnv(append([]string{"USAGE_AGGREGATOR_BROKERS=" + w.broker, "USAGE_AGGREGATOR_TOPIC=" + topic,
		"USAGE_AGGREGATOR_GROUP_ID=" + name + ".agg", "USAGE_AGGREGATOR_QUOTA_TOPIC=" + quota, "USAGE_AGGREGATOR_LATE_TOPIC=" + late,
		"USAGE_AGGREGATOR_DLQ_TOPIC=" + dlq, "USAGE_AGGREGATOR_ASSIGNMENT_TOPIC=" + asg,
		// The events are hours old: inside the lateness they land in
		// usage_1h, which drift cross-checks against the raw table.
		"USAGE_AGGREGATOR_ALLOWED_LATENESS=48h"}, common...)...)
	// Migrate once with the real command, so the services never race to create tables.
	runCmd(t, w.dir, w.bins.consumer, consumerEnv, "migrate")
	consumer := start(t, w.dir, "usage-consumer", w.bins.consumer, consumerEnv, "run", "--http", "127.0.0.1:0")
	aggregator := start(t, w.dir, "usage-aggregator", w.bins.aggregator, aggEnv, "--plans", w.plansFile, "--http", "127.0.0.1:0", "run")
	t.Cleanup(func() { consumer.stop(15 * time.Second); aggregator.stop(15 * time.Second) })

	w.topic, w.lease = topic, name+".lease"
	testenv.CreateTopic(t, w.broker, w.lease, 1)
	w.publish(t, topic)
	w.waitIngested(t, consumer, aggregator)

	t.Run("BothModes", w.bothModes)
	t.Run("SIGKILLMidPass", w.sigkillMidPass)
	t.Run("TwoRunsAndReconcile", func(t *testing.T) { w.twoRunsAndReconcile(t, consumer, aggregator) })
}

// closedHour is the start of the hour h hours back, kept inside the
// current month (usage records take only the current period, and one
// period keeps the token carry simple to predict).
func closedHour(h int) time.Time {
	now := time.Now().UTC()
	t := now.Truncate(time.Hour).Add(-time.Duration(h) * time.Hour)
	if first := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC); t.Before(first) {
		return first
	}
	return t
}

// bothModesTenants and killTenants are the customers of each case.
func bothModesTenants() []string { return []string{"e2e-acme", "e2e-globex", "e2e-initech"} }

func killTenants() []string {
	var out []string
	for i := range 24 {
		out = append(out, fmt.Sprintf("e2e-k%02d", i))
	}
	return out
}

// publish sends the usage through the Go SDK, then sends a third of it
// again (a producer retry: same ids), which must change nothing.
func (w *world) publish(t *testing.T, topic string) {
	t.Helper()
	var evs []schemas.UsageEvent
	add := func(tenant, meter, qty string, at time.Time) {
		e := producer.NewEvent(tenant, meter, decimal.RequireFromString(qty))
		e.Timestamp = at
		evs = append(evs, e)
	}
	for i, tenant := range bothModesTenants() {
		for h := 1; h <= 4; h++ {
			at := closedHour(h)
			add(tenant, "api_calls", fmt.Sprint(3+i+h), at.Add(5*time.Minute))
			add(tenant, "api_calls", "2", at.Add(50*time.Minute))
			add(tenant, "tokens", fmt.Sprintf("%d.5", 400*h+i), at.Add(10*time.Minute)) // decimal tokens, billed per thousand
			add(tenant, "exports", fmt.Sprint(h), at.Add(20*time.Minute))
			add(tenant, "storage", fmt.Sprint(1000*(i+1)+100*h), at.Add(30*time.Minute))
		}
	}
	for i, tenant := range killTenants() {
		for h := 1; h <= 5; h++ {
			add(tenant, "ai_generation", fmt.Sprint(1+(i+h)%7), closedHour(h).Add(time.Duration(i)*time.Minute))
		}
	}
	for i, tenant := range writersTenants() {
		for h := 1; h <= 5; h++ {
			add(tenant, "builds", fmt.Sprint(2+(i*h)%5), closedHour(h).Add(time.Duration(i)*time.Minute))
		}
	}
	p, err := producer.New([]string{w.broker}, producer.WithTopic(topic))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := p.Publish(ctx, evs...); err != nil {
		t.Fatalf("publish: %v", err)
	}
	var again []schemas.UsageEvent
	for i := 0; i < len(evs); i += 3 {
		again = append(again, evs[i])
	}
	if err := p.Publish(ctx, again...); err != nil {
		t.Fatalf("publish duplicates: %v", err)
	}
	w.published = evs
	t.Logf("published %d events and %d duplicates through the Go SDK", len(evs), len(again))
}

// waitIngested waits until the raw table holds every event once and the
// aggregator's usage_1h agrees with it for the sum meters.
func (w *world) waitIngested(t *testing.T, services ...*proc) {
	t.Helper()
	start := time.Now()
	want := map[string]decimal.Decimal{}
	for _, e := range w.published {
		if e.FeatureType != "storage" {
			want[e.FeatureType] = want[e.FeatureType].Add(e.Quantity)
		}
	}
	ctx := context.Background()
	testenv.Eventually(t, 90*time.Second, "raw table and usage_1h hold every published event", func() (bool, error) {
		for _, p := range services {
			if p.exited() {
				return false, fmt.Errorf("%s exited (%v); last log lines:\n%s", p.name, p.err, tail(p.log, 8))
			}
		}
		var n uint64
		if err := w.conn.QueryRow(ctx, "SELECT count() FROM usage_events FINAL").Scan(&n); err != nil || n != uint64(len(w.published)) {
			return false, err
		}
		for _, table := range []string{"usage_events FINAL", "usage_1h FINAL"} {
			col := "quantity"
			if strings.HasPrefix(table, "usage_1h") {
				col = "value"
			}
			rows, err := w.conn.Query(ctx, "SELECT feature_type, toString(sum("+col+")) FROM "+table+" WHERE feature_type != 'storage' GROUP BY feature_type")
			if err != nil {
				return false, err
			}
			got := map[string]decimal.Decimal{}
			for rows.Next() {
				var m, v string
				if err := rows.Scan(&m, &v); err != nil {
					rows.Close()
					return false, err
				}
				got[m] = decimal.RequireFromString(v)
			}
			rows.Close()
			for m, v := range want {
				if !got[m].Equal(v) {
					return false, nil
				}
			}
		}
		return true, nil
	})
	t.Logf("consumer and aggregator caught up in %v", time.Since(start).Round(time.Millisecond))
}

// fakeStripe serves a fake Stripe over loopback HTTP with a customer per
// tenant (found by metadata tenant_id, as in production) and subscription
// items on the given prices, forwarding every accepted write to
// stripe-mock and checking every answer against Stripe's spec.
func (w *world) fakeStripe(t *testing.T, tenants []string, meters map[string]string, prices ...string) (*stripefake.Fake, string) {
	t.Helper()
	f := stripefake.New()
	f.Upstream = w.upstream
	f.CheckResponse = w.spec.CheckResponse
	for id, event := range meters {
		f.AddMeter(id, event)
	}
	for _, tenant := range tenants {
		f.AddCustomer("cus_"+tenant, tenant)
		for _, price := range prices {
			f.AddSubscriptionItem("cus_"+tenant, item(tenant, price), price)
		}
		for id := range meters { // meter events are invoiced through an item on a price on the meter
			f.AddPrice(stripefake.Price{ID: "price_" + id, MeterID: id})
			f.AddSubscriptionItem("cus_"+tenant, item(tenant, "price_"+id), "price_"+id)
		}
	}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return f, srv.URL
}

func item(tenant, price string) string { return "si_" + tenant + "_" + price }

// billingConfig writes a usage-billing-sync config for this world.
func (w *world) billingConfig(t *testing.T, stripeURL, meters string, extra string) string {
	t.Helper()
	cfg := fmt.Sprintf(`plans_file: %s
billing:
  meters:
%s
  close_after: 0s
  settle: 0s
  check_aggregates: true
%s
stripe:
  api_key: sk_test_e2e
  url: %s
  rate: 200
  burst: 20
  timeout: 5s
  retry_min: 10ms
  retry_max: 200ms
clickhouse:
  addr: [%s]
  database: %s
lease:
  brokers: [%s]
  topic: %s
  group: %s
  session_timeout: 6s
  heartbeat_interval: 500ms
  rebalance_timeout: 5s
http:
  addr: ""
log:
  level: info
`, w.plansFile, meters, extra, stripeURL, w.clickhouse, w.db, w.broker, w.lease, w.lease)
	path := filepath.Join(w.dir, testenv.Name("billing")+".yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// chTotals returns per tenant ClickHouse's sum (or max) of a meter from
// the raw deduplicated table, as decimals.
func (w *world) chTotals(t *testing.T, meter, agg string) map[string]decimal.Decimal {
	t.Helper()
	rows, err := w.conn.Query(context.Background(), "SELECT tenant_id, toString("+agg+"(quantity)) FROM usage_events FINAL WHERE feature_type = ? GROUP BY tenant_id", meter)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]decimal.Decimal{}
	for rows.Next() {
		var tenant, v string
		if err := rows.Scan(&tenant, &v); err != nil {
			t.Fatal(err)
		}
		out[tenant] = decimal.RequireFromString(v)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// expected is the published ground truth per tenant: sum or max.
func (w *world) expected(meter string, max bool) map[string]decimal.Decimal {
	out := map[string]decimal.Decimal{}
	for _, e := range w.published {
		if e.FeatureType != meter {
			continue
		}
		if cur, ok := out[e.TenantID]; !max || !ok || e.Quantity.GreaterThan(cur) {
			if max {
				out[e.TenantID] = e.Quantity
			} else {
				out[e.TenantID] = cur.Add(e.Quantity)
			}
		}
	}
	return out
}

// sameTotals fails unless ClickHouse holds exactly what was published.
func (w *world) sameTotals(t *testing.T, meter, agg string) map[string]decimal.Decimal {
	t.Helper()
	ch, want := w.chTotals(t, meter, agg), w.expected(meter, agg == "max")
	if len(ch) != len(want) {
		t.Errorf("%s: ClickHouse has %d tenants, published %d", meter, len(ch), len(want))
	}
	for tenant, v := range want {
		if !ch[tenant].Equal(v) {
			t.Errorf("%s/%s: ClickHouse %s, published %s", tenant, meter, ch[tenant], v)
		}
	}
	return ch
}

// writesOnce fails when the fake accepted an identifier or key twice, or
// saw a violation (stripe-mock refused a request, an answer broke Stripe's
// spec, two calls in flight for one customer and meter), and returns the
// number of accepted writes.
func writesOnce(t *testing.T, f *stripefake.Fake) int {
	t.Helper()
	n := 0
	for id, c := range f.Writes() {
		n += c
		if c != 1 {
			t.Errorf("%s accepted %d times", id, c)
		}
	}
	if v := f.Violations(); len(v) > 0 {
		t.Errorf("fake Stripe violations:\n%s", strings.Join(v, "\n"))
	}
	return n
}

func posts(f *stripefake.Fake) int {
	c := f.Calls()
	return c["meter_event"] + c["meter_event_adjustment"] + c["usage_record"]
}

// noDrift runs the real `drift` command and requires it to find nothing.
func (w *world) noDrift(t *testing.T, bin, cfg string) {
	t.Helper()
	out := runCmd(t, w.dir, bin, cleanEnv(), "--config", cfg, "drift")
	if !strings.Contains(out, "no drift: every window matches Stripe") {
		t.Errorf("drift is not zero:\n%s", lastLines(out, 30))
	}
}

// passDone returns the fields of the last "billing pass done" log line.
func passDone(t *testing.T, out string) map[string]any {
	t.Helper()
	var last map[string]any
	for _, line := range strings.Split(out, "\n") {
		if !strings.Contains(line, `"billing pass done"`) {
			continue
		}
		m := map[string]any{}
		if err := json.Unmarshal([]byte(line), &m); err == nil {
			last = m
		}
	}
	if last == nil {
		t.Fatalf("no \"billing pass done\" log line in:\n%s", lastLines(out, 20))
	}
	return last
}

func (w *world) bothModes(t *testing.T) {
	meters := map[string]string{"mtr_api_calls": "api_calls", "mtr_tokens": "tokens"}
	fake, url := w.fakeStripe(t, bothModesTenants(), meters, "price_storage", "price_exports")
	cfg := w.billingConfig(t, url, `    api_calls: { mode: meter_events, meter_id: mtr_api_calls }
    tokens:    { mode: meter_events, meter_id: mtr_tokens, scale: "0.001" }
    storage:   { mode: usage_records, price: price_storage }
    exports:   { mode: usage_records, price: price_exports }`, "")
	start := time.Now()
	first := passDone(t, runCmd(t, w.dir, w.bins.billing, cleanEnv(), "--config", cfg, "run", "--once"))
	t.Logf("first pass in %v: %v writes, %v failed, %v unmapped", time.Since(start).Round(time.Millisecond), first["writes"], first["failed"], first["unmapped"])
	if first["failed"] != 0.0 || first["unmapped"] != 0.0 || first["writes"] == 0.0 {
		t.Errorf("first pass: %v", first)
	}
	apiCalls, tokens := w.sameTotals(t, "api_calls", "sum"), w.sameTotals(t, "tokens", "sum")
	storage, exports := w.sameTotals(t, "storage", "max"), w.sameTotals(t, "exports", "sum")
	for _, tenant := range bothModesTenants() {
		cus := "cus_" + tenant
		if got, want := fake.Total(cus, "api_calls"), apiCalls[tenant].IntPart(); got != want {
			t.Errorf("%s api_calls: Stripe %d, ClickHouse %d", tenant, got, want)
		}
		// One period: Stripe holds floor(total / 1000), the hours' remainders carried.
		if got, want := fake.Total(cus, "tokens"), tokens[tenant].Shift(-3).Floor().IntPart(); got != want {
			t.Errorf("%s tokens: Stripe %d, want floor(%s / 1000) = %d", tenant, got, tokens[tenant], want)
		}
		if got, want := fake.UsageTotal(item(tenant, "price_storage")), storage[tenant].IntPart(); got != want {
			t.Errorf("%s storage (usage records, max): Stripe %d, ClickHouse %d", tenant, got, want)
		}
		if got, want := fake.UsageTotal(item(tenant, "price_exports")), exports[tenant].IntPart(); got != want {
			t.Errorf("%s exports (usage records, sum): Stripe %d, ClickHouse %d", tenant, got, want)
		}
	}
	writes, calls := writesOnce(t, fake), posts(fake)
	w.noDrift(t, w.bins.billing, cfg)
	// A second pass and a reconcile write nothing: no POST reaches Stripe.
	second := passDone(t, runCmd(t, w.dir, w.bins.billing, cleanEnv(), "--config", cfg, "run", "--once"))
	out := runCmd(t, w.dir, w.bins.billing, cleanEnv(), "--config", cfg, "reconcile")
	if second["writes"] != 0.0 || posts(fake) != calls || writesOnce(t, fake) != writes {
		t.Errorf("second pass wrote: %v; POSTs %d -> %d", second, calls, posts(fake))
	}
	if !strings.Contains(out, " 0 writes,") {
		t.Errorf("reconcile wrote:\n%s", lastLines(out, 10))
	}
	w.noDrift(t, w.bins.billing, cfg)
	t.Logf("%d writes accepted once each (%d meter events + usage records), replays %v", writes, calls, fake.Replays())
}

func (w *world) sigkillMidPass(t *testing.T) {
	tenants := killTenants()
	fake, url := w.fakeStripe(t, tenants, map[string]string{"mtr_ai": "ai_generation"})
	// A slow Stripe (every POST waits 40 ms) and few workers: the pass of
	// 120 windows takes seconds, so the kill lands while writes are in flight.
	fake.SetDelay(40 * time.Millisecond)
	cfg := w.billingConfig(t, url, `    ai_generation: { mode: meter_events, meter_id: mtr_ai }`, "  workers: 4")
	p := start(t, w.dir, "usage-billing-sync", w.bins.billing, cleanEnv(), "--config", cfg, "run", "--once")
	deadline := time.Now().Add(60 * time.Second)
	const killAfter = 12
	for {
		if p.exited() {
			t.Fatalf("the pass ended (%v) before it could be killed (%d writes accepted); last log lines:\n%s",
				p.err, len(fake.Writes()), tail(p.log, 8))
		}
		if len(fake.Writes()) >= killAfter && fake.InFlight() > 0 {
			break
		}
		if time.Now().After(deadline) {
			p.kill()
			t.Fatalf("no %d writes within 60 s (%d); last log lines:\n%s", killAfter, len(fake.Writes()), tail(p.log, 8))
		}
		time.Sleep(2 * time.Millisecond)
	}
	inFlight := fake.InFlight()
	p.kill()
	// The requests in flight at the kill still complete on Stripe's side
	// (nobody tells Stripe the client died); wait for them, so the re-run
	// does not race them.
	for i := 0; fake.InFlight() > 0; i++ {
		if i > 500 {
			t.Fatal("the fake still has requests in flight 5 s after the kill")
		}
		time.Sleep(10 * time.Millisecond)
	}
	atKill := len(fake.Writes())
	if atKill >= len(tenants)*5 {
		t.Fatalf("all %d windows were written before the kill: not mid-pass", atKill)
	}
	t.Logf("SIGKILL with %d writes accepted and %d in flight (applied after the kill)", atKill, inFlight)

	fake.SetDelay(0)
	rerunOut := runCmd(t, w.dir, w.bins.billing, cleanEnv(), "--config", cfg, "run", "--once")
	rerun := passDone(t, rerunOut)
	replays, dups := 0, 0
	for _, n := range fake.Replays() {
		replays += n
	}
	for _, n := range fake.DuplicateIdentifiers() {
		dups += n
	}
	t.Logf("re-run: %v writes, %v re-sent pending intents; Stripe replayed %d stored responses and refused %d duplicate identifiers",
		rerun["writes"], rerun["resent"], replays, dups)
	// The intents in flight at the kill were pending in the ledger: the
	// re-run sends them again under the same key, and Stripe replays them.
	if rerun["resent"] == 0.0 || replays == 0 {
		t.Errorf("the re-run re-sent %v pending intents and got %d replays; want both > 0 (%d were in flight at the kill)",
			rerun["resent"], replays, inFlight)
	}
	if rerun["failed"] != 0.0 {
		var failures []string
		for _, line := range strings.Split(rerunOut, "\n") {
			if strings.Contains(line, "stripe write failed") {
				failures = append(failures, line)
			}
		}
		t.Errorf("re-run: %v\n%s\nkeys reused with other parameters:\n%s", rerun, strings.Join(failures, "\n"), strings.Join(fake.KeyReuse(), "\n"))
	}
	// Every window billed by exactly one accepted identifier.
	windows := 0
	hours := map[string]bool{}
	for _, e := range w.published {
		if e.FeatureType == "ai_generation" {
			k := e.TenantID + e.Timestamp.Truncate(time.Hour).String()
			if !hours[k] {
				hours[k] = true
				windows++
			}
		}
	}
	if n := writesOnce(t, fake); n != windows {
		t.Errorf("%d identifiers accepted, want one per window (%d)", n, windows)
	}
	ch := w.sameTotals(t, "ai_generation", "sum")
	var diffs []string
	for _, tenant := range tenants {
		if got, want := fake.Total("cus_"+tenant, "ai_generation"), ch[tenant].IntPart(); got != want {
			diffs = append(diffs, fmt.Sprintf("%s: Stripe %d, ClickHouse %d", tenant, got, want))
		}
	}
	sort.Strings(diffs)
	if len(diffs) > 0 {
		t.Errorf("totals differ:\n%s", strings.Join(diffs, "\n"))
	}
	w.noDrift(t, w.bins.billing, cfg)
	calls := posts(fake)
	again := passDone(t, runCmd(t, w.dir, w.bins.billing, cleanEnv(), "--config", cfg, "run", "--once"))
	if again["writes"] != 0.0 || posts(fake) != calls {
		t.Errorf("a pass after the recovery wrote: %v; POSTs %d -> %d", again, calls, posts(fake))
	}
}
