package service

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	"github.com/shopspring/decimal"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/usagemeter/usagemeter/aggregator/aggstore"
	"github.com/usagemeter/usagemeter/aggregator/reconcile"
	"github.com/usagemeter/usagemeter/aggregator/state"
	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/schemas/plans"
	"github.com/usagemeter/usagemeter/svckit/chconn"
	"github.com/usagemeter/usagemeter/testenv"
)

// consumerBin is the usage-consumer binary TestMain builds for the tests
// that need the raw table written.
var consumerBin string

func TestMain(m *testing.M) {
	flag.Parse()
	if !testing.Short() {
		dir, err := os.MkdirTemp("", "aggregator-test-bin")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		bins, err := testenv.BuildCommands(dir, "./consumer/cmd/usage-consumer")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		consumerBin = bins[0]
		code := m.Run()
		_ = os.RemoveAll(dir)
		os.Exit(code)
	}
	os.Exit(m.Run())
}

const testPlans = `
meters:
  api_calls:    { aggregation: sum }
  tokens:       { aggregation: sum }
  ai_generation: { aggregation: sum }
  exports:      { aggregation: count }
  storage:      { aggregation: max }
  seats:        { aggregation: latest }
  active_users: { aggregation: unique_count }
  projects:     { aggregation: unique_count, unique_by: metadata.project_id }
plans:
  FREE: { meters: { ai_generation: { limit: 50 }, api_calls: { limit: 1000000 } } }
  PRO:  { meters: { ai_generation: { limit: -1 } } }
default_plan: FREE
tenants:
  pro-co: { plan: PRO }
`

type env struct {
	t           testing.TB
	includeLate bool // compare with every raw event, late ones too (after reconcile)
	broker      string
	cfg         Config
	store       store
	plans       *plans.Config
	log         *zap.Logger
}

// newEnv is setupEnv with fast flushes and the raw consumer running.
func newEnv(t testing.TB) *env {
	t.Helper()
	e := setupEnv(t, true)
	e.startRawConsumer()
	return e
}

// setupEnv makes a test's own topics and ClickHouse database. fast shortens
// the flush and coalesce intervals and lets the quota topic compact within
// seconds; otherwise the configuration is production's.
func setupEnv(t testing.TB, fast bool) *env {
	t.Helper()
	broker := testenv.Kafka(t)
	p, err := plans.Parse([]byte(testPlans))
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Brokers = []string{broker}
	cfg.Topic = testenv.Name("events")
	cfg.GroupID = testenv.Name("agg")
	cfg.QuotaTopic = cfg.Topic + ".quota"
	cfg.LateTopic = cfg.Topic + ".late"
	cfg.DLQTopic = cfg.Topic + ".dlq"
	cfg.AssignmentTopic = cfg.Topic + ".plans"
	cfg.PositionTopic = cfg.Topic + ".positions"
	quotaConfig := []string{"cleanup.policy", "compact"}
	if fast {
		cfg.FlushInterval = 200 * time.Millisecond
		cfg.QuotaCoalesce = 100 * time.Millisecond
		cfg.RetryMax = time.Second
		quotaConfig = append(quotaConfig, "segment.ms", "200", "min.cleanable.dirty.ratio", "0.01")
	}
	testenv.CreateTopic(t, broker, cfg.Topic, 4)
	testenv.CreateTopic(t, broker, cfg.QuotaTopic, 2, quotaConfig...)
	testenv.CreateTopic(t, broker, cfg.LateTopic, 1)
	testenv.CreateTopic(t, broker, cfg.AssignmentTopic, 1, "cleanup.policy", "compact")
	testenv.CreateTopic(t, broker, cfg.DLQTopic, 1)
	testenv.CreateTopic(t, broker, cfg.PositionTopic, 1, "cleanup.policy", "compact")
	log := zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	chCfg := chconn.DefaultConfig()
	chCfg.Addr = []string{testenv.ClickHouseAddr(t)}
	chCfg.Database = testenv.Name("t")
	conn, err := chconn.Open(context.Background(), chCfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = conn.Exec(context.Background(), "DROP DATABASE IF EXISTS "+chCfg.Database)
		_ = conn.Close()
	})
	if err := chconn.Migrate(context.Background(), conn, log); err != nil {
		t.Fatal(err)
	}
	return &env{t: t, broker: broker, cfg: cfg, store: store{conn, chCfg}, plans: p, log: log}
}

// store is the test's ClickHouse database.
type store struct {
	conn driver.Conn
	cfg  chconn.Config
}

func (s store) Conn() driver.Conn { return s.conn }

// startRawConsumer runs the real usage-consumer binary on the same topic
// and database: the deduplicated raw table it writes is the truth the
// aggregates are compared with. (A binary, not the consumer's packages: a
// component never imports another's.)
func (e *env) startRawConsumer() {
	e.t.Helper()
	cmd := exec.Command(consumerBin, "--log-level", "warn")
	cmd.Env = append(os.Environ(),
		"USAGE_KAFKA_BROKERS="+strings.Join(e.cfg.Brokers, ","),
		"USAGE_KAFKA_TOPIC="+e.cfg.Topic,
		"USAGE_KAFKA_DLQ_TOPIC="+e.cfg.DLQTopic,
		"USAGE_KAFKA_GROUP_ID="+testenv.Name("raw"),
		"USAGE_KAFKA_FLUSH_INTERVAL=100ms",
		"USAGE_CLICKHOUSE_ADDR="+strings.Join(e.store.cfg.Addr, ","),
		"USAGE_CLICKHOUSE_DATABASE="+e.store.cfg.Database,
		"USAGE_HTTP_ADDR=127.0.0.1:0",
		"USAGE_CREATE_TOPICS=false")
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		if err := cmd.Wait(); err != nil {
			e.t.Logf("usage-consumer: %v\n%s", err, stderr.String())
		}
	})
}

type running struct {
	svc  *Service
	stop context.CancelFunc
	done chan error
}

func (e *env) startAggregator(hook func(string) error) *running {
	e.t.Helper()
	svc, err := New(e.cfg, e.plans, aggstore.New(e.store.Conn()), e.log, WithRegisterer(prometheus.NewRegistry()))
	if err != nil {
		e.t.Fatal(err)
	}
	svc.hook = hook
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{svc: svc, stop: cancel, done: make(chan error, 1)}
	go func() { r.done <- svc.Run(ctx) }()
	e.t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(30 * time.Second):
		}
	})
	return r
}

func (r *running) shutdown(t testing.TB) {
	t.Helper()
	r.stop()
	select {
	case err := <-r.done:
		if err != nil {
			t.Fatalf("aggregator stopped with %v", err)
		}
		r.done <- nil
	case <-time.After(30 * time.Second):
		t.Fatal("aggregator did not stop")
	}
}

func (e *env) publish(msgs []kafka.Message) {
	e.t.Helper()
	w := &kafka.Writer{Addr: kafka.TCP(e.broker), Topic: e.cfg.Topic, Balancer: kafka.Murmur2Balancer{}, BatchTimeout: time.Millisecond, BatchSize: 5000}
	defer w.Close()
	if err := w.WriteMessages(context.Background(), msgs...); err != nil {
		e.t.Fatal(err)
	}
}

func eventMsg(ev *schemas.UsageEvent) kafka.Message {
	return kafka.Message{Key: []byte(ev.TenantID), Value: ev.AppendJSON(nil)}
}

// mixed builds traffic over every aggregation type: several tenants, users
// and meters, event times shuffled over the last minutes (within the
// allowed lateness), 10% duplicates (same id, published again), and a few
// events older than the allowed lateness.
func mixed(n int, seed uint64) (msgs []kafka.Message, late int) {
	r := rand.New(rand.NewPCG(seed, 7))
	tenants := []string{"acme", "globex", "initech", "pro-co", "umbrella"}
	meters := []string{"api_calls", "tokens", "exports", "storage", "seats", "active_users", "projects", "custom_meter"}
	now := time.Now().UTC()
	var events []*schemas.UsageEvent
	for i := range n {
		ev := &schemas.UsageEvent{
			ID:          fmt.Sprintf("ev-%d-%d", seed, i),
			TenantID:    tenants[r.IntN(len(tenants))],
			UserID:      fmt.Sprintf("user-%d", r.IntN(6)),
			FeatureType: meters[r.IntN(len(meters))],
			Quantity:    decimal.New(r.Int64N(1_000_000_000), -int32(r.IntN(10))), // up to 9 decimals
			// Distinct instants, shuffled over ~4 minutes, so "latest" is unambiguous.
			Timestamp: now.Add(-4*time.Minute + time.Duration(r.Int64N(int64(4*time.Minute)))).Truncate(time.Microsecond).Add(time.Duration(i)),
			Metadata:  map[string]string{"project_id": fmt.Sprintf("p%d", r.IntN(4))},
		}
		if r.IntN(20) == 0 { // no user: not one more active user
			ev.UserID = ""
		}
		if r.IntN(20) == 0 { // no project: not one more project
			delete(ev.Metadata, "project_id")
		}
		events = append(events, ev)
		msgs = append(msgs, eventMsg(ev))
		if r.IntN(10) == 0 { // a producer retry: the same event again, later in the stream
			dup := *ev
			events = append(events, &dup)
			msgs = append(msgs, eventMsg(&dup))
		}
	}
	for i := range 5 { // far too late for the streaming path
		ev := &schemas.UsageEvent{ID: fmt.Sprintf("late-%d-%d", seed, i), TenantID: tenants[i], UserID: "u", FeatureType: "api_calls",
			Quantity: decimal.NewFromInt(1), Timestamp: now.Add(-3 * time.Hour)}
		msgs = append(msgs, eventMsg(ev))
		late++
	}
	return msgs, late
}

func (e *env) waitRaw(want uint64) {
	e.t.Helper()
	testenv.Eventually(e.t, 60*time.Second, fmt.Sprintf("%d raw events", want), func() (bool, error) {
		n, err := testenv.CountRows(context.Background(), e.store.Conn(), "FROM usage_events FINAL")
		return n == want, err
	})
}

// waitCaughtUp waits until the group's checkpoint covers every message.
func (e *env) waitCaughtUp(total int) {
	e.t.Helper()
	testenv.Eventually(e.t, 60*time.Second, "aggregator checkpoint at the end of the topic", func() (bool, error) {
		cps, err := aggstore.New(e.store.Conn()).Checkpoints(context.Background(), e.cfg.GroupID, e.cfg.Topic)
		if err != nil {
			return false, err
		}
		n := 0
		for _, c := range cps {
			n += int(c.Offset) + 1
		}
		return n == total, nil
	})
}

// expected computes the aggregates of one grain straight from the
// deduplicated raw table, leaving out the events too late for streaming.
func (e *env) expected(grainExpr string) map[string]string {
	e.t.Helper()
	out := map[string]string{}
	for name, m := range e.plans.Meters {
		subject := "user_id"
		if k, ok := strings.CutPrefix(m.UniqueBy, "metadata."); ok {
			subject = "metadata_values[indexOf(metadata_keys, '" + k + "')]"
		}
		value := map[plans.Aggregation]string{
			plans.Sum: "sum(quantity)", plans.Count: "toDecimal128(count(), 9)", plans.Max: "max(quantity)",
			plans.Latest:      "argMax(quantity, toUInt64(event_time) * 1000000000 + event_time_ns)",
			plans.UniqueCount: "toDecimal128(1, 9)",
		}[m.Aggregation]
		where := "feature_type = ? AND (? OR id NOT LIKE 'late-%')"
		if m.Aggregation == plans.UniqueCount {
			where += " AND " + subject + " != ''" // an event without its subject counts no one
		}
		e.collect(out, `SELECT tenant_id, feature_type, `+subject+` AS s, toString(`+grainExpr+`), toString(`+value+`)
FROM usage_events_dedup WHERE `+where+` GROUP BY tenant_id, feature_type, s, `+grainExpr, name, e.includeLate)
	}
	// custom_meter is not configured: aggregated as a sum.
	e.collect(out, `SELECT tenant_id, feature_type, user_id, toString(`+grainExpr+`), toString(sum(quantity))
FROM usage_events_dedup WHERE feature_type = 'custom_meter' GROUP BY tenant_id, feature_type, user_id, `+grainExpr)
	return out
}

func (e *env) actual(table, startCol string) map[string]string {
	e.t.Helper()
	out := map[string]string{}
	e.collect(out, `SELECT tenant_id, feature_type, subject, toString(`+startCol+`), toString(value) FROM `+table+` FINAL`)
	return out
}

func (e *env) collect(out map[string]string, sql string, args ...any) {
	e.t.Helper()
	rows, err := e.store.Conn().Query(context.Background(), sql, args...)
	if err != nil {
		e.t.Fatalf("%v\n%s", err, sql)
	}
	defer rows.Close()
	for rows.Next() {
		var tenant, meter, subject, start, value string
		if err := rows.Scan(&tenant, &meter, &subject, &start, &value); err != nil {
			e.t.Fatal(err)
		}
		out[tenant+"/"+meter+"/"+subject+"@"+start] = decimal.RequireFromString(value).String()
	}
}

// countMismatches counts rows of every table that differ from the raw table.
func (e *env) countMismatches() int {
	bad := 0
	for _, c := range tablesAndExprs {
		want, got := e.expected(c.expr), e.actual(c.table, c.col)
		if c.table == "usage_period" {
			got = trimTime(got)
		}
		for k, w := range want {
			if got[k] != w {
				bad++
			}
		}
	}
	return bad
}

var tablesAndExprs = []struct{ table, col, expr string }{
	{"usage_1m", "window_start", "toStartOfMinute(event_time)"},
	{"usage_1h", "window_start", "toStartOfHour(event_time)"},
	{"usage_1d", "window_start", "toStartOfDay(event_time)"},
	{"usage_period", "period_start", "toStartOfMonth(event_time)"},
}

func (e *env) assertTablesMatchRaw() {
	e.t.Helper()
	for _, c := range tablesAndExprs {
		want, got := e.expected(c.expr), e.actual(c.table, c.col)
		if c.table == "usage_period" { // toStartOfMonth is a Date: compare on the date part
			got = trimTime(got)
		}
		if len(want) == 0 {
			e.t.Fatalf("%s: no expected rows", c.table)
		}
		bad := 0
		for k, w := range want {
			if got[k] != w {
				if bad++; bad <= 5 {
					e.t.Errorf("%s %s: got %q, want %q", c.table, k, got[k], w)
				}
			}
		}
		for k := range got {
			if _, ok := want[k]; !ok {
				if bad++; bad <= 5 {
					e.t.Errorf("%s %s: unexpected row %q", c.table, k, got[k])
				}
			}
		}
		if bad > 0 {
			e.t.Fatalf("%s: %d of %d rows differ from the raw table", c.table, bad, len(want))
		}
	}
}

func trimTime(m map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range m {
		out[strings.TrimSuffix(k, " 00:00:00")] = v
	}
	return out
}

func TestMixedTrafficEqualsRawTable(t *testing.T) {
	e := newEnv(t)
	msgs, late := mixed(3000, 1)
	e.publish(msgs)
	r := e.startAggregator(nil)
	e.waitCaughtUp(len(msgs))
	e.waitRaw(uint64(len(msgs) - countDuplicates(msgs)))
	r.shutdown(t)
	e.assertTablesMatchRaw()
	lateMsgs := testenv.ReadN(t, e.broker, e.cfg.LateTopic, late)
	for _, m := range lateMsgs {
		if h := testenv.Headers(m); h["usage.error"] != "late" || !strings.HasPrefix(string(m.Value), `{"id":"late-`) {
			t.Fatalf("late topic holds %s %v", m.Value, h)
		}
	}
}

// Kill the aggregator at every crash point in turn, with new traffic
// before each restart: the totals stay exact.
func TestCrashAtEveryPointKeepsExactTotals(t *testing.T) {
	e := newEnv(t)
	points := []string{"flush", "after_rows_1m", "after_rows_1h", "after_rows_1d", "after_rows_period", "after_checkpoint", "after_publish"}
	total, dups := 0, 0
	for i, point := range points {
		msgs, _ := mixed(400, uint64(10+i))
		e.publish(msgs)
		total += len(msgs)
		dups += countDuplicates(msgs)
		crash := errors.New("crash at " + point)
		seen := 0
		r := e.startAggregator(func(p string) error {
			// The first flush with work, so the crash leaves part of this
			// round's effects written and part not.
			if p == point {
				if seen++; seen == 1 {
					return crash
				}
			}
			return nil
		})
		select {
		case err := <-r.done:
			if !errors.Is(err, crash) {
				t.Fatalf("%s: aggregator ended with %v", point, err)
			}
			r.done <- err
		case <-time.After(60 * time.Second):
			t.Fatalf("never reached %s", point)
		}
	}
	r := e.startAggregator(nil)
	e.waitCaughtUp(total)
	e.waitRaw(uint64(total - dups))
	r.shutdown(t)
	e.assertTablesMatchRaw()
}

func countDuplicates(msgs []kafka.Message) int {
	seen, n := map[string]bool{}, 0
	for _, m := range msgs {
		k := string(m.Key) + string(m.Value[:40])
		if seen[k] {
			n++
		}
		seen[k] = true
	}
	return n
}

// latestStates reads the quota topic from the start, as a new cache does,
// and keeps the last state per key.
func latestStates(t *testing.T, broker, topic string) (map[string]map[string]any, int) {
	t.Helper()
	conns := map[string]map[string]any{}
	read := 0
	for p := range 2 {
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{broker}, Topic: topic, Partition: p, MaxWait: 50 * time.Millisecond})
		end, err := lastOffset(broker, topic, p)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		for end > 0 {
			m, err := r.ReadMessage(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if strings.HasPrefix(string(m.Key), "zz/roll/") { // the test's segment-roll markers
				if m.Offset+1 >= end {
					break
				}
				continue
			}
			read++
			var v map[string]any
			if err := json.Unmarshal(m.Value, &v); err != nil {
				t.Fatal(err)
			}
			conns[string(m.Key)] = v
			if m.Offset+1 >= end {
				break
			}
		}
		cancel()
		r.Close()
	}
	return conns, read
}

func lastOffset(broker, topic string, p int) (int64, error) {
	c := &kafka.Client{Addr: kafka.TCP(broker)}
	res, err := c.ListOffsets(context.Background(), &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: {kafka.LastOffsetOf(p)}}})
	if err != nil {
		return 0, err
	}
	return res.Topics[topic][0].LastOffset, nil
}

func TestSeedScenarioAndCompactedQuotaState(t *testing.T) {
	e := newEnv(t)
	r := e.startAggregator(nil)
	oct := time.Date(2026, 10, 31, 12, 0, 0, 0, time.UTC)
	var msgs []kafka.Message
	for i := 1; i <= 50; i++ {
		msgs = append(msgs, eventMsg(&schemas.UsageEvent{ID: fmt.Sprint("f", i), TenantID: "free-co", UserID: "u", FeatureType: "ai_generation",
			Quantity: decimal.NewFromInt(1), Timestamp: oct.Add(time.Duration(i) * time.Second)}))
	}
	for i := 1; i <= 120; i++ {
		msgs = append(msgs, eventMsg(&schemas.UsageEvent{ID: fmt.Sprint("p", i), TenantID: "pro-co", UserID: "u", FeatureType: "ai_generation",
			Quantity: decimal.NewFromInt(1), Timestamp: oct.Add(time.Duration(i) * time.Second)}))
	}
	e.publish(msgs)
	waitLevel := func(key, level, usage string) map[string]any {
		t.Helper()
		var got map[string]any
		testenv.Eventually(t, 30*time.Second, key+" at "+level, func() (bool, error) {
			states, _ := latestStates(t, e.broker, e.cfg.QuotaTopic)
			got = states[key]
			return got != nil && got["level"] == level && got["usage"] == usage, nil
		})
		return got
	}
	waitLevel("free-co/ai_generation/2026-10", "at_limit", "50")
	pro := waitLevel("pro-co/ai_generation/2026-10", "ok", "120")
	if pro["limit"] != "-1" {
		t.Fatalf("PRO limit %v", pro["limit"])
	}
	e.publish([]kafka.Message{eventMsg(&schemas.UsageEvent{ID: "f51", TenantID: "free-co", UserID: "u", FeatureType: "ai_generation",
		Quantity: decimal.NewFromInt(1), Timestamp: oct.Add(time.Minute)})})
	waitLevel("free-co/ai_generation/2026-10", "blocked", "51")
	e.publish([]kafka.Message{eventMsg(&schemas.UsageEvent{ID: "nov1", TenantID: "free-co", UserID: "u", FeatureType: "ai_generation",
		Quantity: decimal.NewFromInt(1), Timestamp: time.Date(2026, 11, 1, 0, 0, 1, 0, time.UTC)})})
	nov := waitLevel("free-co/ai_generation/2026-11", "ok", "1")
	if nov["period_start"] != "2026-11-01T00:00:00Z" {
		t.Fatalf("new period: %v", nov)
	}
	r.shutdown(t)

	// Compaction: after the cleaner ran, a new reader sees fewer messages
	// than were published but still the latest state of every key.
	published := 0
	for p := range 2 {
		n, err := lastOffset(e.broker, e.cfg.QuotaTopic, p)
		if err != nil {
			t.Fatal(err)
		}
		published += int(n)
	}
	// One more write rolls the active segment so the cleaner can take it.
	time.Sleep(300 * time.Millisecond)
	w := &kafka.Writer{Addr: kafka.TCP(e.broker), Topic: e.cfg.QuotaTopic, Balancer: kafka.Murmur2Balancer{}}
	defer w.Close()
	// A segment rolls (and becomes cleanable) only when a write arrives
	// after segment.ms: write one marker per partition on each poll.
	var roll []kafka.Message
	for p := 0; len(roll) < 2; p++ {
		k := []byte(fmt.Sprintf("zz/roll/%d", p))
		if (kafka.Murmur2Balancer{}).Balance(kafka.Message{Key: k}, 0, 1) == len(roll) {
			roll = append(roll, kafka.Message{Key: k, Value: []byte(`{}`)})
		}
	}
	testenv.Eventually(t, 60*time.Second, "compaction of the quota-state topic", func() (bool, error) {
		_ = w.WriteMessages(context.Background(), roll...)
		states, read := latestStates(t, e.broker, e.cfg.QuotaTopic)
		ok := states["free-co/ai_generation/2026-10"]["level"] == "blocked" && states["pro-co/ai_generation/2026-10"]["usage"] == "120"
		return ok && read < published, nil
	})
}

// A plan change on usage.plan-assignments reaches the quota state without
// a restart, and a tombstone reverts it; bad records are ignored.
func TestPlanAssignmentTakesEffectWithoutRestart(t *testing.T) {
	e := newEnv(t)
	w := &kafka.Writer{Addr: kafka.TCP(e.broker), Topic: e.cfg.AssignmentTopic, BatchTimeout: time.Millisecond}
	defer w.Close()
	// Known before start: a bad record, then a valid one.
	if err := w.WriteMessages(context.Background(),
		kafka.Message{Key: []byte("up-co"), Value: []byte(`{"plan":"GOLD"}`)},
		kafka.Message{Key: []byte("up-co"), Value: []byte(`{"plan":"FREE"}`)}); err != nil {
		t.Fatal(err)
	}
	r := e.startAggregator(nil)
	at := time.Now().UTC().Add(-time.Minute)
	var msgs []kafka.Message
	for i := range 60 {
		msgs = append(msgs, eventMsg(&schemas.UsageEvent{ID: fmt.Sprint("u", i), TenantID: "up-co", UserID: "u", FeatureType: "ai_generation",
			Quantity: decimal.NewFromInt(1), Timestamp: at.Add(time.Duration(i) * time.Millisecond)}))
	}
	e.publish(msgs)
	key := "up-co/ai_generation/" + at.Format("2006-01")
	wait := func(level, plan string) {
		t.Helper()
		testenv.Eventually(t, 30*time.Second, key+" "+level+" on "+plan, func() (bool, error) {
			st, _ := latestStates(t, e.broker, e.cfg.QuotaTopic)
			return st[key]["level"] == level && st[key]["plan"] == plan && st[key]["usage"] == "60", nil
		})
	}
	wait("blocked", "FREE")
	if err := w.WriteMessages(context.Background(), kafka.Message{Key: []byte("up-co"), Value: []byte(`{"plan":"PRO"}`)}); err != nil {
		t.Fatal(err)
	}
	wait("ok", "PRO")
	if err := w.WriteMessages(context.Background(), kafka.Message{Key: []byte("up-co")}); err != nil { // tombstone
		t.Fatal(err)
	}
	wait("blocked", "FREE") // back to default_plan
	r.shutdown(t)
}

// reconcile folds in what streaming leaves out (events later than the
// allowed lateness, duplicates older than the dedup horizon) and repairs a
// corrupted row; a second pass finds nothing to do.
func TestReconcileRepairsToTheRawTable(t *testing.T) {
	e := newEnv(t)
	e.cfg.DedupHorizon = 3
	msgs, _ := mixed(1500, 99)
	e.publish(msgs)
	e.publish(msgs[:100]) // replayed far beyond the 3-message horizon: streaming counts them twice
	r := e.startAggregator(nil)
	e.waitCaughtUp(len(msgs) + 100)
	e.waitRaw(uint64(len(msgs) - countDuplicates(msgs)))
	e.includeLate = true
	if bad := e.countMismatches(); bad == 0 {
		t.Fatal("streaming alone matched the raw table: the test is not exercising reconcile")
	}
	e.includeLate = false
	r.shutdown(t)
	ctx := context.Background()
	// Corrupt one hour row, as a bug or a manual edit would.
	if err := e.store.Conn().Exec(ctx, `INSERT INTO usage_1h SELECT tenant_id, feature_type, subject, window_start, aggregation,
 value + toDecimal128(1, 9), events, latest_ns, source_partition, source_offset, updated_at, version + 1 FROM usage_1h FINAL LIMIT 1`); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	rep, err := reconcile.Run(ctx, e.store.Conn(), e.plans, now.Add(-24*time.Hour), now.Add(time.Hour), e.log)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Repaired[state.Hour] < 1 || rep.Total() < 10 || rep.Events == 0 {
		t.Fatalf("first pass repaired too little: %+v", rep)
	}
	e.includeLate = true
	e.assertTablesMatchRaw()
	// Every repaired period's exact total comes back for usage.quota-state,
	// equal to the repaired period rows summed over subjects.
	if rep.Repaired[state.Period] == 0 || len(rep.Quotas) == 0 {
		t.Fatalf("period rows repaired %d, quota totals to publish %d", rep.Repaired[state.Period], len(rep.Quotas))
	}
	for _, q := range rep.Quotas {
		if q.Aggregation != plans.Sum {
			continue
		}
		var total string
		if err := e.store.Conn().QueryRow(ctx, `SELECT toString(sum(value)) FROM usage_period FINAL
 WHERE tenant_id = ? AND feature_type = ? AND period_id = ?`, q.Tenant, q.Meter, q.PeriodID).Scan(&total); err != nil {
			t.Fatal(err)
		}
		if want := decimal.RequireFromString(total); !q.Usage.Equal(want) {
			t.Fatalf("quota %v: reconcile publishes %s, period rows hold %s", q.QuotaKey, q.Usage, want)
		}
		if qs := QuotaState(e.plans, q, time.Now()); qs.Validate() != nil || qs.Final {
			t.Fatalf("quota state %+v: %v (an open period is not final)", qs, qs.Validate())
		}
	}
	rep, err = reconcile.Run(ctx, e.store.Conn(), e.plans, now.Add(-24*time.Hour), now.Add(time.Hour), e.log)
	if err != nil || rep.Total() != 0 {
		t.Fatalf("second pass: %+v %v", rep, err)
	}
	// A restarted aggregator keeps the repaired totals: its rows carry the
	// offsets they include.
	r = e.startAggregator(nil)
	time.Sleep(2 * time.Second)
	r.shutdown(t)
	e.assertTablesMatchRaw()
}

// unknown_meters: reject sends such events to the DLQ with their code;
// the default (sum) aggregates them and counts them in a metric.
func TestUnknownMeterRejectedToDLQ(t *testing.T) {
	e := newEnv(t)
	e.plans.UnknownMeters = "reject"
	r := e.startAggregator(nil)
	at := time.Now().UTC().Add(-time.Minute)
	e.publish([]kafka.Message{
		eventMsg(&schemas.UsageEvent{ID: "n1", TenantID: "acme", FeatureType: "not_configured", Quantity: decimal.NewFromInt(3), Timestamp: at}),
		eventMsg(&schemas.UsageEvent{ID: "k1", TenantID: "acme", FeatureType: "api_calls", Quantity: decimal.NewFromInt(2), Timestamp: at}),
	})
	e.waitCaughtUp(2)
	r.shutdown(t)
	dlq := testenv.ReadN(t, e.broker, e.cfg.DLQTopic, 1)
	if h := testenv.Headers(dlq[0]); h["usage.error"] != "unknown_meter" || !strings.Contains(string(dlq[0].Value), `"n1"`) {
		t.Fatalf("DLQ holds %s %v", dlq[0].Value, h)
	}
	var n uint64
	if err := e.store.Conn().QueryRow(context.Background(), "SELECT count() FROM usage_1m FINAL WHERE feature_type = 'not_configured'").Scan(&n); err != nil || n != 0 {
		t.Fatalf("rejected meter aggregated: %d rows (%v)", n, err)
	}
}

// A partition that only ever saw invalid input has no watermark (stored as
// 1970). Restoring it must not load every aggregate row ever written.
func TestRestoreIgnoresAnEmptyWatermark(t *testing.T) {
	e := setupEnv(t, true)
	ctx := context.Background()
	st := aggstore.New(e.store.Conn())
	old := &state.Row{Key: state.Key{Tenant: "acme", Meter: "api_calls", Grain: state.Minute,
		Start: time.Now().AddDate(-1, 0, 0).Truncate(time.Minute).Unix()}, Aggregation: plans.Sum, Value: decimal.NewFromInt(1), Events: 1, Offset: 5}
	if err := st.WriteRows(ctx, state.Minute, []*state.Row{old}); err != nil {
		t.Fatal(err)
	}
	if err := st.WriteCheckpoints(ctx, e.cfg.GroupID, e.cfg.Topic, []state.Checkpoint{{Partition: 0, Offset: 9}}); err != nil {
		t.Fatal(err)
	}
	svc, err := New(e.cfg, e.plans, st, e.log)
	if err != nil {
		t.Fatal(err)
	}
	s, starts, err := svc.restore(ctx, []kafka.PartitionAssignment{{ID: 0}})
	if err != nil {
		t.Fatal(err)
	}
	if starts[0] != 9 {
		t.Fatalf("resumes at %d, want the checkpoint 9", starts[0])
	}
	if n := s.Rows(); n != 0 {
		t.Fatalf("restore loaded %d rows, including a year-old one: the 1970 watermark widened the load", n)
	}
}
