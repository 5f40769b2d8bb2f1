package main

import (
	"errors"
	"fmt"

	"github.com/spf13/pflag"

	"github.com/usagemeter/usagemeter/ops/retention"
	"github.com/usagemeter/usagemeter/svckit"
	"github.com/usagemeter/usagemeter/svckit/chconn"
)

// Config is usage-ops' configuration. Sources, lowest to highest
// precedence: defaults, the YAML file (--config), USAGE_* environment
// variables (USAGE_KAFKA_BROKERS, USAGE_CLICKHOUSE_DATABASE, ...), flags.
type Config struct {
	Kafka struct {
		Brokers  []string `mapstructure:"brokers"`
		Topic    string   `mapstructure:"topic"`     // where replays go and backfills read
		DLQTopic string   `mapstructure:"dlq_topic"` // the DLQ the consumer writes
	} `mapstructure:"kafka"`
	// KafkaSecurity: TLS and SASL (SCRAM) to the brokers, for every Kafka
	// connection of the process (svckit.KafkaSecurity.Install).
	KafkaSecurity svckit.KafkaSecurity `mapstructure:"kafka_security"`
	ClickHouse    chconn.Config        `mapstructure:"clickhouse"`
	Retention     retention.Config     `mapstructure:"retention"`
	HTTP          struct {
		// Addr is where `usage-ops exporter` serves /metrics and /healthz.
		Addr string `mapstructure:"addr"`
	} `mapstructure:"http"`
	Log struct {
		Level  string `mapstructure:"level"`
		Format string `mapstructure:"format"`
	} `mapstructure:"log"`
}

func defaultConfig() Config {
	c := Config{ClickHouse: chconn.DefaultConfig(), Retention: retention.DefaultConfig()}
	c.Kafka.Brokers = []string{"127.0.0.1:19092"}
	c.Kafka.Topic = "usage.events"
	c.Kafka.DLQTopic = "usage.events.dlq"
	c.HTTP.Addr = "127.0.0.1:9472"
	c.Log.Level = "warn" // a CLI: its output is the answer, logs are for trouble
	c.Log.Format = "console"
	return c
}

func loadConfig(flags *pflag.FlagSet) (Config, map[string]any, error) {
	c := defaultConfig()
	settings, err := svckit.LoadConfig(flags, map[string]string{"brokers": "kafka.brokers", "clickhouse": "clickhouse.addr",
		"log-level": "log.level", "every": "retention.every", "http": "http.addr"}, &c)
	if err != nil {
		return Config{}, nil, err
	}
	return c, settings, c.validate()
}

func (c Config) validate() error {
	var errs []error
	if len(c.Kafka.Brokers) == 0 {
		errs = append(errs, errors.New("kafka.brokers: at least one host:port is required"))
	}
	if c.Kafka.Topic == "" {
		errs = append(errs, errors.New("kafka.topic: must not be empty"))
	}
	if c.Kafka.DLQTopic == "" {
		errs = append(errs, errors.New("kafka.dlq_topic: must not be empty"))
	}
	if len(c.ClickHouse.Addr) == 0 {
		errs = append(errs, errors.New("clickhouse.addr: at least one host:port is required"))
	}
	if err := c.Retention.Validate(); err != nil {
		errs = append(errs, err)
	}
	switch c.Log.Format {
	case "json", "console":
	default:
		errs = append(errs, fmt.Errorf("log.format: %q is not json or console", c.Log.Format))
	}
	return errors.Join(errs...)
}
