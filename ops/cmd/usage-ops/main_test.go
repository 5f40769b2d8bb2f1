package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/testenv"
)

func runOps(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

// Bad input exits 2 with a message naming the flag or key and the reason,
// before touching any engine.
func TestBadInputNamesTheField(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"dlq", "list", "--from", "yesterday"}, `--from: "yesterday" is not an RFC 3339 time`},
		{[]string{"dlq", "list", "--store", "s3"}, `--store: "s3" is not kafka or clickhouse`},
		{[]string{"dlq", "list", "--from", "2026-11-02T00:00:00Z", "--to", "2026-11-01T00:00:00Z"}, "--from: 2026-11-02T00:00:00Z is not before to"},
		{[]string{"dlq", "show", "usage.events.dlq/1/2"}, `letter id "usage.events.dlq/1/2": want kafka:<topic>/<partition>/<offset>`},
		{[]string{"dlq", "replay", "--rename", "tenant"}, `--rename: "tenant" is not old=new`},
		{[]string{"dlq", "replay", "--rename", "a.b=c"}, `--rename: "a.b=c" is not old=new`},
		{[]string{"backfill", "offsets", "--at", "2026-11-01T00:00:00Z"}, "--group: required"},
		{[]string{"backfill", "offsets", "--group", "g"}, "--at: required"},
		{[]string{"retention", "prune"}, `unknown command "retention prune"`},
		{[]string{"--every", "-1h", "retention", "apply"}, "retention.every: -1h0m0s is negative"},
	} {
		code, _, stderr := runOps(c.args...)
		if code != 2 || !strings.Contains(stderr, c.want) {
			t.Errorf("%v: exit %d, stderr %q; want 2 and %q", c.args, code, stderr, c.want)
		}
	}
}

func TestConfigFromEnvironment(t *testing.T) {
	t.Setenv("USAGE_KAFKA_DLQ_TOPIC", "other.dlq")
	t.Setenv("USAGE_CLICKHOUSE_PASSWORD", "s3cret")
	code, out, stderr := runOps("config")
	if code != 0 || !strings.Contains(out, "dlq_topic: other.dlq") || strings.Contains(out, "s3cret") ||
		!strings.Contains(out, "usage_events: 396") {
		t.Fatalf("config: exit %d\n%s\n%s", code, out, stderr)
	}
}

// The commands against the real engines: migrate, dlq count and show over
// a private DLQ topic, retention plan on a private database.
func TestCommandsAgainstTheEngines(t *testing.T) {
	broker := testenv.Kafka(t)
	_, db := testenv.ClickHouse(t)
	topic := testenv.Name("dlq")
	testenv.CreateTopic(t, broker, topic, 1)
	t.Setenv("USAGE_KAFKA_BROKERS", broker)
	t.Setenv("USAGE_KAFKA_DLQ_TOPIC", topic)
	t.Setenv("USAGE_CLICKHOUSE_ADDR", testenv.ClickHouseAddr(t))
	t.Setenv("USAGE_CLICKHOUSE_DATABASE", db)
	if code, _, stderr := runOps("migrate"); code != 0 {
		t.Fatalf("migrate: %d %s", code, stderr)
	}
	w := &kafka.Writer{Addr: kafka.TCP(broker), Topic: topic, BatchTimeout: time.Millisecond, RequiredAcks: kafka.RequireAll}
	defer w.Close()
	letter := func(value, tag string) kafka.Message {
		return kafka.Message{Key: []byte("acme"), Value: []byte(value), Headers: []kafka.Header{
			{Key: schemas.HeaderError, Value: []byte(tag)}, {Key: schemas.HeaderReason, Value: []byte("because " + tag)},
			{Key: schemas.HeaderFailedAt, Value: []byte(time.Now().UTC().Format(time.RFC3339Nano))}}}
	}
	if err := w.WriteMessages(context.Background(), letter(`{"tenant_id":"globex"`, "malformed_json"),
		letter(`{"id":"x"}`, "missing_field:tenant_id"), letter(`{"id":"y"}`, "missing_field:tenant_id")); err != nil {
		t.Fatal(err)
	}
	code, out, stderr := runOps("dlq", "count", "--tag", "missing_field")
	if code != 0 || !strings.Contains(out, "kafka  missing_field:tenant_id  acme    2") || !strings.Contains(out, "total                                   2") {
		t.Fatalf("dlq count: exit %d\n%s\n%s", code, out, stderr)
	}
	code, out, stderr = runOps("dlq", "show", "kafka:"+topic+"/0/0")
	if code != 0 || !strings.Contains(out, "tag:       malformed_json") || !strings.Contains(out, "reason:    because malformed_json") ||
		!strings.HasSuffix(out, "--- original bytes (21) ---\n{\"tenant_id\":\"globex\"\n") {
		t.Fatalf("dlq show: exit %d\n%s\n%s", code, out, stderr)
	}
	if code, _, stderr := runOps("dlq", "show", "kafka:"+topic+"/0/9"); code != 2 || !strings.Contains(stderr, "not found") {
		t.Fatalf("dlq show of a missing letter: exit %d %s", code, stderr)
	}
	// Replay through the command: a dry run publishes nothing; the real run
	// publishes the repairable letter once, with its key, and records all three.
	events := testenv.Name("events")
	testenv.CreateTopic(t, broker, events, 4)
	t.Setenv("USAGE_KAFKA_TOPIC", events)
	fixable := letter(`{"id":"r1","tenant":"acme","feature_type":"api_calls","quantity":"2","timestamp":"`+
		time.Now().UTC().Format(time.RFC3339)+`"}`, "unknown_field")
	if err := w.WriteMessages(context.Background(), fixable); err != nil {
		t.Fatal(err)
	}
	code, out, stderr = runOps("dlq", "replay", "--rename", "tenant=tenant_id", "--dry-run")
	if code != 0 || !strings.Contains(out, "would_replay 1 still_invalid 3") {
		t.Fatalf("dlq replay --dry-run: exit %d\n%s\n%s", code, out, stderr)
	}
	code, out, stderr = runOps("dlq", "replay", "--rename", "tenant=tenant_id")
	if code != 0 || !strings.Contains(out, "replayed 1 still_invalid 3") {
		t.Fatalf("dlq replay: exit %d\n%s\n%s", code, out, stderr)
	}
	m := testenv.ReadN(t, broker, events, 1)[0]
	if string(m.Key) != "acme" || !strings.Contains(string(m.Value), `"tenant_id":"acme"`) {
		t.Fatalf("replayed %q %s", m.Key, m.Value)
	}
	var sum uint64
	for _, o := range testenv.EndOffsets(t, broker, events, 4) {
		sum += uint64(o)
	}
	if sum != 1 {
		t.Fatalf("%d messages on the events topic, want 1", sum)
	}
	code, out, stderr = runOps("retention", "plan")
	// The replay's four decisions are this month's dlq_replays partition, kept.
	month := time.Now().UTC().Format("200601")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 2 || strings.Join(strings.Fields(lines[0]), " ") != "TABLE PARTITION ROWS BYTES ACTION WHY" ||
		!strings.HasPrefix(strings.Join(strings.Fields(lines[1]), " "), "dlq_replays "+month+" 4 ") || strings.Fields(lines[1])[4] != "keep" {
		t.Fatalf("retention plan: exit %d\n%s\n%s", code, out, stderr)
	}
}
