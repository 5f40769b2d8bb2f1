package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/usagemeter/usagemeter/testenv"
)

// binaries are the three services under test, built from the working tree.
type binaries struct{ consumer, aggregator, billing string }

// build compiles the real commands once per test run, in one go build
// (one invocation shares the work across packages on two cores).
func build(t *testing.T) binaries {
	t.Helper()
	start := time.Now()
	bins, err := testenv.BuildCommands(t.TempDir(), "./consumer/cmd/usage-consumer", "./aggregator/cmd/usage-aggregator",
		"./billing-sync/cmd/usage-billing-sync")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("built the three binaries in %v", time.Since(start).Round(time.Millisecond))
	return binaries{consumer: bins[0], aggregator: bins[1], billing: bins[2]}
}

// cleanEnv is the process environment without the caller's USAGE_*
// variables (USAGE_TEST_* and any developer settings), so that only what
// a test sets reaches a service.
func cleanEnv(settings ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "USAGE_") {
			env = append(env, kv)
		}
	}
	return append(env, settings...)
}

// proc is a service process a test started; its output goes to a file.
type proc struct {
	name string
	log  string
	cmd  *exec.Cmd
	done chan struct{} // closed when it has exited; err is set then
	err  error
}

func start(t *testing.T, dir, name, bin string, env []string, args ...string) *proc {
	t.Helper()
	logPath := filepath.Join(dir, fmt.Sprintf("%s-%d.log", name, time.Now().UnixNano()))
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env, cmd.Dir, cmd.Stdout, cmd.Stderr = env, dir, f, f
	if err := cmd.Start(); err != nil {
		_ = f.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	p := &proc{name: name, log: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		_ = f.Close()
		close(p.done)
	}()
	return p
}

// exited reports whether the process has ended.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill sends SIGKILL (no cleanup, no flush: a crash or an OOM kill).
func (p *proc) kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// stop sends SIGTERM, then SIGKILL after grace.
func (p *proc) stop(grace time.Duration) {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		p.kill()
	}
}

// wait waits for the process to end by itself within limit.
func (p *proc) wait(t *testing.T, limit time.Duration) error {
	t.Helper()
	select {
	case <-p.done:
		return p.err
	case <-time.After(limit):
		p.kill()
		t.Fatalf("%s still running after %v; last log lines:\n%s", p.name, limit, tail(p.log, 10))
		return nil
	}
}

// runCmd runs a command to completion (bounded) and returns its stdout;
// a failure shows stderr.
func runCmd(t *testing.T, dir, bin string, env []string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	var out, errb bytes.Buffer
	cmd.Env, cmd.Dir, cmd.Stdout, cmd.Stderr = env, dir, &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\nstdout:\n%s\nstderr (last lines):\n%s", filepath.Base(bin), strings.Join(args, " "), err, out.String(),
			lastLines(errb.String(), 12))
	}
	return out.String() + errb.String()
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	return lastLines(string(b), n)
}

func lastLines(s string, n int) string {
	var lines []string
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}
