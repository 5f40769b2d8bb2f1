package server

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	"go.uber.org/zap"

	"github.com/usagemeter/usagemeter/schemas"
)

// AlertFeed keeps the newest alerts of usage.alerts in memory for the
// pages: each tenant's last PerTenant, and the last Latest across tenants.
// It reads the topic itself (every partition from its start, then tails
// it), not alert_deliveries: the topic has every crossing with its usage
// and limit whether or not a webhook is configured or delivered, and it is
// where usage-alerts' exactly-once bookkeeping lives.
type AlertFeed struct {
	brokers   []string
	topic     string
	log       *zap.Logger
	perTenant int
	latest    int
	invalid   prometheus.Counter

	mu       sync.Mutex
	byTenant map[string][]schemas.UsageAlert // oldest first, at most perTenant
	recent   []schemas.UsageAlert            // oldest first, at most latest
	read     int64
}

// NewAlertFeed returns a feed of topic on brokers keeping perTenant alerts
// per tenant and latest across tenants (defaults 20 and 50 when <= 0).
func NewAlertFeed(brokers []string, topic string, perTenant, latest int, log *zap.Logger, reg prometheus.Registerer) (*AlertFeed, error) {
	if len(brokers) == 0 {
		return nil, errors.New("alerts: brokers: at least one is required")
	}
	if topic == "" {
		return nil, errors.New("alerts: topic: is required")
	}
	if perTenant <= 0 {
		perTenant = 20
	}
	if latest <= 0 {
		latest = 50
	}
	f := &AlertFeed{brokers: brokers, topic: topic, log: log, perTenant: perTenant, latest: latest, byTenant: map[string][]schemas.UsageAlert{},
		invalid: prometheus.NewCounter(prometheus.CounterOpts{Name: "usage_api_alerts_invalid_total",
			Help: "Messages of the alert topic the pages' feed could not decode (skipped)."})}
	if reg != nil {
		reg.MustRegister(f.invalid, prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "usage_api_alerts_read_total",
			Help: "Alerts the pages' feed has read."}, func() float64 { f.mu.Lock(); defer f.mu.Unlock(); return float64(f.read) }))
	}
	return f, nil
}

// Run reads every partition until ctx ends. A missing topic is waited for
// (usage-alerts creates it).
func (f *AlertFeed) Run(ctx context.Context) error {
	var parts []kafka.Partition
	for {
		// Every topic's partitions, filtered here: asking for the topic by
		// name would let the broker auto-create it, uncompacted.
		conn, err := kafka.DialContext(ctx, "tcp", f.brokers[0])
		if err == nil {
			var all []kafka.Partition
			all, err = conn.ReadPartitions()
			_ = conn.Close()
			parts = slices.DeleteFunc(all, func(p kafka.Partition) bool { return p.Topic != f.topic })
		}
		if err == nil && len(parts) > 0 {
			break
		}
		f.log.Debug("alert topic not readable yet", zap.String("topic", f.topic), zap.Error(err))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(2 * time.Second):
		}
	}
	var wg sync.WaitGroup
	for _, p := range parts {
		wg.Add(1)
		go func(p int) {
			defer wg.Done()
			f.readPartition(ctx, p)
		}(p.ID)
	}
	wg.Wait()
	return nil
}

func (f *AlertFeed) readPartition(ctx context.Context, partition int) {
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: f.brokers, Topic: f.topic, Partition: partition,
		MinBytes: 1, MaxBytes: 4 << 20, MaxWait: 250 * time.Millisecond})
	defer r.Close()
	_ = r.SetOffset(kafka.FirstOffset)
	for {
		m, err := r.ReadMessage(ctx)
		if err != nil {
			if ctx.Err() == nil {
				f.log.Warn("alert feed read failed", zap.Int("partition", partition), zap.Error(err))
			}
			return
		}
		if len(m.Value) == 0 {
			continue // a tombstone
		}
		a, err := schemas.DecodeUsageAlert(m.Value)
		if err != nil {
			f.invalid.Inc()
			f.log.Warn("alert feed: invalid alert skipped", zap.Int("partition", partition), zap.Int64("offset", m.Offset), zap.Error(err))
			continue
		}
		f.add(a)
	}
}

// add keeps a, once per alert id (a replayed or duplicated crossing has
// the same id).
func (f *AlertFeed) add(a schemas.UsageAlert) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.read++
	same := func(o schemas.UsageAlert) bool { return o.AlertID == a.AlertID }
	if list := f.byTenant[a.TenantID]; !slices.ContainsFunc(list, same) {
		list = append(list, a)
		if len(list) > f.perTenant {
			list = list[len(list)-f.perTenant:]
		}
		f.byTenant[a.TenantID] = list
	}
	if !slices.ContainsFunc(f.recent, same) {
		f.recent = append(f.recent, a)
		if len(f.recent) > f.latest {
			f.recent = f.recent[len(f.recent)-f.latest:]
		}
	}
}

// Tenant returns tenant's kept alerts, newest first. Only that tenant's:
// the list is keyed by the alert's tenant_id.
func (f *AlertFeed) Tenant(tenant string) []schemas.UsageAlert {
	f.mu.Lock()
	out := slices.Clone(f.byTenant[tenant])
	f.mu.Unlock()
	return newestFirst(out)
}

// Latest returns the newest alerts across tenants, newest first.
func (f *AlertFeed) Latest() []schemas.UsageAlert {
	f.mu.Lock()
	out := slices.Clone(f.recent)
	f.mu.Unlock()
	return newestFirst(out)
}

func newestFirst(as []schemas.UsageAlert) []schemas.UsageAlert {
	slices.SortStableFunc(as, func(a, b schemas.UsageAlert) int { return b.DetectedAt.Compare(a.DetectedAt) })
	return as
}

// WithAlerts shows f's alerts on the tenant and admin pages.
func (s *Server) WithAlerts(f *AlertFeed) *Server {
	s.alerts = f
	return s
}

// alertRow is one alert as the pages show it.
type alertRow struct {
	ID, Tenant, Meter, Period, Kind, Line, Usage, Limit, Level, At string
}

func alertRows(as []schemas.UsageAlert) []alertRow {
	out := make([]alertRow, 0, len(as))
	for _, a := range as {
		line := a.Threshold.String()
		switch a.Kind {
		case schemas.AlertKindPercent:
			line += " %"
		case schemas.AlertKindOverage:
			line = "over the limit"
		}
		limit := a.Limit.String()
		if a.Limit.IsNegative() {
			limit = "∞"
		}
		out = append(out, alertRow{ID: a.AlertID, Tenant: a.TenantID, Meter: a.FeatureType, Period: a.Period, Kind: a.Kind, Line: line,
			Usage: a.Usage.String(), Limit: limit, Level: a.Level, At: a.DetectedAt.UTC().Format("2006-01-02 15:04:05")})
	}
	return out
}
