// Command usage-consumer is the raw-event sink: Kafka usage.events ->
// validate -> ClickHouse usage_events, invalid events to usage.events.dlq.
//
//	usage-consumer [run]   consume until SIGTERM/SIGINT (the default)
//	usage-consumer migrate apply ClickHouse migrations and exit
//	usage-consumer config  print the effective configuration
package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/spf13/pflag"
	"go.uber.org/zap"
	"go.yaml.in/yaml/v3"

	"github.com/usagemeter/usagemeter/consumer/chstore"
	"github.com/usagemeter/usagemeter/consumer/ingest"
	"github.com/usagemeter/usagemeter/svckit"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	flags := newFlags()
	if err := flags.Parse(args); err != nil {
		return 2
	}
	cmd := "run"
	if flags.NArg() > 0 {
		cmd = flags.Arg(0)
	}
	cfg, settings, err := loadConfig(flags)
	if err != nil {
		fmt.Fprintln(os.Stderr, "usage-consumer:", err)
		return 2
	}
	log, err := svckit.NewLogger(cfg.Log.Level, cfg.Log.Format)
	if err != nil {
		fmt.Fprintln(os.Stderr, "usage-consumer:", err)
		return 2
	}
	defer func() { _ = log.Sync() }()
	if err := cfg.KafkaSecurity.Install(); err != nil {
		fmt.Fprintln(os.Stderr, "usage-consumer:", err)
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	switch cmd {
	case "run":
		err = serve(ctx, cfg, log)
	case "migrate":
		err = migrate(ctx, cfg, log)
	case "config":
		var out []byte
		out, err = yaml.Marshal(settings)
		fmt.Print(string(out))
	default:
		fmt.Fprintf(os.Stderr, "usage-consumer: unknown command %q (want run, migrate or config)\n", cmd)
		return 2
	}
	if err != nil {
		log.Error("usage-consumer failed", zap.String("command", cmd), zap.Error(err))
		return 1
	}
	return 0
}

func newFlags() *pflag.FlagSet {
	flags := pflag.NewFlagSet("usage-consumer", pflag.ContinueOnError)
	flags.String("config", "", "YAML config file (see consumer/config.example.yaml)")
	flags.StringSlice("brokers", nil, "Kafka brokers host:port (kafka.brokers)")
	flags.StringSlice("clickhouse", nil, "ClickHouse native addresses host:port (clickhouse.addr)")
	flags.String("http", "", "metrics, health and dashboard address (http.addr)")
	flags.String("log-level", "", "debug, info, warn or error (log.level)")
	return flags
}

func migrate(ctx context.Context, cfg Config, log *zap.Logger) error {
	store, err := chstore.Open(ctx, cfg.ClickHouse, log)
	if err != nil {
		return err
	}
	defer store.Close()
	return store.Migrate(ctx)
}

// defaultGOGC is the consumer's GC target when GOGC is not set: its live
// heap (batches, fetch responses) churns fast, so collecting at 5x instead
// of 2x the live heap saves about a tenth of its CPU in a 500k-event burst
// and ~3 % steady, for 60-230 MB more RSS (README Performance). GOGC in the
// environment still wins.
const defaultGOGC = 400

func serve(ctx context.Context, cfg Config, log *zap.Logger) error {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(defaultGOGC)
	}
	store, err := openStore(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer store.Close()
	if cfg.MigrateOnStart {
		if err := store.Migrate(ctx); err != nil {
			return err
		}
	}
	if cfg.CreateTopics {
		k, n, rf := cfg.Kafka, cfg.TopicPartitions, cfg.TopicReplicationFactor
		if err := svckit.CreateTopics(ctx, k.Brokers,
			kafka.TopicConfig{Topic: k.Topic, NumPartitions: n, ReplicationFactor: rf, ConfigEntries: svckit.EventTopicConfig()},
			kafka.TopicConfig{Topic: k.DLQTopic, NumPartitions: n, ReplicationFactor: rf}); err != nil {
			return err
		}
	}
	reg := svckit.Registry()
	opts := []ingest.Option{ingest.WithRegisterer(reg), ingest.WithDeadLetterFallback(store.Conn()),
		ingest.WithPinnedPartitions(cfg.TopicPartitions)}
	if os.Getenv(faultPointEnv) == "after-reroute" {
		log.Warn(faultPointEnv + "=after-reroute: this process SIGKILLs itself after its first re-publish, before the commit")
		opts = append(opts, ingest.WithBeforeCommit(killAfterReroute))
	}
	c, err := ingest.New(cfg.Kafka, store, log, opts...)
	if err != nil {
		return err
	}
	if cfg.HTTP.Addr != "" {
		srv, err := svckit.ServeHTTP(cfg.HTTP.Addr, reg, log, func(mux *http.ServeMux) { registerDashboard(mux, store, log) })
		if err != nil {
			return err
		}
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx)
		}()
	}
	return c.Run(ctx)
}

// faultPointEnv names a fault-injection switch for the fault suite (not a
// config key, never set in production): "after-reroute" makes the process
// SIGKILL itself once a batch's re-routed copies are written and before its
// offsets are committed, the one instant a timed kill from outside cannot
// hit reliably.
const faultPointEnv = "USAGEMETER_FAULT_POINT"

func killAfterReroute(rerouted int) error {
	if rerouted > 0 {
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // the signal ends the process before anything else runs
	}
	return nil
}

// openStore waits for ClickHouse at start-up (it may still be booting next
// to us) instead of failing at once.
func openStore(ctx context.Context, cfg Config, log *zap.Logger) (*chstore.Store, error) {
	delay := 200 * time.Millisecond
	for attempt := 1; ; attempt++ {
		store, err := chstore.Open(ctx, cfg.ClickHouse, log)
		if err == nil {
			return store, nil
		}
		if attempt >= 20 {
			return nil, err
		}
		log.Warn("ClickHouse not reachable yet; retrying", zap.Int("attempt", attempt), zap.Error(err))
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		delay = min(delay*2, 5*time.Second)
	}
}
