package cluster

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/segmentio/kafka-go"

	"github.com/usagemeter/usagemeter/svckit"
	"github.com/usagemeter/usagemeter/testenv"
)

const (
	partitions = 4
	// sessionTimeout of both services' groups: a SIGKILLed member holds
	// its partitions this long.
	sessionTimeout = 10 * time.Second
)

// plansYAML meters everything as an unlimited sum, so that aggregates are
// exact totals.
const plansYAML = `meters:
  api_calls: { aggregation: sum }
  tokens:    { aggregation: sum }
unknown_meters: reject
plans:
  METERED: { meters: { api_calls: { limit: -1 }, tokens: { limit: -1 } } }
default_plan: METERED
`

// pipeline is one test's private topics, groups and database on the
// cluster, and the service processes it runs.
type pipeline struct {
	t                            *testing.T
	e                            *engines
	brokers                      []string
	clickhouse                   string // USAGE_CLICKHOUSE_ADDR (comma-separated)
	schema                       string // clickhouse.schema: "" (single server) or "cluster"
	topic, dlq, late, quota, asg string
	raw, agg, db, plans          string
	conn                         driver.Conn
}

func newPipeline(t *testing.T, e *engines, chAddrs []string, schema string) *pipeline {
	t.Helper()
	name := testenv.Name("cluster")
	p := &pipeline{t: t, e: e, brokers: e.kafka, clickhouse: strings.Join(chAddrs, ","), schema: schema,
		topic: name + ".events", dlq: name + ".dlq", late: name + ".late", quota: name + ".quota", asg: name + ".plans",
		raw: name + ".raw", agg: name + ".agg", db: name, plans: filepath.Join(t.TempDir(), "plans.yaml")}
	if err := os.WriteFile(p.plans, []byte(plansYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	compact := []kafka.ConfigEntry{{ConfigName: "cleanup.policy", ConfigValue: "compact"}}
	// As the services create them: replication factor -1, the cluster's
	// default (3, with min.insync.replicas 2, from scripts/cluster.sh).
	if err := svckit.CreateTopics(ctx, p.brokers,
		kafka.TopicConfig{Topic: p.topic, NumPartitions: partitions, ReplicationFactor: -1, ConfigEntries: svckit.EventTopicConfig()},
		kafka.TopicConfig{Topic: p.dlq, NumPartitions: partitions, ReplicationFactor: -1},
		kafka.TopicConfig{Topic: p.late, NumPartitions: partitions, ReplicationFactor: -1},
		kafka.TopicConfig{Topic: p.quota, NumPartitions: partitions, ReplicationFactor: -1, ConfigEntries: compact},
		kafka.TopicConfig{Topic: p.asg, NumPartitions: 1, ReplicationFactor: -1, ConfigEntries: compact}); err != nil {
		t.Fatal(err)
	}
	p.checkReplicated(ctx)
	out, err := p.command(ctx, e.consumer, p.consumerEnv(), "migrate")
	if err != nil {
		t.Fatalf("usage-consumer migrate: %v\n%s", err, out)
	}
	p.conn = testenv.Open(t, chAddrs[0], p.db)
	return p
}

// checkReplicated asserts that the events topic has 3 replicas, all in
// sync, on every partition, and min.insync.replicas 2.
func (p *pipeline) checkReplicated(ctx context.Context) {
	p.t.Helper()
	client := &kafka.Client{Addr: kafka.TCP(p.brokers...), Timeout: 10 * time.Second}
	testenv.Eventually(p.t, 30*time.Second, "every partition of "+p.topic+" with 3 in-sync replicas", func() (bool, error) {
		md, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{p.topic}})
		if err != nil || len(md.Topics) != 1 || md.Topics[0].Error != nil || len(md.Topics[0].Partitions) != partitions {
			return false, nil
		}
		for _, part := range md.Topics[0].Partitions {
			if len(part.Replicas) != 3 || len(part.Isr) != 3 || part.Leader.ID == 0 {
				return false, nil
			}
		}
		return true, nil
	})
	// Right after creation a broker's metadata may not know the topic yet.
	var got string
	testenv.Eventually(p.t, 30*time.Second, "min.insync.replicas of "+p.topic, func() (bool, error) {
		res, err := client.DescribeConfigs(ctx, &kafka.DescribeConfigsRequest{Resources: []kafka.DescribeConfigRequestResource{{
			ResourceType: kafka.ResourceTypeTopic, ResourceName: p.topic, ConfigNames: []string{"min.insync.replicas"}}}})
		if err != nil || len(res.Resources) != 1 || res.Resources[0].Error != nil || len(res.Resources[0].ConfigEntries) != 1 {
			return false, nil
		}
		got = res.Resources[0].ConfigEntries[0].ConfigValue
		return true, nil
	})
	if got != "2" {
		p.t.Fatalf("min.insync.replicas of %s: %s, want 2", p.topic, got)
	}
}

func (p *pipeline) command(ctx context.Context, bin string, env []string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (p *pipeline) common() []string {
	env := []string{"USAGE_CLICKHOUSE_ADDR=" + p.clickhouse, "USAGE_CLICKHOUSE_DATABASE=" + p.db,
		"USAGE_TOPIC_PARTITIONS=" + strconv.Itoa(partitions)}
	if p.schema != "" {
		// On the cluster the services log in as a user with a password.
		env = append(env, "USAGE_CLICKHOUSE_CLUSTER="+p.schema, "USAGE_CLICKHOUSE_USERNAME="+p.e.chUser,
			"USAGE_CLICKHOUSE_PASSWORD="+p.e.chPass)
	}
	return env
}

func (p *pipeline) consumerEnv() []string {
	return serviceEnv(append(p.common(),
		"USAGE_KAFKA_BROKERS="+strings.Join(p.brokers, ","),
		"USAGE_KAFKA_TOPIC="+p.topic,
		"USAGE_KAFKA_GROUP_ID="+p.raw,
		"USAGE_KAFKA_DLQ_TOPIC="+p.dlq,
		"USAGE_KAFKA_SESSION_TIMEOUT="+sessionTimeout.String(),
		"USAGE_CREATE_TOPICS=false")...)
}

func (p *pipeline) aggregatorEnv() []string {
	return serviceEnv(append(p.common(),
		"USAGE_AGGREGATOR_BROKERS="+strings.Join(p.brokers, ","),
		"USAGE_AGGREGATOR_TOPIC="+p.topic,
		"USAGE_AGGREGATOR_GROUP_ID="+p.agg,
		"USAGE_AGGREGATOR_QUOTA_TOPIC="+p.quota,
		"USAGE_AGGREGATOR_LATE_TOPIC="+p.late,
		"USAGE_AGGREGATOR_DLQ_TOPIC="+p.dlq,
		"USAGE_AGGREGATOR_ASSIGNMENT_TOPIC="+p.asg,
		"USAGE_AGGREGATOR_SESSION_TIMEOUT="+sessionTimeout.String(),
		"USAGE_CREATE_TOPICS=false")...)
}

func (p *pipeline) startConsumer(name string) *proc {
	return startProc(p.t, name, p.e.consumer, p.consumerEnv(), "run", "--http", "127.0.0.1:0")
}

func (p *pipeline) startAggregator(name string) *proc {
	return startProc(p.t, name, p.e.agg, p.aggregatorEnv(), "--plans", p.plans, "--http", "127.0.0.1:0", "run")
}

// converge waits until the raw table and the aggregates hold exactly the
// independent count of the topic, read through conns (every one must).
func (p *pipeline) converge(limit time.Duration, conns map[string]driver.Conn) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit+time.Minute)
	defer cancel()
	msgs, err := readAll(ctx, p.brokers, p.topic, partitions)
	if err != nil {
		p.t.Fatal(err)
	}
	want, distinct, err := expected(msgs)
	if err != nil {
		p.t.Fatal(err)
	}
	p.t.Logf("topic holds %d messages, %d distinct events", len(msgs), distinct)
	deadline := time.Now().Add(limit)
	start := time.Now()
	for {
		var bad []string
		for server, conn := range conns {
			for sink, sql := range sinkSQL {
				got, err := sinkTotals(ctx, conn, sql)
				if err != nil {
					bad = append(bad, server+" "+sink+": "+err.Error())
					continue
				}
				if lost, double, first := diff(want, got); first != "" {
					bad = append(bad, server+" "+sink+": lost "+strconv.FormatInt(lost, 10)+", double "+
						strconv.FormatInt(double, 10)+"; "+first)
				}
			}
		}
		if len(bad) == 0 {
			p.t.Logf("exact in every sink after %s: 0 lost, 0 double counted", time.Since(start).Round(100*time.Millisecond))
			return
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("not exact after %s:\n%s", limit, strings.Join(bad, "\n"))
		}
		time.Sleep(time.Second)
	}
}

func sleep(d time.Duration) { time.Sleep(d) }

// TestBrokerKilledMidStream: two consumers and two aggregator members on
// the 3-broker cluster; one broker is SIGKILLed while events are published
// and restarted; raw and aggregate totals end exact.
func TestBrokerKilledMidStream(t *testing.T) {
	e := need(t)
	p := newPipeline(t, e, e.clickhouse[:1], "")
	var procs []*proc
	for i := range 2 {
		procs = append(procs, p.startConsumer("consumer-"+strconv.Itoa(i)), p.startAggregator("aggregator-"+strconv.Itoa(i)))
	}
	s, err := startStream(p.brokers, p.topic, testenv.Name("bk"), 300)
	if err != nil {
		t.Fatal(err)
	}
	sleep(4 * time.Second)
	// Node 1 is the first voter and usually the controller and the leader
	// of some partitions: its loss moves leadership and the quorum.
	e.run(t, "kill", "kafka", "1")
	sleep(6 * time.Second)
	e.run(t, "start", "kafka")
	sleep(4 * time.Second)
	if err := s.finish(); err != nil {
		t.Fatal(err)
	}
	acked, errs := s.counts()
	t.Logf("published %d events (%d publish calls retried)", acked, errs)
	for _, pr := range procs {
		if pr.exited() {
			t.Errorf("%s exited during the broker's outage", pr.name)
		}
	}
	p.converge(90*time.Second, map[string]driver.Conn{"clickhouse": p.conn})
}

// TestMembersKilledMidStream: the same, with one consumer and one
// aggregator member SIGKILLed mid-stream and replaced.
func TestMembersKilledMidStream(t *testing.T) {
	e := need(t)
	p := newPipeline(t, e, e.clickhouse[:1], "")
	c0, a0 := p.startConsumer("consumer-0"), p.startAggregator("aggregator-0")
	p.startConsumer("consumer-1")
	p.startAggregator("aggregator-1")
	s, err := startStream(p.brokers, p.topic, testenv.Name("mk"), 300)
	if err != nil {
		t.Fatal(err)
	}
	sleep(5 * time.Second)
	c0.kill()
	a0.kill()
	sleep(2 * time.Second)
	p.startConsumer("consumer-2")
	p.startAggregator("aggregator-2")
	sleep(5 * time.Second)
	if err := s.finish(); err != nil {
		t.Fatal(err)
	}
	acked, _ := s.counts()
	t.Logf("published %d events", acked)
	p.converge(90*time.Second, map[string]driver.Conn{"clickhouse": p.conn})
}
