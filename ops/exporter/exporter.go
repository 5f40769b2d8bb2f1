// Package exporter turns what only ClickHouse knows into Prometheus
// metrics for the alert rules: how old each aggregator checkpoint is (the
// aggregator writes one per partition after each flush, and exports no
// age itself), and how many letters sit in the dead_letters fallback.
// Values are read at scrape time, so they are never staler than the scrape.
package exporter

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// Collector reads the tables on each scrape.
type Collector struct {
	conn    driver.Conn
	log     *zap.Logger
	timeout time.Duration
	now     func() time.Time

	age, offset, letters *prometheus.Desc
	errors               prometheus.Counter
}

// New returns a Collector; register it on the service's registry.
func New(conn driver.Conn, log *zap.Logger, timeout time.Duration) *Collector {
	return &Collector{conn: conn, log: log, timeout: timeout, now: time.Now,
		age: prometheus.NewDesc("usage_ops_aggregator_checkpoint_age_seconds",
			"Seconds since the aggregator last checkpointed the partition (aggregator_checkpoints.updated_at).",
			[]string{"group", "partition"}, nil),
		offset: prometheus.NewDesc("usage_ops_aggregator_checkpoint_offset",
			"Last usage.events offset whose effects are in the aggregate tables.", []string{"group", "partition"}, nil),
		letters: prometheus.NewDesc("usage_ops_dead_letters",
			"Letters in the ClickHouse fallback table dead_letters, by the topic Kafka refused them for.", []string{"target_topic"}, nil),
		errors: prometheus.NewCounter(prometheus.CounterOpts{Name: "usage_ops_scrape_errors_total",
			Help: "ClickHouse reads that failed during a scrape (the metrics of that read are missing from the scrape)."}),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.age
	ch <- c.offset
	ch <- c.letters
	c.errors.Describe(ch)
}

type checkpointsQuery struct{}

func (checkpointsQuery) toSQL() (string, []any) {
	return `SELECT consumer_group, partition, offset, updated_at FROM aggregator_checkpoints FINAL`, nil
}

type lettersQuery struct{}

func (lettersQuery) toSQL() (string, []any) {
	return `SELECT target_topic, count() AS n FROM dead_letters FINAL GROUP BY target_topic`, nil
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	if err := c.checkpoints(ctx, ch); err != nil {
		c.fail(err)
	}
	if err := c.deadLetters(ctx, ch); err != nil {
		c.fail(err)
	}
	c.errors.Collect(ch)
}

func (c *Collector) fail(err error) {
	c.errors.Inc()
	c.log.Warn("scrape read failed", zap.Error(err))
}

func (c *Collector) checkpoints(ctx context.Context, ch chan<- prometheus.Metric) error {
	sql, args := checkpointsQuery{}.toSQL()
	var rows []struct {
		Group     string    `ch:"consumer_group"`
		Partition int32     `ch:"partition"`
		Offset    int64     `ch:"offset"`
		UpdatedAt time.Time `ch:"updated_at"`
	}
	if err := c.conn.Select(ctx, &rows, sql, args...); err != nil {
		return fmt.Errorf("read aggregator_checkpoints: %w", err)
	}
	now := c.now()
	for _, r := range rows {
		p := strconv.Itoa(int(r.Partition))
		ch <- prometheus.MustNewConstMetric(c.age, prometheus.GaugeValue, now.Sub(r.UpdatedAt).Seconds(), r.Group, p)
		ch <- prometheus.MustNewConstMetric(c.offset, prometheus.GaugeValue, float64(r.Offset), r.Group, p)
	}
	return nil
}

func (c *Collector) deadLetters(ctx context.Context, ch chan<- prometheus.Metric) error {
	sql, args := lettersQuery{}.toSQL()
	var rows []struct {
		Topic string `ch:"target_topic"`
		N     uint64 `ch:"n"`
	}
	if err := c.conn.Select(ctx, &rows, sql, args...); err != nil {
		return fmt.Errorf("read dead_letters: %w", err)
	}
	for _, r := range rows {
		ch <- prometheus.MustNewConstMetric(c.letters, prometheus.GaugeValue, float64(r.N), r.Topic)
	}
	return nil
}
