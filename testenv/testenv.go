// Package testenv gives integration tests the real engines that
// scripts/engines.sh started (make test does): an Apache Kafka broker and a
// ClickHouse server on 127.0.0.1. Each test gets its own topics and its own
// ClickHouse database, so tests never see each other's data.
//
// Without the engines, integration tests fail with a message saying how to
// start them; with -short they are skipped, for quick unit-test loops.
package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	mathrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/segmentio/kafka-go"
)

// Environment variables printed by scripts/engines.sh start.
const (
	EnvKafka      = "USAGE_TEST_KAFKA"
	EnvClickHouse = "USAGE_TEST_CLICKHOUSE"
)

func need(t testing.TB, env string) string {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test skipped in -short mode")
	}
	v := os.Getenv(env)
	if v == "" {
		t.Fatalf("%s is not set: run `make test`, or `eval $(scripts/engines.sh start)` before go test", env)
	}
	return v
}

// Kafka returns the address of the test broker.
func Kafka(t testing.TB) string { return need(t, EnvKafka) }

// ClickHouseAddr returns the native-protocol address of the test server.
func ClickHouseAddr(t testing.TB) string { return need(t, EnvClickHouse) }

// Name returns a unique lower-case identifier with the given prefix, safe as
// a topic, group or database name.
func Name(prefix string) string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return prefix + "_" + hex.EncodeToString(b)
}

// CreateTopic creates a topic with the given partitions and configs
// (e.g. "cleanup.policy", "compact") and deletes it when the test ends.
func CreateTopic(t testing.TB, broker, topic string, partitions int, configs ...string) {
	t.Helper()
	var entries []kafka.ConfigEntry
	for i := 0; i+1 < len(configs); i += 2 {
		entries = append(entries, kafka.ConfigEntry{ConfigName: configs[i], ConfigValue: configs[i+1]})
	}
	client := &kafka.Client{Addr: kafka.TCP(broker), Timeout: 30 * time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := client.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{{
		Topic: topic, NumPartitions: partitions, ReplicationFactor: 1, ConfigEntries: entries,
	}}})
	if err != nil {
		t.Fatalf("create topic %s: %v", topic, err)
	}
	if err := res.Errors[topic]; err != nil {
		t.Fatalf("create topic %s: %v", topic, err)
	}
	waitTopic(t, client, topic, partitions)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, _ = client.DeleteTopics(ctx, &kafka.DeleteTopicsRequest{Topics: []string{topic}})
	})
}

// waitTopic waits until every partition has a leader, so that the first
// produce does not race topic creation.
func waitTopic(t testing.TB, client *kafka.Client, topic string, partitions int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		md, err := client.Metadata(context.Background(), &kafka.MetadataRequest{Topics: []string{topic}})
		if err == nil && len(md.Topics) == 1 && md.Topics[0].Error == nil && len(md.Topics[0].Partitions) == partitions {
			ready := true
			for _, p := range md.Topics[0].Partitions {
				if p.Leader.ID < 0 || p.Error != nil {
					ready = false
				}
			}
			// Leaders in the metadata are not enough: right after creation a
			// partition can still answer NOT_LEADER to offset requests.
			if ready && offsetsReady(client, topic, partitions) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("topic %s not ready: %v", topic, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func offsetsReady(client *kafka.Client, topic string, partitions int) bool {
	var reqs []kafka.OffsetRequest
	for p := range partitions {
		reqs = append(reqs, kafka.LastOffsetOf(p))
	}
	res, err := client.ListOffsets(context.Background(), &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil || len(res.Topics[topic]) != partitions {
		return false
	}
	for _, po := range res.Topics[topic] {
		if po.Error != nil {
			return false
		}
	}
	return true
}

// ClickHouse opens a connection to a fresh database on the test server and
// drops the database when the test ends.
func ClickHouse(t testing.TB) (driver.Conn, string) {
	t.Helper()
	return ClickHouseAt(t, ClickHouseAddr(t))
}

// ClickHouseAt is ClickHouse for a server at addr.
func ClickHouseAt(t testing.TB, addr string) (driver.Conn, string) {
	t.Helper()
	db := Name("t")
	ctx := context.Background()
	admin := Open(t, addr, "default")
	if err := admin.Exec(ctx, "CREATE DATABASE "+db); err != nil {
		t.Fatalf("create database %s: %v", db, err)
	}
	conn := Open(t, addr, db)
	t.Cleanup(func() {
		if os.Getenv("USAGE_TEST_KEEP_DB") == "" {
			_ = admin.Exec(context.Background(), "DROP DATABASE IF EXISTS "+db)
		}
	})
	return conn, db
}

// Open connects to database db at addr and closes it when the test ends.
func Open(t testing.TB, addr, db string) driver.Conn {
	t.Helper()
	conn, err := clickhouse.Open(&clickhouse.Options{
		Addr:        []string{addr},
		Auth:        clickhouse.Auth{Database: db},
		DialTimeout: 5 * time.Second,
		ReadTimeout: 60 * time.Second,
	})
	if err != nil {
		t.Fatalf("open clickhouse %s/%s: %v", addr, db, err)
	}
	if err := conn.Ping(context.Background()); err != nil {
		t.Fatalf("ping clickhouse %s: %v", addr, err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// RepoRoot is the directory holding go.work.
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// ClickHouseServer is a private ClickHouse server a test can stop and start,
// started by scripts/clickhouse.sh on free ports with its own data dir.
type ClickHouseServer struct {
	t    testing.TB
	root string
	env  []string
	Addr string
}

// StartClickHouse starts a private server and stops it (deleting its data)
// when the test ends.
func StartClickHouse(t testing.TB) *ClickHouseServer {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test skipped in -short mode")
	}
	ports := restartablePorts(t, 3) // the test restarts it: see restartablePorts
	dir := t.TempDir()
	s := &ClickHouseServer{t: t, root: RepoRoot(t), Addr: "127.0.0.1:" + strconv.Itoa(ports[0])}
	s.env = append(os.Environ(),
		"CH_TCP_PORT="+strconv.Itoa(ports[0]),
		"CH_HTTP_PORT="+strconv.Itoa(ports[1]),
		"CH_INTERSERVER_PORT="+strconv.Itoa(ports[2]),
		"CH_DIR="+dir,
	)
	s.Start()
	t.Cleanup(func() { s.script("stop", "--purge") })
	return s
}

// Start starts the server and waits until it answers.
func (s *ClickHouseServer) Start() { s.t.Helper(); s.script("start") }

// Stop stops the server (SIGTERM, then SIGKILL), keeping its data.
func (s *ClickHouseServer) Stop() { s.t.Helper(); s.script("stop") }

func (s *ClickHouseServer) script(args ...string) {
	s.t.Helper()
	cmd := exec.Command(filepath.Join(s.root, "scripts", "clickhouse.sh"), args...)
	cmd.Env = s.env
	out, err := cmd.CombinedOutput()
	if err != nil {
		s.t.Fatalf("clickhouse.sh %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// Eventually polls cond every 50 ms until it returns true or timeout passes.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var lastErr error
	for time.Now().Before(deadline) {
		ok, err := cond()
		if ok {
			return
		}
		lastErr = err
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("timed out after %s waiting for %s (last error: %v)", timeout, what, lastErr)
}

// CountRows returns SELECT count() for a query like "FROM x FINAL WHERE ...".
func CountRows(ctx context.Context, conn driver.Conn, from string, args ...any) (uint64, error) {
	var n uint64
	err := conn.QueryRow(ctx, "SELECT count() "+from, args...).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("count %s: %w", from, err)
	}
	return n, nil
}

// EndOffsets returns the end (next) offset of partitions 0..n-1 of topic.
func EndOffsets(t testing.TB, broker, topic string, n int) []int64 {
	t.Helper()
	var reqs []kafka.OffsetRequest
	for p := range n {
		reqs = append(reqs, kafka.LastOffsetOf(p))
	}
	client := &kafka.Client{Addr: kafka.TCP(broker)}
	res, err := client.ListOffsets(context.Background(), &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil {
		t.Fatalf("end offsets of %s: %v", topic, err)
	}
	out := make([]int64, n)
	if got := len(res.Topics[topic]); got != n {
		t.Fatalf("end offsets of %s: %d partitions answered, want %d", topic, got, n)
	}
	for _, po := range res.Topics[topic] {
		if po.Error != nil {
			t.Fatalf("end offset of %s/%d: %v", topic, po.Partition, po.Error)
		}
		out[po.Partition] = po.LastOffset
	}
	return out
}

// ReadN reads n messages from all partitions of topic, in a group of its
// own, failing the test if they do not arrive within 60 s.
func ReadN(t testing.TB, broker, topic string, n int) []kafka.Message {
	t.Helper()
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{broker}, GroupID: Name("reader"), Topic: topic,
		StartOffset: kafka.FirstOffset, MaxWait: 100 * time.Millisecond})
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var out []kafka.Message
	for len(out) < n {
		m, err := r.FetchMessage(ctx)
		if err != nil {
			t.Fatalf("read %s: got %d of %d messages: %v", topic, len(out), n, err)
		}
		out = append(out, m)
	}
	return out
}

// Headers returns a message's headers as a map.
func Headers(m kafka.Message) map[string]string {
	h := make(map[string]string, len(m.Headers))
	for _, x := range m.Headers {
		h[x.Key] = string(x.Value)
	}
	return h
}

// KafkaServer is a private Apache Kafka broker (KRaft, one node) a test can
// stop and start, started by scripts/kafka.sh on free ports with its own
// data dir. Use it for tests that restart the broker; the shared broker of
// Kafka(t) must never be stopped under other tests.
type KafkaServer struct {
	t    testing.TB
	root string
	env  []string
	Addr string
}

// StartKafka starts a private broker and stops it (deleting its data) when
// the test ends. The first start formats the log dir (about 9 s on two
// cores); a restart takes 3 to 18 s.
func StartKafka(t testing.TB) *KafkaServer {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test skipped in -short mode")
	}
	ports := restartablePorts(t, 2)
	dir := t.TempDir()
	s := &KafkaServer{t: t, root: RepoRoot(t), Addr: "127.0.0.1:" + strconv.Itoa(ports[0])}
	s.env = append(os.Environ(),
		"KAFKA_PORT="+strconv.Itoa(ports[0]),
		"KAFKA_CONTROLLER_PORT="+strconv.Itoa(ports[1]),
		"KAFKA_DIR="+dir,
	)
	s.Start()
	t.Cleanup(func() { s.script("stop", "--purge") })
	return s
}

// Start starts the broker and waits until it answers metadata requests.
func (s *KafkaServer) Start() { s.t.Helper(); s.script("start") }

// Stop stops the broker (SIGTERM, then SIGKILL), keeping its data.
func (s *KafkaServer) Stop() { s.t.Helper(); s.script("stop") }

func (s *KafkaServer) script(args ...string) {
	s.t.Helper()
	cmd := exec.Command(filepath.Join(s.root, "scripts", "kafka.sh"), args...)
	cmd.Env = s.env
	out, err := cmd.CombinedOutput()
	if err != nil {
		s.t.Fatalf("kafka.sh %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// restartablePorts returns n free ports below the kernel's ephemeral range.
// A port from the ephemeral range (what the kernel gives port 0) can be taken, while
// its server is stopped, by the local end of an outgoing connection (the
// clients reconnecting to that very server), and the restart then fails with
// "Address already in use".
func restartablePorts(t testing.TB, n int) []int {
	t.Helper()
	low := 32768 // Linux's default ip_local_port_range starts here
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if v, err := strconv.Atoi(f[0]); err == nil && v > 12000 {
				low = v
			}
		}
	}
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			_ = l.Close()
		}
	}()
	for attempt := 0; len(ports) < n && attempt < 1000; attempt++ {
		port := 10000 + mathrand.IntN(low-10000)
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err != nil {
			continue
		}
		ls = append(ls, l)
		ports = append(ports, port)
	}
	if len(ports) < n {
		t.Fatalf("no %d free ports between 10000 and %d", n, low)
	}
	return ports
}
