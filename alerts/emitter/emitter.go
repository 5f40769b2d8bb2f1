// Package emitter follows usage.quota-state and publishes each threshold
// crossing once to usage.alerts.
//
// Exactly once rests on the alert topic itself, not on a side store: an
// alert's Kafka key is its deterministic id (schemas.AlertID), every
// emitter reads the whole alert topic into a set of ids and keeps tailing
// it, and before it publishes it reads that topic up to its current end
// again. So a crossing already published by this process, a previous run
// (a crash between publish and offset commit included: the state is read
// again and its alert is found) or another instance is never published
// again. Quota states are read in a consumer group, so two instances split
// the partitions; the offset commit after publishing only saves re-reading.
package emitter

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	"go.uber.org/zap"

	"github.com/usagemeter/usagemeter/alerts/detect"
	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/schemas/plans"
	"github.com/usagemeter/usagemeter/svckit"
	"github.com/usagemeter/usagemeter/svckit/backoff"
)

// Config tunes the emitter. Keys are the viper/YAML names.
type Config struct {
	Brokers    []string `mapstructure:"brokers"`
	StateTopic string   `mapstructure:"state_topic"`
	AlertTopic string   `mapstructure:"alert_topic"`
	GroupID    string   `mapstructure:"group_id"`
	// SessionTimeout: how long a dead member holds its state partitions.
	SessionTimeout time.Duration `mapstructure:"session_timeout"`
	RetryMin       time.Duration `mapstructure:"retry_min"`
	RetryMax       time.Duration `mapstructure:"retry_max"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{Brokers: []string{"127.0.0.1:19092"}, StateTopic: schemas.QuotaStateTopic, AlertTopic: schemas.AlertTopic,
		GroupID: "usage-alerts", SessionTimeout: 10 * time.Second, RetryMin: 100 * time.Millisecond, RetryMax: 10 * time.Second}
}

// Validate names the first bad key and why.
func (c Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("emitter.%s: %s", key, fmt.Sprintf(format, args...)))
	}
	if len(c.Brokers) == 0 {
		bad("brokers", "at least one host:port is required")
	}
	for key, v := range map[string]string{"state_topic": c.StateTopic, "alert_topic": c.AlertTopic, "group_id": c.GroupID} {
		if v == "" {
			bad(key, "must not be empty")
		}
	}
	if c.SessionTimeout < time.Second {
		bad("session_timeout", "%s is below 1s", c.SessionTimeout)
	}
	if c.RetryMin <= 0 || c.RetryMax < c.RetryMin {
		bad("retry_min", "need 0 < retry_min <= retry_max, got %s and %s", c.RetryMin, c.RetryMax)
	}
	return errors.Join(errs...)
}

type metrics struct {
	states        *prometheus.CounterVec
	emitted       *prometheus.CounterVec
	already       prometheus.Counter
	unknownPlan   prometheus.Counter
	publishErrors prometheus.Counter
	known         prometheus.GaugeFunc
}

// Emitter is one usage-alerts emitter process.
type Emitter struct {
	cfg   Config
	plans *plans.Config
	log   *zap.Logger
	m     *metrics
	now   func() time.Time
	// tailDelay holds the alert-topic readers back (tests: a slow read
	// must delay decisions, not let them skip the topic).
	tailDelay time.Duration

	mu   sync.Mutex
	seen map[string]struct{} // alert ids on the alert topic
	pos  map[int]int64       // partition of the alert topic -> next offset the tailer reads
}

// New builds an emitter; reg (may be nil) receives its metrics.
func New(cfg Config, p *plans.Config, log *zap.Logger, reg prometheus.Registerer) (*Emitter, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	e := &Emitter{cfg: cfg, plans: p, log: log, now: time.Now, seen: map[string]struct{}{}, pos: map[int]int64{}}
	e.m = &metrics{
		states: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "usage_alerts_states_total",
			Help: "Quota-state messages read, by outcome: ok, invalid (refused by the contract), tombstone."}, []string{"outcome"}),
		emitted: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "usage_alerts_emitted_total",
			Help: "Alerts published to the alert topic, by kind."}, []string{"kind"}),
		already: prometheus.NewCounter(prometheus.CounterOpts{Name: "usage_alerts_already_emitted_total",
			Help: "Crossings found in a state whose alert was already on the alert topic (not published again)."}),
		unknownPlan: prometheus.NewCounter(prometheus.CounterOpts{Name: "usage_alerts_unknown_plan_total",
			Help: "States naming a plan missing from the plans file (default thresholds used)."}),
		publishErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "usage_alerts_publish_errors_total",
			Help: "Failed alert publications (retried)."}),
	}
	e.m.known = prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "usage_alerts_known",
		Help: "Alert ids read from the alert topic or published."}, func() float64 {
		e.mu.Lock()
		defer e.mu.Unlock()
		return float64(len(e.seen))
	})
	if reg != nil {
		reg.MustRegister(e.m.states, e.m.emitted, e.m.already, e.m.unknownPlan, e.m.publishErrors, e.m.known)
	}
	return e, nil
}

// Run emits until ctx ends; it returns nil then.
func (e *Emitter) Run(ctx context.Context) error {
	parts, err := svckit.Partitions(ctx, e.cfg.Brokers, e.cfg.AlertTopic)
	if err != nil {
		return err
	}
	// The aggregator creates the compacted state topic; joining a group on
	// a missing topic could let the broker auto-create it uncompacted.
	if err := backoff.Retry(ctx, backoff.Policy{Min: e.cfg.RetryMin, Max: e.cfg.RetryMax}, func(ctx context.Context) error {
		_, err := svckit.Partitions(ctx, e.cfg.Brokers, e.cfg.StateTopic)
		return err
	}, func(attempt int, _ time.Duration, err error) {
		e.log.Warn("waiting for the quota-state topic", zap.String("topic", e.cfg.StateTopic), zap.Int("attempt", attempt), zap.Error(err))
	}); err != nil {
		return ignoreCancel(err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	for p := range parts {
		wg.Add(1)
		go func() { defer wg.Done(); e.tail(ctx, p) }()
	}
	// Read the alert topic to its end before the first decision.
	if err := e.catchUp(ctx); err != nil {
		return ignoreCancel(err)
	}
	e.mu.Lock()
	e.log.Info("alert topic read", zap.String("topic", e.cfg.AlertTopic), zap.Int("alerts", len(e.seen)))
	e.mu.Unlock()

	w := &kafka.Writer{Addr: kafka.TCP(e.cfg.Brokers...), Topic: e.cfg.AlertTopic, Balancer: &kafka.Murmur2Balancer{},
		RequiredAcks: kafka.RequireAll, BatchTimeout: 5 * time.Millisecond, MaxAttempts: 1}
	defer w.Close()
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: e.cfg.Brokers, GroupID: e.cfg.GroupID, Topic: e.cfg.StateTopic,
		StartOffset: kafka.FirstOffset, MinBytes: 1, MaxBytes: 16 << 20, MaxWait: 100 * time.Millisecond,
		SessionTimeout: e.cfg.SessionTimeout, HeartbeatInterval: e.cfg.SessionTimeout / 5})
	defer r.Close()
	for {
		m, err := r.FetchMessage(ctx)
		if err != nil {
			return ignoreCancel(err)
		}
		if err := e.handle(ctx, w, m); err != nil {
			return ignoreCancel(err)
		}
		// A failed commit only means the state is read again: its alerts
		// are then found on the topic.
		if err := r.CommitMessages(ctx, m); err != nil && ctx.Err() == nil {
			e.log.Warn("commit quota-state offset", zap.Error(err))
		}
	}
}

func ignoreCancel(err error) error {
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// handle publishes the new crossings of one quota-state message.
func (e *Emitter) handle(ctx context.Context, w *kafka.Writer, m kafka.Message) error {
	if len(m.Value) == 0 {
		e.m.states.WithLabelValues("tombstone").Inc()
		return nil
	}
	s, err := schemas.DecodeQuotaState(m.Value)
	if err != nil {
		e.m.states.WithLabelValues("invalid").Inc()
		e.log.Warn("quota state refused", zap.String("key", string(m.Key)), zap.Int("partition", m.Partition),
			zap.Int64("offset", m.Offset), zap.Error(err))
		return nil
	}
	e.m.states.WithLabelValues("ok").Inc()
	q, known := detect.Quota(e.plans, &s)
	if !known {
		e.m.unknownPlan.Inc()
	}
	fresh := e.unseen(detect.Crossings(&s, q, e.now()))
	if len(fresh) == 0 {
		return nil
	}
	// Another instance (or this partition's previous owner) may have
	// published these since the tailer last read: read to the end first.
	if err := e.catchUp(ctx); err != nil {
		return err
	}
	for _, a := range e.unseen(fresh) {
		msg := kafka.Message{Key: []byte(a.AlertID), Value: a.AppendJSON(nil)}
		err := backoff.Retry(ctx, backoff.Policy{Min: e.cfg.RetryMin, Max: e.cfg.RetryMax},
			func(ctx context.Context) error { return w.WriteMessages(ctx, msg) },
			func(attempt int, pause time.Duration, err error) {
				e.m.publishErrors.Inc()
				e.log.Warn("publish alert", zap.String("alert_id", a.AlertID), zap.Int("attempt", attempt), zap.Error(err))
			})
		if err != nil {
			return err
		}
		e.mu.Lock()
		e.seen[a.AlertID] = struct{}{}
		e.mu.Unlock()
		e.m.emitted.WithLabelValues(a.Kind).Inc()
		e.log.Info("alert", zap.String("alert_id", a.AlertID), zap.String("tenant_id", a.TenantID),
			zap.String("feature_type", a.FeatureType), zap.String("period", a.Period), zap.String("kind", a.Kind),
			zap.String("threshold", a.Threshold.String()), zap.String("usage", a.Usage.String()))
	}
	return nil
}

// unseen returns the alerts whose id is not on the alert topic yet.
func (e *Emitter) unseen(as []schemas.UsageAlert) []schemas.UsageAlert {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := as[:0:0]
	for _, a := range as {
		if _, ok := e.seen[a.AlertID]; ok {
			e.m.already.Inc()
			continue
		}
		out = append(out, a)
	}
	return out
}

// tail reads one partition of the alert topic from its start for ever,
// recording every id.
func (e *Emitter) tail(ctx context.Context, partition int) {
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: e.cfg.Brokers, Topic: e.cfg.AlertTopic, Partition: partition,
		MinBytes: 1, MaxBytes: 16 << 20, MaxWait: 100 * time.Millisecond})
	defer r.Close()
	select {
	case <-time.After(e.tailDelay):
	case <-ctx.Done():
		return
	}
	if err := r.SetOffset(kafka.FirstOffset); err != nil {
		e.log.Error("alert topic reader", zap.Error(err))
		return
	}
	for {
		m, err := r.FetchMessage(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			e.log.Warn("read alert topic", zap.Int("partition", partition), zap.Error(err))
			continue
		}
		e.mu.Lock()
		if len(m.Value) > 0 {
			e.seen[string(m.Key)] = struct{}{}
		}
		e.pos[partition] = m.Offset + 1
		e.mu.Unlock()
	}
}

// catchUp waits until every tailer has read up to the alert topic's end
// offsets as of now.
func (e *Emitter) catchUp(ctx context.Context) error {
	var ends map[int]int64
	err := backoff.Retry(ctx, backoff.Policy{Min: e.cfg.RetryMin, Max: e.cfg.RetryMax}, func(ctx context.Context) error {
		var err error
		ends, err = endOffsets(ctx, e.cfg.Brokers, e.cfg.AlertTopic)
		return err
	}, func(attempt int, _ time.Duration, err error) {
		e.log.Warn("end offsets of the alert topic", zap.Int("attempt", attempt), zap.Error(err))
	})
	if err != nil {
		return err
	}
	for {
		e.mu.Lock()
		behind := false
		for p, end := range ends {
			if e.pos[p] < end {
				behind = true
			}
		}
		e.mu.Unlock()
		if !behind {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func endOffsets(ctx context.Context, brokers []string, topic string) (map[int]int64, error) {
	n, err := svckit.Partitions(ctx, brokers, topic)
	if err != nil {
		return nil, err
	}
	reqs := make([]kafka.OffsetRequest, n)
	for p := range n {
		reqs[p] = kafka.LastOffsetOf(p)
	}
	client := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 10 * time.Second}
	res, err := client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil {
		return nil, fmt.Errorf("end offsets of %s: %w", topic, err)
	}
	ends := make(map[int]int64, n)
	for _, po := range res.Topics[topic] {
		if po.Error != nil {
			return nil, fmt.Errorf("end offset of %s/%d: %w", topic, po.Partition, po.Error)
		}
		ends[po.Partition] = po.LastOffset
	}
	if len(ends) != n {
		return nil, fmt.Errorf("end offsets of %s: %d of %d partitions answered", topic, len(ends), n)
	}
	return ends, nil
}
