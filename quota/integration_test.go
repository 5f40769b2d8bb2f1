package quota_test

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/shopspring/decimal"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/usagemeter/usagemeter/producer"
	"github.com/usagemeter/usagemeter/quota"
	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/schemas/plans"
	"github.com/usagemeter/usagemeter/testenv"
)

// topics are one test's private topics.
type topics struct {
	broker, events, state, assign string
	positions                     string // the aggregator's QuotaPositions
}

func newTopics(t testing.TB, broker string) topics {
	t.Helper()
	tp := topics{broker: broker, events: testenv.Name("events"), state: testenv.Name("qstate"), assign: testenv.Name("assign"),
		positions: testenv.Name("qpos")}
	testenv.CreateTopic(t, broker, tp.events, 4)
	testenv.CreateTopic(t, broker, tp.state, 4, "cleanup.policy", "compact")
	testenv.CreateTopic(t, broker, tp.assign, 1, "cleanup.policy", "compact")
	testenv.CreateTopic(t, broker, tp.positions, 1, "cleanup.policy", "compact")
	return tp
}

func plansFile(t testing.TB) (*plans.Config, string) {
	t.Helper()
	path := filepath.Join(testenv.RepoRoot(t), "schemas", "plans", "plans.example.yaml")
	p, err := plans.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return p, path
}

func startCache(t testing.TB, tp topics, log *zap.Logger, mut func(*quota.Config), opts ...quota.Option) *quota.Cache {
	t.Helper()
	p, _ := plansFile(t)
	return startCacheWith(t, tp, p, log, mut, opts...)
}

// startCacheWith is startCache with plans p.
func startCacheWith(t testing.TB, tp topics, p *plans.Config, log *zap.Logger, mut func(*quota.Config), opts ...quota.Option) *quota.Cache {
	t.Helper()
	cfg := quota.DefaultConfig()
	cfg.Brokers, cfg.StateTopic, cfg.AssignmentTopic = []string{tp.broker}, tp.state, tp.assign
	cfg.EventsTopic, cfg.PositionTopic = tp.events, tp.positions
	cfg.PollInterval = 50 * time.Millisecond
	if mut != nil {
		mut(&cfg)
	}
	c, err := quota.New(cfg, p, log, opts...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	defer wcancel()
	if err := c.WaitReady(wctx); err != nil {
		t.Fatal(err)
	}
	return c
}

// produce writes one record and returns its position.
func produce(t testing.TB, broker, topic string, partition int, key, value []byte) quota.Position {
	t.Helper()
	client := &kafka.Client{Addr: kafka.TCP(broker), Timeout: 10 * time.Second}
	res, err := client.Produce(context.Background(), &kafka.ProduceRequest{Topic: topic, Partition: partition,
		RequiredAcks: kafka.RequireAll, Records: kafka.NewRecordReader(kafka.Record{Key: kafka.NewBytes(key), Value: kafka.NewBytes(value)})})
	if err != nil || res.Error != nil {
		t.Fatalf("produce to %s: %v %v", topic, err, res)
	}
	return quota.Position{Topic: topic, Partition: int32(partition), Offset: res.BaseOffset}
}

// publishState writes a QuotaState exactly as the aggregator does.
func publishState(t *testing.T, broker, topic, tenant, meter string, usage, limit int64, at time.Time) quota.Position {
	t.Helper()
	p := plans.PeriodOf(plans.Quota{Period: plans.CalendarMonth}, 0, at)
	q := plans.Quota{Limit: decimal.NewFromInt(limit), WarningThresholds: []int{50, 75, 90, 100}}
	st := plans.Evaluate(q, decimal.NewFromInt(usage))
	s := schemas.QuotaState{TenantID: tenant, FeatureType: meter, Period: p.ID, Plan: "FREE", Usage: decimal.NewFromInt(usage),
		Limit: q.Limit, Remaining: st.Remaining, OverageUsed: st.OverageUsed, Percentage: st.Percentage, Level: st.Level,
		PeriodStart: p.Start, PeriodEnd: p.End, SourceOffsets: map[int32]int64{2: 100 + usage}, UpdatedAt: at}
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	// One key, one partition, as the aggregator's keyed writer does.
	h := fnv.New32a()
	_, _ = h.Write([]byte(s.Key()))
	return produce(t, broker, topic, int(h.Sum32()%4), []byte(s.Key()), s.AppendJSON(nil))
}

func TestCacheReadsTopicsAndFollowsPlanChanges(t *testing.T) {
	broker := testenv.Kafka(t)
	tp := newTopics(t, broker)
	now := time.Now()
	publishState(t, broker, tp.state, "c-free", "ai_generation", 20, 50, now)
	pos := publishState(t, broker, tp.state, "c-free", "ai_generation", 30, 50, now) // newer
	k, v := plans.AssignmentRecord("c-pro", &plans.Assignment{Plan: "PRO"})
	produce(t, broker, tp.assign, 0, k, v)

	c := startCache(t, tp, zaptest.NewLogger(t), nil)
	ctx := context.Background()
	d := c.Peek(ctx, "c-free", "ai_generation")
	if d.Usage.Cmp(quota.Units(30)) != 0 || d.Level != "warning_50" || d.Offsets.StateOffset != pos.Offset ||
		d.Offsets.StatePartition != pos.Partition || d.Offsets.Source[2] != 130 || d.Staleness.Stale {
		t.Fatalf("state not applied at start: %+v", d)
	}
	if d := c.Peek(ctx, "c-pro", "ai_generation"); d.Plan != "PRO" || !d.Unlimited {
		t.Fatalf("assignment read before ready not applied: %+v", d)
	}
	if d := c.Peek(ctx, "nobody", "ai_generation"); d.Plan != "FREE" || d.Limit.Cmp(quota.Units(50)) != 0 || !d.Usage.IsZero() {
		t.Fatalf("a tenant without usage gets the default plan's limit: %+v", d)
	}

	// A plan change reaches the running cache; read-your-writes on its offset.
	k, v = plans.AssignmentRecord("c-free", &plans.Assignment{Plan: "PRO"})
	up := produce(t, broker, tp.assign, 0, k, v)
	ahead := up
	ahead.Offset += 1000
	if d := c.CheckAfter(ctx, "c-free", "ai_generation", quota.Units(1), ahead); d.Allowed || d.Reason != quota.ReasonNotCaughtUp {
		t.Fatalf("a position not written yet: %+v", d)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := c.WaitFor(wctx, up); err != nil {
		t.Fatal(err)
	}
	if d := c.CheckAfter(ctx, "c-free", "ai_generation", quota.Units(100), up); !d.Allowed || d.Plan != "PRO" ||
		len(d.Offsets.Assignments) != 1 || d.Offsets.Assignments[0] != up.Offset+1 {
		t.Fatalf("after the upgrade's offset: %+v", d)
	}
	// New state for the same key: pending is taken off by the increase.
	publishState(t, broker, tp.state, "c-late", "ai_generation", 10, 50, now)
	testenv.Eventually(t, 10*time.Second, "state of c-late", func() (bool, error) {
		return c.Peek(ctx, "c-late", "ai_generation").Usage.Cmp(quota.Units(10)) == 0, nil
	})
}

// aggregatorBin builds usage-aggregator once per test binary.
var aggregatorBin = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "quota-it")
	if err != nil {
		return "", err
	}
	cmd := exec.Command("go", "build", "-o", dir+"/", "./aggregator/cmd/usage-aggregator")
	cmd.Dir = repoRoot
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("build usage-aggregator: %v\n%s", err, out)
	}
	return filepath.Join(dir, "usage-aggregator"), nil
})

var repoRoot string

// startAggregator runs the real usage-aggregator on the test's topics and
// a private database.
func startAggregator(t testing.TB, tp topics, extraEnv ...string) {
	t.Helper()
	repoRoot = testenv.RepoRoot(t)
	bin, err := aggregatorBin()
	if err != nil {
		t.Fatal(err)
	}
	_, db := testenv.ClickHouse(t)
	_, plansPath := plansFile(t)
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(),
		"USAGE_AGGREGATOR_BROKERS="+tp.broker, "USAGE_AGGREGATOR_TOPIC="+tp.events,
		"USAGE_AGGREGATOR_GROUP_ID="+testenv.Name("agg"), "USAGE_AGGREGATOR_QUOTA_TOPIC="+tp.state,
		"USAGE_AGGREGATOR_ASSIGNMENT_TOPIC="+tp.assign, "USAGE_AGGREGATOR_LATE_TOPIC="+tp.events+".late",
		"USAGE_AGGREGATOR_DLQ_TOPIC="+tp.events+".dlq", "USAGE_CREATE_TOPICS=true", "USAGE_TOPIC_PARTITIONS=4",
		"USAGE_AGGREGATOR_POSITION_TOPIC="+tp.positions,
		"USAGE_CLICKHOUSE_ADDR="+testenv.ClickHouseAddr(t), "USAGE_CLICKHOUSE_DATABASE="+db,
		"USAGE_HTTP_ADDR=127.0.0.1:0", "USAGE_PLANS_FILE="+plansPath, "USAGE_LOG_LEVEL=warn")
	if len(extraEnv) == 0 { // the tests want states quickly
		extraEnv = []string{"USAGE_AGGREGATOR_FLUSH_INTERVAL=200ms", "USAGE_AGGREGATOR_QUOTA_COALESCE=50ms"}
	}
	cmd.Env = append(cmd.Env, extraEnv...)
	logf, err := os.Create(filepath.Join(t.TempDir(), "aggregator.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("aggregator log:\n%s", b)
		}
	})
}

// app is a demo handler behind the middleware on a real HTTP server.
type app struct {
	srv *httptest.Server
	mw  *quota.Middleware
	c   *quota.Cache
}

func newApp(t *testing.T, c *quota.Cache, pub *producer.Publisher, meter string) *app {
	t.Helper()
	mw, err := quota.NewMiddleware(c, quota.MiddlewareConfig{
		Meter:      meter,
		Tenant:     func(r *http.Request) string { return r.Header.Get("X-Tenant") },
		UpgradeURL: "https://example.test/upgrade?tenant={tenant}",
		Tracker:    quota.NewProducerTracker(pub),
	})
	if err != nil {
		t.Fatal(err)
	}
	h := mw.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("fail") != "" {
			http.Error(w, "boom", http.StatusInternalServerError)
			return
		}
		_, _ = io.WriteString(w, "generated\n")
	}))
	a := &app{srv: httptest.NewServer(h), mw: mw, c: c}
	t.Cleanup(a.srv.Close)
	return a
}

func (a *app) call(t *testing.T, tenant, query string) (*http.Response, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, a.srv.URL+"/generate"+query, nil)
	req.Header.Set("X-Tenant", tenant)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	var m map[string]any
	if strings.HasPrefix(res.Header.Get("Content-Type"), "application/json") {
		if err := json.Unmarshal(body, &m); err != nil {
			t.Fatalf("body %s: %v", body, err)
		}
	}
	return res, m
}

func newPublisher(t *testing.T, tp topics) *producer.Publisher {
	t.Helper()
	pub, err := producer.New([]string{tp.broker}, producer.WithTopic(tp.events))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pub.Close() })
	return pub
}

// TestMiddlewareWithRealAggregator is the seed's checklist through the
// middleware on a real HTTP server, with quota states from the real
// usage-aggregator, then 200 concurrent requests at the edge of a limit
// across two cache instances.
func TestMiddlewareWithRealAggregator(t *testing.T) {
	broker := testenv.Kafka(t)
	tp := newTopics(t, broker)
	startAggregator(t, tp)
	k, v := plans.AssignmentRecord("e2e-pro", &plans.Assignment{Plan: "PRO"})
	produce(t, broker, tp.assign, 0, k, v)
	c := startCache(t, tp, zaptest.NewLogger(t), nil)
	a := newApp(t, c, newPublisher(t, tp), "ai_generation")
	ctx := context.Background()

	t.Run("free 50 then 402", func(t *testing.T) {
		for i := 1; i <= 50; i++ {
			res, _ := a.call(t, "e2e-free", "")
			if res.StatusCode != 200 {
				t.Fatalf("request %d: %s", i, res.Status)
			}
			wantRemaining := fmt.Sprint(50 - i)
			if res.Header.Get("X-Usage-Current") != fmt.Sprint(i) || res.Header.Get("X-Usage-Limit") != "50" ||
				res.Header.Get("X-Usage-Remaining") != wantRemaining ||
				!strings.HasPrefix(res.Header.Get("Ratelimit"), `"ai_generation";r=`+wantRemaining+";t=") ||
				!strings.HasPrefix(res.Header.Get("Ratelimit-Policy"), `"ai_generation";q=50;w=`) {
				t.Fatalf("request %d headers: %v", i, res.Header)
			}
			if w := res.Header.Get("X-Usage-Warning"); (i < 25) != (w == "") {
				t.Fatalf("request %d: warning %q", i, w)
			}
		}
		res, body := a.call(t, "e2e-free", "")
		q, _ := body["quota"].(map[string]any)
		if res.StatusCode != http.StatusPaymentRequired || body["code"] != "USAGE_LIMIT_EXCEEDED" ||
			body["upgrade_url"] != "https://example.test/upgrade?tenant=e2e-free" || q["limit"] != "50" || q["level"] != "blocked" {
			t.Fatalf("51st: %s %v", res.Status, body)
		}
		// The aggregator counts each of the 50 once: the cache's state
		// reaches 50 and pending drops to 0.
		testenv.Eventually(t, 30*time.Second, "aggregated usage 50", func() (bool, error) {
			d := c.Peek(ctx, "e2e-free", "ai_generation")
			return d.Usage.Cmp(quota.Units(50)) == 0 && d.Pending.IsZero() && d.Offsets.StateOffset >= 0, fmt.Errorf("%+v", d)
		})
		if res, _ := a.call(t, "e2e-free", ""); res.StatusCode != http.StatusPaymentRequired {
			t.Fatalf("after the state: %s", res.Status)
		}
		if st := a.mw.Stats(); st.Tracked != 50 || st.Limited != 2 || st.TrackFailures != 0 {
			t.Fatalf("stats %+v", st)
		}
	})

	t.Run("pro beyond 100", func(t *testing.T) {
		for i := 1; i <= 120; i++ {
			res, _ := a.call(t, "e2e-pro", "")
			if res.StatusCode != 200 || res.Header.Get("X-Usage-Limit") != "-1" || res.Header.Get("X-Usage-Remaining") != "-1" {
				t.Fatalf("PRO request %d: %s %v", i, res.Status, res.Header)
			}
		}
		testenv.Eventually(t, 30*time.Second, "PRO usage 120", func() (bool, error) {
			return c.Peek(ctx, "e2e-pro", "ai_generation").Usage.Cmp(quota.Units(120)) == 0, nil
		})
	})

	t.Run("handler failure is not tracked", func(t *testing.T) {
		res, _ := a.call(t, "e2e-fail", "?fail=1")
		if res.StatusCode != 500 {
			t.Fatal(res.Status)
		}
		if d := c.Peek(ctx, "e2e-fail", "ai_generation"); !d.Usage.IsZero() {
			t.Fatalf("a failed request still pending: %+v", d)
		}
	})

	t.Run("a new period resets", func(t *testing.T) {
		next := time.Now().UTC().AddDate(0, 1, 0)
		next = time.Date(next.Year(), next.Month(), 1, 0, 0, 5, 0, time.UTC)
		c2 := startCache(t, tp, zap.NewNop(), nil, quota.WithClock(func() time.Time { return next }))
		mw, _ := quota.NewMiddleware(c2, quota.MiddlewareConfig{Meter: "ai_generation", Track: quota.TrackNever,
			Tenant: func(r *http.Request) string { return r.Header.Get("X-Tenant") }})
		srv := httptest.NewServer(mw.Wrap(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})))
		defer srv.Close()
		req, _ := http.NewRequest(http.MethodPost, srv.URL, nil)
		req.Header.Set("X-Tenant", "e2e-free")
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != 200 || res.Header.Get("X-Usage-Current") != "1" || res.Header.Get("X-Usage-Remaining") != "49" {
			t.Fatalf("next period: %s %v", res.Status, res.Header)
		}
	})

	t.Run("200 concurrent requests at the edge across two caches", func(t *testing.T) {
		const tenant, start = "e2e-edge", 40
		a2 := newApp(t, startCache(t, tp, zap.NewNop(), nil), newPublisher(t, tp), "ai_generation")
		for range start {
			if res, _ := a.call(t, tenant, ""); res.StatusCode != 200 {
				t.Fatal(res.Status)
			}
		}
		for _, x := range []*app{a, a2} {
			testenv.Eventually(t, 30*time.Second, "both caches at 40", func() (bool, error) {
				d := x.c.Peek(ctx, tenant, "ai_generation")
				return d.Usage.Cmp(quota.Units(start)) == 0 && d.Pending.IsZero(), nil
			})
		}
		var ok, refused atomic.Int64
		var wg sync.WaitGroup
		for i := range 200 {
			x := []*app{a, a2}[i%2]
			wg.Go(func() {
				res, _ := x.call(t, tenant, "")
				switch res.StatusCode {
				case 200:
					ok.Add(1)
				case 402:
					refused.Add(1)
				}
			})
		}
		wg.Wait()
		// Bound for N instances holding a state with r remaining: (N-1)*r.
		const r, n = 50 - start, 2
		if ok.Load() < r || ok.Load() > n*r || ok.Load()+refused.Load() != 200 {
			t.Fatalf("allowed %d, refused %d: want between %d and %d allowed", ok.Load(), refused.Load(), r, n*r)
		}
		want := quota.Units(start + ok.Load())
		testenv.Eventually(t, 30*time.Second, "aggregated usage = 40 + allowed", func() (bool, error) {
			d := a.c.Peek(ctx, tenant, "ai_generation")
			return d.Usage.Cmp(want) == 0 && d.Pending.IsZero(), fmt.Errorf("usage %s pending %s, want %s", d.Usage, d.Pending, want)
		})
		t.Logf("2 caches, 200 concurrent requests, %d remaining: %d allowed (overshoot %d, bound %d), aggregated usage %s (each counted once)",
			r, ok.Load(), ok.Load()-r, (n-1)*r, want)
	})
}

// TestBrokerStoppedFailModes stops a private broker under a running cache:
// once the state is older than MaxStaleness each level gets its mode.
func TestBrokerStoppedFailModes(t *testing.T) {
	k := testenv.StartKafka(t)
	tp := newTopics(t, k.Addr)
	now := time.Now()
	publishState(t, k.Addr, tp.state, "s-ok", "ai_generation", 10, 50, now)    // ok: open
	publishState(t, k.Addr, tp.state, "s-warn", "ai_generation", 40, 50, now)  // warning_75: last known
	publishState(t, k.Addr, tp.state, "s-limit", "ai_generation", 50, 50, now) // at_limit: closed
	publishState(t, k.Addr, tp.state, "s-closed", "api_calls", 10, 10000, now) // api_calls: closed at every level
	c := startCache(t, tp, zaptest.NewLogger(t), func(cfg *quota.Config) {
		cfg.MaxStaleness = time.Second
		cfg.MeterFailModes = map[string]quota.FailModes{"api_calls": {OK: quota.Closed, Warning: quota.Closed,
			AtLimit: quota.Closed, Overage: quota.Closed, Blocked: quota.Closed}}
	})
	ctx := context.Background()
	if d := c.Check(ctx, "s-ok", "ai_generation", quota.Units(45)); d.Allowed || d.Staleness.Stale {
		t.Fatalf("fresh: 10 + 45 > 50 must be refused: %+v", d)
	}
	k.Stop()
	testenv.Eventually(t, 20*time.Second, "stale and unreachable", func() (bool, error) {
		s := c.Peek(ctx, "s-ok", "ai_generation").Staleness
		return s.Stale && !s.Reachable && s.Age > time.Second, fmt.Errorf("%+v", s)
	})
	if d := c.Check(ctx, "s-ok", "ai_generation", quota.Units(45)); !d.Allowed || d.Staleness.Mode != quota.Open {
		t.Fatalf("ok level, open: %+v", d)
	}
	if d := c.Check(ctx, "s-warn", "ai_generation", quota.Units(10)); !d.Allowed || d.Staleness.Mode != quota.LastKnown {
		t.Fatalf("warning level, last known: 40 + 10 <= 50: %+v", d)
	}
	if d := c.Check(ctx, "s-warn", "ai_generation", quota.Units(1)); d.Allowed || d.Reason != quota.ReasonStale {
		t.Fatalf("now at_limit, closed: %+v", d)
	}
	if d := c.Check(ctx, "s-limit", "ai_generation", quota.Units(1)); d.Allowed || d.Reason != quota.ReasonStale || d.RetryAfter <= 0 {
		t.Fatalf("at_limit, closed: %+v", d)
	}
	if d := c.Check(ctx, "s-closed", "api_calls", quota.Units(1)); d.Allowed || d.Reason != quota.ReasonStale {
		t.Fatalf("api_calls closed at ok: %+v", d)
	}
	k.Start()
	testenv.Eventually(t, 30*time.Second, "fresh again", func() (bool, error) {
		s := c.Peek(ctx, "s-closed", "api_calls").Staleness
		return !s.Stale && s.Reachable, fmt.Errorf("%+v", s)
	})
	if d := c.Check(ctx, "s-closed", "api_calls", quota.Units(1)); !d.Allowed {
		t.Fatalf("after the broker is back: %+v", d)
	}
}
