package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/usagemeter/usagemeter/alerts/internal/alerttest"
	"github.com/usagemeter/usagemeter/alerts/webhook"
	"github.com/usagemeter/usagemeter/testenv"
)

// binary is usage-alerts; aggregatorBinary runs in front of it in
// TestWithRealAggregator (as a process: no aggregator package is imported).
var binary, aggregatorBinary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "usage-alerts-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bins, err := testenv.BuildCommands(dir, "./alerts/cmd/usage-alerts", "./aggregator/cmd/usage-aggregator")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary, aggregatorBinary = bins[0], bins[1]
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// metric reads one sample of the service's /metrics (0 when absent).
func metric(addr, sample string) float64 {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if name, v, ok := strings.Cut(sc.Text(), " "); ok && name == sample {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}

type hook struct {
	secret   []byte
	mu       sync.Mutex
	requests int
	verified map[string]int
}

func (h *hook) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	h.mu.Lock()
	defer h.mu.Unlock()
	h.requests++
	if h.requests == 1 {
		http.Error(w, "first request fails", http.StatusBadGateway)
		return
	}
	if webhook.VerifyRequest(h.secret, r, body, time.Now(), webhook.DefaultTolerance) != nil {
		http.Error(w, "bad signature", http.StatusUnauthorized)
		return
	}
	h.verified[r.Header.Get(webhook.HeaderAlertID)]++
	w.WriteHeader(http.StatusNoContent)
}

func (h *hook) counts() (int, map[string]int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := map[string]int{}
	for k, v := range h.verified {
		out[k] = v
	}
	return h.requests, out
}

// The real binary: FREE's climb through 50/75/90/100 % is published and
// delivered once each (the first request fails and is retried); after a
// SIGKILL and a restart with the states published again, and after a
// restart that replays both topics from the start (new groups), nothing
// is published or delivered again.
func TestBinaryRestartEmitsNoneAgain(t *testing.T) {
	broker := testenv.Kafka(t)
	conn, db := testenv.ClickHouse(t)
	states, alerts := testenv.Name("qs"), testenv.Name("alerts")
	testenv.CreateTopic(t, broker, states, 4, "cleanup.policy", "compact")
	h := &hook{secret: []byte("binary-test-secret-0123"), verified: map[string]int{}}
	srv := httptest.NewServer(h)
	defer srv.Close()
	root := testenv.RepoRoot(t)
	env := func(group, addr string) []string {
		return cleanEnv(
			"USAGE_EMITTER_BROKERS="+broker, "USAGE_EMITTER_STATE_TOPIC="+states, "USAGE_EMITTER_ALERT_TOPIC="+alerts,
			"USAGE_EMITTER_GROUP_ID="+group, "USAGE_EMITTER_SESSION_TIMEOUT=6s",
			"USAGE_WEBHOOK_BROKERS="+broker, "USAGE_WEBHOOK_ALERT_TOPIC="+alerts, "USAGE_WEBHOOK_GROUP_ID="+group+"-wh",
			"USAGE_WEBHOOK_URL="+srv.URL+"/hook", "USAGE_WEBHOOK_SECRET="+string(h.secret),
			"USAGE_WEBHOOK_RETRY_MIN=50ms", "USAGE_WEBHOOK_RETRY_MAX=200ms", "USAGE_WEBHOOK_SESSION_TIMEOUT=6s",
			"USAGE_CLICKHOUSE_ADDR="+testenv.ClickHouseAddr(t), "USAGE_CLICKHOUSE_DATABASE="+db,
			"USAGE_PLANS_FILE="+filepath.Join(root, "schemas/plans/plans.example.yaml"), "USAGE_HTTP_ADDR="+addr,
			"USAGE_LOG_LEVEL=warn")
	}
	startBin := func(group string) (*exec.Cmd, string) {
		addr := freeAddr(t)
		cmd := exec.Command(binary, "run")
		cmd.Env = env(group, addr)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _, _ = cmd.Process.Wait() })
		return cmd, addr
	}
	okRows := func() uint64 {
		// 0 until the binary has created the table
		n, _ := testenv.CountRows(context.Background(), conn, "FROM alert_deliveries WHERE outcome = 'ok'")
		return n
	}
	climb := []string{"10", "25", "30", "38", "44", "45", "49", "50"}
	publish := func(usages ...string) {
		for _, u := range usages {
			alerttest.PublishStates(t, broker, states, alerttest.State("smallco", "ai_generation", "FREE", u, "50"))
		}
	}
	want := map[string]int{"smallco:ai_generation:percent:50": 1, "smallco:ai_generation:percent:75": 1,
		"smallco:ai_generation:percent:90": 1, "smallco:ai_generation:percent:100": 1}
	check := func(when string) {
		t.Helper()
		got := alerttest.Lines(alerttest.ReadAlerts(t, broker, alerts, 1))
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("%s: alerts %v, want %v", when, got, want)
		}
		requests, verified := h.counts()
		if requests != 5 || len(verified) != 4 {
			t.Fatalf("%s: %d requests (want 1 failed + 4), verified %v", when, requests, verified)
		}
		for id, n := range verified {
			if n != 1 {
				t.Fatalf("%s: alert %s delivered %d times", when, id, n)
			}
		}
		if n := okRows(); n != 4 {
			t.Fatalf("%s: %d ok deliveries recorded, want 4", when, n)
		}
	}

	publish(climb...)
	cmd, _ := startBin("g1")
	testenv.Eventually(t, 60*time.Second, "4 ok deliveries", func() (bool, error) { return okRows() == 4, nil })
	check("first run")

	// Crash, the aggregator publishes the same states again, restart.
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_, _ = cmd.Process.Wait()
	publish("45", "50")
	cmd, addr := startBin("g1")
	testenv.Eventually(t, 60*time.Second, "the restart read the replayed states", func() (bool, error) {
		return metric(addr, `usage_alerts_states_total{outcome="ok"}`) >= 2, nil
	})
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("SIGTERM: %v", err)
	}
	check("restart after SIGKILL")

	// New groups: both topics replayed from the start.
	_, addr = startBin("g2")
	total := float64(len(climb) + 2)
	testenv.Eventually(t, 60*time.Second, "the replay read every state and alert", func() (bool, error) {
		return metric(addr, `usage_alerts_states_total{outcome="ok"}`) == total &&
			metric(addr, "usage_alerts_webhook_already_delivered_total") == 4 &&
			metric(addr, "usage_alerts_already_emitted_total") > 0, nil
	})
	check("replay from the start")
	if got := metric(addr, "usage_alerts_emitted_total{kind=\"percent\"}"); got != 0 {
		t.Fatalf("replay emitted %v alerts", got)
	}
}
