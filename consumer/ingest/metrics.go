package ingest

import "github.com/prometheus/client_golang/prometheus"

// metrics are registered on the registry the caller passes in; nothing is
// global, so two consumers in one process (tests) do not collide.
type metrics struct {
	consumed      prometheus.Counter
	inserted      prometheus.Counter
	invalid       *prometheus.CounterVec
	batches       prometheus.Counter
	insertErrors  prometheus.Counter
	dlqErrors     prometheus.Counter
	commitErrors  prometheus.Counter
	insertSeconds prometheus.Histogram
	batchRows     prometheus.Histogram
	committed     *prometheus.GaugeVec
	fetchErrors   prometheus.Counter
	// deadLetterFallback counts DLQ records Kafka refused for good, written
	// to the ClickHouse table dead_letters instead.
	deadLetterFallback prometheus.Counter
	// rerouted counts misrouted events whose copy was queued for their
	// tenant's partition, by routing tag and HeaderPublisher: the
	// publishers to fix (each costs a second write and read).
	rerouted      *prometheus.CounterVec
	rerouteErrors prometheus.Counter
	// rerouteTooLarge counts misrouted events whose copy the broker
	// refused for good as too large: their originals went to the DLQ.
	rerouteTooLarge prometheus.Counter
	// retentionGap counts records retention deleted before they were read.
	retentionGap prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		consumed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "usage_consumer_messages_total", Help: "Kafka messages read from the events topic."}),
		inserted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "usage_consumer_events_inserted_total", Help: "Valid events written to ClickHouse (re-inserts after a crash included)."}),
		invalid: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "usage_consumer_events_invalid_total", Help: "Invalid events sent to the DLQ, by error code."}, []string{"code"}),
		batches: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "usage_consumer_batches_total", Help: "Batches flushed and committed."}),
		insertErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "usage_consumer_insert_errors_total", Help: "Failed ClickHouse insert attempts (each is retried)."}),
		dlqErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "usage_consumer_dlq_errors_total", Help: "Failed DLQ write attempts (each is retried)."}),
		commitErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "usage_consumer_commit_errors_total", Help: "Failed offset commits (the data is written; it will be re-read and deduplicated)."}),
		insertSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "usage_consumer_insert_seconds", Help: "Duration of successful ClickHouse batch inserts.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 12)}),
		batchRows: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "usage_consumer_batch_messages", Help: "Messages per flushed batch.",
			Buckets: prometheus.ExponentialBuckets(1, 4, 10)}),
		committed: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "usage_consumer_committed_offset", Help: "Last committed offset per partition."}, []string{"partition"}),
		fetchErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "usage_consumer_fetch_errors_total", Help: "Failed fetches and metadata reads of the events topic (each is retried)."}),
		deadLetterFallback: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "usage_consumer_dead_letter_fallback_total", Help: "DLQ records Kafka refused for good, written to the ClickHouse table dead_letters."}),
		rerouted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "usage_consumer_rerouted_total", Help: "Misrouted events (no key, another key, another partitioner) re-published to their tenant's partition, by routing tag and usage.publisher header (re-reads after a crash included)."},
			[]string{"reason", "publisher"}),
		rerouteErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "usage_consumer_reroute_errors_total", Help: "Failed re-publish attempts of misrouted events (each is retried; nothing is committed past them)."}),
		rerouteTooLarge: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "usage_consumer_reroute_too_large_total", Help: "Misrouted events whose re-routed copy the broker refused as too large; their originals went to the DLQ (reroute_too_large), counted nowhere: republish them."}),
		retentionGap: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "usage_consumer_retention_gap_events_total", Help: "Records of the events topic that retention deleted before the consumer read them (on_retention_gap says what followed)."}),
	}
	if reg != nil {
		reg.MustRegister(m.consumed, m.inserted, m.invalid, m.batches, m.insertErrors, m.dlqErrors,
			m.commitErrors, m.insertSeconds, m.batchRows, m.committed, m.fetchErrors, m.deadLetterFallback, m.rerouted, m.rerouteErrors, m.rerouteTooLarge, m.retentionGap)
	}
	return m
}
