package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/spf13/pflag"

	"github.com/usagemeter/usagemeter/testenv"
)

// The real binary: started with env config, fed raw events, stopped with
// SIGTERM. It must exit 0 with every event written and every offset
// committed, and serve its dashboard API meanwhile.
func TestBinarySIGTERMFlushesCommitsAndExitsZero(t *testing.T) {
	broker := testenv.Kafka(t)
	chAddr := testenv.ClickHouseAddr(t)
	bin := filepath.Join(t.TempDir(), "usage-consumer")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	topic, group, db := testenv.Name("events"), testenv.Name("group"), testenv.Name("t")
	testenv.CreateTopic(t, broker, topic, 4)
	testenv.CreateTopic(t, broker, topic+".dlq", 1)
	admin := testenv.Open(t, chAddr, "default")
	t.Cleanup(func() { _ = admin.Exec(context.Background(), "DROP DATABASE IF EXISTS "+db) })
	httpAddr := freeAddr(t)

	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(),
		"USAGE_KAFKA_BROKERS="+broker, "USAGE_KAFKA_TOPIC="+topic, "USAGE_KAFKA_DLQ_TOPIC="+topic+".dlq",
		"USAGE_KAFKA_GROUP_ID="+group, "USAGE_KAFKA_FLUSH_INTERVAL=30s", // only SIGTERM flushes
		"USAGE_CLICKHOUSE_ADDR="+chAddr, "USAGE_CLICKHOUSE_DATABASE="+db, "USAGE_HTTP_ADDR="+httpAddr)
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })

	w := &kafka.Writer{Addr: kafka.TCP(broker), Topic: topic, Balancer: kafka.Murmur2Balancer{}, BatchTimeout: time.Millisecond}
	defer w.Close()
	const n = 3000
	var msgs []kafka.Message
	ts := time.Now().UTC().Format(time.RFC3339)
	for i := range n {
		tenant := fmt.Sprintf("tenant-%d", i%5)
		msgs = append(msgs, kafka.Message{Key: []byte(tenant), Value: fmt.Appendf(nil,
			`{"id":"e-%d","tenant_id":%q,"feature_type":"api_calls","quantity":"1","timestamp":%q}`, i, tenant, ts)})
	}
	if err := w.WriteMessages(context.Background(), msgs...); err != nil {
		t.Fatal(err)
	}
	// Wait until the consumer holds all of them in its (unflushed) batch.
	testenv.Eventually(t, 60*time.Second, "messages consumed", func() (bool, error) {
		body, err := get("http://" + httpAddr + "/metrics")
		return strings.Contains(body, fmt.Sprintf("usage_consumer_messages_total %d", n)), err
	})
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, logs.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("no exit within 60s of SIGTERM\n%s", logs.String())
	}
	conn := testenv.Open(t, chAddr, db)
	if got, err := testenv.CountRows(context.Background(), conn, "FROM usage_events FINAL"); err != nil || got != n {
		t.Fatalf("rows after SIGTERM: %d (%v), want %d", got, err, n)
	}
	client := &kafka.Client{Addr: kafka.TCP(broker)}
	off, err := client.OffsetFetch(context.Background(), &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{topic: {0, 1, 2, 3}}})
	if err != nil {
		t.Fatal(err)
	}
	var committed int64
	for _, p := range off.Topics[topic] {
		committed += max(p.CommittedOffset, 0)
	}
	if committed != n {
		t.Fatalf("committed offsets add up to %d, want %d", committed, n)
	}
}

func TestBadConfigNamesTheKey(t *testing.T) {
	t.Setenv("USAGE_KAFKA_BATCH_SIZE", "0")
	if code := run([]string{"config"}); code != 2 {
		t.Fatalf("exit code %d, want 2", code)
	}
	t.Setenv("USAGE_KAFKA_BATCH_SIZE", "10")
	f := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(f, []byte("kafka:\n  batchsize: 10\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, err := loadConfig(flagsFor(t, "--config", f))
	if err == nil || !strings.Contains(err.Error(), "batchsize") {
		t.Fatalf("unknown key not reported: %v", err)
	}
	t.Setenv("USAGE_LOG_FORMAT", "xml")
	_, _, err = loadConfig(flagsFor(t))
	if err == nil || !strings.Contains(err.Error(), "log.format") {
		t.Fatalf("bad log.format not reported: %v", err)
	}
}

func TestConfigPrecedence(t *testing.T) {
	f := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(f, []byte("kafka:\n  topic: from-file\n  batch_size: 7\nclickhouse:\n  database: filedb\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("USAGE_KAFKA_BATCH_SIZE", "9")
	t.Setenv("USAGE_KAFKA_BROKERS", "127.0.0.1:1,127.0.0.1:2")
	cfg, _, err := loadConfig(flagsFor(t, "--config", f, "--clickhouse", "127.0.0.1:7000"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Kafka.Topic != "from-file" || cfg.Kafka.BatchSize != 9 || cfg.ClickHouse.Database != "filedb" ||
		len(cfg.Kafka.Brokers) != 2 || cfg.ClickHouse.Addr[0] != "127.0.0.1:7000" || cfg.Kafka.FlushInterval != time.Second {
		t.Fatalf("unexpected config: %+v", cfg)
	}
}

func flagsFor(t *testing.T, args ...string) *pflag.FlagSet {
	t.Helper()
	fs := newFlags()
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return fs
}

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func get(url string) (string, error) {
	res, err := http.Get(url)
	if err != nil {
		return "", err
	}
	defer res.Body.Close()
	var b bytes.Buffer
	_, err = b.ReadFrom(res.Body)
	return b.String(), err
}
