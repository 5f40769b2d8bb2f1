package svckit

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl"
	"github.com/segmentio/kafka-go/sasl/plain"
	"github.com/segmentio/kafka-go/sasl/scram"
)

// TLSConfig is a client's TLS to an engine (Kafka or ClickHouse). Off by
// default: the local engines listen on loopback in plain text.
type TLSConfig struct {
	Enabled bool `mapstructure:"enabled"`
	// CAFile verifies the server (PEM); empty uses the system roots.
	CAFile string `mapstructure:"ca_file"`
	// CertFile and KeyFile authenticate the client (mutual TLS); both or
	// neither.
	CertFile string `mapstructure:"cert_file"`
	KeyFile  string `mapstructure:"key_file"`
	// ServerName overrides the name checked in the server's certificate.
	ServerName string `mapstructure:"server_name"`
	// InsecureSkipVerify accepts any server certificate: tests only.
	InsecureSkipVerify bool `mapstructure:"insecure_skip_verify"`
}

// Config returns the crypto/tls config, nil when TLS is off. prefix names
// the config section in errors (e.g. "kafka.tls").
func (c TLSConfig) Config(prefix string) (*tls.Config, error) {
	if !c.Enabled {
		if c.CAFile != "" || c.CertFile != "" || c.KeyFile != "" {
			return nil, fmt.Errorf("%s.enabled: files are set but TLS is off", prefix)
		}
		return nil, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: c.ServerName, InsecureSkipVerify: c.InsecureSkipVerify} //nolint:gosec // opt-in, documented as tests only
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("%s.ca_file: %w", prefix, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s.ca_file %s: no PEM certificate in it", prefix, c.CAFile)
		}
		tc.RootCAs = pool
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		return nil, fmt.Errorf("%s.cert_file and %s.key_file: set both or neither", prefix, prefix)
	}
	if c.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("%s.cert_file: %w", prefix, err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// KafkaSecurity is how a service authenticates to the brokers: TLS and
// SASL (SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN). Every service's config
// holds one under kafka_security (USAGE_KAFKA_SECURITY_SASL_MECHANISM, ...;
// the zero value: plain text, no SASL, as the local broker of make run).
type KafkaSecurity struct {
	TLS  TLSConfig `mapstructure:"tls"`
	SASL struct {
		// Mechanism: "" (none), SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN.
		Mechanism string `mapstructure:"mechanism"`
		Username  string `mapstructure:"username"`
		Password  string `mapstructure:"password"`
	} `mapstructure:"sasl"`
}

// mechanism returns the SASL mechanism, nil when SASL is off.
func (s KafkaSecurity) mechanism() (sasl.Mechanism, error) {
	m := strings.ToUpper(s.SASL.Mechanism)
	if m == "" {
		return nil, nil
	}
	if m != "SCRAM-SHA-512" && m != "SCRAM-SHA-256" && m != "PLAIN" {
		return nil, fmt.Errorf("kafka_security.sasl.mechanism: %q is not SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN", s.SASL.Mechanism)
	}
	if s.SASL.Username == "" {
		return nil, fmt.Errorf("kafka_security.sasl.username: required with mechanism %s", m)
	}
	switch m {
	case "SCRAM-SHA-512", "SCRAM-SHA-256":
		algo := scram.SHA512
		if m == "SCRAM-SHA-256" {
			algo = scram.SHA256
		}
		mech, err := scram.Mechanism(algo, s.SASL.Username, s.SASL.Password)
		if err != nil {
			return nil, fmt.Errorf("kafka_security.sasl: %w", err)
		}
		return mech, nil
	case "PLAIN":
		if s.TLS.Enabled {
			return plain.Mechanism{Username: s.SASL.Username, Password: s.SASL.Password}, nil
		}
		return nil, fmt.Errorf("kafka_security.sasl.mechanism: PLAIN sends the password in clear text; enable kafka_security.tls or use SCRAM-SHA-512")
	}
	return nil, fmt.Errorf("kafka_security.sasl.mechanism: %q is not SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN", s.SASL.Mechanism)
}

// Validate reports the first setting that cannot work.
func (s KafkaSecurity) Validate() error {
	if _, err := s.TLS.Config("kafka_security.tls"); err != nil {
		return err
	}
	_, err := s.mechanism()
	return err
}

// Transport is the kafka-go transport for kafka.Client and kafka.Writer
// (their Transport field): nil (kafka-go's default) when neither TLS nor
// SASL is on.
func (s KafkaSecurity) Transport() (kafka.RoundTripper, error) {
	tc, err := s.TLS.Config("kafka_security.tls")
	if err != nil {
		return nil, err
	}
	mech, err := s.mechanism()
	if err != nil {
		return nil, err
	}
	if tc == nil && mech == nil {
		return nil, nil
	}
	return &kafka.Transport{TLS: tc, SASL: mech, DialTimeout: 10 * time.Second}, nil
}

// Dialer is the kafka-go dialer for kafka.Reader (ReaderConfig.Dialer):
// nil (kafka-go's default) when neither TLS nor SASL is on.
func (s KafkaSecurity) Dialer() (*kafka.Dialer, error) {
	tc, err := s.TLS.Config("kafka_security.tls")
	if err != nil {
		return nil, err
	}
	mech, err := s.mechanism()
	if err != nil {
		return nil, err
	}
	if tc == nil && mech == nil {
		return nil, nil
	}
	return &kafka.Dialer{Timeout: 10 * time.Second, DualStack: true, TLS: tc, SASLMechanism: mech}, nil
}

// Install makes s the way every kafka-go connection of this process is
// made: it sets kafka-go's DefaultTransport (kafka.Client, kafka.Writer
// without a Transport) and DefaultDialer (kafka.Reader, consumer groups
// without a Dialer). A service's main calls it once, before any Kafka
// connection, so the service's packages and svckit's own helpers, which
// take only broker addresses, need no security parameter. The zero value
// installs nothing: kafka-go's plain-text defaults stay.
func (s KafkaSecurity) Install() error {
	tr, err := s.Transport()
	if err != nil {
		return err
	}
	d, err := s.Dialer()
	if err != nil || tr == nil {
		return err
	}
	kafka.DefaultTransport = tr
	kafka.DefaultDialer = d
	return nil
}
