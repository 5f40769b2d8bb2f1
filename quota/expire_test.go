package quota_test

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/usagemeter/usagemeter/quota"
	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/schemas/plans"
	"github.com/usagemeter/usagemeter/testenv"
)

// TestPendingTheStateShouldHaveAbsorbedExpires (issue 13 item 6) runs the
// real usage-aggregator, which publishes its positions, and the middleware
// on real HTTP servers with the sync ProducerTracker:
//   - the aggregator refuses a meter the cache limits (unknown_meters:
//     reject in its plans): 5 of 5 allowed tokens go to the DLQ; their
//     pending expires once the position covers them (before the fix it
//     stayed until the period ended: the tenant was refused for good);
//   - without positions, MaxPendingAge expires them, not earlier;
//   - 30 counted ai_generation requests and 10 allowed but never published
//     (a handler still running) are never released early nor counted
//     twice: every decision sampled while the states and positions arrive
//     says at least 40, and the end is exactly the published state (30)
//     plus the 10.
//   - a retried id the aggregator counted before, held and delivered
//     through an outbox, is a duplicate downstream: its pending expires and
//     the published state stays 1.
func TestPendingTheStateShouldHaveAbsorbedExpires(t *testing.T) {
	if testing.Short() {
		t.Skip("needs Kafka, ClickHouse and the aggregator")
	}
	broker := testenv.Kafka(t)
	tp := newTopics(t, broker)
	_, examplePath := plansFile(t)
	example, err := os.ReadFile(examplePath)
	if err != nil {
		t.Fatal(err)
	}
	cacheYAML := strings.Replace(string(example), "      api_calls: { limit: 10000 }\n  PRO:", "      api_calls: { limit: 10000 }\n      tokens: { limit: 5 }\n  PRO:", 1)
	aggYAML := strings.Replace(strings.Replace(string(example), "  tokens:        { aggregation: sum }\n", "", 1), "unknown_meters: sum", "unknown_meters: reject", 1)
	if cacheYAML == string(example) || aggYAML == string(example) {
		t.Fatal("plans.example.yaml changed: adapt the test's edits")
	}
	aggPlans := filepath.Join(t.TempDir(), "agg-plans.yaml")
	if err := os.WriteFile(aggPlans, []byte(aggYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	startAggregator(t, tp, "USAGE_PLANS_FILE="+aggPlans, "USAGE_AGGREGATOR_FLUSH_INTERVAL=200ms", "USAGE_AGGREGATOR_QUOTA_COALESCE=50ms")
	cp, err := plans.Parse([]byte(cacheYAML))
	if err != nil {
		t.Fatal(err)
	}
	log := zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	c := startCacheWith(t, tp, cp, log, func(cfg *quota.Config) { cfg.MaxPendingAge = 0 }) // positions only
	const maxAge = 3 * time.Second
	cAge := startCacheWith(t, tp, cp, log, func(cfg *quota.Config) { cfg.PositionTopic, cfg.MaxPendingAge = "", maxAge }) // age only
	pub := newPublisher(t, tp)
	tokens, tokensAge, gen := newApp(t, c, pub, "tokens"), newApp(t, cAge, pub, "tokens"), newApp(t, c, pub, "ai_generation")
	ctx := context.Background()

	// 1. Refused downstream, expired by the position.
	for i := range 5 {
		if res, _ := tokens.call(t, "dlq-co", ""); res.StatusCode != http.StatusOK {
			t.Fatalf("request %d: %d", i+1, res.StatusCode)
		}
		if res, _ := tokensAge.call(t, "age-co", ""); res.StatusCode != http.StatusOK {
			t.Fatalf("age cache request %d: %d", i+1, res.StatusCode)
		}
	}
	served := time.Now() // age-co's events are acknowledged after this
	if res, _ := tokens.call(t, "dlq-co", ""); res.StatusCode != http.StatusPaymentRequired {
		t.Fatalf("6th request: %d, want 402 (5 pending)", res.StatusCode)
	}
	start := time.Now()
	testenv.Eventually(t, 20*time.Second, "the DLQ'd events' pending expired by the position", func() (bool, error) {
		d := c.Peek(ctx, "dlq-co", "tokens")
		return d.Pending.IsZero() && d.Usage.IsZero(), nil
	})
	t.Logf("pending of 5 DLQ'd events expired %s after the last was served", time.Since(start).Round(time.Millisecond))
	if res, _ := tokens.call(t, "dlq-co", ""); res.StatusCode != http.StatusOK {
		t.Fatalf("after expiry: %d, want 200", res.StatusCode)
	}
	// The independent source: the aggregator put them in the DLQ.
	// (age-co's 5 go there too, and dlq-co's 6th may be read among the 10.)
	dlq := 0
	for _, m := range testenv.ReadN(t, broker, tp.events+".dlq", 10) {
		if tag := testenv.Headers(m)[schemas.HeaderError]; tag != "unknown_meter" {
			t.Errorf("DLQ record of %s tagged %q, want unknown_meter", m.Key, tag)
		}
		if string(m.Key) == "dlq-co" {
			dlq++
		}
	}
	if dlq < 5 {
		t.Errorf("%d of dlq-co's events in the DLQ, want >= 5", dlq)
	}

	// 2. No positions: the age bound, not earlier.
	if d := cAge.Peek(ctx, "age-co", "tokens"); d.Pending.Cmp(quota.Units(5)) != 0 {
		t.Errorf("age cache right after serving: pending %s, want 5", d.Pending)
	}
	testenv.Eventually(t, maxAge+10*time.Second, "pending expired by max_pending_age", func() (bool, error) {
		return cAge.Peek(ctx, "age-co", "tokens").Pending.IsZero(), nil
	})
	if took := time.Since(served); took < maxAge {
		t.Errorf("expired by age %s after serving, want at least %s (from the acknowledgement)", took, maxAge)
	}
	if s := cAge.ExpiryStats(); s.ByAge != 5 || s.ByPosition != 0 {
		t.Errorf("age cache expiries %+v, want 5 by age", s)
	}

	// 3. Counted events: never released early, never counted twice.
	for i := range 30 {
		if res, _ := gen.call(t, "count-co", ""); res.StatusCode != http.StatusOK {
			t.Fatalf("generation %d: %d", i+1, res.StatusCode)
		}
	}
	if d := c.Check(ctx, "count-co", "ai_generation", quota.Units(10)); !d.Allowed {
		t.Fatalf("in-flight 10: %+v", d)
	}
	samples, low := 0, 0
	deadline := time.Now().Add(20 * time.Second)
	for {
		d := c.Peek(ctx, "count-co", "ai_generation")
		samples++
		if d.Usage.Cmp(quota.Units(40)) < 0 {
			low++
			t.Errorf("sample %d: usage %s (state %s + pending %s), below the 40 allowed", samples, d.Usage, d.Usage.Sub(d.Pending), d.Pending)
		}
		if s := c.ExpiryStats(); s.Held == 0 && d.Usage.Sub(d.Pending).Cmp(quota.Units(30)) == 0 {
			break
		}
		if time.Now().After(deadline) || low > 5 {
			t.Fatalf("not settled: %+v, stats %+v", d, c.ExpiryStats())
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond) // later states and positions change nothing
	d := c.Peek(ctx, "count-co", "ai_generation")
	if d.Usage.Cmp(quota.Units(40)) != 0 || d.Pending.Cmp(quota.Units(10)) != 0 {
		t.Errorf("end: usage %s pending %s, want 40 = state 30 + the 10 in flight", d.Usage, d.Pending)
	}
	if got := publishedUsage(t, broker, tp.state, schemas.QuotaStateKey("count-co", "ai_generation", d.Period)); got != "30" {
		t.Errorf("published state usage %s, want 30", got)
	}
	if s := c.ExpiryStats(); s.ByPosition != 36 || s.ByAge != 0 || s.Held != 0 {
		t.Errorf("expiries %+v, want 36 by position (6 DLQ'd + 30 counted), none held", s)
	}
	t.Logf("%d samples of the counted tenant, %d below 40", samples, low)

	// 4. A retried id the aggregator counted already (usage-api's track
	// path after its recent ids are forgotten): held through the outbox,
	// acknowledged, a duplicate downstream: its pending expires.
	first := schemas.UsageEvent{ID: schemas.NewID(), TenantID: "retry-co", FeatureType: "ai_generation", Quantity: quota.Units(1).Decimal(),
		Timestamp: time.Now().UTC()}
	if err := pub.Publish(ctx, first); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 20*time.Second, "the first copy counted", func() (bool, error) {
		return c.Peek(ctx, "retry-co", "ai_generation").Usage.Cmp(quota.Units(1)) == 0, nil
	})
	out, err := quota.NewOutbox(quota.OutboxConfig{}, quota.NewProducerTracker(pub), log)
	if err != nil {
		t.Fatal(err)
	}
	out.OnDelivered(c.Acknowledged)
	octx, stop := context.WithCancel(ctx)
	defer stop()
	go func() { _ = out.Run(octx) }()
	d = c.Check(ctx, "retry-co", "ai_generation", quota.Units(1))
	retry := first
	c.Hold(d, &retry)
	if err := out.Put(&retry, false); err != nil {
		t.Fatal(err)
	}
	if got := c.Peek(ctx, "retry-co", "ai_generation").Usage; got.Cmp(quota.Units(2)) != 0 {
		t.Fatalf("retry pending: usage %s, want 2", got)
	}
	testenv.Eventually(t, 20*time.Second, "the retried id's pending expired", func() (bool, error) {
		d := c.Peek(ctx, "retry-co", "ai_generation")
		return d.Usage.Cmp(quota.Units(1)) == 0 && d.Pending.IsZero(), nil
	})
	if got := publishedUsage(t, broker, tp.state, schemas.QuotaStateKey("retry-co", "ai_generation", d.Period)); got != "1" {
		t.Errorf("published state of retry-co: %s, want 1 (the retry is a duplicate)", got)
	}
	if s := c.ExpiryStats(); s.ByPosition != 37 {
		t.Errorf("expiries %+v, want 37 by position", s)
	}
}

// publishedUsage reads the latest state of key from the quota-state topic.
func publishedUsage(t *testing.T, broker, topic, key string) string {
	t.Helper()
	ends := testenv.EndOffsets(t, broker, topic, 4)
	usage := "none"
	for p, end := range ends {
		if end == 0 {
			continue
		}
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{broker}, Topic: topic, Partition: p, MaxWait: 50 * time.Millisecond})
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		for {
			m, err := r.ReadMessage(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if string(m.Key) == key {
				s, err := schemas.DecodeQuotaState(m.Value)
				if err != nil {
					t.Fatal(err)
				}
				usage = s.Usage.String()
			}
			if m.Offset+1 >= end {
				break
			}
		}
		cancel()
		r.Close()
	}
	return usage
}
