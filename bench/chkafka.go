package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"
)

// chKafkaDDL is the setup ClickHouse documents for ingesting from Kafka: a
// Kafka engine table the server consumes with librdkafka, materialized
// views that move each block into a ReplacingMergeTree (the raw events,
// deduplicated by merges and FINAL) and a SummingMergeTree (the daily
// aggregate). Written for 18.16: timestamps arrive as RFC 3339 strings
// (parseDateTimeBestEffort) and quantities as decimal strings.
func chKafkaDDL(broker, topic, group string) []string {
	return []string{
		`CREATE TABLE events_queue (id String, tenant_id String, user_id String, feature_type String, quantity String, timestamp String)
ENGINE = Kafka SETTINGS kafka_broker_list = '` + broker + `', kafka_topic_list = '` + topic + `', kafka_group_name = '` + group + `',
kafka_format = 'JSONEachRow', kafka_num_consumers = 2`,
		`CREATE TABLE usage_events (id String, tenant_id String, user_id String, feature_type String, quantity Decimal(38, 9),
event_time DateTime('UTC'), ingested_at DateTime('UTC'))
ENGINE = ReplacingMergeTree PARTITION BY toYYYYMM(event_time) ORDER BY (tenant_id, id)`,
		`CREATE TABLE usage_1d (tenant_id String, feature_type String, day Date, quantity Decimal(38, 9), events UInt64)
ENGINE = SummingMergeTree PARTITION BY toYYYYMM(day) ORDER BY (tenant_id, feature_type, day)`,
		`CREATE MATERIALIZED VIEW events_mv TO usage_events AS SELECT id, tenant_id, user_id, feature_type,
toDecimal128(quantity, 9) AS quantity, parseDateTimeBestEffort(timestamp) AS event_time, now() AS ingested_at FROM events_queue`,
		`CREATE MATERIALIZED VIEW day_mv TO usage_1d AS SELECT tenant_id, feature_type, toDate(parseDateTimeBestEffort(timestamp)) AS day,
toDecimal128(quantity, 9) AS quantity, toUInt64(1) AS events FROM events_queue`,
	}
}

// runCHKafka measures ClickHouse's Kafka engine with the same publisher,
// the same events and the same checks as runPipeline.
func runCHKafka(ctx context.Context, o options, rec *Record) error {
	n := newNames("k")
	if err := createTopics(ctx, o.broker,
		kafka.TopicConfig{Topic: n.topic, NumPartitions: partitions, ReplicationFactor: 1}); err != nil {
		return err
	}
	// librdkafka starts a new group at the END of the topic (FACTS.md):
	// committing offset 0 for the empty group first makes the engine read
	// from the start, so no event published before it joined is skipped.
	if err := commitStart(ctx, o.broker, n.topic, n.rawGroup); err != nil {
		return err
	}
	admin, err := openCH(ctx, o.clickhouse, "default")
	if err != nil {
		return err
	}
	if err := admin.Exec(ctx, "CREATE DATABASE "+n.db); err != nil {
		return fmt.Errorf("create database: %w", err)
	}
	_ = admin.Close()
	conn, err := openCH(ctx, o.clickhouse, n.db)
	if err != nil {
		return err
	}
	defer conn.Close()
	defer func() { _ = conn.Exec(context.Background(), "DROP DATABASE IF EXISTS "+n.db) }()
	for _, ddl := range chKafkaDDL(o.broker, n.topic, n.rawGroup) {
		if err := conn.Exec(ctx, ddl); err != nil {
			return fmt.Errorf("%s: %w", strings.SplitN(ddl, "\n", 2)[0], err)
		}
	}
	rec.Notes = append(rec.Notes, "ClickHouse Kafka engine: kafka_num_consumers = 2, MVs into ReplacingMergeTree (raw) and SummingMergeTree (usage_1d)")
	pub, err := newPublisher(o.broker, n.topic)
	if err != nil {
		return err
	}
	w := newWorkload()
	tenantFmt := "tenant-%07d"
	// rowsAtLeast waits until the raw table holds want rows (not deduplicated).
	rowsAtLeast := func(want int) func() (bool, string, error) {
		return func() (bool, string, error) {
			got, err := count(ctx, conn, "SELECT count() FROM usage_events")
			if err != nil {
				return false, "", err
			}
			return got >= uint64(want), fmt.Sprintf("%d rows of %d", got, want), nil
		}
	}
	published := 0
	warm := w.warmUp(o, tenantFmt)
	if err := pub.publish(ctx, warm); err != nil {
		return err
	}
	published += len(warm)
	if err := waitFor(ctx, 3*time.Minute, "warm-up", rowsAtLeast(published)); err != nil {
		return err
	}
	brokerPid, _ := pidFromFile(o.kafkaPidFile)
	chPid, err := pidFromFile(o.chPidFile)
	if err != nil {
		return err
	}
	evs := w.next(o.events, o.tenants, tenantFmt, "") // before the meter, as in runPipeline
	m := startMeter([]watched{{"clickhouse-server", chPid, "private to this run; consumes with its Kafka engine"},
		{"kafka broker", brokerPid, o.brokerNote()},
		{"publisher (SDK, this process)", 0, "also polls ClickHouse"}})
	start := time.Now()
	if err := pub.publish(ctx, evs); err != nil {
		return err
	}
	published += len(evs)
	rec.Phases = map[string]float64{}
	notePhase(rec.Phases, "published", start, true)
	if err := pollFor(ctx, 10*time.Minute, throughputPoll, "throughput",
		brokerGated(ctx, o.broker, n.topic, []gate{{n.rawGroup, "raw rows"}}, rec.Phases, start, rowsAtLeast(published))); err != nil {
		m.finish(o.events)
		return err
	}
	elapsed := time.Since(start)
	rec.Processes = m.finish(o.events)
	rec.Seconds = round(elapsed.Seconds(), 2)
	rec.EventsPerS = round(float64(o.events)/elapsed.Seconds(), 0)
	rec.CPUPerEvent = rec.Processes["clickhouse-server"].CPUUsPerEvent
	rec.Notes = append(rec.Notes, "pipeline_cpu_us_per_event = clickhouse-server")

	// settle waits until the raw table stops growing for o.settle (the engine
	// may read a message again after a restart: more rows than published
	// is possible, fewer is loss) and at least want rows are there, or 2
	// minutes pass.
	settle := func(want int) {
		var last uint64
		stable := time.Now()
		_ = waitFor(ctx, 2*time.Minute, "settle", func() (bool, string, error) {
			got, err := count(ctx, conn, "SELECT count() FROM usage_events")
			if err != nil {
				stable = time.Now()
				return false, "", err
			}
			if got != last {
				last, stable = got, time.Now()
			}
			return got >= uint64(want) && time.Since(stable) > o.settle, "", nil
		})
	}
	checks := func(after string) error {
		c, err := totalsChecks(ctx, conn, w, after, chKafkaSinks())
		rec.Exactness = append(rec.Exactness, c...)
		return err
	}
	settle(published)
	if err := checks("throughput"); err != nil {
		return err
	}
	if d := int(float64(o.events) * o.dupFraction); d > 0 {
		if err := pub.publish(ctx, evs[:d]); err != nil {
			return err
		}
		published += d
		settle(published)
		if err := checks(fmt.Sprintf("%d duplicates", d)); err != nil {
			return err
		}
	}
	if o.restart {
		more := w.next(o.events/5, o.tenants, tenantFmt, "")
		if err := pub.publish(ctx, more); err != nil {
			return err
		}
		published += len(more)
		if err := restartClickHouse(o, 2*time.Second); err != nil {
			return err
		}
		settle(published)
		if err := checks("server restart"); err != nil {
			return err
		}
	}
	return pub.close()
}

// commitStart commits offset 0 of every partition for a group that has no
// member yet (generation -1, as a standalone consumer commits).
func commitStart(ctx context.Context, broker, topic, group string) error {
	client := &kafka.Client{Addr: kafka.TCP(broker), Timeout: 10 * time.Second}
	parts := make([]kafka.OffsetCommit, partitions)
	for p := range parts {
		parts[p] = kafka.OffsetCommit{Partition: p, Offset: 0}
	}
	res, err := client.OffsetCommit(ctx, &kafka.OffsetCommitRequest{GroupID: group, GenerationID: -1,
		Topics: map[string][]kafka.OffsetCommit{topic: parts}})
	if err != nil {
		return fmt.Errorf("commit start offsets of %s: %w", group, err)
	}
	for _, p := range res.Topics[topic] {
		if p.Error != nil {
			return fmt.Errorf("commit start offset of %s[%d]: %w", topic, p.Partition, p.Error)
		}
	}
	return nil
}

// chKafkaSinks are the Kafka engine's: its daily SummingMergeTree, which
// has no event id, so cannot deduplicate (read without FINAL, as the
// documented setup reads it).
func chKafkaSinks() sinks {
	return sinks{sumWhat: "usage_1d sum",
		sumSQL:   "SELECT feature_type, toString(sum(quantity)) FROM usage_1d GROUP BY feature_type",
		countSQL: "SELECT toUInt64(sum(events)) FROM usage_1d"}
}
