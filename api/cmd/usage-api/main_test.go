package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/usagemeter/usagemeter/api/server"
	"github.com/usagemeter/usagemeter/testenv"
)

// bin is the usage-api binary, built once by TestMain.
var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "usage-api-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bins, err := testenv.BuildCommands(dir, "./api/cmd/usage-api")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = bins[0]
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

func TestBadConfigNamesTheKey(t *testing.T) {
	for _, c := range []struct{ yaml, key string }{
		{"quota: { fail_modes: { ok: maybe } }\n", "fail_modes"},
		{"http: { write_timeout: 5s }\n", "http.write_timeout"},
		{"http: { idle_timeout: 0s }\n", "http.idle_timeout"},
	} {
		cfg := filepath.Join(t.TempDir(), "c.yaml")
		if err := os.WriteFile(cfg, []byte(c.yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		out, code := runBinary(t, nil, "--config", cfg, "config")
		if code != 2 || !strings.Contains(out, c.key) {
			t.Errorf("%s: exit %d, want 2 naming %s:\n%s", c.yaml, code, c.key, out)
		}
	}
}

// TestPublicKeysRefusedOutsideDemo: without --demo, no keys file is a
// start-up error, and so is a keys file holding a published demo key
// (the demo file itself, or one demo-key-<tenant>).
func TestPublicKeysRefusedOutsideDemo(t *testing.T) {
	root := testenv.RepoRoot(t)
	oneDemo := filepath.Join(t.TempDir(), "keys.yaml")
	if err := os.WriteFile(oneDemo, []byte("tenants:\n  acme: [\""+server.HashKey("a-real-secret")+"\"]\n  globex: [\""+
		server.HashKey("demo-key-globex")+"\"]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{nil, "keys_file is required"},
		{[]string{"--keys", filepath.Join(root, "api/keys.example.yaml")}, `public demo key "demo-admin-key" as admin`},
		{[]string{"--keys", oneDemo}, `public demo key "demo-key-globex" for tenant globex`},
	} {
		// An unreachable broker: a server that did start would run on.
		out, code := runBinary(t, []string{"USAGE_QUOTA_BROKERS=127.0.0.1:1"}, append(c.args, "--http", "127.0.0.1:0")...)
		if code != 2 || !strings.Contains(out, c.want) || !strings.Contains(out, "--demo") {
			t.Errorf("%v: exit %d, want 2 saying %q and --demo:\n%s", c.args, code, c.want, out)
		}
	}
}

// TestReadinessWhileTheBrokerIsDown: with --demo and no broker, the process
// is alive (/livez 200) but every track is refused (503), so /readyz and
// /healthz answer 503 saying why; SIGTERM still exits 0.
func TestReadinessWhileTheBrokerIsDown(t *testing.T) {
	root := testenv.RepoRoot(t)
	addr := freeAddr(t)
	cmd, logs := start(t, root, []string{"USAGE_QUOTA_BROKERS=127.0.0.1:1"}, "--demo", "--http", addr)
	waitHTTP(t, addr)
	if status, body := get(t, "http://"+addr+"/livez"); status != 200 {
		t.Fatalf("/livez: %d %s", status, body)
	}
	track := `{"tenant_id":"tenant-05","feature_type":"ai_generation"}`
	if status, body := post(t, "http://"+addr+"/v1/track", "demo-key-tenant-05", track); status != 503 {
		t.Fatalf("track with no broker: %d %s", status, body)
	}
	for _, path := range []string{"/readyz", "/healthz"} {
		if status, body := get(t, "http://"+addr+path); status != 503 || !strings.Contains(body, `"ready":false`) || !strings.Contains(body, "not read") {
			t.Fatalf("%s while tracks get 503: %d %s", path, status, body)
		}
	}
	if _, m := get(t, "http://"+addr+"/metrics"); !strings.Contains(m, "\nusage_api_ready 0\n") {
		t.Fatal("usage_api_ready is not 0 while not ready")
	}
	stop(t, cmd, logs)
}

// TestServeAndShutDown runs the real binary on private topics: /readyz
// turns 200 once the cache caught up, it answers a check with a hashed key
// from its keys file, slow and idle connections are closed after their
// timeouts, the key is never logged, and SIGTERM exits 0.
func TestServeAndShutDown(t *testing.T) {
	broker := testenv.Kafka(t)
	state, assign, events := testenv.Name("qstate"), testenv.Name("assign"), testenv.Name("events")
	testenv.CreateTopic(t, broker, state, 1, "cleanup.policy", "compact")
	testenv.CreateTopic(t, broker, assign, 1, "cleanup.policy", "compact")
	testenv.CreateTopic(t, broker, events, 1)
	keys := filepath.Join(t.TempDir(), "keys.yaml")
	if err := os.WriteFile(keys, []byte("tenants:\n  acme: [\""+server.HashKey("k-acme")+"\"]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	root := testenv.RepoRoot(t)
	addr := freeAddr(t)
	cmd, logs := start(t, root, []string{"USAGE_QUOTA_BROKERS=" + broker, "USAGE_QUOTA_STATE_TOPIC=" + state,
		"USAGE_QUOTA_ASSIGNMENT_TOPIC=" + assign, "USAGE_EVENTS_TOPIC=" + events,
		"USAGE_HTTP_READ_TIMEOUT=1s", "USAGE_HTTP_IDLE_TIMEOUT=1s"}, "--keys", keys, "--http", addr)
	testenv.Eventually(t, 30*time.Second, "/readyz 200", func() (bool, error) {
		status, body, err := tryGet("http://" + addr + "/readyz")
		return status == 200 && strings.Contains(body, `"ready":true`), err
	})
	body := `{"tenant_id":"acme","feature_type":"ai_generation"}`
	if status, b := post(t, "http://"+addr+"/v1/track", "k-acme", body); status != 200 || !strings.Contains(b, `"stale":false`) {
		t.Fatalf("track once ready: %d %s", status, b)
	}
	if _, m := get(t, "http://"+addr+"/metrics"); !strings.Contains(m, "\nusage_api_ready 1\n") {
		t.Fatal("usage_api_ready is not 1 once ready")
	}

	// A body that never arrives: the connection ends after read_timeout.
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /v1/check HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k-acme\r\nContent-Length: 100\r\n\r\n{")
	if err := closedWithin(conn, 4*time.Second); err != nil {
		t.Fatalf("a stalled body (read_timeout 1s): %v", err)
	}
	// An idle kept-alive connection is closed after idle_timeout.
	idle, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	fmt.Fprintf(idle, "GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReader(idle)
	res, err := http.ReadResponse(br, nil)
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("livez on a kept-alive connection: %v %v", res, err)
	}
	_, _ = io.Copy(io.Discard, res.Body)
	if err := closedWithin(idle, 4*time.Second); err != nil {
		t.Fatalf("an idle connection (idle_timeout 1s): %v", err)
	}
	stop(t, cmd, logs)
	if strings.Contains(logs.String(), "k-acme") {
		t.Fatal("the key is in the log")
	}
}

// closedWithin reads conn until the server closes it (any answer before
// that is ignored), failing when it is still open after d.
func closedWithin(conn net.Conn, d time.Duration) error {
	_ = conn.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, conn)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return fmt.Errorf("still open after %s", d)
	}
	return nil
}

func runBinary(t *testing.T, env []string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = testenv.RepoRoot(t)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		return string(out) + "\n(still running after 15 s: killed)", -1
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	}
	return string(out), 0
}

func start(t *testing.T, dir string, env []string, args ...string) (*exec.Cmd, *strings.Builder) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	logs := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	return cmd, logs
}

func stop(t *testing.T, cmd *exec.Cmd, logs *strings.Builder) {
	t.Helper()
	_ = cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, logs.String())
	}
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

func waitHTTP(t *testing.T, addr string) {
	t.Helper()
	testenv.Eventually(t, 20*time.Second, "usage-api listening", func() (bool, error) {
		_, _, err := tryGet("http://" + addr + "/livez")
		return err == nil, nil
	})
}

func tryGet(url string) (int, string, error) {
	res, err := http.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	return res.StatusCode, string(b), err
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	status, body, err := tryGet(url)
	if err != nil {
		t.Fatal(err)
	}
	return status, body
}

func post(t *testing.T, url, key, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("POST", url, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+key)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}
