package dlq_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/segmentio/kafka-go"
	"github.com/shopspring/decimal"
	"go.uber.org/zap"

	"github.com/usagemeter/usagemeter/ops/dlq"
	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/schemas/migrations"
	"github.com/usagemeter/usagemeter/testenv"
)

// pipeline is a private events topic, DLQ topic and database, with the
// real usage-consumer binary reading them.
type pipeline struct {
	broker, events, dlqTopic, db string
	conn                         driver.Conn
	aggregator, consumerGroup    string // the usage-aggregator binary; the consumer's group
}

func startPipeline(t *testing.T) pipeline {
	t.Helper()
	broker := testenv.Kafka(t)
	conn, db := testenv.ClickHouse(t)
	if _, err := migrations.Apply(context.Background(), conn); err != nil {
		t.Fatal(err)
	}
	p := pipeline{broker: broker, events: testenv.Name("events"), dlqTopic: testenv.Name("dlq"), db: db, conn: conn}
	testenv.CreateTopic(t, broker, p.events, 4, "message.timestamp.type", "LogAppendTime")
	// A small max.message.bytes on the DLQ: the one large letter (25 KB) is refused
	// by Kafka for good and lands in dead_letters, the consumer's fallback.
	testenv.CreateTopic(t, broker, p.dlqTopic, 4, "max.message.bytes", "20000")
	bins, err := testenv.BuildCommands(t.TempDir(), "./consumer/cmd/usage-consumer", "./aggregator/cmd/usage-aggregator")
	if err != nil {
		t.Fatal(err)
	}
	p.aggregator, p.consumerGroup = bins[1], testenv.Name("consumer")
	env := append(cleanEnv(), "USAGE_KAFKA_BROKERS="+broker, "USAGE_KAFKA_TOPIC="+p.events, "USAGE_KAFKA_DLQ_TOPIC="+p.dlqTopic,
		"USAGE_KAFKA_GROUP_ID="+p.consumerGroup, "USAGE_KAFKA_FLUSH_INTERVAL=200ms",
		"USAGE_CLICKHOUSE_ADDR="+testenv.ClickHouseAddr(t), "USAGE_CLICKHOUSE_DATABASE="+db, "USAGE_HTTP_ADDR=127.0.0.1:0",
		"USAGE_CREATE_TOPICS=false")
	logf, err := os.Create(filepath.Join(t.TempDir(), "consumer.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bins[0])
	cmd.Env, cmd.Stdout, cmd.Stderr = env, logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
		}
		_ = logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("consumer log:\n%s", b)
		}
	})
	return p
}

// cleanEnv is the environment without the caller's USAGE_* variables.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "USAGE_") {
			env = append(env, kv)
		}
	}
	return env
}

// reconcile runs the documented procedure after a replay: `usage-aggregator
// reconcile` over the replayed days rebuilds the aggregates from the raw
// table and publishes the repaired quota states to quotaTopic.
func (p pipeline) reconcile(t *testing.T, quotaTopic string) string {
	t.Helper()
	day := time.Now().UTC().Format(time.DateOnly)
	cmd := exec.Command(p.aggregator, "--plans", filepath.Join(testenv.RepoRoot(t), "schemas/plans/plans.example.yaml"),
		"reconcile", "--from", day, "--to", day, "--raw-group", p.consumerGroup)
	cmd.Env = append(cleanEnv(), "USAGE_AGGREGATOR_BROKERS="+p.broker, "USAGE_AGGREGATOR_TOPIC="+p.events,
		"USAGE_AGGREGATOR_GROUP_ID="+testenv.Name("aggregator"), "USAGE_AGGREGATOR_QUOTA_TOPIC="+quotaTopic,
		"USAGE_AGGREGATOR_ASSIGNMENT_TOPIC="+testenv.Name("no-assignments"),
		"USAGE_CLICKHOUSE_ADDR="+testenv.ClickHouseAddr(t), "USAGE_CLICKHOUSE_DATABASE="+p.db)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("usage-aggregator reconcile: %v\n%s", err, out)
	}
	return string(out)
}

func eventJSON(id, tenantField, tenant string, qty int, extra string) []byte {
	return fmt.Appendf(nil, `{"id":%q,%q:%q,"feature_type":"api_calls","quantity":"%d","timestamp":%q%s}`,
		id, tenantField, tenant, qty, time.Now().UTC().Format(time.RFC3339), extra)
}

// rawTotals is the independent side: rows and the quantity sum in
// usage_events FINAL.
func rawTotals(t *testing.T, conn driver.Conn) (uint64, decimal.Decimal) {
	t.Helper()
	var n uint64
	var sum decimal.Decimal
	if err := conn.QueryRow(context.Background(), "SELECT count(), sum(quantity) FROM usage_events FINAL").Scan(&n, &sum); err != nil {
		t.Fatal(err)
	}
	return n, sum
}

func sumEnds(t *testing.T, broker, topic string) int64 {
	var s int64
	for _, o := range testenv.EndOffsets(t, broker, topic, 4) {
		s += o
	}
	return s
}

// A publisher deploy wrote "tenant" instead of "tenant_id": 20 distinct
// events, each sent twice (a retry), all in the DLQ. 5 more broken copies
// carry ids whose good version is already stored, and one large broken
// event went to the dead_letters fallback. Replaying with a rename fixes
// and counts the 21 distinct events once; a second replay publishes
// nothing and changes no total.
func TestReplayCountsOnceAndTwiceChangesNothing(t *testing.T) {
	p := startPipeline(t)
	ctx := context.Background()
	w := &kafka.Writer{Addr: kafka.TCP(p.broker), Topic: p.events, Balancer: &kafka.Murmur2Balancer{}, RequiredAcks: kafka.RequireAll,
		BatchTimeout: 5 * time.Millisecond}
	defer w.Close()
	tenants := []string{"acme", "globex"}
	var msgs []kafka.Message
	var good []string
	for i := range 30 { // valid, quantity 1 each
		tn := tenants[i%2]
		id := fmt.Sprintf("good-%d", i)
		good = append(good, id)
		msgs = append(msgs, kafka.Message{Key: []byte(tn), Value: eventJSON(id, "tenant_id", tn, 1, "")})
	}
	for i := range 20 { // broken, quantity 10 each, sent twice
		tn := tenants[i%2]
		m := kafka.Message{Key: []byte(tn), Value: eventJSON(fmt.Sprintf("bad-%d", i), "tenant", tn, 10, "")}
		msgs = append(msgs, m, m)
	}
	for i := range 5 { // broken copies of stored events
		tn := tenants[i%2]
		msgs = append(msgs, kafka.Message{Key: []byte(tn), Value: eventJSON(good[i], "tenant", tn, 1000, "")})
	}
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	src := dlq.Source{Brokers: []string{p.broker}, Topic: p.dlqTopic, Conn: p.conn}
	var letters []dlq.Letter
	testenv.Eventually(t, 90*time.Second, "30 rows and 45 letters", func() (bool, error) {
		n, _ := rawTotals(t, p.conn)
		var err error
		letters, err = src.Letters(ctx, dlq.Filter{})
		return n == 30 && len(letters) == 45, err
	})
	// Over the DLQ topic's 20000 bytes (random hex: no compression shrinks
	// it): Kafka refuses the letter for good and the consumer keeps it in
	// dead_letters. Sent alone, so no other letter shares its batch.
	// Quantity 100.
	var meta []string
	for i := range 24 {
		b := make([]byte, 500)
		_, _ = rand.Read(b)
		meta = append(meta, fmt.Sprintf("%q:%q", fmt.Sprint("k", i), hex.EncodeToString(b)))
	}
	bigMsg := kafka.Message{Key: []byte("acme"), Value: eventJSON("bad-big", "tenant", "acme", 100, `,"metadata":{`+strings.Join(meta, ",")+"}")}
	msgs = append(msgs, bigMsg)
	if err := w.WriteMessages(ctx, bigMsg); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 60*time.Second, "46 letters", func() (bool, error) {
		var err error
		letters, err = src.Letters(ctx, dlq.Filter{})
		return len(letters) == 46, err
	})
	counts := map[string]int{}
	for _, c := range dlq.CountBy(letters) {
		counts[c.Store+"/"+c.Tenant] += c.Letters
		if !strings.HasPrefix(c.Tag, string(schemas.CodeUnknownField)) && !strings.HasPrefix(c.Tag, string(schemas.CodeMissingField)) {
			t.Errorf("tag %q: want unknown_field or missing_field", c.Tag)
		}
	}
	if want := map[string]int{"kafka/acme": 23, "kafka/globex": 22, "clickhouse/acme": 1}; fmt.Sprint(counts) != fmt.Sprint(want) {
		t.Fatalf("letters per store/tenant: %v, want %v", counts, want)
	}
	globex, err := src.Letters(ctx, dlq.Filter{Tenant: "globex", Store: dlq.StoreKafka})
	if err != nil || len(globex) != 22 {
		t.Fatalf("filter tenant globex: %d letters, %v; want 22", len(globex), err)
	}
	future, err := src.Letters(ctx, dlq.Filter{From: time.Now().Add(time.Hour)})
	if err != nil || len(future) != 0 {
		t.Fatalf("filter from +1h: %d letters, %v; want 0", len(future), err)
	}

	tr, err := dlq.ParseTransform([]string{"tenant=tenant_id"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	rp := dlq.Replayer{Brokers: []string{p.broker}, EventsTopic: p.events, Conn: p.conn, Log: zap.NewNop()}
	before := sumEnds(t, p.broker, p.events)
	want := map[string]int{dlq.WouldReplay: 21, dlq.DuplicateLetter: 20, dlq.AlreadyStored: 5}

	dry, err := rp.Replay(ctx, letters, tr, true)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(dry.Counts) != fmt.Sprint(want) {
		t.Fatalf("dry run: %v, want %v", dry.Counts, want)
	}
	if got := sumEnds(t, p.broker, p.events); got != before {
		t.Fatalf("dry run published %d messages", got-before)
	}
	if n, _ := testenv.CountRows(ctx, p.conn, "FROM dlq_replays"); n != 0 {
		t.Fatalf("dry run recorded %d rows", n)
	}

	first, err := rp.Replay(ctx, letters, tr, false)
	if err != nil {
		t.Fatal(err)
	}
	want[dlq.Replayed], want[dlq.WouldReplay] = 21, 0
	delete(want, dlq.WouldReplay)
	if fmt.Sprint(first.Counts) != fmt.Sprint(want) {
		t.Fatalf("replay: %v, want %v", first.Counts, want)
	}
	if got := sumEnds(t, p.broker, p.events); got != before+21 {
		t.Fatalf("replay published %d messages, want 21", got-before)
	}
	// 30 good of quantity 1, 20 repaired of 10, the big one of 100.
	wantSum := decimal.NewFromInt(30 + 200 + 100)
	testenv.Eventually(t, 60*time.Second, "51 rows after the replay", func() (bool, error) {
		n, sum := rawTotals(t, p.conn)
		return n == 51 && sum.Equal(wantSum), nil
	})
	// The original key is kept, and the replay is marked on each message.
	all := testenv.ReadN(t, p.broker, p.events, len(msgs)+21)
	byLetter := map[string]dlq.Letter{}
	for _, l := range letters {
		byLetter[l.ID()] = l
	}
	replays := 0
	for _, m := range all {
		h := testenv.Headers(m)
		if h[dlq.HeaderReplayedFrom] == "" {
			continue
		}
		replays++
		l, ok := byLetter[h[dlq.HeaderReplayedFrom]]
		if !ok || string(m.Key) != string(l.Key) || h[schemas.HeaderError] != "" {
			t.Fatalf("replayed message key %q headers %v: not the key of a letter, or refusal headers kept", m.Key, h)
		}
		if want := schemas.PartitionFor(string(m.Key), 4); m.Partition != want {
			t.Fatalf("replayed %s on partition %d, want the tenant's %d", h[dlq.HeaderReplayedFrom], m.Partition, want)
		}
	}
	if replays != 21 {
		t.Fatalf("%d replayed messages on the events topic, want 21", replays)
	}

	// Reprocessing: reconcile folds the replayed events into the
	// aggregates and the quota states, per tenant equal to the raw table.
	quotaTopic := testenv.Name("quota")
	testenv.CreateTopic(t, p.broker, quotaTopic, 4, "cleanup.policy", "compact")
	out := p.reconcile(t, quotaTopic)
	sums := map[string]string{}
	for _, q := range []string{"SELECT tenant_id, sum(quantity) AS total FROM usage_events FINAL GROUP BY tenant_id",
		"SELECT tenant_id, sum(value) AS total FROM usage_1d FINAL GROUP BY tenant_id",
		"SELECT tenant_id, sum(value) AS total FROM usage_period FINAL GROUP BY tenant_id"} {
		var rows []struct {
			Tenant string          `ch:"tenant_id"`
			Total  decimal.Decimal `ch:"total"`
		}
		if err := p.conn.Select(ctx, &rows, q); err != nil {
			t.Fatal(err)
		}
		for _, r := range rows {
			sums[r.Tenant] += " " + r.Total.String()
		}
	}
	// acme: 15 good + 10 repaired x 10 + the big one's 100; globex: 15 + 100.
	// Raw, usage_1d and usage_period agree.
	if got := fmt.Sprint(sums); got != "map[acme: 215 215 215 globex: 115 115 115]" {
		t.Fatalf("raw, usage_1d and usage_period per tenant: %s\nreconcile: %s", got, out)
	}
	usage := map[string]string{}
	for _, m := range testenv.ReadN(t, p.broker, quotaTopic, 2) {
		var st schemas.QuotaState
		if err := json.Unmarshal(m.Value, &st); err != nil {
			t.Fatal(err)
		}
		usage[st.TenantID] = st.Usage.String()
	}
	if got := fmt.Sprint(usage); got != "map[acme:215 globex:115]" {
		t.Fatalf("quota states after reconcile: %s", got)
	}

	// Twice: nothing published, nothing counted. The second copy of each
	// repaired event is now simply stored.
	second, err := rp.Replay(ctx, letters, tr, false)
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]int{dlq.AlreadyReplayed: 21, dlq.AlreadyStored: 25}; fmt.Sprint(second.Counts) != fmt.Sprint(want) {
		t.Fatalf("second replay: %v, want %v", second.Counts, want)
	}
	if got := sumEnds(t, p.broker, p.events); got != before+21 {
		t.Fatalf("second replay published %d messages", got-before-21)
	}
	if n, sum := rawTotals(t, p.conn); n != 51 || !sum.Equal(wantSum) {
		t.Fatalf("after the second replay: %d rows, sum %s; want 51, %s", n, sum, wantSum)
	}
	var rec []struct {
		Outcome string `ch:"outcome"`
		N       uint64 `ch:"n"`
	}
	if err := p.conn.Select(ctx, &rec, "SELECT outcome, count() AS n FROM dlq_replays GROUP BY outcome ORDER BY outcome"); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(rec); got != "[{already_replayed 21} {already_stored 30} {duplicate_letter 20} {replayed 21}]" {
		t.Fatalf("dlq_replays: %s", got)
	}
	// A letter the rename cannot fix is reported, not published.
	unfixable, err := rp.Replay(ctx, letters[:1], dlq.Transform{Rename: [][2]string{{"feature_type", "meter"}}}, true)
	if err != nil || unfixable.Counts[dlq.StillInvalid] != 1 {
		t.Fatalf("an unfixed letter: %v, %v; want still_invalid", unfixable.Counts, err)
	}
}
