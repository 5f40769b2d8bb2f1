package main

import (
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

func TestBadConfigNamesTheKey(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "c.yaml")
	if err := os.WriteFile(cfg, []byte("quota: { fail_modes: { ok: maybe } }\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code := run([]string{"--config", cfg, "config"}); code != 2 {
		t.Fatalf("exit %d, want 2", code)
	}
}

// TestServeAndShutDown runs the real binary on private topics: it answers
// a check with a hashed key from its keys file, and SIGTERM exits 0.
func TestServeAndShutDown(t *testing.T) {
	broker := testenv.Kafka(t)
	state, assign, events := testenv.Name("qstate"), testenv.Name("assign"), testenv.Name("events")
	testenv.CreateTopic(t, broker, state, 1, "cleanup.policy", "compact")
	testenv.CreateTopic(t, broker, assign, 1, "cleanup.policy", "compact")
	testenv.CreateTopic(t, broker, events, 1)
	dir := t.TempDir()
	keys := filepath.Join(dir, "keys.yaml")
	if err := os.WriteFile(keys, []byte("tenants:\n  acme: [\""+server.HashKey("k-acme")+"\"]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "usage-api")
	root := testenv.RepoRoot(t)
	build := exec.Command("go", "build", "-o", bin, "./api/cmd/usage-api")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cmd := exec.Command(bin, "--keys", keys, "--plans", filepath.Join(root, "schemas/plans/plans.example.yaml"), "--http", addr)
	cmd.Env = append(os.Environ(), "USAGE_QUOTA_BROKERS="+broker, "USAGE_QUOTA_STATE_TOPIC="+state,
		"USAGE_QUOTA_ASSIGNMENT_TOPIC="+assign, "USAGE_EVENTS_TOPIC="+events)
	var logs strings.Builder
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill() }()
	body := `{"tenant_id":"acme","feature_type":"ai_generation"}`
	testenv.Eventually(t, 30*time.Second, "a fresh decision", func() (bool, error) {
		req, _ := http.NewRequest("POST", "http://"+addr+"/v1/track", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer k-acme")
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			return false, err
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		return res.StatusCode == 200 && strings.Contains(string(b), `"stale":false`), nil
	})
	_ = cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, logs.String())
	}
	if strings.Contains(logs.String(), "k-acme") {
		t.Fatal("the key is in the log")
	}
}
