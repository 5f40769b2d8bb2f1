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
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"reflect"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/segmentio/kafka-go"
	"github.com/spf13/pflag"
	"github.com/spf13/viper"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.yaml.in/yaml/v3"

	"github.com/usagemeter/usagemeter/aggregator/aggstore"
	"github.com/usagemeter/usagemeter/aggregator/plans"
	"github.com/usagemeter/usagemeter/aggregator/service"
	"github.com/usagemeter/usagemeter/consumer/chstore"
)

// Config is the service configuration: defaults, then the YAML file
// (--config), then USAGE_* environment variables (USAGE_AGGREGATOR_BROKERS,
// USAGE_CLICKHOUSE_ADDR, USAGE_PLANS_FILE ...), then flags.
type Config struct {
	Aggregator service.Config `mapstructure:"aggregator"`
	ClickHouse chstore.Config `mapstructure:"clickhouse"`
	PlansFile  string         `mapstructure:"plans_file"`
	HTTP       struct {
		Addr string `mapstructure:"addr"`
	} `mapstructure:"http"`
	Log struct {
		Level string `mapstructure:"level"`
	} `mapstructure:"log"`
	CreateTopics    bool `mapstructure:"create_topics"`
	TopicPartitions int  `mapstructure:"topic_partitions"`
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
	zc := zap.NewProductionConfig()
	zc.DisableStacktrace = true
	zc.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	if err := zc.Level.UnmarshalText([]byte(cfg.Log.Level)); err != nil {
		fmt.Fprintln(os.Stderr, "usage-aggregator: log.level:", err)
		return 2
	}
	log, err := zc.Build()
	if err != nil {
		fmt.Fprintln(os.Stderr, "usage-aggregator:", err)
		return 2
	}
	defer func() { _ = log.Sync() }()
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
	store, err := chstore.Open(ctx, cfg.ClickHouse, log)
	if err != nil {
		return err
	}
	defer store.Close()
	if err := store.Migrate(ctx); err != nil {
		return err
	}
	if cfg.CreateTopics {
		if err := createTopics(ctx, cfg); err != nil {
			return err
		}
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	svc, err := service.New(cfg.Aggregator, p, aggstore.New(store.Conn()), log, service.WithRegisterer(reg))
	if err != nil {
		return err
	}
	if cfg.HTTP.Addr != "" {
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
		mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
		ln, err := net.Listen("tcp", cfg.HTTP.Addr)
		if err != nil {
			return fmt.Errorf("http.addr %s: %w", cfg.HTTP.Addr, err)
		}
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		defer srv.Close()
	}
	return svc.Run(ctx)
}

func createTopics(ctx context.Context, cfg Config) error {
	a := cfg.Aggregator
	client := &kafka.Client{Addr: kafka.TCP(a.Brokers...), Timeout: 30 * time.Second}
	compact := []kafka.ConfigEntry{{ConfigName: "cleanup.policy", ConfigValue: "compact"}}
	topics := []kafka.TopicConfig{
		{Topic: a.Topic, NumPartitions: cfg.TopicPartitions, ReplicationFactor: 1},
		{Topic: a.DLQTopic, NumPartitions: cfg.TopicPartitions, ReplicationFactor: 1},
		{Topic: a.LateTopic, NumPartitions: cfg.TopicPartitions, ReplicationFactor: 1},
		{Topic: a.QuotaTopic, NumPartitions: cfg.TopicPartitions, ReplicationFactor: 1, ConfigEntries: compact},
		{Topic: a.AssignmentTopic, NumPartitions: 1, ReplicationFactor: 1, ConfigEntries: compact},
	}
	res, err := client.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: topics})
	if err != nil {
		return fmt.Errorf("create topics: %w", err)
	}
	for t, terr := range res.Errors {
		if terr != nil && !errors.Is(terr, kafka.TopicAlreadyExists) {
			return fmt.Errorf("create topic %s: %w", t, terr)
		}
	}
	return nil
}

func load(flags *pflag.FlagSet) (Config, map[string]any, error) {
	def := Config{Aggregator: service.DefaultConfig(), ClickHouse: chstore.DefaultConfig(), PlansFile: "aggregator/plans.example.yaml",
		CreateTopics: true, TopicPartitions: 4}
	def.HTTP.Addr = "127.0.0.1:9465"
	def.Log.Level = "info"
	v := viper.New()
	setDefaults(v, "", def)
	v.SetEnvPrefix("USAGE")
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_"))
	v.AutomaticEnv()
	if f := flags.Lookup("config").Value.String(); f != "" {
		v.SetConfigFile(f)
		if err := v.ReadInConfig(); err != nil {
			return Config{}, nil, fmt.Errorf("read config file %s: %w", f, err)
		}
	}
	for flag, key := range map[string]string{"plans": "plans_file", "http": "http.addr"} {
		if err := v.BindPFlag(key, flags.Lookup(flag)); err != nil {
			return Config{}, nil, err
		}
	}
	var c Config
	if err := v.UnmarshalExact(&c); err != nil {
		return Config{}, nil, fmt.Errorf("config: %w", err)
	}
	if err := c.Aggregator.Validate(); err != nil {
		return Config{}, nil, err
	}
	return c, v.AllSettings(), nil
}

func setDefaults(v *viper.Viper, prefix string, cfg any) {
	rv := reflect.ValueOf(cfg)
	for i := range rv.NumField() {
		f := rv.Type().Field(i)
		name := f.Tag.Get("mapstructure")
		if name == "" {
			continue
		}
		if f.Type.Kind() == reflect.Struct {
			setDefaults(v, prefix+name+".", rv.Field(i).Interface())
			continue
		}
		v.SetDefault(prefix+name, rv.Field(i).Interface())
	}
}
