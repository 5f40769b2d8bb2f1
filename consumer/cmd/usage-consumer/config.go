package main

import (
	"errors"
	"fmt"

	"github.com/spf13/pflag"

	"github.com/usagemeter/usagemeter/consumer/ingest"
	"github.com/usagemeter/usagemeter/svckit"
	"github.com/usagemeter/usagemeter/svckit/chconn"
)

// Config is the whole service configuration. Sources, lowest to highest
// precedence: defaults, the YAML file (--config), USAGE_* environment
// variables (USAGE_KAFKA_BROKERS=a:9092,b:9092, USAGE_CLICKHOUSE_DATABASE=...),
// flags.
type Config struct {
	Kafka      ingest.Config `mapstructure:"kafka"`
	ClickHouse chconn.Config `mapstructure:"clickhouse"`
	HTTP       struct {
		// Addr serves /metrics, /healthz and the dashboard. Empty disables it.
		Addr string `mapstructure:"addr"`
	} `mapstructure:"http"`
	Log struct {
		Level  string `mapstructure:"level"`  // debug, info, warn, error
		Format string `mapstructure:"format"` // json or console
	} `mapstructure:"log"`
	// MigrateOnStart applies pending ClickHouse migrations before consuming.
	MigrateOnStart bool `mapstructure:"migrate_on_start"`
	// CreateTopics creates the events and DLQ topics when they are missing.
	CreateTopics    bool `mapstructure:"create_topics"`
	TopicPartitions int  `mapstructure:"topic_partitions"`
	// TopicReplicationFactor for created topics; -1 takes the cluster's
	// default.replication.factor (use 3 on a real cluster).
	TopicReplicationFactor int `mapstructure:"topic_replication_factor"`
	// KafkaSecurity: TLS and SASL (SCRAM) to the brokers, for every Kafka
	// connection of the process (svckit.KafkaSecurity.Install).
	KafkaSecurity svckit.KafkaSecurity `mapstructure:"kafka_security"`
}

func defaultConfig() Config {
	c := Config{Kafka: ingest.DefaultConfig(), ClickHouse: chconn.DefaultConfig(), MigrateOnStart: true, CreateTopics: true, TopicPartitions: 4,
		TopicReplicationFactor: -1}
	c.HTTP.Addr = "127.0.0.1:9464"
	c.Log.Level = "info"
	c.Log.Format = "json"
	return c
}

// loadConfig reads the configuration (svckit.LoadConfig: defaults, file,
// USAGE_* environment, flags; unknown keys are errors).
func loadConfig(flags *pflag.FlagSet) (Config, map[string]any, error) {
	c := defaultConfig()
	settings, err := svckit.LoadConfig(flags, map[string]string{"brokers": "kafka.brokers", "clickhouse": "clickhouse.addr",
		"http": "http.addr", "log-level": "log.level"}, &c)
	if err != nil {
		return Config{}, nil, err
	}
	return c, settings, c.validate()
}

func (c Config) validate() error {
	var errs []error
	if err := c.Kafka.Validate(); err != nil {
		errs = append(errs, err)
	}
	if len(c.ClickHouse.Addr) == 0 {
		errs = append(errs, errors.New("clickhouse.addr: at least one host:port is required"))
	}
	if c.ClickHouse.Database == "" {
		errs = append(errs, errors.New("clickhouse.database: must not be empty"))
	}
	switch c.Log.Format {
	case "json", "console":
	default:
		errs = append(errs, fmt.Errorf("log.format: %q is not json or console", c.Log.Format))
	}
	if c.CreateTopics && c.TopicPartitions < 1 {
		errs = append(errs, fmt.Errorf("topic_partitions: must be >= 1, got %d", c.TopicPartitions))
	}
	return errors.Join(errs...)
}
