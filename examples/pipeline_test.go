package examples

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/segmentio/kafka-go"

	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/testenv"
)

const partitions = 4

// plansYAML gives the vectors' meters two aggregations (sum, and max for
// the storage gauge); custom meters (exports.pdf-v2) are summed.
const plansYAML = `meters:
  api_calls:     { aggregation: sum }
  ai_generation: { aggregation: sum }
  storage:       { aggregation: max }
unknown_meters: sum
plans:
  METERED: { meters: { api_calls: { limit: -1 } } }
default_plan: METERED
`

// maxMeters are the meters plansYAML aggregates with max.
var maxMeters = map[string]bool{"storage": true}

// pipeline is the real usage-consumer and usage-aggregator on private
// topics of the shared broker and a private database.
type pipeline struct {
	broker                       string
	topic, dlq, late, quota, asg string
	rawGroup, aggGroup           string
	db                           string
	conn                         driver.Conn
	consumerEnv, aggregatorEnv   []string
}

func startPipeline(t *testing.T) *pipeline {
	t.Helper()
	broker := testenv.Kafka(t)
	chAddr := testenv.ClickHouseAddr(t)
	bins, err := testenv.BuildCommands(t.TempDir(), "./consumer/cmd/usage-consumer", "./aggregator/cmd/usage-aggregator")
	if err != nil {
		t.Fatal(err)
	}
	conn, db := testenv.ClickHouse(t)
	name := testenv.Name("examples")
	p := &pipeline{broker: broker, topic: name + ".events", dlq: name + ".dlq", late: name + ".late", quota: name + ".quota",
		asg: name + ".plans", rawGroup: name + ".raw", aggGroup: name + ".agg", db: db, conn: conn}
	testenv.CreateTopic(t, broker, p.topic, partitions)
	testenv.CreateTopic(t, broker, p.dlq, partitions)
	testenv.CreateTopic(t, broker, p.late, partitions)
	testenv.CreateTopic(t, broker, p.quota, partitions, "cleanup.policy", "compact")
	testenv.CreateTopic(t, broker, p.asg, 1, "cleanup.policy", "compact")
	dir := t.TempDir()
	plans := filepath.Join(dir, "plans.yaml")
	if err := os.WriteFile(plans, []byte(plansYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	common := []string{"USAGE_CLICKHOUSE_ADDR=" + chAddr, "USAGE_CLICKHOUSE_DATABASE=" + db,
		"USAGE_TOPIC_PARTITIONS=" + strconv.Itoa(partitions)}
	p.consumerEnv = serviceEnv(append(common, "USAGE_KAFKA_BROKERS="+broker, "USAGE_KAFKA_TOPIC="+p.topic,
		"USAGE_KAFKA_GROUP_ID="+p.rawGroup, "USAGE_KAFKA_DLQ_TOPIC="+p.dlq)...)
	p.aggregatorEnv = serviceEnv(append(common, "USAGE_AGGREGATOR_BROKERS="+broker, "USAGE_AGGREGATOR_TOPIC="+p.topic,
		"USAGE_AGGREGATOR_GROUP_ID="+p.aggGroup, "USAGE_AGGREGATOR_QUOTA_TOPIC="+p.quota,
		"USAGE_AGGREGATOR_LATE_TOPIC="+p.late, "USAGE_AGGREGATOR_DLQ_TOPIC="+p.dlq,
		"USAGE_AGGREGATOR_ASSIGNMENT_TOPIC="+p.asg)...)
	// The real migrate command first, so the two services never race to
	// create the tables.
	migrate := exec.Command(bins[0], "migrate")
	migrate.Env = p.consumerEnv
	if out, err := migrate.CombinedOutput(); err != nil {
		t.Fatalf("usage-consumer migrate: %v\n%s", err, out)
	}
	startService(t, dir, "usage-consumer", bins[0], p.consumerEnv, "run", "--http", "127.0.0.1:0")
	startService(t, dir, "usage-aggregator", bins[1], p.aggregatorEnv, "--plans", plans, "--http", "127.0.0.1:0", "run")
	return p
}

// serviceEnv is the environment without the caller's USAGE_* variables,
// so that only the test's settings reach a service.
func serviceEnv(settings ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "USAGE_") {
			env = append(env, kv)
		}
	}
	return append(env, settings...)
}

// startService starts a service binary and stops it with SIGTERM when the
// test ends; its log is shown when the test failed.
func startService(t *testing.T, dir, name, bin string, env []string, args ...string) {
	t.Helper()
	logPath := filepath.Join(dir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env, cmd.Dir, cmd.Stdout, cmd.Stderr = env, dir, f, f
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		_ = f.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			lines := strings.Split(strings.TrimSpace(string(b)), "\n")
			t.Logf("%s log, last lines:\n%s", name, strings.Join(lines[max(0, len(lines)-15):], "\n"))
		}
	})
}

// sent is one valid vector as an example published it.
type sent struct {
	id, tenant, meter string
	quantity          *big.Rat
}

// freshCorpus is every shared vector for one example: the invalid ones as
// they are (the example must refuse them all), the valid ones with an id of
// the example's own (the three examples publish the same vectors to one
// pipeline, and a shared id would be counted once) and the timestamp moved
// to at (vectors from 2026-11-01 to -20 on one partition would otherwise be
// later than the aggregator's allowed lateness behind each other, and go to
// usage.events.late by design), billing_period following it. Both edits keep
// every byte count, so the 32768-byte vector stays at the limit. It returns
// the .jsonl lines and, for the valid vectors, what the pipeline must count,
// read with encoding/json and math/big, independently of the decoder under
// test and of the examples.
func freshCorpus(t *testing.T, vecs []schemas.Vector, tag string, at time.Time) ([]line, []sent) {
	t.Helper()
	dec := schemas.NewValidator()
	var lines []line
	var want []sent
	for i, v := range vecs {
		data := v.Bytes()
		if v.Valid() {
			var fields map[string]any
			if err := decodeJSON(data, &fields); err != nil {
				t.Fatalf("%s: %v", v.Name, err)
			}
			oldID, _ := fields["id"].(string)
			id := fmt.Sprintf("%s-%0*d", tag, len(oldID)-len(tag)-1, i)
			ts := fields["timestamp"].(string)
			newTS := sameForm(t, ts, at)
			data = replaceOnce(t, v.Name, data, jsonQuote(oldID), jsonQuote(id))
			data = replaceOnce(t, v.Name, data, jsonQuote(ts), jsonQuote(newTS))
			if bp, ok := fields["billing_period"].(string); ok {
				data = replaceOnce(t, v.Name, data, jsonQuote(bp), jsonQuote(at.UTC().Format("2006-01")))
			}
			ev, err := dec.Decode(data)
			if err != nil || ev.ID != id || len(data) != len(v.Bytes()) {
				t.Fatalf("%s: the rewrite broke the vector (%v, id %q, %d bytes): %s", v.Name, err, ev.ID, len(data), data)
			}
			q := new(big.Rat)
			switch x := fields["quantity"].(type) {
			case string:
				q.SetString(x)
			case json.Number:
				q.SetString(string(x))
			}
			want = append(want, sent{id: id, tenant: fields["tenant_id"].(string), meter: fields["feature_type"].(string), quantity: q})
		}
		lines = append(lines, line{Name: v.Name, B64: base64.StdEncoding.EncodeToString(data)})
	}
	return lines, want
}

func jsonQuote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

func replaceOnce(t *testing.T, name string, data []byte, old, new string) []byte {
	t.Helper()
	if bytes.Count(data, []byte(old)) != 1 {
		t.Fatalf("%s: %s is not in the message exactly once", name, old)
	}
	return bytes.Replace(data, []byte(old), []byte(new), 1)
}

// sameForm writes at in the form of ts: its zone offset and its number of
// fractional digits (keeping ts's fraction), so the message keeps its length.
func sameForm(t *testing.T, ts string, at time.Time) string {
	t.Helper()
	orig, err := time.Parse(time.RFC3339Nano, ts)
	if err != nil {
		t.Fatalf("timestamp %q: %v", ts, err)
	}
	layout := "2006-01-02T15:04:05"
	if i := strings.IndexByte(ts, '.'); i >= 0 {
		end := strings.IndexAny(ts[i:], "Z+-")
		layout += "." + strings.Repeat("0", end-1)
	}
	_, offset := orig.Zone()
	return at.Add(time.Duration(orig.Nanosecond())).In(time.FixedZone("", offset)).Format(layout + "Z07:00")
}

// total is what one tenant and meter must show.
type total struct {
	events   int64
	sum, max *big.Rat
}

func (tt total) String() string {
	return fmt.Sprintf("events=%d sum=%s max=%s", tt.events, tt.sum.FloatString(9), tt.max.FloatString(9))
}

type key struct{ tenant, meter string }

// TestExamplesCountedExactly runs each example's `send` against the real
// broker with its client's default partitioner and no settings beyond
// acks=all and idempotence (confluent-kafka: CRC32, which the consumer
// re-routes; kafkajs and kafka-clients: murmur2), with every shared vector:
// each example must refuse every invalid vector before sending, and the
// real usage-consumer and usage-aggregator must count every valid one
// exactly in the raw table and in usage_1m, usage_1h, usage_1d and
// usage_period, with nothing in the DLQ or the late topic.
func TestExamplesCountedExactly(t *testing.T) {
	t.Parallel() // each on its own topics, database or broker
	exs := examples(t)
	p := startPipeline(t)
	vecs, _ := vectorLines(t)
	var invalid []string
	for _, v := range vecs {
		if !v.Valid() {
			invalid = append(invalid, v.Name)
		}
	}
	// One event time for all: the start of this minute, so every example's
	// events share the 1m window (the fractions stay within it).
	at := time.Now().UTC().Truncate(time.Minute)
	want := map[key]total{}
	wantIDs := map[string]bool{}
	files := map[string]string{}
	dir := t.TempDir()
	for _, ex := range exs {
		lines, events := freshCorpus(t, vecs, ex.tag, at)
		path := filepath.Join(dir, ex.name+".jsonl")
		if err := os.WriteFile(path, encodeLines(lines), 0o644); err != nil {
			t.Fatal(err)
		}
		files[ex.name] = path
		for _, e := range events {
			k := key{e.tenant, e.meter}
			w, ok := want[k]
			if !ok {
				w = total{sum: new(big.Rat), max: new(big.Rat)}
			}
			w.events++
			w.sum.Add(w.sum, e.quantity)
			if e.quantity.Cmp(w.max) > 0 {
				w.max.Set(e.quantity)
			}
			want[k] = w
			wantIDs[e.id] = true
		}
	}
	env := []string{"KAFKA_BROKERS=" + p.broker, "USAGE_TOPIC=" + p.topic}
	parallelExamples(exs, func(ex example) {
		out, err := ex.run(t, env, "send", files[ex.name])
		if err != nil {
			t.Error(err)
			return
		}
		v := verdicts(out)
		var refused []string
		for name, verdict := range v {
			if strings.HasPrefix(verdict, "refused") {
				refused = append(refused, name)
			}
		}
		slices.Sort(refused)
		if want := slices.Sorted(slices.Values(invalid)); !slices.Equal(refused, want) {
			t.Errorf("%s refused %d vectors, want the %d invalid ones:\n got %v\nwant %v", ex.name, len(refused), len(want), refused, want)
		}
		lastLine := strings.TrimSpace(out[strings.LastIndexByte(strings.TrimSpace(out), '\n')+1:])
		var summary struct{ Sent, Refused, Failed int }
		if err := json.Unmarshal([]byte(lastLine), &summary); err != nil {
			t.Errorf("%s: summary line %q: %v", ex.name, lastLine, err)
		}
		if nValid := len(vecs) - len(invalid); summary.Sent != nValid || summary.Failed != 0 || summary.Refused != len(invalid) {
			t.Errorf("%s: %+v, want sent %d, refused %d, failed 0", ex.name, summary, nValid, len(invalid))
		}
	})
	if t.Failed() {
		t.FailNow()
	}

	ctx := context.Background()
	var last string
	testenv.Eventually(t, 90*time.Second, "exact totals in the raw table and the four aggregate tables", func() (bool, error) {
		diff, err := p.compare(ctx, want)
		if err != nil {
			return false, err
		}
		last = diff
		if diff != "" {
			return false, fmt.Errorf("%s", diff)
		}
		return p.caughtUp(ctx)
	})
	// Caught up and exact: one more comparison after the services passed
	// the end of the topic, so a later write that changed a total is seen.
	if diff, err := p.compare(ctx, want); err != nil || diff != "" {
		t.Fatalf("after catching up: %v %s (before: %s)", err, diff, last)
	}

	// Nothing refused, nothing late.
	for _, topic := range []string{p.dlq, p.late} {
		var n int64
		for _, end := range testenv.EndOffsets(t, p.broker, topic, partitions) {
			n += end
		}
		if n != 0 {
			t.Errorf("%s holds %d records, want none", topic, n)
		}
	}
	// The topic holds the valid vectors only (and the consumer's re-routed
	// copies of the CRC32 ones): no invalid vector was sent.
	var total int
	for _, end := range testenv.EndOffsets(t, p.broker, p.topic, partitions) {
		total += int(end)
	}
	// Each original is on the partition its client's default partitioner
	// chose: librdkafka's CRC32 for Python, murmur2 (the pipeline's rule)
	// for kafkajs and kafka-clients; the consumer re-routed exactly the
	// Python events whose CRC32 partition is not their tenant's.
	ids := map[string]int{}
	copies, misrouted := map[string]int{}, map[string]int{}
	publisher := map[string]string{}
	for _, ex := range exs {
		publisher[ex.tag] = "usagemeter-example-" + ex.name
	}
	dec := schemas.NewValidator()
	for _, m := range testenv.ReadN(t, p.broker, p.topic, total) {
		ev, err := dec.Decode(m.Value)
		if err != nil {
			t.Errorf("%s/%d@%d is invalid (%v): %s", p.topic, m.Partition, m.Offset, err, m.Value)
			continue
		}
		ids[ev.ID]++
		h := testenv.Headers(m)
		if want := publisher[ev.ID[:2]]; h["usage.publisher"] != want {
			t.Errorf("%s: header usage.publisher %q, want %q", ev.ID, h["usage.publisher"], want)
		}
		if h["usage.rerouted.from"] != "" {
			copies[h["usage.publisher"]]++
			continue
		}
		partitioner := "murmur2"
		want := schemas.PartitionFor(ev.TenantID, partitions)
		if strings.HasPrefix(ev.ID, "py-") {
			partitioner, want = "crc32", int(crc32.ChecksumIEEE(m.Key)%partitions)
		}
		if m.Partition != want {
			t.Errorf("%s (tenant %s) is on partition %d, its client's default (%s) gives %d", ev.ID, ev.TenantID, m.Partition, partitioner, want)
		}
		if m.Partition != schemas.PartitionFor(ev.TenantID, partitions) {
			misrouted[h["usage.publisher"]]++
		}
	}
	if misrouted["usagemeter-example-python"] == 0 {
		t.Errorf("no Python event was misrouted: the test does not exercise the re-route of CRC32 publishers")
	}
	for _, ex := range exs {
		pub := "usagemeter-example-" + ex.name
		if copies[pub] != misrouted[pub] {
			t.Errorf("%s: %d events on another partition than their tenant's, %d re-routed copies", ex.name, misrouted[pub], copies[pub])
		}
	}
	t.Logf("misrouted by their client's default partitioner and re-routed by the consumer: %v", copies)
	for id := range wantIDs {
		if ids[id] == 0 {
			t.Errorf("event %s is not in the topic", id)
		}
	}
	for id := range ids {
		if !wantIDs[id] {
			t.Errorf("event %s in the topic was not published by an example", id)
		}
	}
	t.Logf("%d events of %d examples counted exactly in 5 tables; %d records in the topic (re-routed copies included), none in the DLQ or late topic",
		len(wantIDs), len(exs), total)
}

// compare returns the differences between want and every table, "" when
// all match exactly.
func (p *pipeline) compare(ctx context.Context, want map[key]total) (string, error) {
	queries := map[string]string{
		"usage_events_dedup": `SELECT tenant_id, feature_type, count(), toString(sum(quantity)), toString(max(quantity))
FROM usage_events_dedup GROUP BY tenant_id, feature_type`,
	}
	for _, table := range []string{"usage_1m", "usage_1h", "usage_1d", "usage_period"} {
		queries[table] = `SELECT tenant_id, feature_type, sum(events), toString(sum(value)), toString(max(value))
FROM ` + table + ` FINAL GROUP BY tenant_id, feature_type`
	}
	var diffs []string
	for _, table := range slices.Sorted(func(yield func(string) bool) {
		for k := range queries {
			if !yield(k) {
				return
			}
		}
	}) {
		got, err := p.totals(ctx, queries[table])
		if err != nil {
			return "", fmt.Errorf("%s: %w", table, err)
		}
		for k, w := range want {
			g, ok := got[k]
			switch {
			case !ok:
				diffs = append(diffs, fmt.Sprintf("%s %s/%s: missing, want %s", table, k.tenant, k.meter, w))
				continue
			case g.events != w.events:
			case table != "usage_events_dedup" && maxMeters[k.meter] && g.max.Cmp(w.max) != 0:
			case (table == "usage_events_dedup" || !maxMeters[k.meter]) && g.sum.Cmp(w.sum) != 0:
			default:
				continue
			}
			diffs = append(diffs, fmt.Sprintf("%s %s/%s: %s, want %s", table, k.tenant, k.meter, g, w))
		}
		for k, g := range got {
			if _, ok := want[k]; !ok {
				diffs = append(diffs, fmt.Sprintf("%s %s/%s: %s, want nothing", table, k.tenant, k.meter, g))
			}
		}
	}
	return strings.Join(diffs, "; "), nil
}

func (p *pipeline) totals(ctx context.Context, query string) (map[key]total, error) {
	rows, err := p.conn.Query(ctx, query)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[key]total{}
	for rows.Next() {
		var k key
		var events uint64
		var sum, mx string
		if err := rows.Scan(&k.tenant, &k.meter, &events, &sum, &mx); err != nil {
			return nil, err
		}
		tt := total{events: int64(events), sum: new(big.Rat), max: new(big.Rat)}
		if _, ok := tt.sum.SetString(sum); !ok {
			return nil, fmt.Errorf("sum %q is not a decimal", sum)
		}
		if _, ok := tt.max.SetString(mx); !ok {
			return nil, fmt.Errorf("max %q is not a decimal", mx)
		}
		out[k] = tt
	}
	return out, rows.Err()
}

// caughtUp reports whether the consumer's committed offsets and the
// aggregator's checkpoints have reached the end of every partition.
func (p *pipeline) caughtUp(ctx context.Context) (bool, error) {
	client := &kafka.Client{Addr: kafka.TCP(p.broker), Timeout: 5 * time.Second}
	var reqs []kafka.OffsetRequest
	all := make([]int, partitions)
	for i := range all {
		all[i] = i
		reqs = append(reqs, kafka.LastOffsetOf(i))
	}
	ends, err := client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{p.topic: reqs}})
	if err != nil {
		return false, err
	}
	end := make([]int64, partitions)
	for _, po := range ends.Topics[p.topic] {
		end[po.Partition] = po.LastOffset
	}
	res, err := client.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: p.rawGroup, Topics: map[string][]int{p.topic: all}})
	if err != nil {
		return false, err
	}
	for _, po := range res.Topics[p.topic] {
		if po.Partition < partitions && end[po.Partition] > 0 && po.CommittedOffset < end[po.Partition] {
			return false, fmt.Errorf("consumer at %d of %d on partition %d", po.CommittedOffset, end[po.Partition], po.Partition)
		}
	}
	rows, err := p.conn.Query(ctx, `SELECT partition, max(offset) FROM aggregator_checkpoints FINAL
WHERE consumer_group = ? AND topic = ? GROUP BY partition`, p.aggGroup, p.topic)
	if err != nil {
		return false, err
	}
	defer rows.Close()
	agg := make([]int64, partitions)
	for rows.Next() {
		var part int32
		var off int64
		if err := rows.Scan(&part, &off); err != nil {
			return false, err
		}
		if part >= 0 && part < partitions {
			agg[part] = off + 1
		}
	}
	if err := rows.Err(); err != nil {
		return false, err
	}
	for i := range end {
		if agg[i] < end[i] {
			return false, fmt.Errorf("aggregator at %d of %d on partition %d", agg[i], end[i], i)
		}
	}
	return true, nil
}
