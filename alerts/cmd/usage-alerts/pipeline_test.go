package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/shopspring/decimal"

	"github.com/usagemeter/usagemeter/alerts/internal/alerttest"
	"github.com/usagemeter/usagemeter/producer"
	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/svckit"
	"github.com/usagemeter/usagemeter/testenv"
)

// cleanEnv is the environment without the caller's USAGE_* variables.
func cleanEnv(extra ...string) []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "USAGE_") {
			out = append(out, kv)
		}
	}
	return append(out, extra...)
}

// With the real aggregator in front: a FREE tenant's 53 ai_generation
// events, published in steps to 50, 76, 90, 100 and 106 % of the limit,
// give exactly the four percent alerts, each carrying the usage of the
// first state at or past its line.
func TestWithRealAggregator(t *testing.T) {
	broker := testenv.Kafka(t)
	_, db := testenv.ClickHouse(t)
	events, states, alerts := testenv.Name("events"), testenv.Name("qs"), testenv.Name("alerts")
	testenv.CreateTopic(t, broker, events, 4, "message.timestamp.type", "LogAppendTime")
	root := testenv.RepoRoot(t)
	plansFile := filepath.Join(root, "schemas/plans/plans.example.yaml")
	agg := exec.Command(aggregatorBinary)
	agg.Env = cleanEnv("USAGE_AGGREGATOR_BROKERS="+broker, "USAGE_AGGREGATOR_TOPIC="+events,
		"USAGE_AGGREGATOR_GROUP_ID="+testenv.Name("agg"), "USAGE_AGGREGATOR_QUOTA_TOPIC="+states,
		"USAGE_AGGREGATOR_LATE_TOPIC="+testenv.Name("late"), "USAGE_AGGREGATOR_DLQ_TOPIC="+testenv.Name("dlq"),
		"USAGE_AGGREGATOR_ASSIGNMENT_TOPIC="+testenv.Name("assign"), "USAGE_AGGREGATOR_FLUSH_INTERVAL=200ms",
		"USAGE_CLICKHOUSE_ADDR="+testenv.ClickHouseAddr(t), "USAGE_CLICKHOUSE_DATABASE="+db,
		"USAGE_PLANS_FILE="+plansFile, "USAGE_HTTP_ADDR=127.0.0.1:0", "USAGE_LOG_LEVEL=warn")
	em := exec.Command(binary, "emit")
	em.Env = cleanEnv("USAGE_EMITTER_BROKERS="+broker, "USAGE_EMITTER_STATE_TOPIC="+states,
		"USAGE_EMITTER_ALERT_TOPIC="+alerts, "USAGE_EMITTER_GROUP_ID="+testenv.Name("g"),
		"USAGE_PLANS_FILE="+plansFile, "USAGE_HTTP_ADDR=127.0.0.1:0", "USAGE_LOG_LEVEL=warn")
	for _, c := range []*exec.Cmd{agg, em} {
		c.Stdout, c.Stderr = os.Stderr, os.Stderr
	}
	if err := agg.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = agg.Process.Signal(syscall.SIGTERM); _, _ = agg.Process.Wait() })
	// The emitter needs the quota-state topic the aggregator creates.
	testenv.Eventually(t, 60*time.Second, "the aggregator's quota-state topic", func() (bool, error) {
		return topicExists(broker, states), nil
	})
	if err := em.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = em.Process.Signal(syscall.SIGTERM); _, _ = em.Process.Wait() })

	p, err := producer.New([]string{broker}, producer.WithTopic(events))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	tenant := testenv.Name("climber")
	countAlerts := func() int { return len(alerttest.ReadAlerts(t, broker, alerts, 1)) }
	total := 0
	for _, step := range []struct{ events, alerts int }{{25, 1}, {13, 2}, {7, 3}, {5, 4}, {3, 4}} {
		for range step.events {
			ev := producer.NewEvent(tenant, "ai_generation", decimal.NewFromInt(1))
			if err := p.Publish(context.Background(), ev); err != nil {
				t.Fatal(err)
			}
		}
		total += step.events
		testenv.Eventually(t, 60*time.Second, "alerts after the step", func() (bool, error) {
			return topicExists(broker, alerts) && countAlerts() >= step.alerts, nil
		})
	}
	// The aggregator's last state (53 of 50) is in; nothing more comes.
	testenv.Eventually(t, 30*time.Second, "the state of all events", func() (bool, error) {
		return lastUsage(t, broker, states, tenant) == total, nil
	})
	time.Sleep(time.Second)
	got := alerttest.ReadAlerts(t, broker, alerts, 1)
	want := map[string]int{tenant + ":ai_generation:percent:50": 1, tenant + ":ai_generation:percent:75": 1,
		tenant + ":ai_generation:percent:90": 1, tenant + ":ai_generation:percent:100": 1}
	lines := alerttest.Lines(got)
	if len(lines) != len(want) || len(got) != 4 {
		t.Fatalf("alerts %v, want %v", lines, want)
	}
	for l := range want {
		if lines[l] != 1 {
			t.Fatalf("alerts %v, want %v", lines, want)
		}
	}
	for _, a := range got {
		if a.Plan != "FREE" || a.Usage.Mul(decimal.NewFromInt(100)).LessThan(a.Threshold.Mul(a.Limit)) ||
			a.Usage.GreaterThan(decimal.NewFromInt(int64(total))) {
			t.Errorf("alert %s %s: plan %s usage %s limit %s", a.Kind, a.Threshold, a.Plan, a.Usage, a.Limit)
		}
	}
}

func topicExists(broker, topic string) bool {
	client := &kafka.Client{Addr: kafka.TCP(broker), Timeout: 5 * time.Second}
	md, err := client.Metadata(context.Background(), &kafka.MetadataRequest{Topics: []string{topic}})
	return err == nil && len(md.Topics) == 1 && md.Topics[0].Error == nil && len(md.Topics[0].Partitions) > 0
}

// lastUsage is the usage of the tenant's newest ai_generation state.
func lastUsage(t *testing.T, broker, topic, tenant string) int {
	t.Helper()
	n, err := svckit.Partitions(context.Background(), []string{broker}, topic)
	if err != nil {
		return -1
	}
	usage := -1
	var newest time.Time
	for _, m := range readAll(t, broker, topic, n) {
		s, err := schemas.DecodeQuotaState(m.Value)
		if err != nil || s.TenantID != tenant || s.FeatureType != "ai_generation" {
			continue
		}
		if s.UpdatedAt.After(newest) {
			newest, usage = s.UpdatedAt, int(s.Usage.IntPart())
		}
	}
	return usage
}

func readAll(t *testing.T, broker, topic string, n int) []kafka.Message {
	t.Helper()
	var out []kafka.Message
	for p, end := range testenv.EndOffsets(t, broker, topic, n) {
		if end == 0 {
			continue
		}
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{broker}, Topic: topic, Partition: p, MaxWait: 100 * time.Millisecond})
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		for {
			m, err := r.FetchMessage(ctx)
			if err != nil {
				t.Fatalf("read %s/%d: %v", topic, p, err)
			}
			out = append(out, m)
			if m.Offset+1 >= end {
				break
			}
		}
		cancel()
		_ = r.Close()
	}
	return out
}
