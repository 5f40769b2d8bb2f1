// Command usage-api answers quota checks and tracks usage over HTTP for apps
// in any language, from a quota cache fed by usage.quota-state and
// usage.plan-assignments.
//
//	usage-api [run]            serve until SIGTERM/SIGINT (the default)
//	usage-api --demo [run]     the same with the demo keys (api/keys.example.yaml)
//	usage-api config           print the effective configuration
//	usage-api hash-key KEY     print the stored form of an API key (keys_file)
package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/segmentio/kafka-go"
	"github.com/spf13/pflag"
	"go.uber.org/zap"
	"go.yaml.in/yaml/v3"

	"github.com/usagemeter/usagemeter/api/server"
	"github.com/usagemeter/usagemeter/api/usageread"
	"github.com/usagemeter/usagemeter/producer"
	"github.com/usagemeter/usagemeter/quota"
	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/schemas/plans"
	"github.com/usagemeter/usagemeter/svckit"
	"github.com/usagemeter/usagemeter/svckit/chconn"
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
	HTTP        HTTPConfig    `mapstructure:"http"`
	Log         struct {
		Level string `mapstructure:"level"`
	} `mapstructure:"log"`
	ShutdownTimeout time.Duration `mapstructure:"shutdown_timeout"`
	// ClickHouse serves GET /v1/usage, the usage and admin pages (reads of
	// the aggregates, billing_audit; inserts into plan_changes only). Empty
	// clickhouse.addr (the default) leaves them off: checks and tracks
	// never need ClickHouse.
	ClickHouse chconn.Config `mapstructure:"clickhouse"`
	// KafkaSecurity: TLS and SASL (SCRAM) to the brokers, for every Kafka
	// connection of the process (svckit.KafkaSecurity.Install).
	KafkaSecurity svckit.KafkaSecurity `mapstructure:"kafka_security"`
	// Admin names what the admin page reads from Kafka.
	Admin AdminConfig `mapstructure:"admin"`
}

// AdminConfig: the groups whose lag the admin page shows on events_topic,
// and the DLQ whose newest DLQScan records per partition it counts by tag.
type AdminConfig struct {
	ConsumerGroup   string `mapstructure:"consumer_group"`
	AggregatorGroup string `mapstructure:"aggregator_group"`
	DLQTopic        string `mapstructure:"dlq_topic"`
	DLQScan         int64  `mapstructure:"dlq_scan"`
	// AlertTopic is usage-alerts' topic: the tenant pages show their
	// tenant's newest AlertsPerTenant alerts, the admin page the newest
	// AlertsLatest. Empty: no alerts on the pages.
	AlertTopic      string `mapstructure:"alert_topic"`
	AlertsPerTenant int    `mapstructure:"alerts_per_tenant"`
	AlertsLatest    int    `mapstructure:"alerts_latest"`
}

// HTTPConfig is the listener and its timeouts: every connection is bounded
// in time, so slow or idle clients cannot hold the server's resources.
type HTTPConfig struct {
	Addr              string        `mapstructure:"addr"`
	ReadHeaderTimeout time.Duration `mapstructure:"read_header_timeout"` // request line and headers
	ReadTimeout       time.Duration `mapstructure:"read_timeout"`        // the whole request, body included
	// WriteTimeout runs from the end of the headers to the end of the
	// answer, so it covers wait_ms and a /v1/track publish.
	WriteTimeout time.Duration `mapstructure:"write_timeout"`
	IdleTimeout  time.Duration `mapstructure:"idle_timeout"` // a kept-alive connection between requests
}

// demoKeysFile holds the demo's public keys ("demo-admin-key",
// "demo-key-<tenant>"): usage-api reads it only with --demo.
const demoKeysFile = "api/keys.example.yaml"

func main() { os.Exit(run(os.Args[1:])) }

func run(args []string) int {
	flags := pflag.NewFlagSet("usage-api", pflag.ContinueOnError)
	flags.String("config", "", "YAML config file")
	flags.String("plans", "", "meters and plans YAML (plans_file)")
	flags.String("keys", "", "API keys YAML with hashed keys (keys_file)")
	flags.String("http", "", "listen address for the API, /metrics, /livez and /readyz (http.addr)")
	demo := flags.Bool("demo", false, "demo mode: keys_file defaults to "+demoKeysFile+", whose keys are public")
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
	cfg, settings, err := load(flags, *demo)
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
	if cfg.KeysFile == "" {
		fmt.Fprintln(os.Stderr, "usage-api: keys_file is required (hashed API keys, see `usage-api hash-key`; --keys or USAGE_KEYS_FILE), or run with --demo for the demo keys")
		return 2
	}
	keys, err := server.LoadKeys(cfg.KeysFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, "usage-api: keys_file:", err)
		return 2
	}
	if !*demo {
		// Whoever read the README knows the demo keys: outside a demo they
		// would let anyone act for any tenant.
		if err := keys.RefusePublic(); err != nil {
			fmt.Fprintf(os.Stderr, "usage-api: keys_file %s: %v (run with --demo for a demo)\n", cfg.KeysFile, err)
			return 2
		}
	}
	log, err := svckit.NewLogger(cfg.Log.Level, "json")
	if err != nil {
		fmt.Fprintln(os.Stderr, "usage-api:", err)
		return 2
	}
	defer func() { _ = log.Sync() }()
	if err := cfg.KafkaSecurity.Install(); err != nil {
		fmt.Fprintln(os.Stderr, "usage-api:", err)
		return 2
	}
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
	if len(cfg.ClickHouse.Addr) > 0 {
		// Opened without migrating: usage-api only reads what the
		// consumer and the aggregator create.
		conn, err := chconn.Open(ctx, cfg.ClickHouse)
		if err != nil {
			stopCache()
			return fmt.Errorf("clickhouse: %w", err)
		}
		defer func() { _ = conn.Close() }()
		kc := &kafka.Client{Addr: kafka.TCP(cfg.Quota.Brokers...), Timeout: server.PublishTimeout}
		api.WithUsage(usageread.NewReader(conn, p)).WithAdmin(&server.Assigner{Client: kc, Topic: cfg.Quota.AssignmentTopic}).
			WithOps(&server.Ops{Client: kc, EventsTopic: cfg.EventsTopic, DLQTopic: cfg.Admin.DLQTopic, DLQScan: cfg.Admin.DLQScan,
				Groups: []string{cfg.Admin.ConsumerGroup, cfg.Admin.AggregatorGroup}})
	}
	if cfg.Admin.AlertTopic != "" {
		feed, err := server.NewAlertFeed(cfg.Quota.Brokers, cfg.Admin.AlertTopic, cfg.Admin.AlertsPerTenant, cfg.Admin.AlertsLatest, log, reg)
		if err != nil {
			stopCache()
			return fmt.Errorf("admin: %w", err)
		}
		go func() { _ = feed.Run(cacheCtx) }() // ends with the cache
		api.WithAlerts(feed)
	}
	srv, err := listen(cfg.HTTP, reg, api, log)
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

// listen serves the API, /metrics and the probes on cfg.Addr, every
// connection bounded by cfg's timeouts. svckit.ServeHTTP is not used: its
// /healthz always says ok and it sets only a header timeout.
func listen(cfg HTTPConfig, reg *prometheus.Registry, api *server.Server, log *zap.Logger) (*http.Server, error) {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	api.Register(mux)
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("http.addr %s: %w", cfg.Addr, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: cfg.ReadHeaderTimeout, ReadTimeout: cfg.ReadTimeout,
		WriteTimeout: cfg.WriteTimeout, IdleTimeout: cfg.IdleTimeout}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("http server", zap.Error(err))
		}
	}()
	log.Info("serving HTTP", zap.String("addr", "http://"+ln.Addr().String()))
	return srv, nil
}

func load(flags *pflag.FlagSet, demo bool) (Config, map[string]any, error) {
	c := Config{Quota: quota.DefaultConfig(), API: server.DefaultConfig(), PlansFile: "schemas/plans/plans.example.yaml",
		EventsTopic: producer.DefaultTopic, ShutdownTimeout: 15 * time.Second}
	if demo {
		c.KeysFile = demoKeysFile
	}
	c.HTTP = HTTPConfig{Addr: "127.0.0.1:9470", ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
		WriteTimeout: 30 * time.Second, IdleTimeout: 2 * time.Minute}
	c.Log.Level = "info"
	c.ClickHouse = chconn.DefaultConfig()
	c.ClickHouse.Addr = nil // off unless configured
	c.Admin = AdminConfig{ConsumerGroup: "usage-consumer", AggregatorGroup: "usage-aggregator", DLQTopic: "usage.events.dlq", DLQScan: 10000,
		AlertTopic: schemas.AlertTopic, AlertsPerTenant: 20, AlertsLatest: 50}
	settings, err := svckit.LoadConfig(flags, map[string]string{"plans": "plans_file", "keys": "keys_file", "http": "http.addr"}, &c)
	if err != nil {
		return Config{}, nil, err
	}
	if err := c.Quota.Validate(); err != nil {
		return Config{}, nil, fmt.Errorf("quota: %w", err)
	}
	if c.Admin.DLQScan <= 0 {
		return Config{}, nil, fmt.Errorf("admin.dlq_scan must be > 0 (got %d): the newest records per DLQ partition the admin page counts", c.Admin.DLQScan)
	}
	if c.Admin.AlertsPerTenant < 0 || c.Admin.AlertsLatest < 0 {
		return Config{}, nil, fmt.Errorf("admin.alerts_per_tenant and admin.alerts_latest must be >= 0 (got %d, %d; 0: the defaults 20 and 50)", c.Admin.AlertsPerTenant, c.Admin.AlertsLatest)
	}
	if c.API.MaxBodyBytes <= 0 || c.API.MaxWait < 0 {
		return Config{}, nil, errors.New("api.max_body_bytes must be > 0 and api.max_wait >= 0")
	}
	h := c.HTTP
	for key, d := range map[string]time.Duration{"http.read_header_timeout": h.ReadHeaderTimeout, "http.read_timeout": h.ReadTimeout,
		"http.write_timeout": h.WriteTimeout, "http.idle_timeout": h.IdleTimeout} {
		if d <= 0 {
			return Config{}, nil, fmt.Errorf("%s must be > 0 (got %s): an unbounded connection can be held open by any client", key, d)
		}
	}
	if need := c.API.MaxWait + server.PublishTimeout; h.WriteTimeout <= need {
		return Config{}, nil, fmt.Errorf("http.write_timeout %s must be more than api.max_wait + the publish timeout (%s), or a waiting /v1/track is cut off", h.WriteTimeout, need)
	}
	return c, settings, nil
}
