package webhook

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	"go.uber.org/zap"

	"github.com/usagemeter/usagemeter/alerts/deliveries"
	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/svckit"
	"github.com/usagemeter/usagemeter/svckit/backoff"
)

// Config tunes the webhook sender. Keys are the viper/YAML names.
type Config struct {
	Brokers    []string `mapstructure:"brokers"`
	AlertTopic string   `mapstructure:"alert_topic"`
	GroupID    string   `mapstructure:"group_id"`
	// URL receives every alert by POST; empty disables the sender.
	URL string `mapstructure:"url"`
	// Secret keys the HMAC-SHA256 signature (at least 16 bytes).
	Secret         string        `mapstructure:"secret"`
	Timeout        time.Duration `mapstructure:"timeout"` // per request
	RetryMin       time.Duration `mapstructure:"retry_min"`
	RetryMax       time.Duration `mapstructure:"retry_max"`
	MaxAttempts    int           `mapstructure:"max_attempts"` // 0 = until delivered
	SessionTimeout time.Duration `mapstructure:"session_timeout"`
}

// DefaultConfig returns the defaults (no URL: sender off).
func DefaultConfig() Config {
	return Config{Brokers: []string{"127.0.0.1:19092"}, AlertTopic: schemas.AlertTopic, GroupID: "usage-alerts-webhook",
		Timeout: 10 * time.Second, RetryMin: time.Second, RetryMax: 5 * time.Minute, SessionTimeout: 10 * time.Second}
}

// MinSecretLen is the shortest secret accepted.
const MinSecretLen = 16

// Validate names the first bad key and why. A config without URL is valid
// (the sender is off).
func (c Config) Validate() error {
	if c.URL == "" {
		return nil
	}
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("webhook.%s: %s", key, fmt.Sprintf(format, args...)))
	}
	if u, err := url.Parse(c.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		bad("url", "%q is not an http:// or https:// URL with a host", c.URL)
	}
	if len(c.Secret) < MinSecretLen {
		bad("secret", "is %d bytes; at least %d are required (set USAGE_WEBHOOK_SECRET)", len(c.Secret), MinSecretLen)
	}
	if len(c.Brokers) == 0 {
		bad("brokers", "at least one host:port is required")
	}
	if c.AlertTopic == "" || c.GroupID == "" {
		bad("alert_topic", "alert_topic and group_id must not be empty")
	}
	if c.Timeout <= 0 {
		bad("timeout", "must be > 0")
	}
	if c.RetryMin <= 0 || c.RetryMax < c.RetryMin {
		bad("retry_min", "need 0 < retry_min <= retry_max, got %s and %s", c.RetryMin, c.RetryMax)
	}
	if c.MaxAttempts < 0 {
		bad("max_attempts", "%d is negative (0 = until delivered)", c.MaxAttempts)
	}
	if c.SessionTimeout < time.Second {
		bad("session_timeout", "%s is below 1s", c.SessionTimeout)
	}
	return errors.Join(errs...)
}

// Endpoint is how deliveries name the URL: scheme, host and path, without
// credentials or query (which may hold a token).
func (c Config) Endpoint() string {
	u, err := url.Parse(c.URL)
	if err != nil {
		return ""
	}
	return u.Scheme + "://" + u.Host + u.Path
}

// Store is what the sender needs from the delivery records.
type Store interface {
	Delivered(ctx context.Context, alertID, endpoint string) (bool, error)
	Record(ctx context.Context, a deliveries.Attempt) error
}

type senderMetrics struct {
	attempts     *prometheus.CounterVec
	skipped      prometheus.Counter
	invalid      prometheus.Counter
	recordErrors prometheus.Counter
	latency      prometheus.Histogram
}

// Sender POSTs each alert of the alert topic to one URL.
type Sender struct {
	cfg      Config
	endpoint string
	store    Store
	log      *zap.Logger
	client   *http.Client
	m        senderMetrics
	now      func() time.Time
}

// NewSender builds a sender; reg (may be nil) receives its metrics.
func NewSender(cfg Config, store Store, log *zap.Logger, reg prometheus.Registerer) (*Sender, error) {
	if cfg.URL == "" {
		return nil, errors.New("webhook.url: required to send alerts")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Sender{cfg: cfg, endpoint: cfg.Endpoint(), store: store, log: log, now: time.Now,
		// A redirect is not a delivery: it is reported as the 3xx it is.
		client: &http.Client{Timeout: cfg.Timeout, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
	s.m = senderMetrics{
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "usage_alerts_webhook_attempts_total",
			Help: "Webhook attempts, by outcome: ok, failed (retried), gave_up (max_attempts reached)."}, []string{"outcome"}),
		skipped: prometheus.NewCounter(prometheus.CounterOpts{Name: "usage_alerts_webhook_already_delivered_total",
			Help: "Alerts read again (replay, restart) that had a recorded ok delivery: not sent."}),
		invalid: prometheus.NewCounter(prometheus.CounterOpts{Name: "usage_alerts_webhook_invalid_total",
			Help: "Alert-topic messages refused by the UsageAlert contract (not sent)."}),
		recordErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "usage_alerts_webhook_record_errors_total",
			Help: "Failed writes or reads of alert_deliveries (retried)."}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "usage_alerts_webhook_seconds",
			Help: "Duration of webhook requests.", Buckets: prometheus.ExponentialBuckets(0.005, 2, 12)}),
	}
	if reg != nil {
		reg.MustRegister(s.m.attempts, s.m.skipped, s.m.invalid, s.m.recordErrors, s.m.latency)
	}
	return s, nil
}

// Run sends until ctx ends; it returns nil then. An offset is committed
// only after its alert's outcome is recorded.
func (s *Sender) Run(ctx context.Context) error {
	// A group reader on a missing topic could let the broker auto-create it
	// uncompacted: wait for the emitter (or create_topics) to make it.
	if err := backoff.Retry(ctx, backoff.Policy{Min: s.cfg.RetryMin, Max: s.cfg.RetryMax}, func(ctx context.Context) error {
		_, err := svckit.Partitions(ctx, s.cfg.Brokers, s.cfg.AlertTopic)
		return err
	}, func(attempt int, _ time.Duration, err error) {
		s.log.Warn("waiting for the alert topic", zap.String("topic", s.cfg.AlertTopic), zap.Int("attempt", attempt), zap.Error(err))
	}); err != nil {
		return ignoreCancel(err)
	}
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: s.cfg.Brokers, GroupID: s.cfg.GroupID, Topic: s.cfg.AlertTopic,
		StartOffset: kafka.FirstOffset, MinBytes: 1, MaxBytes: 16 << 20, MaxWait: 100 * time.Millisecond,
		SessionTimeout: s.cfg.SessionTimeout, HeartbeatInterval: s.cfg.SessionTimeout / 5})
	defer r.Close()
	for {
		m, err := r.FetchMessage(ctx)
		if err != nil {
			return ignoreCancel(err)
		}
		if err := s.handle(ctx, m); err != nil {
			return ignoreCancel(err)
		}
		if err := r.CommitMessages(ctx, m); err != nil && ctx.Err() == nil {
			s.log.Warn("commit alert offset", zap.Error(err)) // read again: the ok row makes it a skip
		}
	}
}

func ignoreCancel(err error) error {
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

func (s *Sender) retry(ctx context.Context, what string, fn func(context.Context) error) error {
	return backoff.Retry(ctx, backoff.Policy{Min: s.cfg.RetryMin, Max: s.cfg.RetryMax}, fn, func(attempt int, pause time.Duration, err error) {
		s.m.recordErrors.Inc()
		s.log.Warn(what, zap.Int("attempt", attempt), zap.Duration("pause", pause), zap.Error(err))
	})
}

func (s *Sender) handle(ctx context.Context, m kafka.Message) error {
	if len(m.Value) == 0 {
		return nil // a tombstone
	}
	a, err := schemas.DecodeUsageAlert(m.Value)
	if err != nil {
		s.m.invalid.Inc()
		s.log.Warn("alert refused", zap.Int("partition", m.Partition), zap.Int64("offset", m.Offset), zap.Error(err))
		return nil
	}
	var done bool
	if err := s.retry(ctx, "read alert_deliveries", func(ctx context.Context) error {
		done, err = s.store.Delivered(ctx, a.AlertID, s.endpoint)
		return err
	}); err != nil {
		return err
	}
	if done {
		s.m.skipped.Inc()
		return nil
	}
	attempt := 0
	return backoff.Retry(ctx, backoff.Policy{Min: s.cfg.RetryMin, Max: s.cfg.RetryMax}, func(ctx context.Context) error {
		attempt++
		row := deliveries.Attempt{AlertID: a.AlertID, Endpoint: s.endpoint, TenantID: a.TenantID, FeatureType: a.FeatureType,
			Period: a.Period, Kind: a.Kind, Threshold: a.Threshold.String(), Attempt: uint32(attempt), AttemptedAt: s.now()}
		status, sendErr := s.post(ctx, a.AlertID, m.Value)
		row.Duration, row.HTTPStatus = s.now().Sub(row.AttemptedAt), uint16(status)
		switch {
		case sendErr == nil:
			row.Outcome = deliveries.OK
		case ctx.Err() != nil:
			return ctx.Err() // shutting down: not an attempt to record
		case s.cfg.MaxAttempts > 0 && attempt >= s.cfg.MaxAttempts:
			row.Outcome, row.Detail = deliveries.GaveUp, sendErr.Error()
		default:
			row.Outcome, row.Detail = deliveries.Failed, sendErr.Error()
		}
		s.m.attempts.WithLabelValues(row.Outcome).Inc()
		s.m.latency.Observe(row.Duration.Seconds())
		if err := s.retry(ctx, "record delivery", func(ctx context.Context) error { return s.store.Record(ctx, row) }); err != nil {
			return err
		}
		if row.Outcome == deliveries.Failed {
			s.log.Warn("webhook failed", zap.String("alert_id", a.AlertID), zap.Int("attempt", attempt),
				zap.Int("status", status), zap.Error(sendErr))
			return sendErr // retried after a pause
		}
		if row.Outcome == deliveries.GaveUp {
			s.log.Error("webhook gave up", zap.String("alert_id", a.AlertID), zap.Int("attempts", attempt), zap.Error(sendErr))
		}
		return nil
	}, nil)
}

// post sends one signed request; any answer but 2xx is an error.
func (s *Sender) post(ctx context.Context, alertID string, body []byte) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.cfg.URL, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	SetHeaders(req.Header, []byte(s.cfg.Secret), alertID, s.now(), body)
	req.Header.Set("User-Agent", "usage-alerts")
	resp, err := s.client.Do(req)
	if err != nil {
		return 0, fmt.Errorf("POST %s: %w", s.endpoint, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) // lets the connection be reused
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return resp.StatusCode, fmt.Errorf("POST %s: HTTP %d", s.endpoint, resp.StatusCode)
	}
	return resp.StatusCode, nil
}
