package exporter_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/usagemeter/usagemeter/ops/exporter"
	"github.com/usagemeter/usagemeter/schemas/migrations"
	"github.com/usagemeter/usagemeter/testenv"
)

// On the real server: the age of each checkpoint as the aggregator wrote it
// (the newest version of a partition wins, as FINAL reads it), the
// dead_letters backlog per target topic, and a failed read counted.
func TestCheckpointAgeAndDeadLetters(t *testing.T) {
	conn, _ := testenv.ClickHouse(t)
	ctx := context.Background()
	if _, err := migrations.Apply(ctx, conn); err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC().Truncate(time.Second)
	b, err := conn.PrepareBatch(ctx, `INSERT INTO aggregator_checkpoints (consumer_group, topic, partition, offset, watermark, updated_at, version)`)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []struct {
		p       int32
		off     int64
		age     time.Duration
		version uint64
	}{{0, 10, 900 * time.Second, 22}, {0, 41, 120 * time.Second, 84}, {1, 7, 30 * time.Second, 16}} {
		if err := b.Append("usage-aggregator", "usage.events", r.p, r.off, now, now.Add(-r.age), r.version); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Send(); err != nil {
		t.Fatal(err)
	}
	d, err := conn.PrepareBatch(ctx, `INSERT INTO dead_letters (target_topic, source_topic, source_partition, source_offset, failed_at)`)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := d.Append("usage.events.dlq", "usage.events", int32(0), int64(i), now); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Append("usage.events.late", "usage.events", int32(0), int64(0), now); err != nil {
		t.Fatal(err)
	}
	if err := d.Send(); err != nil {
		t.Fatal(err)
	}
	c := exporter.New(conn, zap.NewNop(), 10*time.Second)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	got := gather(t, reg)
	// Ages are at least what was written, plus at most the test's own run time.
	for k, want := range map[string]float64{
		"usage_ops_aggregator_checkpoint_age_seconds{usage-aggregator,0}": 120,
		"usage_ops_aggregator_checkpoint_age_seconds{usage-aggregator,1}": 30,
	} {
		if got[k] < want || got[k] > want+30 {
			t.Errorf("%s = %v, want %v (+ the test's run time)", k, got[k], want)
		}
	}
	for k, want := range map[string]float64{
		"usage_ops_aggregator_checkpoint_offset{usage-aggregator,0}": 41,
		"usage_ops_aggregator_checkpoint_offset{usage-aggregator,1}": 7,
		"usage_ops_dead_letters{usage.events.dlq}":                   3,
		"usage_ops_dead_letters{usage.events.late}":                  1,
		"usage_ops_scrape_errors_total{}":                            0,
	} {
		if got[k] != want {
			t.Errorf("%s = %v, want %v", k, got[k], want)
		}
	}
	if err := conn.Exec(ctx, "DROP TABLE dead_letters"); err != nil {
		t.Fatal(err)
	}
	got = gather(t, reg)
	if got["usage_ops_scrape_errors_total{}"] != 1 || got["usage_ops_dead_letters{usage.events.dlq}"] != 0 {
		t.Fatalf("after dead_letters is gone: %v; want one scrape error and no dead_letters series", got)
	}
	if got["usage_ops_aggregator_checkpoint_offset{usage-aggregator,0}"] != 41 {
		t.Fatalf("one failed read must not hide the other's metrics: %v", got)
	}
}

// gather scrapes reg into name{label values} -> value.
func gather(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetValue())
			}
			got[mf.GetName()+"{"+strings.Join(labels, ",")+"}"] = m.GetGauge().GetValue() + m.GetCounter().GetValue()
		}
	}
	return got
}
