// Command usage-ops is the operators' tool: the DLQ (list, count, show,
// replay), retention (plan, apply), and backfill (consumer-group offsets
// by timestamp).
//
//	usage-ops dlq list|count [--tag T] [--tenant T] [--from RFC3339] [--to RFC3339] [--store kafka|clickhouse]
//	usage-ops dlq show <letter id>
//	usage-ops dlq replay [filters] [--id ID]... [--rename old=new]... [--set field=value]... [--dry-run]
//	usage-ops retention plan|apply [--every 24h]
//	usage-ops backfill offsets --group G --at RFC3339 [--apply]
//	usage-ops exporter [--http 127.0.0.1:9472]   /metrics for the alert rules, until SIGTERM
//	usage-ops migrate | config
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/spf13/pflag"
	"go.uber.org/zap"
	"go.yaml.in/yaml/v3"

	"github.com/usagemeter/usagemeter/ops/backfill"
	"github.com/usagemeter/usagemeter/ops/dlq"
	"github.com/usagemeter/usagemeter/ops/exporter"
	"github.com/usagemeter/usagemeter/ops/retention"
	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/svckit"
	"github.com/usagemeter/usagemeter/svckit/chconn"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `usage-ops dlq list|count|show|replay, retention plan|apply, backfill offsets, exporter, migrate, config (see ops/README.md)`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	flags := newFlags()
	flags.SetOutput(stderr)
	if err := flags.Parse(args); err != nil {
		return 2
	}
	cmd := strings.Join(flags.Args(), " ")
	cfg, settings, err := loadConfig(flags)
	if err != nil {
		fmt.Fprintln(stderr, "usage-ops:", err)
		return 2
	}
	log, err := svckit.NewLogger(cfg.Log.Level, cfg.Log.Format)
	if err != nil {
		fmt.Fprintln(stderr, "usage-ops:", err)
		return 2
	}
	defer func() { _ = log.Sync() }()
	if err := cfg.KafkaSecurity.Install(); err != nil {
		fmt.Fprintln(stderr, "usage-ops:", err)
		return 2
	}
	a := &app{cfg: cfg, flags: flags, out: stdout, log: log}
	defer a.close()
	switch {
	case cmd == "config":
		b, _ := yaml.Marshal(settings)
		_, err = stdout.Write(b)
	case cmd == "migrate":
		err = a.migrate(ctx)
	case cmd == "dlq list" || cmd == "dlq count":
		err = a.dlqList(ctx, cmd == "dlq count")
	case strings.HasPrefix(cmd, "dlq show "):
		err = a.dlqShow(ctx, strings.TrimPrefix(cmd, "dlq show "))
	case cmd == "dlq replay":
		err = a.dlqReplay(ctx)
	case cmd == "retention plan":
		err = a.retentionPlan(ctx)
	case cmd == "retention apply":
		err = a.retentionApply(ctx)
	case cmd == "backfill offsets":
		err = a.backfillOffsets(ctx)
	case cmd == "exporter":
		err = a.exporter(ctx)
	default:
		fmt.Fprintf(stderr, "usage-ops: unknown command %q\n%s\n", cmd, usage)
		return 2
	}
	var bad badInput
	switch {
	case errors.As(err, &bad):
		fmt.Fprintln(stderr, "usage-ops:", err)
		return 2
	case err != nil:
		log.Error("usage-ops failed", zap.String("command", cmd), zap.Error(err))
		fmt.Fprintln(stderr, "usage-ops:", err)
		return 1
	}
	return 0
}

// badInput is an error in the command line: exit status 2, like a config error.
type badInput struct{ error }

func newFlags() *pflag.FlagSet {
	f := pflag.NewFlagSet("usage-ops", pflag.ContinueOnError)
	f.String("config", "", "YAML config file (see ops/config.example.yaml)")
	f.StringSlice("brokers", nil, "Kafka brokers host:port (kafka.brokers)")
	f.StringSlice("clickhouse", nil, "ClickHouse native addresses host:port (clickhouse.addr)")
	f.String("log-level", "", "debug, info, warn or error (log.level)")
	f.String("http", "", "exporter: /metrics and /healthz address (http.addr)")
	// dlq
	f.String("tag", "", "only letters with this tag, or this code (missing_field matches missing_field:tenant_id)")
	f.String("tenant", "", "only letters of this tenant (tenant_id of the value, else the key)")
	f.String("from", "", "only letters refused at or after this time (RFC 3339)")
	f.String("to", "", "only letters refused before this time (RFC 3339)")
	f.String("store", "", "only letters in kafka (the DLQ topic) or clickhouse (dead_letters)")
	f.StringArray("id", nil, "only this letter (as printed by dlq list); repeatable")
	f.StringArray("rename", nil, "replay transform: rename field old=new (a field or metadata.<key>); repeatable")
	f.StringArray("set", nil, "replay transform: set string field=value; repeatable")
	f.Bool("dry-run", false, "replay: decide and print, publish and record nothing")
	// retention
	f.Duration("every", 0, "retention apply: run again at this interval until SIGTERM (retention.every)")
	// backfill
	f.String("group", "", "backfill offsets: the consumer group to move (stop its members first)")
	f.String("topic", "", "backfill offsets: the topic (default kafka.topic)")
	f.String("at", "", "backfill offsets: re-read from the first record at or after this time (RFC 3339)")
	f.Bool("apply", false, "backfill offsets: commit the plan (without it, print it only)")
	return f
}

type app struct {
	cfg   Config
	flags *pflag.FlagSet
	out   io.Writer
	log   *zap.Logger
	conn  driver.Conn
}

func (a *app) close() {
	if a.conn != nil {
		_ = a.conn.Close()
	}
}

func (a *app) clickhouse(ctx context.Context) (driver.Conn, error) {
	if a.conn != nil {
		return a.conn, nil
	}
	conn, err := chconn.Open(ctx, a.cfg.ClickHouse)
	if err != nil {
		return nil, err
	}
	a.conn = conn
	return conn, nil
}

func (a *app) migrate(ctx context.Context) error {
	conn, err := a.clickhouse(ctx)
	if err != nil {
		return err
	}
	return chconn.Migrate(ctx, conn, a.log)
}

func (a *app) str(name string) string { v, _ := a.flags.GetString(name); return v }

func (a *app) timeFlag(name string) (time.Time, error) {
	v := a.str(name)
	if v == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return time.Time{}, badInput{fmt.Errorf("--%s: %q is not an RFC 3339 time (2026-11-30T00:00:00Z)", name, v)}
	}
	return t.UTC(), nil
}

func (a *app) filter() (dlq.Filter, error) {
	from, err := a.timeFlag("from")
	if err != nil {
		return dlq.Filter{}, err
	}
	to, err := a.timeFlag("to")
	if err != nil {
		return dlq.Filter{}, err
	}
	ids, _ := a.flags.GetStringArray("id")
	f := dlq.Filter{Tag: a.str("tag"), Tenant: a.str("tenant"), From: from, To: to, Store: a.str("store"), IDs: ids}
	if err := f.Validate(); err != nil {
		return dlq.Filter{}, badInput{fmt.Errorf("--%w", err)}
	}
	return f, nil
}

func (a *app) source(ctx context.Context) (dlq.Source, error) {
	conn, err := a.clickhouse(ctx)
	if err != nil {
		return dlq.Source{}, err
	}
	return dlq.Source{Brokers: a.cfg.Kafka.Brokers, Topic: a.cfg.Kafka.DLQTopic, Conn: conn}, nil
}

func (a *app) dlqList(ctx context.Context, count bool) error {
	f, err := a.filter()
	if err != nil {
		return err
	}
	src, err := a.source(ctx)
	if err != nil {
		return err
	}
	ls, err := src.Letters(ctx, f)
	if err != nil {
		return err
	}
	w := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
	if count {
		fmt.Fprintln(w, "STORE\tTAG\tTENANT\tLETTERS")
		for _, c := range dlq.CountBy(ls) {
			fmt.Fprintf(w, "%s\t%s\t%s\t%d\n", c.Store, c.Tag, c.Tenant, c.Letters)
		}
		fmt.Fprintf(w, "total\t\t\t%d\n", len(ls))
		return w.Flush()
	}
	fmt.Fprintln(w, "ID\tFAILED_AT\tTAG\tTENANT\tKEY\tSOURCE")
	for _, l := range ls {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s/%d/%d\n", l.ID(), l.FailedAt.Format(time.RFC3339), l.Tag, l.Tenant,
			strconv.Quote(string(l.Key)), l.SourceTopic, l.SourcePartition, l.SourceOffset)
	}
	return w.Flush()
}

func (a *app) dlqShow(ctx context.Context, id string) error {
	if _, _, _, _, err := dlq.ParseID(id); err != nil {
		return badInput{err}
	}
	src, err := a.source(ctx)
	if err != nil {
		return err
	}
	ls, err := src.Letters(ctx, dlq.Filter{IDs: []string{id}})
	if err != nil {
		return err
	}
	if len(ls) == 0 {
		return badInput{fmt.Errorf("letter %s: not found in %s or dead_letters", id, a.cfg.Kafka.DLQTopic)}
	}
	l := ls[0]
	fmt.Fprintf(a.out, "id:        %s\nfailed_at: %s\ntag:       %s\nreason:    %s\ntenant:    %s\nsource:    %s/%d/%d\nkey:       %s\n",
		l.ID(), l.FailedAt.Format(time.RFC3339Nano), l.Tag, l.Reason, l.Tenant, l.SourceTopic, l.SourcePartition,
		l.SourceOffset, strconv.Quote(string(l.Key)))
	for _, h := range l.Headers {
		fmt.Fprintf(a.out, "header:    %s=%s\n", h.Key, strconv.Quote(string(h.Value)))
	}
	// The original bytes, quoted so that control bytes and invalid UTF-8
	// stay visible; the raw bytes follow on their own line.
	fmt.Fprintf(a.out, "value:     %s\n", strconv.Quote(string(l.Value)))
	fmt.Fprintf(a.out, "--- original bytes (%d) ---\n", len(l.Value))
	_, err = a.out.Write(append(l.Value, '\n'))
	return err
}

func (a *app) dlqReplay(ctx context.Context) error {
	f, err := a.filter()
	if err != nil {
		return err
	}
	renames, _ := a.flags.GetStringArray("rename")
	sets, _ := a.flags.GetStringArray("set")
	t, err := dlq.ParseTransform(renames, sets)
	if err != nil {
		return badInput{fmt.Errorf("--%w", err)}
	}
	dry, _ := a.flags.GetBool("dry-run")
	src, err := a.source(ctx)
	if err != nil {
		return err
	}
	ls, err := src.Letters(ctx, f)
	if err != nil {
		return err
	}
	rp := dlq.Replayer{Brokers: a.cfg.Kafka.Brokers, EventsTopic: a.cfg.Kafka.Topic, Conn: src.Conn,
		Validator: schemas.NewValidator(), Log: a.log}
	rep, err := rp.Replay(ctx, ls, t, dry)
	if err != nil {
		return err
	}
	w := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "LETTER\tTENANT\tEVENT_ID\tOUTCOME\tDETAIL")
	for _, d := range rep.Decisions {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", d.Letter.ID(), d.Tenant, d.EventID, d.Outcome, d.Detail)
	}
	_ = w.Flush()
	mode := "replay"
	if dry {
		mode = "dry run (nothing published or recorded)"
	}
	fmt.Fprintf(a.out, "%s %s: %d letters;", mode, rep.ReplayID, len(rep.Decisions))
	for _, o := range []string{dlq.Replayed, dlq.WouldReplay, dlq.AlreadyStored, dlq.AlreadyReplayed, dlq.DuplicateLetter, dlq.StillInvalid} {
		if n := rep.Counts[o]; n > 0 {
			fmt.Fprintf(a.out, " %s %d", o, n)
		}
	}
	fmt.Fprintln(a.out)
	return nil
}

func (a *app) planner(ctx context.Context) (retention.Planner, error) {
	conn, err := a.clickhouse(ctx)
	if err != nil {
		return retention.Planner{}, err
	}
	return retention.Planner{Conn: conn, Cfg: a.cfg.Retention, Log: a.log}, nil
}

func (a *app) printPlan(plan []retention.Partition) {
	w := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "TABLE\tPARTITION\tROWS\tBYTES\tACTION\tWHY")
	for _, p := range plan {
		act := "keep"
		if p.Drop {
			act = "drop"
		}
		fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%s\t%s\n", p.Table, p.ID, p.Rows, p.Bytes, act, p.Because)
	}
	_ = w.Flush()
}

func (a *app) retentionPlan(ctx context.Context) error {
	p, err := a.planner(ctx)
	if err != nil {
		return err
	}
	plan, err := p.Plan(ctx, time.Now().UTC())
	if err != nil {
		return err
	}
	a.printPlan(plan)
	return nil
}

func (a *app) retentionApply(ctx context.Context) error {
	p, err := a.planner(ctx)
	if err != nil {
		return err
	}
	for {
		dropped, err := p.Apply(ctx, time.Now().UTC())
		if err != nil {
			return err
		}
		a.printPlan(dropped)
		fmt.Fprintf(a.out, "dropped %d partitions\n", len(dropped))
		if a.cfg.Retention.Every <= 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(a.cfg.Retention.Every):
		}
	}
}

func (a *app) backfillOffsets(ctx context.Context) error {
	group, topic := a.str("group"), a.str("topic")
	if topic == "" {
		topic = a.cfg.Kafka.Topic
	}
	if group == "" {
		return badInput{errors.New("--group: required (the consumer group to move, e.g. usage-consumer)")}
	}
	at, err := a.timeFlag("at")
	if err != nil {
		return err
	}
	if at.IsZero() {
		return badInput{errors.New("--at: required (RFC 3339: re-read from the first record at or after it)")}
	}
	r := backfill.Resetter{Brokers: a.cfg.Kafka.Brokers}
	plan, err := r.Plan(ctx, group, topic, at)
	if err != nil {
		return err
	}
	w := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "PARTITION\tCOMMITTED\tTARGET\tRE-READ")
	for _, p := range plan {
		fmt.Fprintf(w, "%d\t%d\t%d\t%d\n", p.Partition, p.Committed, p.Target, max(p.Committed-p.Target, 0))
	}
	_ = w.Flush()
	if apply, _ := a.flags.GetBool("apply"); !apply {
		fmt.Fprintln(a.out, "plan only: add --apply to commit it (stop the group's members first)")
		return nil
	}
	if err := r.Apply(ctx, group, topic, plan); err != nil {
		return err
	}
	fmt.Fprintf(a.out, "committed %d partitions of %s for %s\n", len(plan), topic, group)
	return nil
}

// exporter serves the metrics only ClickHouse knows (checkpoint ages, the
// dead_letters backlog) until SIGTERM.
func (a *app) exporter(ctx context.Context) error {
	conn, err := a.clickhouse(ctx)
	if err != nil {
		return err
	}
	reg := svckit.Registry()
	reg.MustRegister(exporter.New(conn, a.log, 10*time.Second))
	srv, err := svckit.ServeHTTP(a.cfg.HTTP.Addr, reg, a.log, nil)
	if err != nil {
		return err
	}
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return srv.Shutdown(sctx)
}
