// Command usage-billing-sync bills closed usage windows from ClickHouse to
// Stripe exactly once, reconciles them with what Stripe holds, reports
// drift, and turns Stripe subscription webhooks into plan assignments.
//
//	usage-billing-sync [run]      a pass every billing.interval, webhooks, /metrics, /healthz
//	usage-billing-sync reconcile  read Stripe back and correct what it still accepts
//	usage-billing-sync drift      print the windows where ours and Stripe's differ
//	usage-billing-sync config     print the effective configuration
//
// --dry-run (billing.dry_run) plans and prints but writes nothing, to Stripe
// or to the audit table. --demo serves a fake Stripe in-process (no account).
package main

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	"github.com/spf13/pflag"
	"go.uber.org/zap"
	"go.yaml.in/yaml/v3"

	"github.com/usagemeter/usagemeter/billing-sync/audit"
	"github.com/usagemeter/usagemeter/billing-sync/lease"
	"github.com/usagemeter/usagemeter/billing-sync/planhook"
	"github.com/usagemeter/usagemeter/billing-sync/stripeapi"
	"github.com/usagemeter/usagemeter/billing-sync/stripefake"
	"github.com/usagemeter/usagemeter/billing-sync/syncer"
	"github.com/usagemeter/usagemeter/billing-sync/usage"
	"github.com/usagemeter/usagemeter/schemas/plans"
	"github.com/usagemeter/usagemeter/svckit"
	"github.com/usagemeter/usagemeter/svckit/chconn"
)

// Config is the service configuration: defaults, then the YAML file
// (--config), then USAGE_* environment variables (USAGE_STRIPE_API_KEY,
// USAGE_CLICKHOUSE_ADDR, USAGE_BILLING_DRY_RUN ...), then flags.
type Config struct {
	Billing    syncer.Config    `mapstructure:"billing"`
	Stripe     stripeapi.Config `mapstructure:"stripe"`
	Webhook    planhook.Config  `mapstructure:"webhook"`
	Lease      lease.Config     `mapstructure:"lease"`
	ClickHouse chconn.Config    `mapstructure:"clickhouse"`
	PlansFile  string           `mapstructure:"plans_file"`
	HTTP       struct {
		Addr string `mapstructure:"addr"`
	} `mapstructure:"http"`
	Log struct {
		Level string `mapstructure:"level"`
	} `mapstructure:"log"`
	MigrateOnStart bool `mapstructure:"migrate_on_start"`
	CreateTopics   bool `mapstructure:"create_topics"`
	// KafkaSecurity: TLS and SASL (SCRAM) to the brokers, for every Kafka
	// connection of the process (svckit.KafkaSecurity.Install).
	KafkaSecurity svckit.KafkaSecurity `mapstructure:"kafka_security"`
}

func defaultConfig() Config {
	c := Config{Billing: syncer.DefaultConfig(), Stripe: stripeapi.DefaultConfig(), Webhook: planhook.DefaultConfig(), Lease: lease.DefaultConfig(),
		ClickHouse: chconn.DefaultConfig(), PlansFile: "schemas/plans/plans.example.yaml", MigrateOnStart: true, CreateTopics: true}
	c.HTTP.Addr = "127.0.0.1:9466"
	c.Log.Level = "info"
	return c
}

func main() { os.Exit(run(os.Args[1:])) }

func run(args []string) int {
	flags := pflag.NewFlagSet("usage-billing-sync", pflag.ContinueOnError)
	flags.String("config", "", "YAML config file")
	flags.String("plans", "", "meters and plans YAML (plans_file)")
	flags.String("http", "", "metrics, health and webhook address (http.addr)")
	flags.Bool("dry-run", false, "plan and print, write nothing (billing.dry_run)")
	flags.String("stripe-url", "", "Stripe API base URL (stripe.url), e.g. stripe-mock")
	demo := flags.Bool("demo", false, "no Stripe account: the fake Stripe at --stripe-url (usage-stripe-fake), else one in-process with a customer per tenant seen")
	once := flags.Bool("once", false, "run: one pass, then exit")
	from := flags.String("from", "", "reconcile/drift: first window, YYYY-MM-DD or RFC 3339 (default: now - grace; drift: now - 35 days)")
	to := flags.String("to", "", "reconcile/drift: end, exclusive (default: now)")
	if err := flags.Parse(args); err != nil {
		return 2
	}
	cmd := "run"
	if flags.NArg() > 0 {
		cmd = flags.Arg(0)
	}
	if cmd != "run" && cmd != "reconcile" && cmd != "drift" && cmd != "config" {
		fmt.Fprintf(os.Stderr, "usage-billing-sync: unknown command %q (want run, reconcile, drift or config)\n", cmd)
		return 2
	}
	cfg, settings, err := load(flags)
	if err != nil {
		fmt.Fprintln(os.Stderr, "usage-billing-sync:", err)
		return 2
	}
	if cmd == "config" {
		out, _ := yaml.Marshal(settings)
		fmt.Print(string(out))
		return 0
	}
	p, err := plans.Load(cfg.PlansFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, "usage-billing-sync:", err)
		return 2
	}
	if err := cfg.Billing.Normalize(p); err != nil {
		fmt.Fprintln(os.Stderr, "usage-billing-sync:", err)
		return 2
	}
	fromT, toT, err := parseRange(*from, *to)
	if err != nil {
		fmt.Fprintln(os.Stderr, "usage-billing-sync:", err)
		return 2
	}
	log, err := svckit.NewLogger(cfg.Log.Level, "json")
	if err != nil {
		fmt.Fprintln(os.Stderr, "usage-billing-sync:", err)
		return 2
	}
	defer func() { _ = log.Sync() }()
	if err := cfg.KafkaSecurity.Install(); err != nil {
		fmt.Fprintln(os.Stderr, "usage-billing-sync:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := serve(ctx, cmd, cfg, p, log, *demo, *once, fromT, toT); err != nil {
		log.Error("usage-billing-sync failed", zap.String("command", cmd), zap.Error(err))
		return 1
	}
	if cmd == "run" && ctx.Err() != nil {
		// The line an operator (and make run's test) looks for after a SIGTERM.
		log.Info("usage-billing-sync stopped", zap.String("command", cmd))
	}
	return 0
}

func parseRange(from, to string) (time.Time, time.Time, error) {
	parse := func(s, name string) (time.Time, error) {
		if s == "" {
			return time.Time{}, nil
		}
		for _, layout := range []string{time.RFC3339, "2006-01-02"} {
			if t, err := time.Parse(layout, s); err == nil {
				return t.UTC(), nil
			}
		}
		return time.Time{}, fmt.Errorf("--%s %q: want YYYY-MM-DD or RFC 3339", name, s)
	}
	f, err := parse(from, "from")
	if err != nil {
		return f, f, err
	}
	t, err := parse(to, "to")
	return f, t, err
}

func serve(ctx context.Context, cmd string, cfg Config, p *plans.Config, log *zap.Logger, demo, once bool, from, to time.Time) error {
	conn, err := chconn.Open(ctx, cfg.ClickHouse)
	if err != nil {
		return err
	}
	defer conn.Close()
	if cfg.MigrateOnStart {
		if err := chconn.Migrate(ctx, conn, log); err != nil {
			return err
		}
	}
	src := usage.New(conn)
	if demo && cfg.Stripe.URL != "" {
		// --demo --stripe-url: the demo's own fake Stripe (usage-stripe-fake,
		// started by make run), which run, drift and reconcile share.
		if cfg.Stripe.APIKey == "" {
			cfg.Stripe.APIKey = "sk_test_demo"
		}
		log.Info("demo mode: the fake Stripe at stripe.url", zap.String("url", cfg.Stripe.URL))
	} else if demo {
		url, stopFake, err := demoStripe(ctx, cfg, src, log)
		if err != nil {
			return err
		}
		defer stopFake()
		cfg.Stripe.URL = url
		if cfg.Stripe.APIKey == "" {
			cfg.Stripe.APIKey = "sk_test_demo"
		}
		log.Info("demo mode: a fake Stripe serves this process", zap.String("url", url))
	}
	if cfg.Stripe.APIKey == "" {
		return errors.New("stripe.api_key is empty (USAGE_STRIPE_API_KEY); use --demo to try it without a Stripe account")
	}
	reg := svckit.Registry()
	api := stripeapi.New(cfg.Stripe, log, reg)
	s := syncer.New(cfg.Billing, p, src, audit.New(conn, nil), api, log, syncer.WithRegisterer(reg))
	if err := s.CheckMeters(ctx); err != nil { // a mode the meter cannot bill right: refuse to start
		return err
	}
	switch cmd {
	case "reconcile":
		return withLease(ctx, cfg, log, reg, s, func(ctx context.Context) error {
			rep, err := s.Reconcile(ctx, from, to)
			if err != nil {
				return err
			}
			printReport(rep)
			return nil
		})
	case "drift":
		if from.IsZero() {
			from = time.Now().Add(-35 * 24 * time.Hour).Truncate(time.Hour)
		}
		if to.IsZero() {
			to = time.Now()
		}
		ds, err := s.Drift(ctx, from, to)
		if err != nil {
			return err
		}
		syncer.PrintDrift(os.Stdout, ds)
		return nil
	}
	var hook *planhook.Handler // nil: the webhook endpoint is disabled
	if cfg.Webhook.Secret != "" {
		if cfg.CreateTopics {
			if err := svckit.CreateTopics(ctx, cfg.Webhook.Brokers, kafka.TopicConfig{Topic: cfg.Webhook.AssignmentTopic, NumPartitions: 1,
				ReplicationFactor: 1, ConfigEntries: []kafka.ConfigEntry{{ConfigName: "cleanup.policy", ConfigValue: "compact"}}}); err != nil {
				return err
			}
		}
		h, err := planhook.New(ctx, cfg.Webhook, p, s.TenantOf, api, log, reg)
		if err != nil {
			return err
		}
		defer h.Close()
		hook = h
		// Its own listener: it faces Stripe, /metrics does not.
		hsrv, err := planhook.Serve(cfg.Webhook, h, log)
		if err != nil {
			return err
		}
		defer hsrv.Close()
	} else {
		log.Info("webhook.secret is empty: the Stripe webhook endpoint is disabled")
	}
	if cfg.HTTP.Addr != "" {
		srv, err := svckit.ServeHTTP(cfg.HTTP.Addr, reg, log, nil)
		if err != nil {
			return err
		}
		defer srv.Close()
	}
	passes := func(ctx context.Context) error {
		for {
			rep, err := s.Sync(ctx)
			if ctx.Err() != nil {
				return nil
			}
			if err != nil {
				if errors.Is(err, lease.ErrLost) {
					return err
				}
				log.Error("billing pass failed; retried next interval", zap.Error(err))
			} else if cfg.Billing.DryRun {
				printReport(rep)
			}
			if once {
				return err
			}
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(cfg.Billing.Interval):
			}
		}
	}
	if !cfg.Lease.Enabled || cfg.Billing.DryRun {
		return passes(ctx) // a dry run writes nothing: no lease needed
	}
	if once {
		// One pass, like reconcile: take the lease from a running `run`
		// (bounded by lease.wait) rather than stand by behind it forever.
		return withLease(ctx, cfg, log, reg, s, passes)
	}
	// Webhooks apply only in the lease holder (a standby answers 503 and
	// Stripe retries): two processes read-modify-writing a tenant's
	// assignment could write equal versions.
	setGate := func(g func(context.Context) error) {
		if hook != nil {
			hook.SetGate(g)
		}
	}
	setGate(planhook.Standby)
	l, err := joinLease(ctx, cfg, log, reg)
	if err != nil {
		return err
	}
	defer l.Close()
	for {
		// Stand by until this process is the writer; bill while it is;
		// after losing the lease (another process joined, or this one was
		// cut off), stand by again.
		term, err := l.Acquire(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		s.SetFence(term)
		setGate(term.Check)
		err = passes(term.Context())
		lost := errors.Is(err, lease.ErrLost) || term.Context().Err() != nil
		setGate(planhook.Standby)
		s.SetFence(nil)
		term.End()
		if ctx.Err() != nil {
			return nil
		}
		if !lost {
			return err
		}
		log.Warn("billing lease lost: standing by", zap.Int32("generation", term.Generation()), zap.Error(err))
	}
}

// joinLease creates the one-partition lease topic if asked to, and joins.
func joinLease(ctx context.Context, cfg Config, log *zap.Logger, reg prometheus.Registerer, opts ...lease.Option) (*lease.Lease, error) {
	if cfg.CreateTopics {
		if err := svckit.CreateTopics(ctx, cfg.Lease.Brokers, kafka.TopicConfig{Topic: cfg.Lease.Topic, NumPartitions: 1,
			ReplicationFactor: -1}); err != nil {
			return nil, err
		}
	}
	return lease.Join(ctx, cfg.Lease, log, reg, opts...)
}

// withLease runs fn once as the writer: it takes the lease from a running
// `run` (or waits up to lease.wait for another reconcile to finish), fences fn's Stripe writes with it, and leaves the group after, so
// a standing-by run process takes over at once.
func withLease(ctx context.Context, cfg Config, log *zap.Logger, reg prometheus.Registerer, s *syncer.Syncer, fn func(context.Context) error) error {
	if !cfg.Lease.Enabled || cfg.Billing.DryRun {
		return fn(ctx)
	}
	// Preempt: a running `run` hands the lease over at the rebalance this
	// join causes, and takes it back when this process leaves.
	l, err := joinLease(ctx, cfg, log, reg, lease.Preempt())
	if err != nil {
		return err
	}
	defer l.Close()
	for {
		term, err := l.AcquireWithin(ctx, cfg.Lease.Wait)
		if err != nil {
			return fmt.Errorf("waiting for the billing lease (lease.wait %v): %w", cfg.Lease.Wait, err)
		}
		s.SetFence(term)
		err = fn(term.Context())
		lost := errors.Is(err, lease.ErrLost) || term.Context().Err() != nil
		s.SetFence(nil)
		term.End()
		if !lost || ctx.Err() != nil {
			return err
		}
		// Lost mid-pass (a rebalance): the pass's intents are in the
		// ledger; take the lease again and finish.
		log.Warn("billing lease lost during the pass: waiting to take it again", zap.Error(err))
	}
}

func printReport(rep *syncer.Report) {
	fmt.Printf("pass %s: %d windows, %d writes, %d failed, %d re-sent, %d observed on Stripe, %d unsettled, %d unmapped, %d unfixable\n",
		rep.PassID, rep.Windows, rep.Writes, rep.Failed, rep.Resent, rep.Observed, rep.Unsettled, len(rep.Unmapped), len(rep.Unfixable))
	for _, r := range rep.Planned {
		fmt.Printf("  would %s %s/%s %s seq %d: delta %d -> Stripe %d (%s)\n", r.Action, r.Tenant, r.Meter, r.WindowStart.Format(time.RFC3339),
			r.Seq, r.Delta, r.Stripe, r.Result)
	}
	for _, u := range rep.Unmapped {
		fmt.Printf("  unmapped: %s\n", u)
	}
	for _, u := range rep.LookupErrors {
		fmt.Printf("  look-up failed (retried next pass): %s\n", u)
	}
	for _, u := range rep.Ambiguous {
		fmt.Printf("  refused, more than one customer has this tenant_id: %s\n", u)
	}
	if rep.Refused > 0 {
		fmt.Printf("  %d windows left alone: Stripe refused their last write for good (see drift, status refused)\n", rep.Refused)
	}
	syncer.PrintDrift(os.Stdout, rep.Unfixable)
}

// demoStripe serves the fake Stripe with a customer (and subscription
// items) for every tenant with usage, so the demo needs no account. Tenants
// that appear later (make run starts billing-sync before the traffic) get
// theirs within seconds, as a sign-up would create them in Stripe.
func demoStripe(ctx context.Context, cfg Config, src *usage.Store, log *zap.Logger) (string, func(), error) {
	fake := stripefake.New()
	for name, m := range cfg.Billing.Meters {
		if m.MeterID == "" {
			m.MeterID = "mtr_" + name
			cfg.Billing.Meters[name] = m
		}
		fake.AddMeter(m.MeterID, m.EventName)
	}
	seen := map[string]bool{}
	seed := func() error {
		for name, m := range cfg.Billing.Meters {
			hours, err := src.Hours(ctx, name, plans.Meter{Aggregation: plans.Sum}, time.Now().Add(-40*24*time.Hour), time.Now())
			if err != nil {
				return err
			}
			for _, h := range hours {
				if k := h.Tenant + "/" + name; !seen[k] {
					seen[k] = true
					if !seen[h.Tenant] {
						seen[h.Tenant] = true
						fake.AddCustomer("cus_"+h.Tenant, h.Tenant)
					}
					if m.Mode == syncer.MeterEvents && m.Price == "" { // invoiced through an item on a price on the meter
						fake.AddPrice(stripefake.Price{ID: "price_" + m.MeterID, MeterID: m.MeterID})
						fake.AddSubscriptionItem("cus_"+h.Tenant, "si_"+h.Tenant+"_"+name, "price_"+m.MeterID)
					} else if m.Mode == syncer.MeterEvents {
						fake.AddPrice(stripefake.Price{ID: m.Price, MeterID: m.MeterID})
						fake.AddSubscriptionItem("cus_"+h.Tenant, "si_"+h.Tenant+"_"+name, m.Price)
					}
					if m.Mode == syncer.UsageRecords {
						fake.AddSubscriptionItem("cus_"+h.Tenant, "si_"+h.Tenant+"_"+name, m.Price)
					}
				}
			}
		}
		return nil
	}
	if err := seed(); err != nil {
		return "", nil, err
	}
	seedCtx, stopSeeding := context.WithCancel(ctx)
	go func() {
		t := time.NewTicker(5 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-seedCtx.Done():
				return
			case <-t.C:
				if err := seed(); err != nil && seedCtx.Err() == nil {
					log.Warn("demo: seeding fake Stripe customers", zap.Error(err))
				}
			}
		}
	}()
	srv := httptest.NewServer(fake)
	return srv.URL, func() { stopSeeding(); srv.Close() }, nil
}

func load(flags *pflag.FlagSet) (Config, map[string]any, error) {
	c := defaultConfig()
	settings, err := svckit.LoadConfig(flags, map[string]string{"plans": "plans_file", "http": "http.addr",
		"dry-run": "billing.dry_run", "stripe-url": "stripe.url"}, &c)
	if err != nil {
		return Config{}, nil, err
	}
	if err := c.Stripe.Validate(); err != nil {
		return Config{}, nil, err
	}
	if err := c.Lease.Validate(); err != nil {
		return Config{}, nil, err
	}
	if err := c.Webhook.Validate(); err != nil {
		return Config{}, nil, err
	}
	return c, settings, nil
}
