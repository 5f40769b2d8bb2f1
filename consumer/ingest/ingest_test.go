package ingest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/segmentio/kafka-go"
	"github.com/shopspring/decimal"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/usagemeter/usagemeter/consumer/chstore"
	"github.com/usagemeter/usagemeter/producer"
	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/svckit/chconn"
	"github.com/usagemeter/usagemeter/testenv"
)

// env is one test's private topics, group and ClickHouse database.
type env struct {
	t      testing.TB
	broker string
	cfg    Config
	store  *chstore.Store
	log    *zap.Logger
}

func newEnv(t testing.TB, chAddr string) *env {
	t.Helper()
	broker := testenv.Kafka(t)
	if chAddr == "" {
		chAddr = testenv.ClickHouseAddr(t)
	}
	cfg := DefaultConfig()
	cfg.Brokers = []string{broker}
	cfg.Topic = testenv.Name("events")
	cfg.DLQTopic = cfg.Topic + ".dlq"
	cfg.GroupID = testenv.Name("group")
	cfg.FlushInterval = 200 * time.Millisecond
	cfg.RetryMax = time.Second
	testenv.CreateTopic(t, broker, cfg.Topic, 4)
	testenv.CreateTopic(t, broker, cfg.DLQTopic, 1)

	log := zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel))
	chCfg := chconn.DefaultConfig()
	chCfg.Addr = []string{chAddr}
	chCfg.Database = testenv.Name("t")
	ctx := context.Background()
	store, err := chstore.Open(ctx, chCfg, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = store.Conn().Exec(context.Background(), "DROP DATABASE IF EXISTS "+chCfg.Database)
		_ = store.Close()
	})
	if err := store.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	return &env{t: t, broker: broker, cfg: cfg, store: store, log: log}
}

// running is a consumer started in the background.
type running struct {
	c    *Consumer
	stop context.CancelFunc
	done chan error
	reg  *prometheus.Registry
}

func (e *env) start(opts ...func(*Consumer)) *running {
	e.t.Helper()
	reg := prometheus.NewRegistry()
	c, err := New(e.cfg, e.store, e.log, WithRegisterer(reg))
	if err != nil {
		e.t.Fatal(err)
	}
	for _, o := range opts {
		o(c)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{c: c, stop: cancel, done: make(chan error, 1), reg: reg}
	go func() { r.done <- c.Run(ctx) }()
	e.t.Cleanup(func() { cancel(); <-r.done })
	return r
}

// shutdown cancels the consumer like SIGTERM does and returns Run's result.
func (r *running) shutdown(t testing.TB) error {
	t.Helper()
	r.stop()
	select {
	case err := <-r.done:
		r.done <- err // for the cleanup
		return err
	case <-time.After(60 * time.Second):
		t.Fatal("consumer did not stop within 60s")
		return nil
	}
}

func (e *env) publisher(opts ...producer.Option) *producer.Publisher {
	e.t.Helper()
	p, err := producer.New([]string{e.broker}, append([]producer.Option{producer.WithTopic(e.cfg.Topic)}, opts...)...)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = p.Close() })
	return p
}

func (e *env) count(from string, args ...any) uint64 {
	e.t.Helper()
	n, err := testenv.CountRows(context.Background(), e.store.Conn(), from, args...)
	if err != nil {
		e.t.Fatal(err)
	}
	return n
}

func (e *env) waitDedup(want uint64, timeout time.Duration) {
	e.t.Helper()
	testenv.Eventually(e.t, timeout, fmt.Sprintf("%d deduplicated rows", want), func() (bool, error) {
		n, err := testenv.CountRows(context.Background(), e.store.Conn(), "FROM usage_events FINAL")
		return n >= want, err
	})
	if got := e.count("FROM usage_events FINAL"); got != want {
		e.t.Fatalf("deduplicated rows: got %d, want %d", got, want)
	}
}

type key struct{ tenant, meter string }

// sums reads exact per-tenant, per-meter totals from the dedup view.
func (e *env) sums() map[key]decimal.Decimal {
	e.t.Helper()
	rows, err := e.store.Conn().Query(context.Background(),
		"SELECT tenant_id, feature_type, toString(sum(quantity)) FROM usage_events_dedup GROUP BY tenant_id, feature_type")
	if err != nil {
		e.t.Fatal(err)
	}
	defer rows.Close()
	got := map[key]decimal.Decimal{}
	for rows.Next() {
		var tenant, meter, total string
		if err := rows.Scan(&tenant, &meter, &total); err != nil {
			e.t.Fatal(err)
		}
		got[key{tenant, meter}] = decimal.RequireFromString(total)
	}
	return got
}

// mixed builds n events over several tenants, meters and users with
// quantities that expose any float rounding (x.001 ... 9 decimals).
func mixed(n int, base time.Time) ([]schemas.UsageEvent, map[key]decimal.Decimal) {
	tenants := []string{"acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne"}
	meters := []string{"api_calls", "ai_generation", "storage", "tokens"}
	want := map[key]decimal.Decimal{}
	events := make([]schemas.UsageEvent, n)
	for i := range events {
		q := decimal.New(int64(i%1000)+1, -3).Add(decimal.New(int64(i%7), -9)) // e.g. 0.123000004
		e := schemas.UsageEvent{
			TenantID:    tenants[i%len(tenants)],
			UserID:      fmt.Sprintf("user-%d", i%97),
			FeatureType: meters[(i/3)%len(meters)],
			Quantity:    q,
			Timestamp:   base.Add(time.Duration(i) * time.Millisecond),
			Metadata:    map[string]string{"endpoint": "/v1/items", "i": fmt.Sprint(i)},
		}
		events[i] = e
		k := key{e.TenantID, e.FeatureType}
		want[k] = want[k].Add(q)
	}
	return events, want
}

func assertSums(t *testing.T, got, want map[key]decimal.Decimal) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d tenant/meter totals, want %d", len(got), len(want))
	}
	for k, w := range want {
		if g, ok := got[k]; !ok || !g.Equal(w) {
			t.Errorf("%s/%s: got %s, want %s", k.tenant, k.meter, g, w)
		}
	}
}

func TestHundredThousandEventsExactlyOnce(t *testing.T) {
	e := newEnv(t, "")
	e.cfg.BatchSize = 20000
	r := e.start()
	p := e.publisher(producer.WithAsync(func(err error, _ []schemas.UsageEvent) { t.Errorf("async publish: %v", err) }))
	const n = 100_000
	events, want := mixed(n, time.Now().Add(-time.Hour))
	for i := 0; i < n; i += 1000 {
		if err := p.Publish(context.Background(), events[i:i+1000]...); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if st := p.Stats(); st.Published != n {
		t.Fatalf("publisher acknowledged %d, want %d", st.Published, n)
	}
	e.waitDedup(n, 120*time.Second)
	assertSums(t, e.sums(), want)
	if err := r.shutdown(t); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if got := testutil.ToFloat64(r.c.m.inserted); got < n {
		t.Fatalf("inserted metric %v < %d", got, n)
	}
	assertCommittedToEnd(t, e)
}

// assertCommittedToEnd checks the group's committed offsets equal the end
// of every partition: everything read was committed.
func assertCommittedToEnd(t *testing.T, e *env) {
	t.Helper()
	client := &kafka.Client{Addr: kafka.TCP(e.broker)}
	off, err := client.OffsetFetch(context.Background(), &kafka.OffsetFetchRequest{GroupID: e.cfg.GroupID, Topics: map[string][]int{e.cfg.Topic: {0, 1, 2, 3}}})
	if err != nil {
		t.Fatal(err)
	}
	end := testenv.EndOffsets(t, e.broker, e.cfg.Topic, 4)
	if len(off.Topics[e.cfg.Topic]) != 4 {
		t.Fatalf("committed offsets for %d partitions, want 4", len(off.Topics[e.cfg.Topic]))
	}
	for _, po := range off.Topics[e.cfg.Topic] {
		if po.CommittedOffset != end[po.Partition] {
			t.Errorf("partition %d: committed %d, end %d", po.Partition, po.CommittedOffset, end[po.Partition])
		}
	}
}

// rawWriter publishes bytes as they are, like a producer in another language.
func (e *env) rawWriter() *kafka.Writer {
	w := &kafka.Writer{Addr: kafka.TCP(e.broker), Topic: e.cfg.Topic, Balancer: kafka.Murmur2Balancer{},
		RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond}
	e.t.Cleanup(func() { _ = w.Close() })
	return w
}

func vectorKey(v schemas.Vector) string {
	var probe struct {
		TenantID any `json:"tenant_id"`
	}
	if json.Unmarshal(v.Bytes(), &probe) == nil {
		if s, ok := probe.TenantID.(string); ok && s != "" {
			return s
		}
	}
	return "tenant-vec" // same key, so same partition, as the valid vectors
}

func TestVectorsPublishedTwiceCountedOnceAndInvalidToDLQ(t *testing.T) {
	e := newEnv(t, "")
	vectors, err := schemas.TestVectors()
	if err != nil {
		t.Fatal(err)
	}
	e.start()
	w := e.rawWriter()
	var msgs []kafka.Message
	valid, invalid := 0, 0
	for round := 0; round < 2; round++ {
		for _, v := range vectors {
			msgs = append(msgs, kafka.Message{Key: []byte(vectorKey(v)), Value: v.Bytes(),
				Headers: []kafka.Header{{Key: "vector", Value: []byte(v.Name)}}})
			if round == 0 {
				if v.Valid() {
					valid++
				} else {
					invalid++
				}
			}
		}
	}
	if err := w.WriteMessages(context.Background(), msgs...); err != nil {
		t.Fatal(err)
	}
	e.waitDedup(uint64(valid), 60*time.Second)

	// Every invalid vector, both copies, is in the DLQ with its code, its
	// original bytes and where it came from.
	dlq := testenv.ReadN(t, e.broker, e.cfg.DLQTopic, 2*invalid)
	byName := map[string]schemas.Vector{}
	for _, v := range vectors {
		byName[v.Name] = v
	}
	seen := map[string]int{}
	for _, m := range dlq {
		h := testenv.Headers(m)
		v, ok := byName[h["vector"]]
		if !ok {
			t.Fatalf("DLQ message without its original headers: %v", h)
		}
		if v.Valid() {
			t.Errorf("valid vector %s in DLQ", v.Name)
		}
		if h[schemas.HeaderError] != v.Expect {
			t.Errorf("%s: DLQ code %q, want %q", v.Name, h[schemas.HeaderError], v.Expect)
		}
		if string(m.Value) != string(v.Bytes()) {
			t.Errorf("%s: DLQ value differs from the original", v.Name)
		}
		if h[schemas.HeaderSourceTopic] != e.cfg.Topic || h[schemas.HeaderSourceOffset] == "" || h[schemas.HeaderSourcePartition] == "" || h[schemas.HeaderReason] == "" {
			t.Errorf("%s: incomplete DLQ headers %v", v.Name, h)
		}
		seen[v.Name]++
	}
	for _, v := range vectors {
		if !v.Valid() && seen[v.Name] != 2 {
			t.Errorf("%s: %d copies in DLQ, want 2", v.Name, seen[v.Name])
		}
	}
}

func TestInvalidEventsDoNotHoldUpTheirPartition(t *testing.T) {
	e := newEnv(t, "")
	e.start()
	w := e.rawWriter()
	// One tenant, so one partition: poison messages sit between valid ones.
	var msgs []kafka.Message
	const valid = 500
	now := time.Now().UTC().Format(time.RFC3339Nano)
	for i := 0; i < valid; i++ {
		msgs = append(msgs, kafka.Message{Key: []byte("acme"), Value: fmt.Appendf(nil,
			`{"id":"ok-%d","tenant_id":"acme","feature_type":"api_calls","quantity":"1","timestamp":%q}`, i, now)})
		if i%50 == 0 {
			msgs = append(msgs, kafka.Message{Key: []byte("acme"), Value: []byte(`{"id":"bad","tenant_id":"acme"`)})
		}
	}
	if err := w.WriteMessages(context.Background(), msgs...); err != nil {
		t.Fatal(err)
	}
	e.waitDedup(valid, 60*time.Second)
	if n := e.count("FROM usage_events FINAL WHERE tenant_id = ? AND quantity = 1", "acme"); n != valid {
		t.Fatalf("got %d rows for acme, want %d", n, valid)
	}
	dlq := testenv.ReadN(t, e.broker, e.cfg.DLQTopic, valid/50)
	for _, m := range dlq {
		if testenv.Headers(m)[schemas.HeaderError] != "malformed_json" {
			t.Fatalf("unexpected DLQ code %v", testenv.Headers(m))
		}
	}
}

var errCrash = errors.New("simulated crash between insert and commit")

func TestCrashAfterInsertBeforeCommit(t *testing.T) {
	e := newEnv(t, "")
	const n = 5000
	e.cfg.BatchSize = n // the whole input in one batch
	e.cfg.FlushInterval = 2 * time.Second
	events, want := mixed(n, time.Now().Add(-time.Hour))
	p := e.publisher()
	if err := p.Publish(context.Background(), events...); err != nil {
		t.Fatal(err)
	}

	var crashed sync.Once
	r := e.start(func(c *Consumer) {
		c.afterWrite = func(*batch) error {
			var err error
			crashed.Do(func() { err = errCrash })
			return err
		}
	})
	select {
	case err := <-r.done:
		r.done <- err
		if !errors.Is(err, errCrash) {
			t.Fatalf("consumer ended with %v, want the simulated crash", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("consumer did not reach the crash point")
	}
	// The rows are in ClickHouse, the offsets are not committed.
	if got := e.count("FROM usage_events"); got != n {
		t.Fatalf("after the crash: %d raw rows, want %d", got, n)
	}

	// A new member of the group re-reads from the last commit.
	r2 := e.start()
	testenv.Eventually(t, 60*time.Second, "re-read after the crash", func() (bool, error) {
		return testutil.ToFloat64(r2.c.m.inserted) >= n, nil
	})
	if err := r2.shutdown(t); err != nil {
		t.Fatal(err)
	}
	if raw := e.count("FROM usage_events"); raw < n+1 {
		t.Fatalf("expected the batch to be physically re-inserted, raw rows = %d", raw)
	}
	if got := e.count("FROM usage_events FINAL"); got != n {
		t.Fatalf("deduplicated rows: got %d, want %d", got, n)
	}
	assertSums(t, e.sums(), want)
	assertCommittedToEnd(t, e)
}

func TestClickHouseOutage(t *testing.T) {
	ch := testenv.StartClickHouse(t)
	e := newEnv(t, ch.Addr)
	e.cfg.BatchSize = 1000
	r := e.start()
	p := e.publisher()
	events, want := mixed(6000, time.Now().Add(-time.Hour))

	if err := p.Publish(context.Background(), events[:2000]...); err != nil {
		t.Fatal(err)
	}
	e.waitDedup(2000, 60*time.Second)

	ch.Stop()
	if err := p.Publish(context.Background(), events[2000:]...); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "insert errors while ClickHouse is down", func() (bool, error) {
		return testutil.ToFloat64(r.c.m.insertErrors) >= 2, nil
	})
	select {
	case err := <-r.done:
		t.Fatalf("consumer stopped during the outage: %v", err)
	default:
	}
	ch.Start()
	e.waitDedup(6000, 90*time.Second)
	assertSums(t, e.sums(), want)
	if err := r.shutdown(t); err != nil {
		t.Fatal(err)
	}
	assertCommittedToEnd(t, e)
}

// kcat (librdkafka) stands for any non-Go producer. With the murmur2
// partitioner it puts a tenant on the same partition as the Go SDK.
func TestKcatPublishedEventIsConsumed(t *testing.T) {
	kcat, err := exec.LookPath("kcat")
	if err != nil {
		t.Fatal("kcat not installed: run scripts/deps.sh kcat")
	}
	e := newEnv(t, "")
	e.start()
	ts := time.Now().UTC().Add(-time.Minute).Format(time.RFC3339)
	line := fmt.Sprintf(`globex|{"id":"kcat-1","tenant_id":"globex","user_id":"u1","feature_type":"api_calls","quantity":2.5,"timestamp":%q,"metadata":{"endpoint":"/v1/x"}}`, ts)
	cmd := exec.Command(kcat, "-P", "-b", e.broker, "-t", e.cfg.Topic, "-K", "|", "-X", "partitioner=murmur2_random")
	cmd.Stdin = strings.NewReader(line + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("kcat: %v\n%s", err, out)
	}
	// The SDK publishes a tenant "globex" event too: same partition.
	p := e.publisher()
	if err := p.Publish(context.Background(), schemas.UsageEvent{ID: "sdk-1", TenantID: "globex", FeatureType: "api_calls", Quantity: decimal.NewFromInt(1)}); err != nil {
		t.Fatal(err)
	}
	e.waitDedup(2, 60*time.Second)
	var (
		qty       string
		partition int32
		sdkPart   int32
		meta      string
	)
	row := e.store.Conn().QueryRow(context.Background(),
		"SELECT toString(quantity), kafka_partition, metadata_values[indexOf(metadata_keys, 'endpoint')] FROM usage_events FINAL WHERE tenant_id = ? AND id = ?", "globex", "kcat-1")
	if err := row.Scan(&qty, &partition, &meta); err != nil {
		t.Fatal(err)
	}
	if err := e.store.Conn().QueryRow(context.Background(), "SELECT kafka_partition FROM usage_events FINAL WHERE id = ?", "sdk-1").Scan(&sdkPart); err != nil {
		t.Fatal(err)
	}
	if !decimal.RequireFromString(qty).Equal(decimal.RequireFromString("2.5")) || meta != "/v1/x" {
		t.Fatalf("kcat event stored as quantity=%s endpoint=%q", qty, meta)
	}
	if partition != sdkPart {
		t.Fatalf("kcat put tenant globex on partition %d, the SDK on %d", partition, sdkPart)
	}
}

// A SIGTERM while the consumer is still starting (here: the broker never
// answers the partition-count read) is a clean stop, not an exit 1: make
// run's shutdown met this (issue 15).
func TestShutdownDuringStartUpIsClean(t *testing.T) {
	e := newEnv(t, "")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.cfg.Brokers = []string{l.Addr().String()}
	_ = l.Close() // nothing listens there now
	r := e.start()
	time.Sleep(500 * time.Millisecond) // inside the start-up retries
	if err := r.shutdown(t); err != nil {
		t.Fatalf("Run after a shutdown during start-up: %v, want nil", err)
	}
}
