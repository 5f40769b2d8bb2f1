package webhook

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/segmentio/kafka-go"
	"go.uber.org/zap/zaptest"

	"github.com/usagemeter/usagemeter/alerts/deliveries"
	"github.com/usagemeter/usagemeter/alerts/detect"
	"github.com/usagemeter/usagemeter/alerts/internal/alerttest"
	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/schemas/migrations"
	"github.com/usagemeter/usagemeter/schemas/plans"
	"github.com/usagemeter/usagemeter/testenv"
)

// receiver fails the first failFirst requests with 503, then verifies and
// accepts; it records every verified body by alert id.
type receiver struct {
	secret    []byte
	mu        sync.Mutex
	requests  int
	failFirst int
	verified  map[string]int
	refused   int
}

func (rc *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.requests++
	if rc.requests <= rc.failFirst {
		http.Error(w, "down for a moment", http.StatusServiceUnavailable)
		return
	}
	if err := VerifyRequest(rc.secret, r, body, time.Now(), DefaultTolerance); err != nil {
		rc.refused++
		http.Error(w, err.Error(), http.StatusUnauthorized)
		return
	}
	a, err := schemas.DecodeUsageAlert(body)
	if err != nil || a.AlertID != r.Header.Get(HeaderAlertID) {
		rc.refused++
		http.Error(w, "bad alert", http.StatusBadRequest)
		return
	}
	rc.verified[a.AlertID]++
	w.WriteHeader(http.StatusNoContent)
}

func (rc *receiver) snapshot() (int, map[string]int, int) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	out := map[string]int{}
	for k, v := range rc.verified {
		out[k] = v
	}
	return rc.requests, out, rc.refused
}

// A receiver that fails at first gets each alert again after a pause, and
// exactly one ok delivery per alert is recorded; a replay of the alert
// topic (a new group) sends nothing again.
func TestSenderRetriesAndRecordsOnce(t *testing.T) {
	broker := testenv.Kafka(t)
	conn, _ := testenv.ClickHouse(t)
	ctx := context.Background()
	if _, err := migrations.Apply(ctx, conn); err != nil {
		t.Fatal(err)
	}
	topic := testenv.Name("alerts")
	testenv.CreateTopic(t, broker, topic, 2, "cleanup.policy", "compact")

	// Two alerts as the emitter builds them.
	p, err := plans.Parse([]byte("plans: {FREE: {meters: {ai_generation: {limit: 50}}}}\ndefault_plan: FREE"))
	if err != nil {
		t.Fatal(err)
	}
	s := alerttest.State("acme", "ai_generation", "FREE", "38", "50")
	q, _ := detect.Quota(p, &s)
	alerts := detect.Crossings(&s, q, time.Now())
	if len(alerts) != 2 {
		t.Fatalf("%d alerts", len(alerts))
	}
	w := &kafka.Writer{Addr: kafka.TCP(broker), Topic: topic, Balancer: &kafka.Murmur2Balancer{}, RequiredAcks: kafka.RequireAll}
	for _, a := range alerts {
		if err := w.WriteMessages(ctx, kafka.Message{Key: []byte(a.AlertID), Value: a.AppendJSON(nil)}); err != nil {
			t.Fatal(err)
		}
	}
	_ = w.Close()

	rc := &receiver{secret: []byte("0123456789abcdef-test"), failFirst: 2, verified: map[string]int{}}
	srv := httptest.NewServer(rc) // 127.0.0.1
	defer srv.Close()
	cfg := DefaultConfig()
	cfg.Brokers, cfg.AlertTopic, cfg.GroupID = []string{broker}, topic, testenv.Name("wh")
	cfg.URL, cfg.Secret = srv.URL+"/hooks/usage?token=abc", string(rc.secret)
	cfg.RetryMin, cfg.RetryMax, cfg.SessionTimeout = 50*time.Millisecond, 200*time.Millisecond, 6*time.Second

	runSender := func(cfg Config) *Sender {
		snd, err := NewSender(cfg, deliveries.New(conn), zaptest.NewLogger(t), prometheus.NewRegistry())
		if err != nil {
			t.Fatal(err)
		}
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- snd.Run(rctx) }()
		t.Cleanup(func() { cancel(); <-done })
		return snd
	}
	countOK := func() uint64 {
		n, err := testenv.CountRows(ctx, conn, "FROM alert_deliveries WHERE outcome = 'ok'")
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	runSender(cfg)
	testenv.Eventually(t, 30*time.Second, "two ok deliveries", func() (bool, error) { return countOK() == 2, nil })

	requests, verified, refused := rc.snapshot()
	if requests != 4 || refused != 0 || len(verified) != 2 {
		t.Fatalf("requests %d (want 2 failed + 2 ok), refused %d, verified %v", requests, refused, verified)
	}
	for _, a := range alerts {
		if verified[a.AlertID] != 1 {
			t.Errorf("alert %s verified %d times", a.AlertID, verified[a.AlertID])
		}
		var ok, failed uint64
		if err := conn.QueryRow(ctx, `SELECT countIf(outcome = 'ok'), countIf(outcome = 'failed') FROM alert_deliveries
 WHERE alert_id = ? AND endpoint = ?`, a.AlertID, srv.URL+"/hooks/usage").Scan(&ok, &failed); err != nil {
			t.Fatal(err)
		}
		if ok != 1 {
			t.Errorf("alert %s: %d ok rows, want 1", a.AlertID, ok)
		}
	}
	var failedRows, status503 uint64
	if err := conn.QueryRow(ctx, `SELECT count(), countIf(http_status = 503) FROM alert_deliveries WHERE outcome = 'failed'`).
		Scan(&failedRows, &status503); err != nil {
		t.Fatal(err)
	}
	if failedRows != 2 || status503 != 2 {
		t.Errorf("failed rows %d (503: %d), want 2", failedRows, status503)
	}

	// Replay: a new group reads both alerts again and sends neither.
	cfg.GroupID = testenv.Name("wh")
	again := runSender(cfg)
	testenv.Eventually(t, 30*time.Second, "the replay read both alerts", func() (bool, error) {
		return testutil.ToFloat64(again.m.skipped) == 2, nil
	})
	if n, _, _ := rc.snapshot(); n != 4 {
		t.Errorf("replay sent %d more requests", n-4)
	}
	if n := countOK(); n != 2 {
		t.Errorf("%d ok rows after the replay, want 2", n)
	}
}

func TestConfigValidate(t *testing.T) {
	good := DefaultConfig()
	good.URL, good.Secret = "https://hooks.example/usage", "0123456789abcdef"
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for field, mutate := range map[string]func(*Config){
		"webhook.url":          func(c *Config) { c.URL = "ftp://x/y" },
		"webhook.secret":       func(c *Config) { c.Secret = "short" },
		"webhook.max_attempts": func(c *Config) { c.MaxAttempts = -1 },
		"webhook.retry_min":    func(c *Config) { c.RetryMax = c.RetryMin / 2 },
	} {
		c := good
		mutate(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("%s: got %v", field, err)
		}
	}
	if got := good.Endpoint(); got != "https://hooks.example/usage" {
		t.Errorf("endpoint %s", got)
	}
}
