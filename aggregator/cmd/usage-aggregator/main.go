// Command usage-aggregator builds exact windowed aggregates (1m, 1h, 1d,
// billing period) in ClickHouse from usage.events and publishes per-tenant
// quota state to the compacted topic usage.quota-state.
//
//	usage-aggregator [run]     aggregate until SIGTERM/SIGINT (the default)
//	usage-aggregator reconcile --from 2026-11-01 --to 2026-11-30
//	                           repair the aggregates of a range from the raw table
//	usage-aggregator config    print the effective configuration
package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"syscall"

	"github.com/segmentio/kafka-go"
	"github.com/spf13/pflag"
	"go.uber.org/zap"
	"go.yaml.in/yaml/v3"

	"github.com/usagemeter/usagemeter/aggregator/aggstore"
	"github.com/usagemeter/usagemeter/aggregator/service"
	"github.com/usagemeter/usagemeter/schemas/plans"
	"github.com/usagemeter/usagemeter/svckit"
	"github.com/usagemeter/usagemeter/svckit/chconn"
)

// Config is the service configuration: defaults, then the YAML file
// (--config), then USAGE_* environment variables (USAGE_AGGREGATOR_BROKERS,
// USAGE_CLICKHOUSE_ADDR, USAGE_PLANS_FILE ...), then flags.
type Config struct {
	Aggregator service.Config `mapstructure:"aggregator"`
	ClickHouse chconn.Config  `mapstructure:"clickhouse"`
	PlansFile  string         `mapstructure:"plans_file"`
	HTTP       struct {
		Addr string `mapstructure:"addr"`
	} `mapstructure:"http"`
	Log struct {
		Level string `mapstructure:"level"`
	} `mapstructure:"log"`
	CreateTopics    bool `mapstructure:"create_topics"`
	TopicPartitions int  `mapstructure:"topic_partitions"`
	// TopicReplicationFactor for created topics; -1 takes the cluster's
	// default.replication.factor (use 3 on a real cluster).
	TopicReplicationFactor int `mapstructure:"topic_replication_factor"`
	// KafkaSecurity: TLS and SASL (SCRAM) to the brokers, for every Kafka
	// connection of the process (svckit.KafkaSecurity.Install).
	KafkaSecurity svckit.KafkaSecurity `mapstructure:"kafka_security"`
}

func main() { os.Exit(run(os.Args[1:])) }

func run(args []string) int {
	flags := pflag.NewFlagSet("usage-aggregator", pflag.ContinueOnError)
	flags.String("config", "", "YAML config file")
	flags.String("plans", "", "meters and plans YAML (plans_file)")
	flags.String("http", "", "metrics and health address (http.addr)")
	from := flags.String("from", "", "reconcile: first day, YYYY-MM-DD (UTC)")
	to := flags.String("to", "", "reconcile: last day, YYYY-MM-DD (UTC), inclusive")
	rawGroup := flags.String("raw-group", "usage-consumer", "reconcile: the raw consumer's group, which must have caught up")
	force := flags.Bool("force", false, "reconcile: skip the safety checks")
	if err := flags.Parse(args); err != nil {
		return 2
	}
	cfg, settings, err := load(flags)
	if err != nil {
		fmt.Fprintln(os.Stderr, "usage-aggregator:", err)
		return 2
	}
	if flags.NArg() > 0 && flags.Arg(0) == "config" {
		out, _ := yaml.Marshal(settings)
		fmt.Print(string(out))
		return 0
	}
	p, err := plans.Load(cfg.PlansFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, "usage-aggregator:", err)
		return 2
	}
	log, err := svckit.NewLogger(cfg.Log.Level, "json")
	if err != nil {
		fmt.Fprintln(os.Stderr, "usage-aggregator:", err)
		return 2
	}
	defer func() { _ = log.Sync() }()
	if err := cfg.KafkaSecurity.Install(); err != nil {
		fmt.Fprintln(os.Stderr, "usage-aggregator:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if flags.NArg() > 0 && flags.Arg(0) == "reconcile" {
		if err := reconcileCmd(ctx, cfg, p, log, *from, *to, *rawGroup, *force); err != nil {
			log.Error("reconcile failed", zap.Error(err))
			return 1
		}
		return 0
	}
	if flags.NArg() > 0 && flags.Arg(0) != "run" {
		fmt.Fprintf(os.Stderr, "usage-aggregator: unknown command %q (want run, reconcile or config)\n", flags.Arg(0))
		return 2
	}
	if err := serve(ctx, cfg, p, log); err != nil {
		log.Error("usage-aggregator failed", zap.Error(err))
		return 1
	}
	return 0
}

func serve(ctx context.Context, cfg Config, p *plans.Config, log *zap.Logger) error {
	conn, err := chconn.Open(ctx, cfg.ClickHouse)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := chconn.Migrate(ctx, conn, log); err != nil {
		return err
	}
	if cfg.CreateTopics {
		a, n, rf := cfg.Aggregator, cfg.TopicPartitions, cfg.TopicReplicationFactor
		compact := []kafka.ConfigEntry{{ConfigName: "cleanup.policy", ConfigValue: "compact"}}
		topics := []kafka.TopicConfig{
			{Topic: a.Topic, NumPartitions: n, ReplicationFactor: rf, ConfigEntries: svckit.EventTopicConfig()},
			{Topic: a.DLQTopic, NumPartitions: n, ReplicationFactor: rf},
			{Topic: a.LateTopic, NumPartitions: n, ReplicationFactor: rf},
			{Topic: a.QuotaTopic, NumPartitions: n, ReplicationFactor: rf, ConfigEntries: compact},
			{Topic: a.AssignmentTopic, NumPartitions: 1, ReplicationFactor: rf, ConfigEntries: compact}}
		if a.PositionTopic != "" { // one record per events partition: one partition is plenty
			topics = append(topics, kafka.TopicConfig{Topic: a.PositionTopic, NumPartitions: 1, ReplicationFactor: rf, ConfigEntries: compact})
		}
		if err := svckit.CreateTopics(ctx, a.Brokers, topics...); err != nil {
			return err
		}
	}
	reg := svckit.Registry()
	svc, err := service.New(cfg.Aggregator, p, aggstore.New(conn), log, service.WithRegisterer(reg), service.WithDeadLetterFallback(conn),
		service.WithPinnedPartitions(cfg.TopicPartitions))
	if err != nil {
		return err
	}
	if cfg.HTTP.Addr != "" {
		srv, err := svckit.ServeHTTP(cfg.HTTP.Addr, reg, log, func(mux *http.ServeMux) { registerStatus(mux, svc) })
		if err != nil {
			return err
		}
		defer srv.Close()
	}
	return svc.Run(ctx)
}

func load(flags *pflag.FlagSet) (Config, map[string]any, error) {
	c := Config{Aggregator: service.DefaultConfig(), ClickHouse: chconn.DefaultConfig(), PlansFile: "schemas/plans/plans.example.yaml",
		CreateTopics: true, TopicPartitions: 4, TopicReplicationFactor: -1}
	c.HTTP.Addr = "127.0.0.1:9465"
	c.Log.Level = "info"
	settings, err := svckit.LoadConfig(flags, map[string]string{"plans": "plans_file", "http": "http.addr"}, &c)
	if err != nil {
		return Config{}, nil, err
	}
	if err := c.Aggregator.Validate(); err != nil {
		return Config{}, nil, err
	}
	return c, settings, nil
}
