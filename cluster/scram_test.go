package cluster

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/shopspring/decimal"

	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/svckit"
	"github.com/usagemeter/usagemeter/testenv"
)

// TestKafkaSCRAMAndTLS runs a private broker with a SCRAM-SHA-512 listener
// and a TLS listener (scripts/kafka.sh KAFKA_SASL_PORT, KAFKA_SSL_PORT) and
// checks svckit.KafkaSecurity against it: with the user's credentials a
// topic is created, written and read back through the SASL listener;
// without SASL, or with a wrong password, the broker refuses the
// connection; TLS works with the server's CA and fails without it; the
// real usage-consumer ingests over SCRAM only with kafka_security set.
func TestKafkaSCRAMAndTLS(t *testing.T) {
	e := need(t)
	base, err := freeBase()
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	password := hex.EncodeToString(b)
	dir := t.TempDir()
	keystore, caFile := selfSigned(t)
	env := append(os.Environ(), "KAFKA_PORT="+strconv.Itoa(base+1), "KAFKA_CONTROLLER_PORT="+strconv.Itoa(base+11),
		"KAFKA_SASL_PORT="+strconv.Itoa(base+2), "KAFKA_SCRAM_PASSWORD="+password, "KAFKA_DIR="+dir,
		"KAFKA_SSL_PORT="+strconv.Itoa(base+3), "KAFKA_SSL_KEYSTORE="+keystore)
	script := func(args ...string) {
		cmd := exec.Command(filepath.Join(e.root, "scripts", "kafka.sh"), args...)
		cmd.Env = env
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("kafka.sh %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	script("start")
	t.Cleanup(func() { script("stop", "--purge") })
	saslAddr := "127.0.0.1:" + strconv.Itoa(base+2)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	sec := svckit.KafkaSecurity{}
	sec.SASL.Mechanism, sec.SASL.Username, sec.SASL.Password = "SCRAM-SHA-512", "usage", password
	tr, err := sec.Transport()
	if err != nil {
		t.Fatal(err)
	}
	dialer, err := sec.Dialer()
	if err != nil {
		t.Fatal(err)
	}
	client := &kafka.Client{Addr: kafka.TCP(saslAddr), Transport: tr, Timeout: 20 * time.Second}
	res, err := client.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{{Topic: "scram", NumPartitions: 1, ReplicationFactor: 1}}})
	if err != nil || res.Errors["scram"] != nil {
		t.Fatalf("create topic with SCRAM: %v %v", err, res)
	}
	w := &kafka.Writer{Addr: kafka.TCP(saslAddr), Topic: "scram", Transport: tr, RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond}
	var werr error
	for range 50 { // the new partition may answer NOT_LEADER for a moment
		if werr = w.WriteMessages(ctx, kafka.Message{Key: []byte("acme"), Value: []byte("hello")}); werr == nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	_ = w.Close()
	if werr != nil {
		t.Fatalf("write with SCRAM: %v", werr)
	}
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{saslAddr}, Topic: "scram", Partition: 0, Dialer: dialer, MaxWait: 100 * time.Millisecond})
	m, err := r.ReadMessage(ctx)
	_ = r.Close()
	if err != nil || string(m.Value) != "hello" {
		t.Fatalf("read with SCRAM: %q, %v", m.Value, err)
	}

	// Refused: no SASL at all, and the right user with a wrong password.
	refused := func(what string, tr kafka.RoundTripper) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c := &kafka.Client{Addr: kafka.TCP(saslAddr), Transport: tr, Timeout: 5 * time.Second}
		if _, err := c.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{"scram"}}); err == nil {
			t.Errorf("%s: the SASL listener answered metadata", what)
		} else {
			t.Logf("%s: refused: %v", what, err)
		}
	}
	refused("no SASL", &kafka.Transport{DialTimeout: 5 * time.Second})
	bad := sec
	bad.SASL.Password = "wrong"
	badTr, err := bad.Transport()
	if err != nil {
		t.Fatal(err)
	}
	refused("wrong password", badTr)

	// TLS (the SSL listener): svckit.TLSConfig with the server's CA
	// connects; without TLS, or without that CA, the connection fails.
	sslAddr := "127.0.0.1:" + strconv.Itoa(base+3)
	var tlsSec svckit.KafkaSecurity
	tlsSec.TLS.Enabled, tlsSec.TLS.CAFile = true, caFile
	tlsTr, err := tlsSec.Transport()
	if err != nil {
		t.Fatal(err)
	}
	tc := &kafka.Client{Addr: kafka.TCP(sslAddr), Transport: tlsTr, Timeout: 10 * time.Second}
	if _, err := tc.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{"scram"}}); err != nil {
		t.Errorf("metadata over TLS with the CA: %v", err)
	}
	refusedAt := func(what string, tr kafka.RoundTripper) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c := &kafka.Client{Addr: kafka.TCP(sslAddr), Transport: tr, Timeout: 5 * time.Second}
		if _, err := c.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{"scram"}}); err == nil {
			t.Errorf("%s: the TLS listener answered metadata", what)
		} else {
			t.Logf("%s: refused: %v", what, err)
		}
	}
	refusedAt("TLS listener, no TLS", &kafka.Transport{DialTimeout: 5 * time.Second})
	var noCA svckit.KafkaSecurity
	noCA.TLS.Enabled = true
	noCATr, err := noCA.Transport()
	if err != nil {
		t.Fatal(err)
	}
	refusedAt("TLS without the server's CA", noCATr)

	// The real usage-consumer with kafka_security set: it creates its
	// topics, reads and writes every event over SCRAM; the same service
	// without the setting is refused and writes nothing.
	topic := testenv.Name("scram") + ".events"
	events := make([]kafka.Message, 40)
	for i := range events {
		ev := schemas.UsageEvent{ID: "scram-" + strconv.Itoa(i), TenantID: tenants()[i%len(tenants())], FeatureType: "api_calls",
			Quantity: decimal.NewFromInt(int64(i + 1)), Timestamp: time.Now().UTC()}
		events[i] = kafka.Message{Key: []byte(ev.TenantID), Value: ev.AppendJSON(nil)}
	}
	conn, db := testenv.ClickHouseAt(t, e.clickhouse[0])
	consumerEnv := func(group string, settings ...string) []string {
		return serviceEnv(append([]string{"USAGE_KAFKA_BROKERS=" + saslAddr, "USAGE_KAFKA_TOPIC=" + topic,
			"USAGE_KAFKA_DLQ_TOPIC=" + topic + ".dlq", "USAGE_KAFKA_GROUP_ID=" + group, "USAGE_TOPIC_PARTITIONS=4",
			"USAGE_CLICKHOUSE_ADDR=" + e.clickhouse[0], "USAGE_CLICKHOUSE_DATABASE=" + db}, settings...)...)
	}
	plain := startProc(t, "consumer-plain", e.consumer, consumerEnv(testenv.Name("plain")), "run", "--http", "127.0.0.1:0")
	select {
	case <-plain.done:
		t.Logf("usage-consumer without kafka_security exited: %v", plain.cmd.ProcessState)
		if plain.cmd.ProcessState.Success() {
			t.Error("usage-consumer without kafka_security exited 0 against the SCRAM listener")
		}
	case <-time.After(60 * time.Second):
		t.Error("usage-consumer without kafka_security still runs against the SCRAM listener after 60 s")
	}
	startProc(t, "consumer-scram", e.consumer, consumerEnv(testenv.Name("scram"), "USAGE_KAFKA_SECURITY_SASL_MECHANISM=SCRAM-SHA-512",
		"USAGE_KAFKA_SECURITY_SASL_USERNAME=usage", "USAGE_KAFKA_SECURITY_SASL_PASSWORD="+password), "run", "--http", "127.0.0.1:0")
	ew := &kafka.Writer{Addr: kafka.TCP(saslAddr), Topic: topic, Transport: tr, Balancer: kafka.Murmur2Balancer{}, RequiredAcks: kafka.RequireAll,
		BatchTimeout: time.Millisecond}
	testenv.Eventually(t, 60*time.Second, "the consumer created "+topic, func() (bool, error) {
		return ew.WriteMessages(ctx, events...) == nil, nil
	})
	_ = ew.Close()
	testenv.Eventually(t, 60*time.Second, "40 events in usage_events through SCRAM", func() (bool, error) {
		n, err := testenv.CountRows(ctx, conn, "FROM usage_events FINAL")
		return n == 40, err
	})

	// The real usage-aggregator over SCRAM too: it fetches each partition
	// on connections of its own, which must use the process's security
	// settings (they did not: a plain dialer, refused by the listener).
	plans := filepath.Join(dir, "plans.yaml")
	if err := os.WriteFile(plans, []byte(plansYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	startProc(t, "aggregator-scram", e.agg, serviceEnv("USAGE_AGGREGATOR_BROKERS="+saslAddr, "USAGE_AGGREGATOR_TOPIC="+topic,
		"USAGE_AGGREGATOR_GROUP_ID="+testenv.Name("agg"), "USAGE_AGGREGATOR_QUOTA_TOPIC="+topic+".quota",
		"USAGE_AGGREGATOR_LATE_TOPIC="+topic+".late", "USAGE_AGGREGATOR_DLQ_TOPIC="+topic+".dlq",
		"USAGE_AGGREGATOR_ASSIGNMENT_TOPIC="+topic+".plans", "USAGE_AGGREGATOR_POSITION_TOPIC="+topic+".positions",
		"USAGE_TOPIC_PARTITIONS=4", "USAGE_CLICKHOUSE_ADDR="+e.clickhouse[0], "USAGE_CLICKHOUSE_DATABASE="+db,
		"USAGE_KAFKA_SECURITY_SASL_MECHANISM=SCRAM-SHA-512", "USAGE_KAFKA_SECURITY_SASL_USERNAME=usage",
		"USAGE_KAFKA_SECURITY_SASL_PASSWORD="+password), "--plans", plans, "--http", "127.0.0.1:0", "run")
	testenv.Eventually(t, 60*time.Second, "the 40 events (sum 820) in usage_period through SCRAM", func() (bool, error) {
		var events uint64
		var sum string
		if err := conn.QueryRow(ctx, "SELECT sum(events), toString(sum(value)) FROM usage_period FINAL").Scan(&events, &sum); err != nil {
			return false, err
		}
		d, err := decimal.NewFromString(sum)
		return events == 40 && d.Equal(decimal.NewFromInt(820)), err
	})
}

// TestKafkaSecurityConfig: bad settings are refused naming the key.
func TestKafkaSecurityConfig(t *testing.T) {
	for _, c := range []struct {
		mech, user, want string
		tls              bool
	}{
		{"SCRAM-SHA-1", "u", "kafka_security.sasl.mechanism", false},
		{"SCRAM-SHA-512", "", "kafka_security.sasl.username", false},
		{"PLAIN", "u", "clear text", false},
	} {
		var s svckit.KafkaSecurity
		s.SASL.Mechanism, s.SASL.Username, s.TLS.Enabled = c.mech, c.user, c.tls
		if err := s.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s/%q: %v, want an error naming %s", c.mech, c.user, err, c.want)
		}
	}
	var s svckit.KafkaSecurity
	s.TLS.CAFile = "/nonexistent"
	if err := s.Validate(); err == nil || !strings.Contains(err.Error(), "kafka_security.tls.enabled") {
		t.Errorf("files without TLS: %v", err)
	}
	s.TLS.Enabled = true
	if err := s.Validate(); err == nil || !strings.Contains(err.Error(), "kafka_security.tls.ca_file") {
		t.Errorf("missing CA file: %v", err)
	}
	if tr, err := (svckit.KafkaSecurity{}).Transport(); tr != nil || err != nil {
		t.Errorf("zero value: %v, %v; want kafka-go's default transport", tr, err)
	}
}

// selfSigned writes a self-signed certificate for 127.0.0.1 and its key:
// the broker's keystore (PKCS#8 key, then the certificate, PEM) and the
// certificate alone as the clients' CA file.
func selfSigned(t *testing.T) (keystore, ca string) {
	t.Helper()
	c, err := writeSelfSigned(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return c.keystore, c.cert
}

// certFiles are PEM files of one self-signed certificate.
type certFiles struct{ key, cert, keystore string }

func writeSelfSigned(dir string) (certFiles, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return certFiles{}, err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return certFiles{}, err
	}
	pk, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return certFiles{}, err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pk})
	c := certFiles{key: filepath.Join(dir, "key.pem"), cert: filepath.Join(dir, "cert.pem"), keystore: filepath.Join(dir, "keystore.pem")}
	for path, b := range map[string][]byte{c.key: keyPEM, c.cert: certPEM, c.keystore: append(append([]byte(nil), keyPEM...), certPEM...)} {
		if err := os.WriteFile(path, b, 0o600); err != nil {
			return certFiles{}, err
		}
	}
	return c, nil
}
