// Command usage-demo-app is the app of `make run`: one endpoint,
// POST /v1/generate (one ai_generation for the tenant in X-Tenant), behind
// quota.Middleware, and a page at / saying what it allowed and refused.
//
//	usage-demo-app -addr 127.0.0.1:9471 -brokers 127.0.0.1:19092
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"html/template"
	"io"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/felixge/httpsnoop"
	"go.uber.org/zap"

	"github.com/usagemeter/usagemeter/api/server"
	"github.com/usagemeter/usagemeter/producer"
	"github.com/usagemeter/usagemeter/quota"
	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/schemas/plans"
)

func main() {
	var (
		addr      = flag.String("addr", "127.0.0.1:9471", "listen address")
		brokers   = flag.String("brokers", "127.0.0.1:19092", "comma-separated Kafka brokers")
		plansFile = flag.String("plans", "schemas/plans/plans.example.yaml", "meters and plans YAML")
		events    = flag.String("events-topic", producer.DefaultTopic, "usage events topic")
		upgrade   = flag.String("upgrade-url", "https://billing.example.com/upgrade?tenant={tenant}", "link in 402 answers")
		state     = flag.String("state-topic", quota.DefaultConfig().StateTopic, "quota state topic")
		assign    = flag.String("assignment-topic", quota.DefaultConfig().AssignmentTopic, "plan assignments topic")
		timeout   = flag.Duration("read-timeout", 10*time.Second, "the longest a request may take to arrive, body included")
		outboxDir = flag.String("outbox-dir", "", "keep served but undelivered usage here across restarts (empty: memory only)")
	)
	flag.Parse()
	log, _ := zap.NewProduction()
	defer func() { _ = log.Sync() }()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	cfg := quota.DefaultConfig()
	cfg.Brokers, cfg.StateTopic, cfg.AssignmentTopic = strings.Split(*brokers, ","), *state, *assign
	if err := run(ctx, *addr, cfg, *plansFile, *events, *upgrade, *outboxDir, *timeout, log); err != nil {
		log.Error("usage-demo-app failed", zap.Error(err))
		os.Exit(1)
	}
}

// tally counts answers per tenant for the page.
type tally struct {
	mu      sync.Mutex
	tenants map[string]*counts
}

type counts struct{ OK, Refused, RateLimited, Other int64 }

func (t *tally) add(tenant string, status int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	c, ok := t.tenants[tenant]
	if !ok {
		c = &counts{}
		t.tenants[tenant] = c
	}
	switch {
	case status < 300:
		c.OK++
	case status == http.StatusPaymentRequired:
		c.Refused++
	case status == http.StatusTooManyRequests:
		c.RateLimited++
	default:
		c.Other++
	}
}

// record wraps w to learn the answer's final status (1xx are
// informational; a later, superfluous WriteHeader changes nothing) while
// keeping every optional interface of w (http.Flusher and the rest, which
// the middleware uses to answer before tracking), with httpsnoop as the
// middleware does. status is 200 when the handler wrote nothing.
func record(w http.ResponseWriter) (_ http.ResponseWriter, status func() int) {
	code := 0
	final := func(c int) {
		if code == 0 && (c >= 200 || c == http.StatusSwitchingProtocols) {
			code = c
		}
	}
	sw := httpsnoop.Wrap(w, httpsnoop.Hooks{
		WriteHeader: func(next httpsnoop.WriteHeaderFunc) httpsnoop.WriteHeaderFunc {
			return func(c int) { final(c); next(c) }
		},
		Write: func(next httpsnoop.WriteFunc) httpsnoop.WriteFunc {
			return func(b []byte) (int, error) { final(http.StatusOK); return next(b) }
		},
		ReadFrom: func(next httpsnoop.ReadFromFunc) httpsnoop.ReadFromFunc {
			return func(src io.Reader) (int64, error) { final(http.StatusOK); return next(src) }
		},
	})
	return sw, func() int {
		if code == 0 {
			return http.StatusOK
		}
		return code
	}
}

func run(ctx context.Context, addr string, cfg quota.Config, plansFile, events, upgrade, outboxDir string, readTimeout time.Duration, log *zap.Logger) error {
	p, err := plans.Load(plansFile)
	if err != nil {
		return err
	}
	brokers := cfg.Brokers
	cache, err := quota.New(cfg, p, log.Named("quota"))
	if err != nil {
		return err
	}
	// A sync publisher behind the middleware's outbox: the response never
	// waits for it (the outbox delivers in batches), a failed delivery stays
	// in the outbox and is retried, and acknowledged events let the cache
	// expire their pending (quota/README.md).
	pub, err := producer.New(brokers, producer.WithTopic(events))
	if err != nil {
		return err
	}
	defer func() { _ = pub.Close() }()
	go func() { _ = cache.Run(ctx) }()
	outbox, err := quota.NewOutbox(quota.OutboxConfig{Dir: outboxDir}, quota.NewProducerTracker(pub), log.Named("outbox"))
	if err != nil {
		return err
	}
	outboxCtx, stopOutbox := context.WithCancel(context.Background())
	defer stopOutbox()
	outboxDone := make(chan struct{})
	go func() { defer close(outboxDone); _ = outbox.Run(outboxCtx) }()

	mw, err := quota.NewMiddleware(cache, quota.MiddlewareConfig{
		Meter:      schemas.MeterAIGeneration,
		Tenant:     func(r *http.Request) string { return r.Header.Get("X-Tenant") },
		UserID:     func(r *http.Request) string { return r.Header.Get("X-User") },
		UpgradeURL: upgrade,
		Tracker:    outbox,
		OnTrackError: func(err error) {
			log.Warn("tracking failed", zap.Error(err))
		},
	})
	if err != nil {
		return err
	}
	t := &tally{tenants: map[string]*counts{}}
	generate := mw.Wrap(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte(`{"result":"a generated picture"}` + "\n"))
	}))
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/generate", func(w http.ResponseWriter, r *http.Request) {
		rec, status := record(w)
		generate.ServeHTTP(rec, r)
		t.add(r.Header.Get("X-Tenant"), status())
	})
	// Liveness and readiness as usage-api's (api/README.md).
	mux.HandleFunc("GET /livez", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(`{"live":true}` + "\n")) })
	mux.Handle("GET /readyz", server.Readiness(cache))
	mux.Handle("GET /healthz", server.Readiness(cache))
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) { page(w, r, cache, mw, t) })
	// Serve once the cache has caught up: before that it knows no usage.
	if err := cache.WaitReady(ctx); err != nil {
		return err
	}
	// Every connection is bounded; the write timeout leaves room for the
	// middleware's tracking (up to 10 s), which runs before the handler
	// returns and its buffered answer is flushed.
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: readTimeout,
		WriteTimeout: 30 * time.Second, IdleTimeout: 2 * time.Minute}
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	log.Info("usage-demo-app listening", zap.String("addr", "http://"+addr))
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	stopOutbox() // what it still holds stays in -outbox-dir for the next start
	<-outboxDone
	log.Info("usage-demo-app stopped", zap.Int("undelivered", outbox.Len()), zap.String("outbox_dir", outboxDir))
	return nil
}

var pageTmpl = template.Must(template.New("page").Parse(`<!doctype html><html><head><meta charset="utf-8">
<meta http-equiv="refresh" content="2"><title>usage-demo-app</title>
<style>body{font-family:sans-serif;margin:2em}td,th{padding:.2em .8em;text-align:right}th{background:#eee}td:first-child{text-align:left}
.blocked{color:#b00}.big{font-size:1.4em}</style></head><body>
<h1>usage-demo-app: POST /v1/generate behind quota.Middleware (ai_generation)</h1>
<p class="big"><b>{{.Refused}}</b> requests refused with 402 (limit), {{.RateLimited}} with 429; {{.OK}} served.
Tracked {{.Stats.Tracked}} usage events, {{.Stats.TrackFailures}} tracking failures, {{.Backlog}} waiting in the outbox for the broker.</p>
<p>Quota cache: {{.Cache.States}} states read, lag {{.Cache.Lag}} records, broker reachable: {{.Cache.Reachable}}.</p>
<table><tr><th>tenant</th><th>plan</th><th>served</th><th>refused (402)</th><th>usage</th><th>limit</th><th>level</th><th>pending</th><th>state age</th></tr>
{{range .Rows}}<tr><td>{{.Tenant}}</td><td>{{.Plan}}</td><td>{{.C.OK}}</td><td class="blocked">{{.C.Refused}}</td><td>{{.Usage}}</td><td>{{.Limit}}</td>
<td{{if eq .Level "blocked"}} class="blocked"{{end}}>{{.Level}}</td><td>{{.Pending}}</td><td>{{.Age}}</td></tr>
{{end}}</table></body></html>`))

type row struct {
	Tenant, Plan, Usage, Limit, Level, Pending, Age string
	C                                               counts
}

func page(w http.ResponseWriter, r *http.Request, cache *quota.Cache, mw *quota.Middleware, t *tally) {
	t.mu.Lock()
	var rows []row
	var total counts
	for tenant, c := range t.tenants {
		d := cache.Peek(r.Context(), tenant, schemas.MeterAIGeneration)
		q := quota.QuotaOf(&d)
		rows = append(rows, row{Tenant: tenant, Plan: d.Plan, Usage: q.Usage, Limit: q.Limit, Level: q.Level,
			Pending: d.Pending.String(), Age: d.Staleness.Age.Round(time.Millisecond).String(), C: *c})
		total.OK += c.OK
		total.Refused += c.Refused
		total.RateLimited += c.RateLimited
	}
	t.mu.Unlock()
	slices.SortFunc(rows, func(a, b row) int { return strings.Compare(a.Tenant, b.Tenant) })
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	err := pageTmpl.Execute(w, map[string]any{"Rows": rows, "Refused": total.Refused, "RateLimited": total.RateLimited,
		"OK": total.OK, "Stats": mw.Stats(), "Cache": cache.Stats(), "Backlog": mw.Outbox().Len()})
	if err != nil {
		fmt.Fprintln(os.Stderr, "page:", err)
	}
}
