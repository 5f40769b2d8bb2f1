package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/segmentio/kafka-go"

	"github.com/usagemeter/usagemeter/svckit"
)

// benchPlans meters both bench meters as unlimited sums, so that a quota
// state's usage is the exact count of its tenant's api_calls events.
const benchPlans = `meters:
  api_calls: { aggregation: sum }
  tokens:    { aggregation: sum }
unknown_meters: reject
plans:
  METERED: { meters: { api_calls: { limit: -1 }, tokens: { limit: -1 } } }
default_plan: METERED
`

// names are one run's private topics, groups and database.
type names struct {
	topic, dlq, late, quota, asg, positions, rawGroup, aggGroup, db string
}

func newNames(prefix string) names {
	base := fmt.Sprintf("bench_%s_%d", prefix, time.Now().UnixNano()%1e12)
	return names{topic: base + ".events", dlq: base + ".dlq", late: base + ".late", quota: base + ".quota",
		asg: base + ".plans", positions: base + ".positions", rawGroup: base + ".raw", aggGroup: base + ".agg", db: base}
}

// serviceEnv is this process's environment without any USAGE_* variable,
// plus settings: production defaults otherwise.
func serviceEnv(settings ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "USAGE_") {
			env = append(env, kv)
		}
	}
	return append(env, settings...)
}

// runPipeline measures ours: the SDK here, usage-consumer and
// usage-aggregator as processes, the broker, the private ClickHouse server.
func runPipeline(ctx context.Context, o options, rec *Record) error {
	n := newNames("p")
	dir := o.workDir
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", "usage-bench-"); err != nil {
			return fmt.Errorf("work dir: %w", err)
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("work dir: %w", err)
	}
	rec.Notes = append(rec.Notes, "service logs in "+dir)
	plans := dir + "/plans.yaml"
	if err := os.WriteFile(plans, []byte(benchPlans), 0o644); err != nil {
		return fmt.Errorf("plans: %w", err)
	}
	compact := []kafka.ConfigEntry{{ConfigName: "cleanup.policy", ConfigValue: "compact"}}
	if err := createTopics(ctx, o.broker,
		kafka.TopicConfig{Topic: n.topic, NumPartitions: partitions, ReplicationFactor: 1, ConfigEntries: svckit.EventTopicConfig()},
		kafka.TopicConfig{Topic: n.dlq, NumPartitions: partitions, ReplicationFactor: 1},
		kafka.TopicConfig{Topic: n.late, NumPartitions: partitions, ReplicationFactor: 1},
		kafka.TopicConfig{Topic: n.quota, NumPartitions: partitions, ReplicationFactor: 1, ConfigEntries: compact},
		kafka.TopicConfig{Topic: n.asg, NumPartitions: 1, ReplicationFactor: 1, ConfigEntries: compact},
		kafka.TopicConfig{Topic: n.positions, NumPartitions: 1, ReplicationFactor: 1, ConfigEntries: compact}); err != nil {
		return err
	}
	common := []string{"USAGE_CLICKHOUSE_ADDR=" + o.clickhouse, "USAGE_CLICKHOUSE_DATABASE=" + n.db,
		"USAGE_TOPIC_PARTITIONS=" + strconv.Itoa(partitions), "USAGE_LOG_LEVEL=warn"}
	consumerEnv := serviceEnv(append(common, "USAGE_KAFKA_BROKERS="+o.broker, "USAGE_KAFKA_TOPIC="+n.topic,
		"USAGE_KAFKA_GROUP_ID="+n.rawGroup, "USAGE_KAFKA_DLQ_TOPIC="+n.dlq)...)
	aggEnv := serviceEnv(append(common, "USAGE_AGGREGATOR_BROKERS="+o.broker, "USAGE_AGGREGATOR_TOPIC="+n.topic,
		"USAGE_AGGREGATOR_GROUP_ID="+n.aggGroup, "USAGE_AGGREGATOR_QUOTA_TOPIC="+n.quota,
		"USAGE_AGGREGATOR_LATE_TOPIC="+n.late, "USAGE_AGGREGATOR_DLQ_TOPIC="+n.dlq,
		"USAGE_AGGREGATOR_ASSIGNMENT_TOPIC="+n.asg, "USAGE_AGGREGATOR_POSITION_TOPIC="+n.positions)...)
	aggEnv = append(aggEnv, o.aggSettings...)
	consumerEnv = append(consumerEnv, o.consumerSettings...)
	mig := command(o.consumerBin, consumerEnv, "migrate")
	if out, err := mig.CombinedOutput(); err != nil {
		return fmt.Errorf("usage-consumer migrate: %w\n%s", err, out)
	}
	conn, err := openCH(ctx, o.clickhouse, n.db)
	if err != nil {
		return err
	}
	defer conn.Close()
	defer func() { _ = conn.Exec(context.Background(), "DROP DATABASE IF EXISTS "+n.db) }()

	cons, err := startProc(dir, "usage-consumer", o.consumerBin, consumerEnv, "run", "--http", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer cons.stop()
	agg, err := startProc(dir, "usage-aggregator", o.aggregatorBin, aggEnv, "--plans", plans, "--http", "127.0.0.1:0", "run")
	if err != nil {
		return err
	}
	defer agg.stop()
	pub, err := newPublisher(o.broker, n.topic)
	if err != nil {
		return err
	}
	w := newWorkload()
	tenantFmt := "tenant-%07d"
	// caughtUp: raw rows (distinct ids, through FINAL when asked) and the
	// aggregator's checkpoint cover everything in the topic.
	caughtUp := func(final bool) func() (bool, string, error) {
		return func() (bool, string, error) {
			if err := errors.Join(cons.alive(), agg.alive()); err != nil {
				return false, "", err
			}
			q := "SELECT count() FROM usage_events"
			if final {
				q += " FINAL"
			}
			raw, err := count(ctx, conn, q)
			if err != nil {
				return false, "", err
			}
			inTopic, err := endOffsets(ctx, o.broker, n.topic, partitions)
			if err != nil {
				return false, "", err
			}
			cp, err := count(ctx, conn, "SELECT toUInt64(sum(offset + 1)) FROM aggregator_checkpoints FINAL WHERE consumer_group = ? AND topic = ?", n.aggGroup, n.topic)
			if err != nil {
				return false, "", err
			}
			state := fmt.Sprintf("raw rows %d of %d, aggregator checkpoint %d of %d messages", raw, w.distinct, cp, inTopic)
			return raw >= uint64(w.distinct) && cp >= uint64(inTopic), state, nil
		}
	}

	// Warm-up: the groups join and the processes warm up (see warmUp).
	if err := pub.publish(ctx, w.warmUp(o, tenantFmt)); err != nil {
		return err
	}
	if err := waitFor(ctx, 3*time.Minute, "warm-up", caughtUp(false)); err != nil {
		return err
	}

	brokerPid, _ := pidFromFile(o.kafkaPidFile)
	chPid, err := pidFromFile(o.chPidFile)
	if err != nil {
		return err
	}
	// The events are made before the meter starts: making them (fmt, big.Int
	// sums) is the harness's work, not the SDK's.
	evs := w.next(o.events, o.tenants, tenantFmt, "")
	m := startMeter([]watched{{"usage-consumer", cons.cmd.Process.Pid, ""}, {"usage-aggregator", agg.cmd.Process.Pid, ""},
		{"clickhouse-server", chPid, "private to this run"}, {"kafka broker", brokerPid, o.brokerNote()},
		{"publisher (SDK, this process)", 0, "also polls ClickHouse and the broker"}})
	var perfs []*proc
	if o.perfDir != "" {
		if err := os.MkdirAll(o.perfDir, 0o755); err != nil {
			return fmt.Errorf("perf dir: %w", err)
		}
		// The real processes' profiles: perf samples the Go binaries
		// (symbols included) without any change to the services.
		for _, p := range []*proc{cons, agg} {
			pr, err := startProc(o.perfDir, "perf-"+p.name, "perf", os.Environ(), "record", "-F", "499", "-g",
				"-p", strconv.Itoa(p.cmd.Process.Pid), "-o", filepath.Join(o.perfDir, p.name+".perf.data"))
			if err != nil {
				return err
			}
			perfs = append(perfs, pr)
		}
	}
	start := time.Now()
	if err := pub.publish(ctx, evs); err != nil {
		return err
	}
	rec.Phases = map[string]float64{}
	notePhase(rec.Phases, "published", start, true)
	if err := pollFor(ctx, 10*time.Minute, throughputPoll, "throughput",
		brokerGated(ctx, o.broker, n.topic, []gate{{n.rawGroup, "raw rows"}, {n.aggGroup, "checkpoint"}}, rec.Phases, start, caughtUp(false))); err != nil {
		m.finish(o.events)
		return err
	}
	elapsed := time.Since(start)
	rec.Processes = m.finish(o.events)
	for _, pr := range perfs {
		pr.stop()
		rec.Notes = append(rec.Notes, "perf profile: "+filepath.Join(o.perfDir, strings.TrimPrefix(pr.name, "perf-")+".perf.data")+" (perf CPU is in the figures)")
	}
	rec.Seconds = round(elapsed.Seconds(), 2)
	rec.EventsPerS = round(float64(o.events)/elapsed.Seconds(), 0)
	rec.CPUPerEvent = round(rec.Processes["usage-consumer"].CPUUsPerEvent+rec.Processes["usage-aggregator"].CPUUsPerEvent+
		rec.Processes["clickhouse-server"].CPUUsPerEvent, 2)
	rec.Notes = append(rec.Notes, "pipeline_cpu_us_per_event = usage-consumer + usage-aggregator + clickhouse-server")

	if o.freshness > 0 {
		f, err := measureFreshness(ctx, o, pub, n, w)
		if err != nil {
			return fmt.Errorf("freshness: %w", err)
		}
		rec.Freshness = f
		if err := waitFor(ctx, 2*time.Minute, "after freshness", caughtUp(false)); err != nil {
			return err
		}
	}
	checks := func(after string) error {
		if err := waitFor(ctx, 3*time.Minute, after, caughtUp(true)); err != nil {
			return err
		}
		c, err := totalsChecks(ctx, conn, w, after, pipelineSinks())
		rec.Exactness = append(rec.Exactness, c...)
		return err
	}
	if err := checks("throughput"); err != nil {
		return err
	}
	if d := int(float64(o.events) * o.dupFraction); d > 0 {
		if err := pub.publish(ctx, evs[:d]); err != nil {
			return err
		}
		if err := checks(fmt.Sprintf("%d duplicates", d)); err != nil {
			return err
		}
	}
	if o.restart {
		if err := pub.publish(ctx, w.next(o.events/5, o.tenants, tenantFmt, "")); err != nil {
			return err
		}
		if err := restartClickHouse(o, 2*time.Second); err != nil {
			return err
		}
		if err := checks("server restart"); err != nil {
			return err
		}
	}
	return pub.close()
}

// pipelineSinks are ours: the aggregator's period totals and its daily
// event counts (ReplacingMergeTree, read through FINAL).
func pipelineSinks() sinks {
	return sinks{sumWhat: "usage_period sum",
		sumSQL:   "SELECT feature_type, toString(sum(value)) FROM usage_period FINAL GROUP BY feature_type",
		countSQL: "SELECT toUInt64(sum(events)) FROM usage_1d FINAL"}
}

// sinks names the aggregate tables a mode's totals are read from.
type sinks struct {
	sumWhat, sumSQL, countSQL string
}

// totalsChecks compares the distinct raw rows and their sums (through
// FINAL), and the mode's aggregate sums and daily event count, with what
// was published.
func totalsChecks(ctx context.Context, conn driver.Conn, w *workload, after string, s sinks) ([]Check, error) {
	raw, err := count(ctx, conn, "SELECT count() FROM usage_events FINAL")
	if err != nil {
		return nil, err
	}
	out := []Check{{After: after, What: "raw rows (FINAL)", Expected: strconv.Itoa(w.distinct), Got: strconv.FormatUint(raw, 10),
		Exact: raw == uint64(w.distinct)}}
	rawSums, err := sumsByFeature(ctx, conn, "SELECT feature_type, toString(sum(quantity)) FROM usage_events FINAL GROUP BY feature_type")
	if err != nil {
		return out, err
	}
	out = append(out, compareSums(after, "raw sum", w.sums, rawSums)...)
	aggSums, err := sumsByFeature(ctx, conn, s.sumSQL)
	if err != nil {
		return out, err
	}
	out = append(out, compareSums(after, s.sumWhat, w.sums, aggSums)...)
	dayCount, err := count(ctx, conn, s.countSQL)
	if err != nil {
		return out, err
	}
	out = append(out, Check{After: after, What: "usage_1d events", Expected: strconv.Itoa(w.distinct), Got: strconv.FormatUint(dayCount, 10),
		Exact: dayCount == uint64(w.distinct)})
	return out, nil
}
