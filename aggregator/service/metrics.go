package service

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	outcomes       *prometheus.CounterVec
	unknownMeters  *prometheus.CounterVec
	rowsWritten    prometheus.Counter
	writeErrors    prometheus.Counter
	flushSeconds   prometheus.Histogram
	quotaPublished prometheus.Counter
	quotaErrors    prometheus.Counter
	assignErrors   prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		outcomes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "usage_aggregator_events_total",
			Help: "Events read, by outcome: applied, replayed, duplicate, late, unknown_meter, invalid."}, []string{"outcome"}),
		unknownMeters: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "usage_aggregator_unknown_meter_events_total",
			Help: "Events of meters missing from the config, aggregated as sum."}, []string{"feature_type"}),
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
	if reg != nil {
		reg.MustRegister(m.outcomes, m.unknownMeters, m.rowsWritten, m.writeErrors, m.flushSeconds, m.quotaPublished, m.quotaErrors, m.assignErrors)
	}
	return m
}
