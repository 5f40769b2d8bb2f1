package service

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/usagemeter/usagemeter/aggregator/state"
)

type metrics struct {
	outcomes *prometheus.CounterVec
	// byOutcome and invalid are outcomes' children, resolved once: the
	// label look-up (hash, map, lock) per event was a measurable share of
	// the apply loop.
	byOutcome      [state.NumOutcomes]prometheus.Counter
	invalid        prometheus.Counter
	unknownMeters  prometheus.Counter
	rowsWritten    prometheus.Counter
	writeErrors    prometheus.Counter
	flushSeconds   prometheus.Histogram
	quotaPublished prometheus.Counter
	quotaErrors    prometheus.Counter
	assignErrors   prometheus.Counter
	retentionGap   prometheus.Counter
	// deadLetterFallback: side records written to dead_letters.
	deadLetterFallback prometheus.Counter
	groupErrors        prometheus.Counter
	// quotaFenced: publications refused because the generation had ended.
	quotaFenced prometheus.Counter
	// positions published and failed (schemas.QuotaPosition).
	positionsPublished, positionErrors prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		outcomes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "usage_aggregator_events_total",
			Help: "Events read, by outcome: applied, replayed, duplicate, late, unknown_meter, aggregate_overflow, no_subject, invalid."}, []string{"outcome"}),
		// No feature_type label: names come from publishers, and a label
		// per name would let input grow the series without bound (the log
		// names them).
		unknownMeters: prometheus.NewCounter(prometheus.CounterOpts{Name: "usage_aggregator_unknown_meter_events_total",
			Help: "Events of meters missing from the config, aggregated as sum."}),
		retentionGap: prometheus.NewCounter(prometheus.CounterOpts{Name: "usage_aggregator_retention_gap_events_total",
			Help: "Events deleted by retention before the aggregator read them (checkpoint older than the topic's first offset)."}),
		deadLetterFallback: prometheus.NewCounter(prometheus.CounterOpts{Name: "usage_aggregator_dead_letter_fallback_total",
			Help: "Late or DLQ records Kafka refused for good, written to the ClickHouse table dead_letters."}),
		groupErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "usage_aggregator_group_errors_total",
			Help: "Consumer-group and generation errors the aggregator recovered from by rejoining."}),
		quotaFenced: prometheus.NewCounter(prometheus.CounterOpts{Name: "usage_aggregator_quota_fenced_total",
			Help: "Quota-state publications withheld because the member's group generation had ended (frozen past its session, rebalanced)."}),
		positionsPublished: prometheus.NewCounter(prometheus.CounterOpts{Name: "usage_aggregator_quota_positions_published_total",
			Help: "QuotaPosition records published (per partition: the offset through which every quota state is published)."}),
		positionErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "usage_aggregator_quota_position_errors_total",
			Help: "Failed QuotaPosition publications (retried after a pause; caches keep the pending usage meanwhile)."}),
		rowsWritten: prometheus.NewCounter(prometheus.CounterOpts{Name: "usage_aggregator_rows_written_total",
			Help: "Aggregate rows written to ClickHouse."}),
		writeErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "usage_aggregator_write_errors_total",
			Help: "Failed write attempts (each is retried)."}),
		flushSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "usage_aggregator_flush_seconds",
			Help: "Duration of flushes that wrote rows.", Buckets: prometheus.ExponentialBuckets(0.005, 2, 12)}),
		quotaPublished: prometheus.NewCounter(prometheus.CounterOpts{Name: "usage_aggregator_quota_states_published_total",
			Help: "QuotaState messages published."}),
		quotaErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "usage_aggregator_quota_publish_errors_total",
			Help: "Failed quota-state publications (retried)."}),
		assignErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "usage_aggregator_plan_assignment_errors_total",
			Help: "Plan assignment records ignored (bad JSON, unknown plan)."}),
	}
	for o := range m.byOutcome {
		m.byOutcome[o] = m.outcomes.WithLabelValues(state.Outcome(o).String())
	}
	m.invalid = m.outcomes.WithLabelValues("invalid")
	if reg != nil {
		reg.MustRegister(m.outcomes, m.unknownMeters, m.rowsWritten, m.writeErrors, m.flushSeconds, m.quotaPublished, m.quotaErrors, m.assignErrors,
			m.retentionGap, m.deadLetterFallback, m.groupErrors, m.quotaFenced, m.positionsPublished, m.positionErrors)
	}
	return m
}
