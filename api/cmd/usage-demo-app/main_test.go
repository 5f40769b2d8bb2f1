package main

import (
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

	"github.com/usagemeter/usagemeter/testenv"
)

// bin is the usage-demo-app binary, built once by TestMain.
var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "usage-demo-app-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bins, err := testenv.BuildCommands(dir, "./api/cmd/usage-demo-app")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = bins[0]
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// TestProbesGenerateAndTimeouts runs the real binary on private topics:
// /healthz and /readyz say ready once the cache caught up, /livez is 200,
// a generate is served, a body that never arrives is cut off after
// -read-timeout, and SIGTERM exits 0.
func TestProbesGenerateAndTimeouts(t *testing.T) {
	broker := testenv.Kafka(t)
	state, assign, events := testenv.Name("qstate"), testenv.Name("assign"), testenv.Name("events")
	testenv.CreateTopic(t, broker, state, 1, "cleanup.policy", "compact")
	testenv.CreateTopic(t, broker, assign, 1, "cleanup.policy", "compact")
	testenv.CreateTopic(t, broker, events, 1)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	root := testenv.RepoRoot(t)
	cmd := exec.Command(bin, "-addr", addr, "-brokers", broker, "-state-topic", state, "-assignment-topic", assign,
		"-events-topic", events, "-read-timeout", "1s", "-plans", filepath.Join(root, "schemas/plans/plans.example.yaml"))
	var logs strings.Builder
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill() }()
	for _, path := range []string{"/healthz", "/readyz"} {
		testenv.Eventually(t, 30*time.Second, path+" ready", func() (bool, error) {
			res, err := http.Get("http://" + addr + path)
			if err != nil {
				return false, nil
			}
			b, _ := io.ReadAll(res.Body)
			res.Body.Close()
			return res.StatusCode == 200 && strings.Contains(string(b), `"ready":true`), nil
		})
	}
	if res, err := http.Get("http://" + addr + "/livez"); err != nil || res.StatusCode != 200 {
		t.Fatalf("/livez: %v %v", res, err)
	}
	req, _ := http.NewRequest("POST", "http://"+addr+"/v1/generate", nil)
	req.Header.Set("X-Tenant", "demo-t")
	if res, err := http.DefaultClient.Do(req); err != nil || res.StatusCode != 200 {
		t.Fatalf("generate: %v %v\n%s", res, err, logs.String())
	}
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /v1/generate HTTP/1.1\r\nHost: x\r\nX-Tenant: demo-t\r\nContent-Length: 100\r\n\r\n{")
	_ = conn.SetReadDeadline(time.Now().Add(4 * time.Second))
	if _, err := io.Copy(io.Discard, conn); err != nil {
		t.Fatalf("a stalled body is still open after 4 s (read timeout 1s): %v", err)
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, logs.String())
	}
}
