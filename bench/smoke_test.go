package main

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/usagemeter/usagemeter/testenv"
)

// TestSmoke runs the harness itself on a few thousand events against the
// shared engines (no restart: the shared server is not ours to stop), so
// that `make bench` cannot rot unnoticed: both modes measure, ours is exact
// after a duplicate burst, and the Kafka engine's raw table is exact
// through FINAL while its SummingMergeTree counts the duplicates.
func TestSmoke(t *testing.T) {
	broker, chAddr := testenv.Kafka(t), testenv.ClickHouseAddr(t)
	root := testenv.RepoRoot(t)
	port := chAddr[strings.LastIndexByte(chAddr, ':')+1:]
	bins, err := testenv.BuildCommands(t.TempDir(), "./consumer/cmd/usage-consumer", "./aggregator/cmd/usage-aggregator")
	if err != nil {
		t.Fatal(err)
	}
	o := options{broker: broker, clickhouse: chAddr,
		kafkaPidFile: filepath.Join(root, ".cache/run/kafka-"+broker[strings.LastIndexByte(broker, ':')+1:]+"/kafka.pid"),
		chPidFile:    filepath.Join(root, ".cache/run/clickhouse-"+port+"/clickhouse.pid"),
		consumerBin:  bins[0], aggregatorBin: bins[1], events: 2000, tenants: 20, dupFraction: 0.25,
		freshness: time.Second, freshRate: 1000, settle: time.Second, workDir: t.TempDir()}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	var ours Record
	if err := runPipeline(ctx, o, &ours); err != nil {
		t.Fatalf("pipeline: %v", err)
	}
	if ours.EventsPerS <= 0 || ours.Processes["usage-aggregator"].CPUSeconds < 0 || ours.Processes["usage-consumer"].Pid == 0 {
		t.Fatalf("pipeline figures missing: %+v", ours)
	}
	// Every freshness event was seen by the quota cache and on the topic
	// (measureFreshness fails otherwise); the cache reads the topic, so it
	// cannot see an event sooner than the topic's reader by much.
	f := ours.Freshness
	if f == nil || f.Topic == nil || f.Events == 0 || f.Topic.Events != f.Events || f.P50ms <= 0 {
		t.Fatalf("freshness missing: %+v", f)
	}
	t.Logf("freshness: cache p50 %.1f ms p99 %.1f ms; topic p50 %.1f ms p99 %.1f ms", f.P50ms, f.P99ms, f.Topic.P50ms, f.Topic.P99ms)
	if len(ours.Exactness) != 12 {
		t.Fatalf("pipeline: %d checks, want 12 (6 after throughput, 6 after duplicates)", len(ours.Exactness))
	}
	for _, c := range ours.Exactness {
		if !c.Exact {
			t.Errorf("pipeline: %+v", c)
		}
	}

	var ch Record
	if err := runCHKafka(ctx, o, &ch); err != nil {
		t.Fatalf("chkafka: %v", err)
	}
	if ch.EventsPerS <= 0 {
		t.Fatalf("chkafka figures missing: %+v", ch)
	}
	for _, c := range ch.Exactness {
		// The raw table through FINAL is exact. The SummingMergeTree has
		// no id to deduplicate by: after 500 duplicates it must be off; at
		// throughput it may already be (a rebalance between the engine's
		// two consumers re-reads uncommitted messages: seen here once, the
		// 20 warm-up events counted twice), so that check is not asserted.
		switch {
		case strings.HasPrefix(c.What, "raw") && !c.Exact:
			t.Errorf("chkafka: %+v, want exact", c)
		case !strings.HasPrefix(c.What, "raw") && c.After != "throughput" && c.Exact:
			t.Errorf("chkafka: %+v: the duplicates must show in the SummingMergeTree", c)
		}
	}
}
