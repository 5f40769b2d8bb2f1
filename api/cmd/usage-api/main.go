// Command usage-api answers quota checks and tracks usage over HTTP for apps
// in any language, from a quota cache fed by usage.quota-state and
// usage.plan-assignments.
//
//	usage-api [run]            serve until SIGTERM/SIGINT (the default)
//	usage-api config           print the effective configuration
//	usage-api hash-key KEY     print the stored form of an API key (keys_file)
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"go.uber.org/zap"
	"go.yaml.in/yaml/v3"

	"github.com/usagemeter/usagemeter/api/server"
	"github.com/usagemeter/usagemeter/producer"
	"github.com/usagemeter/usagemeter/quota"
	"github.com/usagemeter/usagemeter/schemas/plans"
	"github.com/usagemeter/usagemeter/svckit"
)

// Config: defaults, then the YAML file (--config), then USAGE_* environment
// variables (USAGE_QUOTA_BROKERS, USAGE_KEYS_FILE, USAGE_HTTP_ADDR ...),
// then flags.
type Config struct {
	Quota       quota.Config  `mapstructure:"quota"`
	API         server.Config `mapstructure:"api"`
	PlansFile   string        `mapstructure:"plans_file"`
	KeysFile    string        `mapstructure:"keys_file"`
	EventsTopic string        `mapstructure:"events_topic"`
	HTTP        struct {
		Addr string `mapstructure:"addr"`
	} `mapstructure:"http"`
	Log struct {
		Level string `mapstructure:"level"`
	} `mapstructure:"log"`
	ShutdownTimeout time.Duration `mapstructure:"shutdown_timeout"`
}

func main() { os.Exit(run(os.Args[1:])) }

func run(args []string) int {
	flags := pflag.NewFlagSet("usage-api", pflag.ContinueOnError)
	flags.String("config", "", "YAML config file")
	flags.String("plans", "", "meters and plans YAML (plans_file)")
	flags.String("keys", "", "API keys YAML with hashed keys (keys_file)")
	flags.String("http", "", "listen address for the API, /metrics and /healthz (http.addr)")
	if err := flags.Parse(args); err != nil {
		return 2
	}
	if flags.NArg() > 0 && flags.Arg(0) == "hash-key" {
		if flags.NArg() != 2 {
			fmt.Fprintln(os.Stderr, "usage: usage-api hash-key KEY")
			return 2
		}
		fmt.Println(server.HashKey(flags.Arg(1)))
		return 0
	}
	cfg, settings, err := load(flags)
	if err != nil {
		fmt.Fprintln(os.Stderr, "usage-api:", err)
		return 2
	}
	if flags.NArg() > 0 && flags.Arg(0) == "config" {
		out, _ := yaml.Marshal(settings)
		fmt.Print(string(out))
		return 0
	}
	if flags.NArg() > 0 && flags.Arg(0) != "run" {
		fmt.Fprintf(os.Stderr, "usage-api: unknown command %q (want run, config or hash-key)\n", flags.Arg(0))
		return 2
	}
	p, err := plans.Load(cfg.PlansFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, "usage-api:", err)
		return 2
	}
	keys, err := server.LoadKeys(cfg.KeysFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, "usage-api: keys_file:", err)
		return 2
	}
	log, err := svckit.NewLogger(cfg.Log.Level, "json")
	if err != nil {
		fmt.Fprintln(os.Stderr, "usage-api:", err)
		return 2
	}
	defer func() { _ = log.Sync() }()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := serve(ctx, cfg, p, keys, log); err != nil {
		log.Error("usage-api failed", zap.Error(err))
		return 1
	}
	return 0
}

func serve(ctx context.Context, cfg Config, p *plans.Config, keys *server.Keys, log *zap.Logger) error {
	cache, err := quota.New(cfg.Quota, p, log.Named("quota"))
	if err != nil {
		return err
	}
	pub, err := producer.New(cfg.Quota.Brokers, producer.WithTopic(cfg.EventsTopic))
	if err != nil {
		return err
	}
	cacheCtx, stopCache := context.WithCancel(context.WithoutCancel(ctx))
	cacheDone := make(chan struct{})
	go func() { defer close(cacheDone); _ = cache.Run(cacheCtx) }()

	reg := svckit.Registry()
	api := server.New(cfg.API, cache, p, keys, quota.NewProducerTracker(pub), log, reg)
	srv, err := svckit.ServeHTTP(cfg.HTTP.Addr, reg, log, api.Register)
	if err != nil {
		stopCache()
		return err
	}
	select {
	case <-cache.Ready():
		log.Info("usage-api ready")
	case <-ctx.Done():
	}
	<-ctx.Done()
	log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	var errs []error
	if err := srv.Shutdown(sctx); err != nil { // finishes the requests in flight, publishes included
		errs = append(errs, fmt.Errorf("http shutdown: %w", err))
	}
	if err := pub.Close(); err != nil {
		errs = append(errs, err)
	}
	stopCache()
	<-cacheDone
	return errors.Join(errs...)
}

func load(flags *pflag.FlagSet) (Config, map[string]any, error) {
	c := Config{Quota: quota.DefaultConfig(), API: server.DefaultConfig(), PlansFile: "schemas/plans/plans.example.yaml",
		KeysFile: "api/keys.example.yaml", EventsTopic: producer.DefaultTopic, ShutdownTimeout: 15 * time.Second}
	c.HTTP.Addr = "127.0.0.1:9470"
	c.Log.Level = "info"
	settings, err := svckit.LoadConfig(flags, map[string]string{"plans": "plans_file", "keys": "keys_file", "http": "http.addr"}, &c)
	if err != nil {
		return Config{}, nil, err
	}
	if err := c.Quota.Validate(); err != nil {
		return Config{}, nil, fmt.Errorf("quota: %w", err)
	}
	if c.API.MaxBodyBytes <= 0 || c.API.MaxWait < 0 {
		return Config{}, nil, errors.New("api.max_body_bytes must be > 0 and api.max_wait >= 0")
	}
	return c, settings, nil
}
