package firsthour

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"github.com/usagemeter/usagemeter/producer"
	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/testenv"
)

// Every process make run starts, as its summary names them.
var demoProcesses = []string{"usage-consumer", "usage-aggregator", "usage-alerts", "usage-stripe-fake", "usage-billing-sync",
	"usage-api", "usage-demo-app", "usage-loadgen"}

// lockedBuffer collects make run's output while it runs.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// demo is one `make run`, in a process group of its own, on free ports,
// with its logs and the fake Stripe's journal in a private directory, on
// the shared engines. Every process it starts inherits marker in its
// environment, which is how the test finds what it left behind.
type demo struct {
	cmd    *exec.Cmd
	out    *lockedBuffer
	marker string
	runDir string
	stripe string // the fake Stripe's address
	consum string // usage-consumer's dashboard and /metrics address
	done   chan error
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

func port(t *testing.T, addr string) string {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("%s: %v", addr, err)
	}
	return p
}

func startDemo(t *testing.T, duration string) *demo {
	t.Helper()
	kafkaAddr, chAddr := testenv.Kafka(t), testenv.ClickHouseAddr(t)
	d := &demo{out: &lockedBuffer{}, marker: testenv.Name("firsthour"), runDir: t.TempDir(), stripe: freeAddr(t), consum: freeAddr(t),
		done: make(chan error, 1)}
	d.cmd = exec.Command("make", "run")
	d.cmd.Dir = testenv.RepoRoot(t)
	d.cmd.Env = append(os.Environ(),
		// run-demo.sh starts or reuses the engines on these ports: the ones
		// make test started.
		"KAFKA_PORT="+port(t, kafkaAddr), "CH_TCP_PORT="+port(t, chAddr),
		"DEMO_RATE=200", "DEMO_DURATION="+duration, "DEMO_RUN_DIR="+d.runDir,
		"DASHBOARD_ADDR="+d.consum, "AGGREGATOR_ADDR="+freeAddr(t), "BILLING_ADDR="+freeAddr(t),
		"STRIPE_FAKE_ADDR="+d.stripe, "USAGE_API_ADDR="+freeAddr(t), "DEMO_APP_ADDR="+freeAddr(t), "ALERTS_ADDR="+freeAddr(t),
		"FIRSTHOUR_MARKER="+d.marker)
	d.cmd.Stdout, d.cmd.Stderr = d.out, d.out
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // a terminal's foreground group
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.done <- d.cmd.Wait() }()
	t.Cleanup(func() {
		// A failed test must not leave the demo running either.
		_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
		for _, p := range d.leftovers(t) {
			_ = syscall.Kill(p.pid, syscall.SIGKILL)
		}
		if t.Failed() {
			t.Logf("make run output:\n%s", d.out.String())
			logs, _ := filepath.Glob(filepath.Join(d.runDir, "*.log"))
			for _, l := range logs {
				b, _ := os.ReadFile(l)
				var errs []string
				for _, line := range strings.Split(string(b), "\n") {
					if strings.Contains(line, `"level":"error"`) || strings.Contains(line, `"level":"fatal"`) || strings.HasPrefix(line, "panic") {
						errs = append(errs, line)
					}
				}
				if len(b) > 3000 {
					b = b[len(b)-3000:]
				}
				t.Logf("%s: errors:\n%s\nend:\n%s", filepath.Base(l), strings.Join(errs, "\n"), b)
			}
		}
	})
	deadline := time.Now().Add(4 * time.Minute)
	for !strings.Contains(d.out.String(), "== publishing demo traffic") {
		select {
		case err := <-d.done:
			t.Fatalf("make run ended before the demo traffic started: %v\n%s", err, d.out.String())
		case <-time.After(250 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("make run did not start the demo traffic within 4 minutes:\n%s", d.out.String())
		}
	}
	// Every process is up, the load generator included.
	testenv.Eventually(t, 20*time.Second, "every demo process running", func() (bool, error) {
		running := map[string]bool{}
		for _, p := range d.leftovers(t) {
			running[p.name] = true
		}
		for _, n := range demoProcesses {
			if !running[n] {
				return false, nil
			}
		}
		return true, nil
	})
	// ... and past its start-up: the consumer has flushed a batch. (A
	// consumer signalled during its start-up offset checks exits 1 with
	// "context canceled": a consumer issue, not what this test is about.)
	testenv.Eventually(t, 60*time.Second, "usage-consumer flushed a batch", func() (bool, error) {
		r, err := http.Get("http://" + d.consum + "/metrics")
		if err != nil {
			return false, nil
		}
		b, _ := io.ReadAll(r.Body)
		r.Body.Close()
		m := regexp.MustCompile(`(?m)^usage_consumer_batches_total (\d+)`).FindSubmatch(b)
		return m != nil && string(m[1]) != "0", nil
	})
	return d
}

type proc struct {
	pid  int
	name string
	cmd  string
}

// leftovers lists the live processes whose environment holds the marker
// (make, the script, every service, the load generator, helpers).
func (d *demo) leftovers(t *testing.T) []proc {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	want := []byte("FIRSTHOUR_MARKER=" + d.marker + "\x00")
	var out []proc
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		env, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err != nil || !bytes.Contains(env, want) {
			continue // gone, a zombie, or not ours
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
		out = append(out, proc{pid: pid, name: filepath.Base(args[0]), cmd: strings.Join(args, " ")})
	}
	return out
}

// stop sends sig (to make alone, or to the whole group as Ctrl-C does),
// waits for make to end, and checks that nothing it started is left and
// that the summary names every process, each stopped cleanly.
func (d *demo) stop(t *testing.T, sig syscall.Signal, group bool) {
	t.Helper()
	pid := d.cmd.Process.Pid
	if group {
		pid = -pid
	}
	if err := syscall.Kill(pid, sig); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.done:
	case <-time.After(90 * time.Second):
		t.Fatalf("make run still running 90 s after %v", sig)
	}
	if left := d.leftovers(t); len(left) > 0 {
		var b strings.Builder
		for _, p := range left {
			fmt.Fprintf(&b, "\n  pid %d: %s", p.pid, p.cmd)
		}
		t.Errorf("after %v, %d processes of make run are still running:%s", sig, len(left), b.String())
	}
	// Each service says in its log that it stopped (issue 15: billing-sync
	// and the demo app used to exit silently); the load generator prints
	// its summary instead.
	for _, n := range demoProcesses {
		if n == "usage-loadgen" {
			continue
		}
		b, err := os.ReadFile(filepath.Join(d.runDir, n+".log"))
		if err != nil {
			t.Errorf("log of %s: %v", n, err)
			continue
		}
		if !regexp.MustCompile(`(?i)stopped|shutting down`).Match(b) {
			t.Errorf("%s logged no shutdown line after %v", n, sig)
		}
	}
	out := d.out.String()
	for _, n := range demoProcesses {
		if !regexp.MustCompile(`(?m)^  ` + regexp.QuoteMeta(n) + ` stopped cleanly \(exit 0\)$`).MatchString(out) {
			t.Errorf("the summary does not say %s stopped cleanly", n)
		}
	}
}

// driftCmd is the drift command make run printed.
func (d *demo) driftCmd(t *testing.T) string {
	t.Helper()
	sc := bufio.NewScanner(strings.NewReader(d.out.String()))
	for sc.Scan() {
		if line := strings.TrimSpace(sc.Text()); strings.HasPrefix(line, "USAGE_CLICKHOUSE_ADDR=") && strings.HasSuffix(line, " drift") {
			return line
		}
	}
	t.Fatalf("make run printed no drift command:\n%s", d.out.String())
	return ""
}

// runDrift runs a printed drift command as a user would (from the repo
// root) and returns its output lines for tenant, failing on an error.
func runDrift(t *testing.T, command, tenant string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-c", command)
	cmd.Dir = testenv.RepoRoot(t)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v\n%s\n%s", command, err, out, stderr.String())
	}
	if !strings.Contains(string(out), "no drift") && !strings.Contains(string(out), "TENANT") {
		t.Fatalf("%s printed neither a drift table nor 'no drift':\n%s", command, out)
	}
	var lines []string
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == tenant {
			lines = append(lines, l)
		}
	}
	return lines
}

// stripeHour returns the fake Stripe's hourly api_calls summary for a
// customer (what billing-sync sent), read over its HTTP API.
func stripeHour(t *testing.T, addr, customer string, hour time.Time) (int64, error) {
	t.Helper()
	q := url.Values{"customer": {customer}, "start_time": {strconv.FormatInt(hour.Unix(), 10)},
		"end_time": {strconv.FormatInt(hour.Add(time.Hour).Unix(), 10)}, "value_grouping_window": {"hour"}}
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/v1/billing/meters/mtr_api_calls/event_summaries?"+q.Encode(), nil)
	req.Header.Set("Authorization", "Bearer sk_test_firsthour")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return 0, fmt.Errorf("event_summaries: %d %s", resp.StatusCode, b)
	}
	// {"data":[{"aggregated_value":15,...}]}: one bucket for one hour.
	m := regexp.MustCompile(`"aggregated_value":\s*([0-9.]+)`).FindAllSubmatch(b, -1)
	var total float64
	for _, v := range m {
		f, _ := strconv.ParseFloat(string(v[1]), 64)
		total += f
	}
	return int64(total), nil
}

// The printed drift command talks to the Stripe that was billed: after a
// pass it reports no drift for a tenant billed in the demo, after an
// injected meter event exactly that difference, none once it is cancelled,
// and none from the fake Stripe started again from its journal. SIGTERM to
// make stops everything (issue 15, items 1 and 2). The demo shares the
// engines' usage database (billing-sync's ledger) with any other demo, so
// it keeps the default journal that goes with it.
func TestMakeRunDriftThenSIGTERM(t *testing.T) {
	// Usage in a closed hour (the demo bills an hour once it ends): 5
	// events of 3 api_calls in the previous hour, for a tenant of this test
	// only. The demo's fake subscriptions start on the 1st of the month
	// they are created in, so usage from before it is not billed.
	hour := time.Now().UTC().Truncate(time.Hour).Add(-time.Hour)
	if now := time.Now().UTC(); hour.Before(time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)) {
		t.Skip("no closed hour of this month yet (00:00-01:00 UTC on the 1st)")
	}
	d := startDemo(t, "5m")
	broker := testenv.Kafka(t)
	tenant := strings.ReplaceAll(testenv.Name("firsthour"), "_", "-")
	p, err := producer.New([]string{broker})
	if err != nil {
		t.Fatal(err)
	}
	var evs []schemas.UsageEvent
	for i := 0; i < 5; i++ {
		ev := producer.NewEvent(tenant, schemas.MeterAPICalls, decimal.NewFromInt(3))
		ev.Timestamp = hour.Add(time.Duration(10+i) * time.Minute)
		evs = append(evs, ev)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	err = p.Publish(ctx, evs...)
	cancel()
	p.Close()
	if err != nil {
		t.Fatal(err)
	}
	customer := "cus_" + tenant
	testenv.Eventually(t, 90*time.Second, "billing-sync billed the hour to the demo's fake Stripe", func() (bool, error) {
		v, err := stripeHour(t, d.stripe, customer, hour)
		return v == 15, err
	})
	drift := d.driftCmd(t)
	if !strings.Contains(drift, "--stripe-url http://"+d.stripe) {
		t.Fatalf("the printed drift command does not name the demo's Stripe %s: %s", d.stripe, drift)
	}
	if lines := runDrift(t, drift, tenant); len(lines) > 0 {
		t.Fatalf("after a pass, drift reports for %s:\n%s", tenant, strings.Join(lines, "\n"))
	}

	// A real difference: 4 more units on Stripe than we have.
	injected := "firsthour-injected-" + tenant
	postStripe(t, d.stripe, "/v1/billing/meter_events", url.Values{"event_name": {"api_calls"}, "identifier": {injected},
		"timestamp":                   {strconv.FormatInt(hour.Add(30*time.Minute).Unix(), 10)},
		"payload[stripe_customer_id]": {customer}, "payload[value]": {"4"}})
	wantDiff := func(lines []string, when string) {
		t.Helper()
		if len(lines) != 1 {
			t.Fatalf("%s: drift lines for %s: %q, want one", when, tenant, lines)
		}
		f := strings.Fields(lines[0]) // TENANT METER WINDOW_START WINDOW_END OURS STRIPE DIFF STATUS
		if len(f) < 8 || f[1] != "api_calls" || f[2] != hour.Format(time.RFC3339) || f[4] != "15" || f[5] != "19" || f[6] != "-4" {
			t.Fatalf("%s: drift line %q, want api_calls %s ours 15 Stripe 19 diff -4", when, lines[0], hour.Format(time.RFC3339))
		}
	}
	wantDiff(runDrift(t, drift, tenant), "after injecting 4 units")
	// Cancelled (Stripe allows it within 24 h): no drift again. This also
	// leaves the shared demo journal agreeing with the shared ledger.
	postStripe(t, d.stripe, "/v1/billing/meter_event_adjustments", url.Values{"event_name": {"api_calls"}, "type": {"cancel"},
		"cancel[identifier]": {injected}})
	if lines := runDrift(t, drift, tenant); len(lines) > 0 {
		t.Fatalf("after the injected event was cancelled, drift reports for %s:\n%s", tenant, strings.Join(lines, "\n"))
	}

	d.stop(t, syscall.SIGTERM, false)

	// The fake Stripe again, from the journal make run printed: it still
	// holds the 15 billed units (an empty one would show drift 15) and not
	// the cancelled 4.
	m := regexp.MustCompile(`state: (\S+)\)`).FindStringSubmatch(d.out.String())
	if m == nil {
		t.Fatal("make run did not print the fake Stripe's journal")
	}
	bin := filepath.Join(testenv.RepoRoot(t), ".cache", "bin")
	addr := freeAddr(t)
	fake := exec.Command(filepath.Join(bin, "usage-stripe-fake"), "--addr", addr, "--journal", m[1])
	fake.Dir = testenv.RepoRoot(t)
	fake.Env = append(os.Environ(), "USAGE_CLICKHOUSE_ADDR="+testenv.ClickHouseAddr(t))
	var fakeOut lockedBuffer
	fake.Stdout, fake.Stderr = &fakeOut, &fakeOut
	if err := fake.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = fake.Process.Signal(syscall.SIGTERM)
		if err := fake.Wait(); err != nil {
			t.Errorf("usage-stripe-fake after SIGTERM: %v\n%s", err, fakeOut.String())
		}
	}()
	testenv.Eventually(t, 20*time.Second, "the restarted fake Stripe answers", func() (bool, error) {
		r, err := http.Get("http://" + addr + "/healthz")
		if err != nil {
			return false, nil
		}
		r.Body.Close()
		return r.StatusCode == 200, nil
	})
	testenv.Eventually(t, 10*time.Second, "the restarted fake Stripe holds the billed hour", func() (bool, error) {
		v, err := stripeHour(t, addr, customer, hour)
		return v == 15, err
	})
	if lines := runDrift(t, strings.Replace(drift, "http://"+d.stripe, "http://"+addr, 1), tenant); len(lines) > 0 {
		t.Fatalf("after a restart of the fake Stripe, drift reports for %s:\n%s", tenant, strings.Join(lines, "\n"))
	}
}

// postStripe sends a form POST to the fake Stripe as stripe-go would.
func postStripe(t *testing.T, addr, path string, form url.Values) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, "http://"+addr+path, strings.NewReader(form.Encode()))
	req.Header.Set("Authorization", "Bearer sk_test_firsthour")
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("POST %s: %d %s", path, resp.StatusCode, b)
	}
}

// Ctrl-C (SIGINT to make's whole process group, as a terminal sends it)
// stops every process, and the summary names each one (issue 15, item 1).
// Before that: every /metrics address make run printed answers, those of
// usage-api and billing-sync among them, and the demo API keys it points
// to are there (item 7).
func TestMakeRunSIGINT(t *testing.T) {
	d := startDemo(t, "5m")
	out := d.out.String()
	urls := regexp.MustCompile(`http://127\.0\.0\.1:\d+/metrics \(([A-Za-z -]+)\)`).FindAllStringSubmatch(out, -1)
	names := map[string]bool{}
	for _, u := range urls {
		names[u[1]] = true
		r, err := http.Get(strings.Fields(u[0])[0])
		if err != nil {
			t.Errorf("%s: %v", u[0], err)
			continue
		}
		b, _ := io.ReadAll(r.Body)
		r.Body.Close()
		if r.StatusCode != 200 || !bytes.Contains(b, []byte("# TYPE go_goroutines gauge")) {
			t.Errorf("%s: status %d, not Prometheus metrics", u[0], r.StatusCode)
		}
	}
	for _, n := range []string{"consumer", "aggregator", "usage-api", "billing-sync", "fake Stripe"} {
		if !names[n] {
			t.Errorf("make run printed no /metrics address for %s", n)
		}
	}
	m := regexp.MustCompile(`Demo API keys: (\S+)`).FindStringSubmatch(out)
	if m == nil {
		t.Error("make run does not say where the demo API keys are")
	} else if b, err := os.ReadFile(filepath.Join(testenv.RepoRoot(t), m[1])); err != nil || !bytes.Contains(b, []byte("tenant-05:")) {
		t.Errorf("the demo API keys file %s: %v (or no tenant-05 key)", m[1], err)
	}
	d.stop(t, syscall.SIGINT, true)
}
