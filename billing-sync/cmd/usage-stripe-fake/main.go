// Command usage-stripe-fake serves billing-sync's fake Stripe (package
// stripefake) as a process of its own, for the demo: `make run` starts it,
// and `usage-billing-sync --demo --stripe-url URL` run, drift and reconcile
// all talk to it, so drift compares ClickHouse with the Stripe that was
// billed. Every mutating request is appended to a journal file and replayed
// at start, so its state survives a restart. It adds a customer (and, for
// usage_records meters, a subscription item) for every tenant with usage in
// ClickHouse, with a subscription item on each billed meter's price, as a
// sign-up would in a real account.
//
//	usage-stripe-fake --addr 127.0.0.1:9467 --journal .cache/run/stripe-fake.jsonl \
//	    --billing-config billing-sync/config.demo.yaml
//
// It is a demo and test tool, not Stripe: see stripefake for what it models.
package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"github.com/spf13/viper"
	"go.uber.org/zap"

	"github.com/usagemeter/usagemeter/billing-sync/stripefake"
	"github.com/usagemeter/usagemeter/billing-sync/syncer"
	"github.com/usagemeter/usagemeter/billing-sync/usage"
	"github.com/usagemeter/usagemeter/schemas/plans"
	"github.com/usagemeter/usagemeter/svckit"
	"github.com/usagemeter/usagemeter/svckit/chconn"
)

// Config is this command's configuration: defaults, then USAGE_* environment
// variables (USAGE_CLICKHOUSE_ADDR ...), then flags.
type Config struct {
	// Addr serves the Stripe API under /v1/, plus /metrics and /healthz.
	Addr string `mapstructure:"addr"`
	// Journal is the file the state is kept in (replayed at start).
	Journal string `mapstructure:"journal"`
	// BillingConfig is usage-billing-sync's config file: its billing.meters
	// (meter ids, event names, usage_records prices) and plans_file.
	BillingConfig string        `mapstructure:"billing_config"`
	SeedInterval  time.Duration `mapstructure:"seed_interval"`
	ClickHouse    chconn.Config `mapstructure:"clickhouse"`
	Log           struct {
		Level string `mapstructure:"level"`
	} `mapstructure:"log"`
}

func defaultConfig() Config {
	c := Config{Addr: "127.0.0.1:9467", Journal: ".cache/run/stripe-fake.jsonl", BillingConfig: "billing-sync/config.demo.yaml",
		SeedInterval: 5 * time.Second, ClickHouse: chconn.DefaultConfig()}
	c.Log.Level = "info"
	return c
}

func main() { os.Exit(run(os.Args[1:])) }

func run(args []string) int {
	flags := pflag.NewFlagSet("usage-stripe-fake", pflag.ContinueOnError)
	flags.String("addr", "", "listen address (addr)")
	flags.String("journal", "", "journal file, replayed at start (journal)")
	flags.String("billing-config", "", "usage-billing-sync's config file (billing_config)")
	if err := flags.Parse(args); err != nil {
		return 2
	}
	cfg := defaultConfig()
	if _, err := svckit.LoadConfig(flags, map[string]string{"addr": "addr", "journal": "journal", "billing-config": "billing_config"}, &cfg); err != nil {
		fmt.Fprintln(os.Stderr, "usage-stripe-fake:", err)
		return 2
	}
	meters, err := loadMeters(cfg.BillingConfig)
	if err != nil {
		fmt.Fprintln(os.Stderr, "usage-stripe-fake:", err)
		return 2
	}
	if cfg.SeedInterval <= 0 {
		fmt.Fprintln(os.Stderr, "usage-stripe-fake: seed_interval: must be > 0")
		return 2
	}
	log, err := svckit.NewLogger(cfg.Log.Level, "json")
	if err != nil {
		fmt.Fprintln(os.Stderr, "usage-stripe-fake:", err)
		return 2
	}
	defer func() { _ = log.Sync() }()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := serve(ctx, cfg, meters, log); err != nil {
		log.Error("usage-stripe-fake failed", zap.Error(err))
		return 1
	}
	log.Info("usage-stripe-fake stopped")
	return 0
}

// loadMeters reads the billing section of usage-billing-sync's config with
// the syncer's own defaults, so meter ids and event names match what
// billing-sync sends. Keys this command does not use are ignored.
func loadMeters(path string) (map[string]syncer.Meter, error) {
	v := viper.New()
	v.SetConfigFile(path)
	if err := v.ReadInConfig(); err != nil {
		return nil, fmt.Errorf("billing_config %s: %w", path, err)
	}
	bc := syncer.DefaultConfig()
	if err := v.UnmarshalKey("billing", &bc); err != nil {
		return nil, fmt.Errorf("billing_config %s: billing: %w", path, err)
	}
	plansFile := v.GetString("plans_file")
	if plansFile == "" {
		plansFile = "schemas/plans/plans.example.yaml"
	}
	p, err := plans.Load(plansFile)
	if err != nil {
		return nil, fmt.Errorf("billing_config %s: plans_file: %w", path, err)
	}
	if err := bc.Normalize(p); err != nil {
		return nil, fmt.Errorf("billing_config %s: %w", path, err)
	}
	return bc.Meters, nil
}

func serve(ctx context.Context, cfg Config, meters map[string]syncer.Meter, log *zap.Logger) error {
	// Meters and prices as usage-billing-sync --demo's in-process fake has
	// them: a meter_events meter is invoiced through a price on the meter
	// (its own, or price_<meter id>), a usage_records one through its price.
	fake := stripefake.New()
	prices := map[string]string{} // meter -> price of the items the demo adds
	for name, m := range meters {
		id := m.MeterID
		if id == "" {
			id = "mtr_" + name
		}
		fake.AddMeter(id, m.EventName)
		prices[name] = m.Price
		if m.Mode == syncer.MeterEvents {
			if m.Price == "" {
				prices[name] = "price_" + id
			}
			fake.AddPrice(stripefake.Price{ID: prices[name], MeterID: id})
		}
	}
	reg := svckit.Registry()
	j, err := openJournal(cfg.Journal, fake, log, reg)
	if err != nil {
		return err
	}
	defer j.Close()
	conn, err := chconn.Open(ctx, cfg.ClickHouse)
	if err != nil {
		return err
	}
	defer conn.Close()
	src := usage.New(conn)
	seed := func() error {
		// Usage within Stripe's 35 days (and a margin): every such tenant
		// is a customer, with an item per meter it used.
		to := time.Now()
		for name := range meters {
			hours, err := src.Hours(ctx, name, plans.Meter{Aggregation: plans.Sum}, to.Add(-40*24*time.Hour), to)
			if err != nil {
				return err
			}
			for _, h := range hours {
				cus := "cus_" + h.Tenant
				if err := j.addCustomer(cus, h.Tenant); err != nil {
					return err
				}
				if err := j.addItem(cus, "si_"+h.Tenant+"_"+name, prices[name]); err != nil {
					return err
				}
			}
		}
		return nil
	}
	// ClickHouse may still be migrating at first start: the ticker retries.
	if err := seed(); err != nil {
		log.Warn("adding customers for tenants with usage; retried", zap.Error(err))
	}
	srv, err := svckit.ServeHTTP(cfg.Addr, reg, log, func(mux *http.ServeMux) { mux.Handle("/v1/", j) })
	if err != nil {
		return err
	}
	defer srv.Close()
	log.Info("fake Stripe serving", zap.String("url", "http://"+cfg.Addr), zap.String("journal", cfg.Journal))
	t := time.NewTicker(cfg.SeedInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			return srv.Shutdown(shutdown)
		case <-t.C:
			if err := seed(); err != nil && ctx.Err() == nil {
				log.Warn("adding customers for tenants with usage; retried", zap.Error(err))
			}
		}
	}
}
