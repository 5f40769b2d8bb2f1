// Command usage-alerts follows usage.quota-state, publishes each threshold
// crossing once per tenant, meter, period and line to usage.alerts, and
// POSTs each alert, signed, to a webhook.
//
//	usage-alerts [run]   emit, and send when webhook.url is set (the default)
//	usage-alerts emit    emit only
//	usage-alerts deliver send only (webhook.url required)
//	usage-alerts config  print the effective configuration (secrets redacted)
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/segmentio/kafka-go"
	"github.com/spf13/pflag"
	"go.uber.org/zap"
	"go.yaml.in/yaml/v3"

	"github.com/usagemeter/usagemeter/alerts/deliveries"
	"github.com/usagemeter/usagemeter/alerts/emitter"
	"github.com/usagemeter/usagemeter/alerts/webhook"
	"github.com/usagemeter/usagemeter/schemas/plans"
	"github.com/usagemeter/usagemeter/svckit"
	"github.com/usagemeter/usagemeter/svckit/chconn"
)

// Config is the service configuration: defaults, then the YAML file
// (--config), then USAGE_* environment variables (USAGE_EMITTER_BROKERS,
// USAGE_WEBHOOK_URL, USAGE_WEBHOOK_SECRET, USAGE_PLANS_FILE ...), then flags.
type Config struct {
	Emitter    emitter.Config `mapstructure:"emitter"`
	Webhook    webhook.Config `mapstructure:"webhook"`
	ClickHouse chconn.Config  `mapstructure:"clickhouse"`
	// KafkaSecurity: TLS and SASL (SCRAM) to the brokers, for every Kafka
	// connection of the process (svckit.KafkaSecurity.Install).
	KafkaSecurity svckit.KafkaSecurity `mapstructure:"kafka_security"`
	PlansFile     string               `mapstructure:"plans_file"`
	HTTP          struct {
		Addr string `mapstructure:"addr"`
	} `mapstructure:"http"`
	Log struct {
		Level string `mapstructure:"level"`
	} `mapstructure:"log"`
	// CreateTopics creates usage.alerts (compacted) when missing.
	CreateTopics    bool `mapstructure:"create_topics"`
	AlertPartitions int  `mapstructure:"alert_partitions"`
	// TopicReplicationFactor for created topics; -1 takes the cluster's
	// default.replication.factor.
	TopicReplicationFactor int `mapstructure:"topic_replication_factor"`
}

func main() { os.Exit(run(os.Args[1:])) }

func run(args []string) int {
	flags := pflag.NewFlagSet("usage-alerts", pflag.ContinueOnError)
	flags.String("config", "", "YAML config file")
	flags.String("plans", "", "meters and plans YAML (plans_file)")
	flags.String("http", "", "metrics and health address (http.addr)")
	flags.String("webhook-url", "", "POST alerts here (webhook.url)")
	if err := flags.Parse(args); err != nil {
		return 2
	}
	cfg, settings, err := load(flags)
	if err != nil {
		fmt.Fprintln(os.Stderr, "usage-alerts:", err)
		return 2
	}
	cmd := "run"
	if flags.NArg() > 0 {
		cmd = flags.Arg(0)
	}
	switch cmd {
	case "config":
		out, _ := yaml.Marshal(settings)
		fmt.Print(string(out))
		return 0
	case "run", "emit", "deliver":
	default:
		fmt.Fprintf(os.Stderr, "usage-alerts: unknown command %q (want run, emit, deliver or config)\n", cmd)
		return 2
	}
	if cmd == "deliver" && cfg.Webhook.URL == "" {
		fmt.Fprintln(os.Stderr, "usage-alerts: deliver: webhook.url is required (USAGE_WEBHOOK_URL or --webhook-url)")
		return 2
	}
	log, err := svckit.NewLogger(cfg.Log.Level, "json")
	if err != nil {
		fmt.Fprintln(os.Stderr, "usage-alerts:", err)
		return 2
	}
	defer func() { _ = log.Sync() }()
	if err := cfg.KafkaSecurity.Install(); err != nil {
		fmt.Fprintln(os.Stderr, "usage-alerts:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := serve(ctx, cmd, cfg, log); err != nil {
		log.Error("usage-alerts failed", zap.Error(err))
		return 1
	}
	log.Info("usage-alerts stopped", zap.String("command", cmd))
	return 0
}

func serve(ctx context.Context, cmd string, cfg Config, log *zap.Logger) error {
	reg := svckit.Registry()
	var tasks []func(context.Context) error
	// Both halves need the compacted alert topic; a reader on a missing
	// topic could let the broker auto-create it uncompacted.
	if cfg.CreateTopics {
		brokers, topic := cfg.Emitter.Brokers, cfg.Emitter.AlertTopic
		if cmd == "deliver" {
			brokers, topic = cfg.Webhook.Brokers, cfg.Webhook.AlertTopic
		}
		if err := svckit.CreateTopics(ctx, brokers, kafka.TopicConfig{Topic: topic,
			NumPartitions: cfg.AlertPartitions, ReplicationFactor: cfg.TopicReplicationFactor,
			ConfigEntries: []kafka.ConfigEntry{{ConfigName: "cleanup.policy", ConfigValue: "compact"}}}); err != nil {
			return err
		}
	}
	if cmd != "deliver" {
		p, err := plans.Load(cfg.PlansFile)
		if err != nil {
			return err
		}
		em, err := emitter.New(cfg.Emitter, p, log.Named("emitter"), reg)
		if err != nil {
			return err
		}
		tasks = append(tasks, em.Run)
	}
	if cmd != "emit" && cfg.Webhook.URL != "" {
		conn, err := chconn.Open(ctx, cfg.ClickHouse)
		if err != nil {
			return err
		}
		defer conn.Close()
		if err := chconn.Migrate(ctx, conn, log); err != nil {
			return err
		}
		snd, err := webhook.NewSender(cfg.Webhook, deliveries.New(conn), log.Named("webhook"), reg)
		if err != nil {
			return err
		}
		tasks = append(tasks, snd.Run)
	} else if cmd == "run" {
		log.Info("webhook.url is not set: alerts are published to Kafka only")
	}
	if cfg.HTTP.Addr != "" {
		srv, err := svckit.ServeHTTP(cfg.HTTP.Addr, reg, log, nil)
		if err != nil {
			return err
		}
		defer srv.Close()
	}
	// Both halves stop when either fails.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, len(tasks))
	for i, task := range tasks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = task(ctx)
			cancel()
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func load(flags *pflag.FlagSet) (Config, map[string]any, error) {
	c := Config{Emitter: emitter.DefaultConfig(), Webhook: webhook.DefaultConfig(), ClickHouse: chconn.DefaultConfig(),
		PlansFile: "schemas/plans/plans.example.yaml", CreateTopics: true, AlertPartitions: 1, TopicReplicationFactor: -1}
	c.HTTP.Addr = "127.0.0.1:9473"
	c.Log.Level = "info"
	settings, err := svckit.LoadConfig(flags, map[string]string{"plans": "plans_file", "http": "http.addr", "webhook-url": "webhook.url"}, &c)
	if err != nil {
		return Config{}, nil, err
	}
	var errs []error
	if c.AlertPartitions < 1 {
		errs = append(errs, fmt.Errorf("alert_partitions: %d is below 1", c.AlertPartitions))
	}
	if c.Webhook.URL != "" && c.Webhook.AlertTopic != c.Emitter.AlertTopic {
		errs = append(errs, fmt.Errorf("webhook.alert_topic: %q differs from emitter.alert_topic %q", c.Webhook.AlertTopic, c.Emitter.AlertTopic))
	}
	errs = append(errs, c.Emitter.Validate(), c.Webhook.Validate())
	if err := errors.Join(errs...); err != nil {
		return Config{}, nil, err
	}
	return c, settings, nil
}
