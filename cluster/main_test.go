package cluster

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/usagemeter/usagemeter/testenv"
)

// engines is the loopback cluster scripts/cluster.sh started for this run
// of the test binary, and the service binaries under test. It is set once
// by TestMain and only read by the tests.
type engines struct {
	root, dir, base string
	kafka           []string // the 3 brokers
	clickhouse      []string // the 2 ClickHouse servers
	chUser, chPass  string   // the services' ClickHouse user (a password set)
	chTLS           []string // each server's TLS native port
	tls             certFiles
	consumer, agg   string // binaries
}

var suite *engines

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		fmt.Println("cluster: skipped in -short mode (starts 3 Kafka brokers, ZooKeeper and 2 ClickHouse servers)")
		os.Exit(m.Run())
	}
	e, err := startEngines()
	if err != nil {
		fmt.Fprintln(os.Stderr, "cluster:", err)
		if e != nil {
			_, _ = e.script(context.Background(), "stop", "--purge")
			_ = os.RemoveAll(e.dir)
		}
		os.Exit(1)
	}
	suite = e
	code := m.Run()
	if out, err := e.script(context.Background(), "stop", "--purge"); err != nil {
		fmt.Fprintf(os.Stderr, "cluster: stop: %v\n%s", err, out)
	}
	_ = os.RemoveAll(e.dir)
	os.Exit(code)
}

func startEngines() (*engines, error) {
	wd, err := os.Getwd()
	if err != nil {
		return nil, err
	}
	root := filepath.Dir(wd)
	dir, err := os.MkdirTemp("", "usage-cluster-")
	if err != nil {
		return nil, err
	}
	bins, err := testenv.BuildCommands(filepath.Join(dir, "bin"), "./consumer/cmd/usage-consumer", "./aggregator/cmd/usage-aggregator")
	if err != nil {
		return nil, err
	}
	base, err := freeBase()
	if err != nil {
		return nil, err
	}
	e := &engines{root: root, dir: dir, base: strconv.Itoa(base), consumer: bins[0], agg: bins[1],
		chTLS: []string{"127.0.0.1:" + strconv.Itoa(base+61), "127.0.0.1:" + strconv.Itoa(base+62)}}
	if e.tls, err = writeSelfSigned(dir); err != nil {
		return e, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	out, err := e.script(ctx, "start")
	if err != nil {
		return e, fmt.Errorf("cluster.sh start: %w\n%s", err, out)
	}
	for _, line := range strings.Split(out, "\n") {
		k, v, _ := strings.Cut(strings.TrimSpace(line), "=")
		switch k {
		case "USAGE_TEST_CLUSTER_KAFKA":
			e.kafka = strings.Split(v, ",")
		case "USAGE_TEST_CLUSTER_CLICKHOUSE":
			e.clickhouse = strings.Split(v, ",")
		case "USAGE_TEST_CLUSTER_CLICKHOUSE_USER":
			e.chUser = v
		case "USAGE_TEST_CLUSTER_CLICKHOUSE_PASSWORD":
			e.chPass = v
		}
	}
	if len(e.kafka) != 3 || len(e.clickhouse) != 2 {
		return e, fmt.Errorf("cluster.sh start printed no addresses:\n%s", out)
	}
	return e, nil
}

// freeBase picks CLUSTER_BASE_PORT so that every port scripts/cluster.sh
// derives from it is free, below the ephemeral range (a reconnecting
// client could otherwise hold a stopped server's port) and away from the
// shared engines (19000-19093) and the fault suite (which uses the same
// kind of random ports, one at a time).
func freeBase() (int, error) {
	offsets := []int{1, 2, 3, 11, 12, 13, 20, 31, 32, 41, 42, 51, 52, 61, 62}
	for range 200 {
		base := 20000 + rand.IntN(12000)
		ok := true
		for _, o := range offsets {
			l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(base+o))
			if err != nil {
				ok = false
				break
			}
			_ = l.Close()
		}
		if ok {
			return base, nil
		}
	}
	return 0, fmt.Errorf("no free port range for the cluster")
}

// script runs scripts/cluster.sh on this run's ports and directory.
func (e *engines) script(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(e.root, "scripts", "cluster.sh"), args...)
	cmd.Env = append(os.Environ(), "CLUSTER_BASE_PORT="+e.base, "CLUSTER_DIR="+filepath.Join(e.dir, "engines"),
		"CLUSTER_CH_TLS_CERT="+e.tls.cert, "CLUSTER_CH_TLS_KEY="+e.tls.key)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return stdout.String() + stderr.String(), err
}

func need(t *testing.T) *engines {
	t.Helper()
	if testing.Short() {
		t.Skip("cluster test skipped in -short mode")
	}
	if suite == nil {
		t.Fatal("cluster engines not started")
	}
	return suite
}

// run runs scripts/cluster.sh, failing the test on error.
func (e *engines) run(t *testing.T, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if out, err := e.script(ctx, args...); err != nil {
		t.Fatalf("cluster.sh %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// proc is one service process a test started.
type proc struct {
	name string
	log  string
	cmd  *exec.Cmd
	done chan struct{}
}

func startProc(t *testing.T, name, bin string, env []string, args ...string) *proc {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env, cmd.Stdout, cmd.Stderr = env, f, f
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p := &proc{name: name, log: logPath, cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); _ = f.Close(); close(p.done) }()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("---- %s log (last 3000 bytes) ----\n%s", name, tail(b, 3000))
		}
	})
	return p
}

func (p *proc) kill() { _ = p.cmd.Process.Signal(syscall.SIGKILL); <-p.done }

func (p *proc) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		p.kill()
	}
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// serviceEnv is the environment without the caller's USAGE_* variables,
// plus settings.
func serviceEnv(settings ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "USAGE_") {
			env = append(env, kv)
		}
	}
	return append(env, settings...)
}
