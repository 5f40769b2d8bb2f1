package emitter

import (
	"context"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap/zaptest"

	"github.com/usagemeter/usagemeter/alerts/internal/alerttest"
	"github.com/usagemeter/usagemeter/schemas/plans"
	"github.com/usagemeter/usagemeter/svckit"
	"github.com/usagemeter/usagemeter/testenv"
)

const testPlans = `
plans:
  FREE:
    meters:
      ai_generation: { limit: 50 }
  PRO:
    meters:
      api_calls:
        limit: 100
        overage_allowed: true
        alerts: { percent: [150], absolute: [120] }
  ENTERPRISE:
    meters:
      tokens: { limit: -1, alerts: { absolute: [1000] } }
default_plan: FREE
`

type run struct {
	e      *Emitter
	cancel context.CancelFunc
	done   chan error
}

func start(t *testing.T, cfg Config, p *plans.Config, tailDelay ...time.Duration) *run {
	t.Helper()
	e, err := New(cfg, p, zaptest.NewLogger(t), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	if len(tailDelay) > 0 {
		e.tailDelay = tailDelay[0]
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &run{e: e, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- e.Run(ctx) }()
	t.Cleanup(r.stop)
	return r
}

func (r *run) stop() {
	r.cancel()
	<-r.done
	r.done <- nil // stop is idempotent
}

func (r *run) states() float64 { return testutil.ToFloat64(r.e.m.states.WithLabelValues("ok")) }

// waitStates waits until the emitters together have read n states.
func waitStates(t *testing.T, n float64, rs ...*run) {
	t.Helper()
	testenv.Eventually(t, 60*time.Second, "states read", func() (bool, error) {
		sum := 0.0
		for _, r := range rs {
			sum += r.states()
		}
		return sum >= n, nil
	})
}

// Each crossing is published once: 50/75/90/100 % of FREE while usage
// climbs and hovers at a line, lines above 100 %, absolute lines (also
// for an unlimited meter) and overage; a restart in the same group, a
// replay of every state through a new group, and two instances sharing the
// work publish nothing again.
func TestEachCrossingOnce(t *testing.T) {
	broker := testenv.Kafka(t)
	states, alerts := testenv.Name("qs"), testenv.Name("alerts")
	testenv.CreateTopic(t, broker, states, 4, "cleanup.policy", "compact")
	testenv.CreateTopic(t, broker, alerts, 2, "cleanup.policy", "compact")
	p, err := plans.Parse([]byte(testPlans))
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Brokers, cfg.StateTopic, cfg.AlertTopic, cfg.GroupID = []string{broker}, states, alerts, testenv.Name("g")
	cfg.SessionTimeout = 6 * time.Second

	var published []any
	publish := func(tenant, meter, plan string, limit string, usages ...string) {
		for _, u := range usages {
			s := alerttest.State(tenant, meter, plan, u, limit)
			alerttest.PublishStates(t, broker, states, s)
			published = append(published, s)
		}
	}
	// FREE climbs to 49 and hovers 49/50/49/50/51 (a gauge can go down).
	publish("free-1", "ai_generation", "FREE", "50", "10", "25", "30", "38", "45", "44", "49", "50", "49", "50", "51")
	publish("pro-1", "api_calls", "PRO", "100", "99", "100", "119", "120", "160")
	publish("ent-1", "tokens", "ENTERPRISE", "-1", "999", "1000", "5000")
	want := map[string]int{
		"free-1:ai_generation:percent:50": 1, "free-1:ai_generation:percent:75": 1,
		"free-1:ai_generation:percent:90": 1, "free-1:ai_generation:percent:100": 1,
		"pro-1:api_calls:percent:50": 1, "pro-1:api_calls:percent:75": 1, "pro-1:api_calls:percent:90": 1,
		"pro-1:api_calls:percent:100": 1, "pro-1:api_calls:percent:150": 1, "pro-1:api_calls:absolute:120": 1,
		"pro-1:api_calls:overage:0": 1, "ent-1:tokens:absolute:1000": 1,
	}
	check := func(when string) {
		t.Helper()
		got := alerttest.Lines(alerttest.ReadAlerts(t, broker, alerts, 2))
		if !maps.Equal(got, want) {
			t.Fatalf("%s: alerts on the topic\n got %v\nwant %v", when, got, want)
		}
	}

	first := start(t, cfg, p)
	waitStates(t, float64(len(published)), first)
	check("first run")
	all := alerttest.ReadAlerts(t, broker, alerts, 2)
	for _, a := range all {
		if a.TenantID == "free-1" && a.Threshold.String() == "100" && a.Usage.String() != "50" {
			t.Errorf("100 %% alert carries usage %s, want the first state at the line (50)", a.Usage)
		}
	}
	first.stop()

	// Restart in the same group: the states are re-published (a replay by
	// the aggregator) and read again.
	again := start(t, cfg, p)
	publish("free-1", "ai_generation", "FREE", "50", "50", "51")
	waitStates(t, 2, again)
	again.stop()
	check("restart")

	// A new group reads every state from the start, as after a lost
	// offset or a crash between publish and commit; its alert-topic reader
	// is slow, and decisions wait for it.
	cfg.GroupID = testenv.Name("g")
	replay := start(t, cfg, p, 2*time.Second)
	waitStates(t, float64(len(published)), replay)
	replay.stop()
	check("replay from the start")

	// Two instances in one group split the work; a new tenant's climb is
	// still published once per line.
	cfg.GroupID = testenv.Name("g")
	a, b := start(t, cfg, p), start(t, cfg, p)
	var wg sync.WaitGroup
	for _, tenant := range []string{"free-2", "free-3", "free-4"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			publish2 := func(usages ...string) {
				for _, u := range usages {
					alerttest.PublishStates(t, broker, states, alerttest.State(tenant, "ai_generation", "FREE", u, "50"))
				}
			}
			publish2("26", "26", "40", "46")
		}()
		for _, line := range []string{"50", "75", "90"} {
			want[tenant+":ai_generation:percent:"+line] = 1
		}
	}
	wg.Wait()
	waitStates(t, float64(len(published)+12), a, b)
	testenv.Eventually(t, 30*time.Second, "the new tenants' alerts", func() (bool, error) {
		got := alerttest.Lines(alerttest.ReadAlerts(t, broker, alerts, 2))
		return len(got) >= len(want), nil
	})
	a.stop()
	b.stop()
	check("two instances")
	if n := len(slices.Collect(maps.Keys(want))); n != 21 {
		t.Fatalf("want table has %d lines", n)
	}
}

// Started before the aggregator has created the quota-state topic, the
// emitter waits for it rather than letting the broker auto-create it
// (uncompacted), then works as usual.
func TestWaitsForStateTopic(t *testing.T) {
	broker := testenv.Kafka(t)
	states, alerts := testenv.Name("qs"), testenv.Name("alerts")
	testenv.CreateTopic(t, broker, alerts, 1, "cleanup.policy", "compact")
	p, err := plans.Parse([]byte(testPlans))
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Brokers, cfg.StateTopic, cfg.AlertTopic, cfg.GroupID = []string{broker}, states, alerts, testenv.Name("g")
	cfg.SessionTimeout, cfg.RetryMax = 6*time.Second, 200*time.Millisecond
	r := start(t, cfg, p)
	time.Sleep(2 * time.Second)
	if n, err := svckit.Partitions(context.Background(), []string{broker}, states); err == nil {
		t.Fatalf("the state topic exists with %d partitions: created by the emitter's reader", n)
	}
	testenv.CreateTopic(t, broker, states, 4, "cleanup.policy", "compact")
	alerttest.PublishStates(t, broker, states, alerttest.State("late-1", "ai_generation", "FREE", "40", "50"))
	waitStates(t, 1, r)
	testenv.Eventually(t, 30*time.Second, "two alerts", func() (bool, error) {
		return len(alerttest.ReadAlerts(t, broker, alerts, 1)) == 2, nil
	})
}
