package svckit

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

type testConfig struct {
	Kafka struct {
		Brokers []string      `mapstructure:"brokers"`
		Flush   time.Duration `mapstructure:"flush_interval"`
	} `mapstructure:"kafka"`
	Stripe struct {
		APIKey string `mapstructure:"api_key"`
	} `mapstructure:"stripe"`
	HTTP struct {
		Addr string `mapstructure:"addr"`
	} `mapstructure:"http"`
}

func loadTest(t *testing.T, file string, args ...string) (testConfig, map[string]any, error) {
	t.Helper()
	var c testConfig
	c.Kafka.Brokers = []string{"127.0.0.1:19092"}
	c.Kafka.Flush = time.Second
	c.HTTP.Addr = "127.0.0.1:9464"
	flags := pflag.NewFlagSet("t", pflag.ContinueOnError)
	flags.String("config", "", "")
	flags.String("http", "", "")
	if file != "" {
		path := filepath.Join(t.TempDir(), "c.yaml")
		if err := os.WriteFile(path, []byte(file), 0o600); err != nil {
			t.Fatal(err)
		}
		args = append(args, "--config", path)
	}
	if err := flags.Parse(args); err != nil {
		t.Fatal(err)
	}
	settings, err := LoadConfig(flags, map[string]string{"http": "http.addr"}, &c)
	return c, settings, err
}

func TestLoadConfigPrecedenceAndErrors(t *testing.T) {
	c, _, err := loadTest(t, "")
	if err != nil || c.HTTP.Addr != "127.0.0.1:9464" || c.Kafka.Flush != time.Second {
		t.Fatalf("defaults: %+v %v", c, err)
	}
	t.Setenv("USAGE_KAFKA_FLUSH_INTERVAL", "250ms")
	c, settings, err := loadTest(t, "kafka:\n  brokers: [a:1, b:2]\nstripe:\n  api_key: sk_test_123\nhttp:\n  addr: 127.0.0.1:1\n", "--http", "127.0.0.1:2")
	if err != nil {
		t.Fatal(err)
	}
	if c.Kafka.Flush != 250*time.Millisecond || len(c.Kafka.Brokers) != 2 || c.HTTP.Addr != "127.0.0.1:2" || c.Stripe.APIKey != "sk_test_123" {
		t.Fatalf("file < env < flag: %+v", c)
	}
	if got := settings["stripe"].(map[string]any)["api_key"]; got != "<redacted>" {
		t.Fatalf("api_key printed as %v", got)
	}
	if _, _, err := loadTest(t, "kafka:\n  brokerz: [a:1]\n"); err == nil || !strings.Contains(err.Error(), "brokerz") {
		t.Fatalf("a typo must be an error naming it, got %v", err)
	}
}
