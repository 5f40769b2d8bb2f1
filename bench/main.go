// Command usage-bench measures the whole pipeline as a user runs it: the
// real usage-consumer and usage-aggregator processes, the SDK publishing
// from this process, the local Kafka broker and a private ClickHouse
// server; and, on the same events and the same engines, ClickHouse's own
// Kafka table engine feeding a materialized view. Each run appends one
// JSON record per mode to --out, so runs can be compared; `make bench`
// (scripts/bench.sh) runs it.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// brokerNote says whose work the broker's CPU figure is.
func (o *options) brokerNote() string {
	if o.kafkaPrivate {
		return "private to this run"
	}
	return "shared with other users of the machine"
}

type options struct {
	broker, clickhouse         string
	kafkaPidFile, chPidFile    string
	kafkaPrivate               bool   // the broker serves only this run (make bench with KAFKA_PORT)
	chScript                   string // scripts/clickhouse.sh, to restart the private server
	consumerBin, aggregatorBin string
	events, tenants            int
	warmup                     int // events published before the clock starts (see warmUp)
	warmBroker                 int // events through a scratch topic before any mode (see warmBroker)
	dupFraction                float64
	restart                    bool
	freshness                  time.Duration
	freshRate                  int
	modes                      []string
	out                        string
	workDir                    string
	perfDir                    string
	aggSettings                []string // extra USAGE_* settings of usage-aggregator
	consumerSettings           []string // and of usage-consumer
	// settle is how long the Kafka engine's raw table must stop growing
	// before its totals are read (it may re-read after a restart).
	settle time.Duration
}

// Record is one run of one mode: the line written to --out.
type Record struct {
	Time       string     `json:"time"`
	Mode       string     `json:"mode"`
	Commit     string     `json:"commit,omitempty"`
	CPUs       int        `json:"cpus"`
	LoadStart  [3]float64 `json:"load_avg_start"`
	LoadEnd    [3]float64 `json:"load_avg_end"`
	Events     int        `json:"events"`
	Tenants    int        `json:"tenants"`
	Warmup     int        `json:"warmup_events,omitempty"`        // published before the clock started
	WarmBroker int        `json:"broker_warmup_events,omitempty"` // through a scratch topic before any mode
	Partitions int        `json:"partitions"`
	Seconds    float64    `json:"seconds"`
	// Phases are seconds from the clock's start to the first poll that saw
	// each milestone: "published" (the last Publish call returned: every
	// event handed to the SDK), "raw rows" (usage_events holds them all),
	// "checkpoint" (the aggregator's checkpoint covers the topic). Seconds
	// minus "published" is the tail the services add after the last event.
	Phases       map[string]float64     `json:"phases,omitempty"`
	EventsPerS   float64                `json:"events_per_s"`
	Processes    map[string]ProcFigures `json:"processes"`
	Freshness    *Freshness             `json:"freshness,omitempty"`
	Exactness    []Check                `json:"exactness,omitempty"`
	Notes        []string               `json:"notes,omitempty"`
	Error        string                 `json:"error,omitempty"`
	CPUPerEvent  float64                `json:"pipeline_cpu_us_per_event"` // the processes that do the work, without publisher and broker
	Settings     []string               `json:"aggregator_settings,omitempty"`
	ConsSettings []string               `json:"consumer_settings,omitempty"`
}

// Check is one exactness check after a phase: what was expected, what the
// tables hold.
type Check struct {
	After    string `json:"after"`
	What     string `json:"what"`
	Expected string `json:"expected"`
	Got      string `json:"got"`
	Exact    bool   `json:"exact"`
}

func main() {
	var o options
	var modes string
	flag.StringVar(&o.broker, "kafka", os.Getenv("USAGE_TEST_KAFKA"), "Kafka bootstrap address")
	flag.StringVar(&o.clickhouse, "clickhouse", "", "address of a PRIVATE ClickHouse server (it is restarted)")
	flag.StringVar(&o.kafkaPidFile, "kafka-pidfile", "", "the broker's pid file (its CPU and RSS are recorded)")
	flag.BoolVar(&o.kafkaPrivate, "kafka-private", false, "the broker serves only this run (its CPU is this run's work alone)")
	flag.StringVar(&o.chPidFile, "clickhouse-pidfile", "", "the private ClickHouse server's pid file")
	flag.StringVar(&o.chScript, "clickhouse-script", "", "scripts/clickhouse.sh, with CH_* of the private server in the environment (for the restart)")
	flag.StringVar(&o.consumerBin, "consumer", "", "usage-consumer binary")
	flag.StringVar(&o.aggregatorBin, "aggregator", "", "usage-aggregator binary")
	flag.IntVar(&o.events, "events", 500_000, "events per throughput phase")
	flag.IntVar(&o.tenants, "tenants", 50, "tenants the events spread over")
	flag.IntVar(&o.warmBroker, "warm-broker", 2_000_000, "events published to and read from a scratch topic before any mode is measured, to warm the broker's JVM (0: none)")
	flag.IntVar(&o.warmup, "warmup", 0, "events published through the whole pipeline before the clock starts (at least one per tenant, up to 10,000 tenants)")
	flag.Float64Var(&o.dupFraction, "duplicates", 0.1, "duplicate burst: this fraction of the events published again (same ids)")
	flag.BoolVar(&o.restart, "restart", true, "restart the ClickHouse server while events flow, then check totals")
	flag.DurationVar(&o.freshness, "freshness", 10*time.Second, "how long to publish at --fresh-rate for the freshness figure (0: skip)")
	flag.IntVar(&o.freshRate, "fresh-rate", 10_000, "events/s of the freshness phase")
	flag.StringVar(&modes, "modes", "pipeline,chkafka", "comma-separated: pipeline (ours), chkafka (ClickHouse's Kafka engine)")
	flag.StringVar(&o.out, "out", ".cache/bench/runs.jsonl", "JSON lines file the records are appended to")
	flag.StringVar(&o.workDir, "dir", "", "directory for logs and plans (default: a temporary one)")
	flag.StringVar(&o.perfDir, "perf", "", "pipeline mode: record `perf record -g` of usage-consumer and usage-aggregator during the throughput phase into this directory")
	flag.Func("aggregator-env", "an extra USAGE_*=value setting for usage-aggregator (repeatable), e.g. USAGE_AGGREGATOR_FLUSH_INTERVAL=250ms", func(v string) error {
		if k, _, ok := strings.Cut(v, "="); !ok || !strings.HasPrefix(k, "USAGE_") {
			return fmt.Errorf("%q: want USAGE_NAME=value", v)
		}
		o.aggSettings = append(o.aggSettings, v)
		return nil
	})
	flag.Func("consumer-env", "an extra USAGE_*=value setting for usage-consumer (repeatable), e.g. USAGE_KAFKA_BATCH_SIZE=100000", func(v string) error {
		if k, _, ok := strings.Cut(v, "="); !ok || !strings.HasPrefix(k, "USAGE_") {
			return fmt.Errorf("%q: want USAGE_NAME=value", v)
		}
		o.consumerSettings = append(o.consumerSettings, v)
		return nil
	})
	flag.DurationVar(&o.settle, "settle", 5*time.Second, "chkafka: how long the raw table must stop growing before totals are read")
	table := flag.String("table", "", "print the README's markdown table from this results file and exit")
	since := flag.String("since", "", "with --table: only records at or after this RFC 3339 UTC time (one make bench run)")
	flag.Parse()
	if *table != "" {
		if err := printTable(*table, *since, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "usage-bench:", err)
			os.Exit(1)
		}
		return
	}
	o.modes = strings.Split(modes, ",")
	if err := o.validate(); err != nil {
		fmt.Fprintln(os.Stderr, "usage-bench:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if o.warmBroker > 0 {
		if err := warmBroker(ctx, o.broker, o.warmBroker); err != nil {
			fmt.Fprintln(os.Stderr, "usage-bench: warming the broker:", err)
			os.Exit(1)
		}
	}
	failed := false
	for _, m := range o.modes {
		rec := Record{Time: time.Now().UTC().Format(time.RFC3339), Mode: m, Commit: gitCommit(), CPUs: runtime.NumCPU(),
			LoadStart: loadAvg(), Events: o.events, Tenants: o.tenants, Warmup: o.warmupEvents(), WarmBroker: o.warmBroker, Partitions: partitions, Settings: o.aggSettings, ConsSettings: o.consumerSettings}
		var err error
		switch m {
		case "pipeline":
			err = runPipeline(ctx, o, &rec)
		case "chkafka":
			err = runCHKafka(ctx, o, &rec)
		}
		rec.LoadEnd = loadAvg()
		if err != nil {
			rec.Error = err.Error()
			failed = true
			fmt.Fprintf(os.Stderr, "usage-bench: %s: %v\n", m, err)
		}
		if werr := appendRecord(o.out, rec); werr != nil {
			fmt.Fprintln(os.Stderr, "usage-bench:", werr)
			os.Exit(1)
		}
		printRecord(rec)
	}
	if failed {
		os.Exit(1)
	}
}

func (o *options) validate() error {
	var errs []error
	need := func(name, v string) {
		if v == "" {
			errs = append(errs, fmt.Errorf("--%s: required", name))
		}
	}
	need("kafka", o.broker)
	need("clickhouse", o.clickhouse)
	need("clickhouse-pidfile", o.chPidFile)
	if o.restart {
		need("clickhouse-script", o.chScript)
		// clickhouse.sh acts on the server its CH_* environment names (by
		// default the shared one on 19000): refuse unless that is the
		// private server under test, so a restart can never hit another.
		if port := o.clickhouse[strings.LastIndexByte(o.clickhouse, ':')+1:]; os.Getenv("CH_TCP_PORT") != port {
			errs = append(errs, fmt.Errorf("--restart: CH_TCP_PORT=%q in the environment, want %q (the port of --clickhouse): clickhouse.sh would restart another server", os.Getenv("CH_TCP_PORT"), port))
		}
	}
	if o.events < 1000 {
		errs = append(errs, fmt.Errorf("--events=%d: at least 1000", o.events))
	}
	if o.tenants < 1 {
		errs = append(errs, fmt.Errorf("--tenants=%d: at least 1", o.tenants))
	}
	if o.dupFraction < 0 || o.dupFraction > 1 {
		errs = append(errs, fmt.Errorf("--duplicates=%g: want 0..1", o.dupFraction))
	}
	if o.freshRate < 100 {
		errs = append(errs, fmt.Errorf("--fresh-rate=%d: at least 100", o.freshRate))
	}
	for _, m := range o.modes {
		switch m {
		case "pipeline":
			need("consumer", o.consumerBin)
			need("aggregator", o.aggregatorBin)
		case "chkafka":
		default:
			errs = append(errs, fmt.Errorf("--modes: unknown mode %q (want pipeline or chkafka)", m))
		}
	}
	// Services run in their log directory: make paths absolute.
	for _, p := range []*string{&o.consumerBin, &o.aggregatorBin, &o.chScript, &o.kafkaPidFile, &o.chPidFile} {
		if *p != "" {
			if abs, err := filepath.Abs(*p); err == nil {
				*p = abs
			}
		}
	}
	return errors.Join(errs...)
}

func appendRecord(path string, rec Record) error {
	if err := os.MkdirAll(dirOf(path), 0o755); err != nil {
		return fmt.Errorf("results dir: %w", err)
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("open results: %w", err)
	}
	b, _ := json.Marshal(rec)
	if _, err := f.Write(append(b, '\n')); err != nil {
		_ = f.Close()
		return fmt.Errorf("write results: %w", err)
	}
	return f.Close()
}

func dirOf(path string) string {
	if i := strings.LastIndexByte(path, '/'); i > 0 {
		return path[:i]
	}
	return "."
}

func printRecord(rec Record) {
	fmt.Printf("== %s: %d events in %.1f s = %.0f events/s (load avg %.1f -> %.1f, %d CPUs)\n",
		rec.Mode, rec.Events, rec.Seconds, rec.EventsPerS, rec.LoadStart[0], rec.LoadEnd[0], rec.CPUs)
	for name, p := range rec.Processes {
		fmt.Printf("   %-28s cpu %6.2f us/event  rss max %7.1f MB  %s\n", name, p.CPUUsPerEvent, p.RSSMaxMB, p.Note)
	}
	fmt.Printf("   work processes together: %.2f us CPU per event\n", rec.CPUPerEvent)
	if f := rec.Freshness; f != nil {
		fmt.Printf("   freshness at %.0f events/s, publish -> %s: p50 %.0f ms, p99 %.0f ms, max %.0f ms\n", f.EventsPerS, f.Via, f.P50ms, f.P99ms, f.MaxMs)
		if t := f.Topic; t != nil {
			fmt.Printf("   freshness at %.0f events/s, publish -> %s: p50 %.0f ms, p99 %.0f ms, max %.0f ms\n", t.EventsPerS, t.Via, t.P50ms, t.P99ms, t.MaxMs)
		}
	}
	for _, c := range rec.Exactness {
		verdict := "exact"
		if !c.Exact {
			verdict = "NOT exact"
		}
		fmt.Printf("   after %-18s %-40s expected %s, got %s: %s\n", c.After, c.What, c.Expected, c.Got, verdict)
	}
	for _, n := range rec.Notes {
		fmt.Println("   note:", n)
	}
	if rec.Error != "" {
		fmt.Println("   ERROR:", rec.Error)
	}
}

func gitCommit() string {
	out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}
