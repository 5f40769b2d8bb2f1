// Package server is usage-api's HTTP face: quota checks and tracking for
// apps in other languages, answered from a quota.Cache in this process.
package server

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/usagemeter/usagemeter/api/usageread"
	"github.com/usagemeter/usagemeter/quota"
	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/schemas/plans"
)

// Config bounds requests.
type Config struct {
	MaxBodyBytes int64         `mapstructure:"max_body_bytes"` // per request body
	MaxWait      time.Duration `mapstructure:"max_wait"`       // the largest wait_ms accepted
	UpgradeURL   string        `mapstructure:"upgrade_url"`    // in 402 answers; {tenant} is replaced
}

// PublishTimeout bounds one /v1/track publish (acks=all): a server's write
// timeout must leave room for it and for the longest wait_ms.
const PublishTimeout = 10 * time.Second

// DefaultConfig: 16 KiB bodies (an event is at most 32 KiB on the wire but
// a request here carries no more than a few fields), waits up to 5 s.
func DefaultConfig() Config {
	return Config{MaxBodyBytes: 16 << 10, MaxWait: 5 * time.Second, UpgradeURL: "https://billing.example.com/upgrade?tenant={tenant}"}
}

// Server answers /v1/check, /v1/track and /v1/quotas/{tenant}, and the
// probes /livez and /readyz.
type Server struct {
	cfg       Config
	cache     *quota.Cache
	keys      *Keys
	tracker   quota.Tracker
	log       *zap.Logger
	validator *schemas.Validator // the contract's, as the consumer applies it
	meterList string             // the plans file's meters, for errors

	answers          *prometheus.CounterVec
	checkOK, trackOK prometheus.Counter // answers{route, "200"}, resolved once: the hot paths
	batchOK          prometheus.Counter // answers{check_batch, 200}
	batchChecks      prometheus.Counter // checks answered in batches
	bufs             sync.Pool          // *[]byte response buffers
	reqBufs          sync.Pool          // *reqBuf: request bodies, their members, event text
	jsonType         []string           // {"application/json"}, shared by answers: never written to
	trackFailed      prometheus.Counter
	checkLatency     prometheus.Histogram
	usageFailed      prometheus.Counter
	usage            *usageread.Reader // nil: usage reads not configured
	auditFailed      prometheus.Counter
	assign           *Assigner  // nil: no plan changes from the admin page
	ops              *Ops       // nil: no lag or DLQ counts on the admin page
	alerts           *AlertFeed // nil: no alerts on the pages
	plans            *plans.Config
	now              func() time.Time // time.Now; WithClock (tests: a period of another date)
}

// New returns a server for the meters of p (the plans file c was built
// from); tracker publishes /v1/track's events.
func New(cfg Config, c *quota.Cache, p *plans.Config, keys *Keys, tracker quota.Tracker, log *zap.Logger, reg prometheus.Registerer) *Server {
	s := &Server{cfg: cfg, cache: c, keys: keys, tracker: tracker, log: log, validator: schemas.NewValidator(),
		answers: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "usage_api_answers_total",
			Help: "Answers by route and status code."}, []string{"route", "code"}),
		trackFailed: prometheus.NewCounter(prometheus.CounterOpts{Name: "usage_api_track_failures_total",
			Help: "Allowed /v1/track calls whose event could not be published (answered 503; pending released)."}),
		checkLatency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "usage_api_decision_seconds",
			Help: "Time to answer /v1/check and /v1/track, from body read to response written.", Buckets: prometheus.ExponentialBuckets(5e-6, 4, 8)}),
	}
	s.usageFailed = prometheus.NewCounter(prometheus.CounterOpts{Name: "usage_api_usage_read_failures_total",
		Help: "GET /v1/usage and usage pages whose ClickHouse read failed (answered 503)."})
	s.auditFailed = prometheus.NewCounter(prometheus.CounterOpts{Name: "usage_api_plan_change_audit_failures_total",
		Help: "Plan changes published from the admin page whose plan_changes audit row could not be written."})
	s.plans, s.now = p, time.Now
	s.checkOK, s.trackOK = s.answers.WithLabelValues("check", "200"), s.answers.WithLabelValues("track", "200")
	s.batchOK = s.answers.WithLabelValues("check_batch", "200")
	s.batchChecks = prometheus.NewCounter(prometheus.CounterOpts{Name: "usage_api_batch_checks_total",
		Help: "Checks answered by POST /v1/check/batch (200 answers only)."})
	// The meters quota knows: those the plans file defines or a plan limits.
	known := map[string]bool{}
	for m := range p.Meters {
		known[m] = true
	}
	for _, pl := range p.Plans {
		for m := range pl.Meters {
			known[m] = true
		}
	}
	names := make([]string, 0, len(known))
	for m := range known {
		names = append(names, m)
	}
	slices.Sort(names)
	s.meterList = strings.Join(names, ", ")
	s.bufs.New = func() any { b := make([]byte, 0, 1024); return &b }
	s.jsonType = []string{"application/json"}
	reg.MustRegister(s.answers, s.batchChecks, s.trackFailed, s.checkLatency, s.usageFailed, s.auditFailed,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "usage_api_cache_offset_lag", Help: "Records of both topics the quota cache had not read at its last poll."},
			func() float64 { return float64(c.Stats().Lag) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "usage_api_cache_broker_reachable", Help: "1 when the last high-water-mark poll reached the broker."},
			func() float64 {
				if c.Stats().Reachable {
					return 1
				}
				return 0
			}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "usage_api_ready", Help: "1 when /readyz answers 200: the quota cache caught up and is fresh."},
			func() float64 {
				if d := c.Peek(context.Background(), readyProbe, readyProbe); d.Staleness.Ready && !d.Staleness.Stale {
					return 1
				}
				return 0
			}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "usage_api_cache_states_total", Help: "Quota states read."},
			func() float64 { return float64(c.Stats().States) }))
	return s
}

// Register adds the routes to mux: the API, and the probes. /livez is
// liveness (the process answers HTTP); /readyz is readiness (the quota
// cache has caught up and is fresh, so decisions are not stale), and
// /healthz answers as /readyz: it must never say ok while every track gets
// 503.
func (s *Server) Register(mux *http.ServeMux) {
	mux.HandleFunc("POST /v1/check", s.check)
	mux.HandleFunc("POST /v1/check/batch", s.checkBatch)
	mux.HandleFunc("POST /v1/track", s.track)
	mux.HandleFunc("GET /v1/quotas/{tenant}", s.quotas)
	mux.HandleFunc("GET /v1/usage/{tenant}", s.usageRows)
	mux.HandleFunc("GET /usage/{tenant}", s.tenantPage)
	mux.HandleFunc("GET /login", s.login)
	mux.HandleFunc("GET /admin", s.adminPage)
	mux.HandleFunc("POST /admin/plan", s.changePlan)
	mux.HandleFunc("POST /admin/grant", s.grantQuota)
	mux.HandleFunc("POST /login", s.login)
	mux.HandleFunc("GET /livez", func(w http.ResponseWriter, _ *http.Request) { writeRaw(w, http.StatusOK, []byte(`{"live":true}`+"\n")) })
	ready := Readiness(s.cache)
	mux.HandleFunc("GET /readyz", ready)
	mux.HandleFunc("GET /healthz", ready)
}

// readyProbe is the tenant and meter whose standing /readyz reads: any
// decision carries the cache's staleness, and Peek counts nothing.
const readyProbe = "_readyz"

// Readiness answers 200 when c has read its topics up to their ends and is
// fresh (its decisions are not stale), else 503 saying why. Stale
// decisions are refused by a closed fail mode, so a server whose cache is
// stale must not be sent traffic.
func Readiness(c *quota.Cache) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) { ready(w, r, c) }
}

func ready(w http.ResponseWriter, r *http.Request, c *quota.Cache) {
	d := c.Peek(r.Context(), readyProbe, readyProbe)
	st := &d.Staleness
	status, reason := http.StatusOK, ""
	switch {
	case !st.Ready:
		status, reason = http.StatusServiceUnavailable, "the quota cache has not read its topics up to their ends yet"
	case st.Stale:
		status, reason = http.StatusServiceUnavailable, "the quota cache is stale (last caught up "+st.Age.Round(time.Millisecond).String()+" ago)"
	}
	b := append([]byte(`{"ready":`), strconv.FormatBool(status == http.StatusOK)...)
	if reason != "" {
		b = append(b, `,"reason":`...)
		b = appendString(b, reason)
	}
	b = append(b, `,"offset_lag":`...)
	b = strconv.AppendInt(b, st.OffsetLag, 10)
	b = append(b, `,"age_ms":`...)
	b = strconv.AppendInt(b, st.Age.Milliseconds(), 10)
	b = append(b, `,"reachable":`...)
	b = strconv.AppendBool(b, st.Reachable)
	if status != http.StatusOK {
		w.Header().Set("Retry-After", "1")
	}
	writeRaw(w, status, append(b, "}\n"...))
}

func (s *Server) fail(w http.ResponseWriter, route string, e *apiError) {
	s.answers.WithLabelValues(route, strconv.Itoa(e.status)).Inc()
	writeJSON(w, e.status, e)
}

// authenticate returns the caller, or answers 401. It runs before the body
// is read: a caller without a key gets nothing parsed on its behalf.
func (s *Server) authenticate(w http.ResponseWriter, r *http.Request, route string) (principal, bool) {
	p, ok := s.keys.authenticate(r)
	if !ok {
		w.Header().Set("WWW-Authenticate", `Bearer realm="usage-api"`)
		s.fail(w, route, &apiError{status: http.StatusUnauthorized, Code: codeUnauthorized, Error: "a valid API key is required: Authorization: Bearer <key>"})
		return principal{}, false
	}
	return p, true
}

// actsFor answers 403 unless p may act for tenant.
func (s *Server) actsFor(w http.ResponseWriter, route string, p principal, tenant string) bool {
	if !p.actsFor(tenant) {
		s.fail(w, route, &apiError{status: http.StatusForbidden, Code: codeForbidden, Field: "tenant_id",
			Error: "this API key does not act for tenant " + strconv.Quote(tenant)})
		return false
	}
	return true
}

// waitFor applies min_position: waits up to wait_ms for the cache to read
// it; false (409 answered) when it has not.
func (s *Server) waitFor(w http.ResponseWriter, r *http.Request, route string, p *position, waitMS int64) bool {
	if p == nil {
		return true
	}
	pos := quota.Position{Topic: p.Topic, Partition: *p.Partition, Offset: *p.Offset}
	if !s.cache.Reached(pos) && waitMS > 0 {
		ctx, cancel := context.WithTimeout(r.Context(), time.Duration(waitMS)*time.Millisecond)
		_ = s.cache.WaitFor(ctx, pos)
		cancel()
	}
	if !s.cache.Reached(pos) {
		w.Header().Set("Retry-After", "1")
		s.fail(w, route, &apiError{status: http.StatusConflict, Code: codeNotCaughtUp, Field: "min_position",
			Error: "the quota cache has not read " + p.Topic + "/" + strconv.Itoa(int(*p.Partition)) + "@" + strconv.FormatInt(*p.Offset, 10) + " yet; retry (or pass wait_ms)"})
		return false
	}
	return true
}

func (s *Server) check(w http.ResponseWriter, r *http.Request) {
	const route = "check"
	start := time.Now()
	p, ok := s.authenticate(w, r, route)
	if !ok {
		return
	}
	req, e := s.parse(w, r, checkMembers, start)
	if e != nil {
		s.fail(w, route, e)
		return
	}
	tenant, meter := req.event.TenantID, req.event.FeatureType
	if !s.actsFor(w, route, p, tenant) || !s.waitFor(w, r, route, req.minPosition, req.waitMS) {
		return
	}
	d := s.cache.Preview(r.Context(), tenant, meter, req.qty)
	setDecisionHeaders(w.Header(), &d)
	buf := s.bufs.Get().(*[]byte)
	*buf = append(appendDecision((*buf)[:0], &d), '\n')
	s.writeAnswer(w, *buf)
	s.bufs.Put(buf)
	s.checkOK.Inc()
	s.checkLatency.Observe(time.Since(start).Seconds())
}

func (s *Server) track(w http.ResponseWriter, r *http.Request) {
	const route = "track"
	start := time.Now()
	p, ok := s.authenticate(w, r, route)
	if !ok {
		return
	}
	req, e := s.parse(w, r, trackMembers, start)
	if e != nil {
		s.fail(w, route, e)
		return
	}
	ev := req.event
	if !s.actsFor(w, route, p, ev.TenantID) || !s.waitFor(w, r, route, req.minPosition, req.waitMS) {
		return
	}
	// CheckEvent, not Check: it refuses event times outside now +/- the
	// contract's skew (pending for another period would never be absorbed)
	// and answers a retried id it allowed recently as a duplicate that
	// counts nothing.
	d := s.cache.CheckEvent(r.Context(), &ev, req.qty)
	setDecisionHeaders(w.Header(), &d)
	if !d.Allowed {
		s.refuse(w, route, &d)
		return
	}
	// The request is decided: publishing must not depend on the client
	// staying connected.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), PublishTimeout)
	if !d.Duplicate {
		// Held, then acknowledged once published, so that its pending
		// expires when the aggregator's position covers it (a refused or
		// already counted event does not stay pending until the period ends).
		s.cache.Hold(d, &ev)
	}
	err := s.tracker.Track(ctx, &ev)
	cancel()
	if err == nil && !d.Duplicate {
		s.cache.Acknowledged([]schemas.UsageEvent{ev})
	}
	if err != nil {
		if !d.Duplicate { // a duplicate counted nothing; its first attempt may have been published
			s.cache.Unhold(&ev)
			s.cache.Release(d)
			s.cache.ForgetEvent(&ev)
		}
		s.trackFailed.Inc()
		var ve *schemas.ValidationError
		if errors.As(err, &ve) { // cannot happen: the contract already accepted it
			s.fail(w, route, contractError(ve))
			return
		}
		s.log.Warn("track: publish failed", zap.String("tenant", ev.TenantID), zap.String("event_id", ev.ID), zap.Error(err))
		w.Header().Set("Retry-After", "1")
		s.answers.WithLabelValues(route, "503").Inc()
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "the event could not be published; retry with the same id",
			"code": codeTrackFailed, "event_id": ev.ID})
		return
	}
	buf := s.bufs.Get().(*[]byte)
	b := append((*buf)[:0], `{"event_id":`...)
	b = appendString(b, ev.ID)
	if d.Duplicate {
		b = append(b, `,"duplicate":true`...)
	}
	b = append(b, `,"decision":`...)
	b = append(appendDecision(b, &d), "}\n"...)
	s.writeAnswer(w, b)
	*buf = b
	s.bufs.Put(buf)
	s.trackOK.Inc()
	s.checkLatency.Observe(time.Since(start).Seconds())
}

// refuse answers a refused decision. It is close to quota.Middleware's
// refusal, which is unexported and counts into the middleware's own
// stats; sharing it needs quota to export the reason -> status mapping.
// One difference is deliberate: quantity_too_large here can only mean
// that this instance's pending for the tenant and meter is full (a single
// quantity over the cap is a 400 before Check), which is neither the
// plan's limit (402) nor the caller's input: 503, retry once the quota
// state has absorbed the pending usage.
func (s *Server) refuse(w http.ResponseWriter, route string, d *quota.Decision) {
	status, code, msg, upgrade := http.StatusServiceUnavailable, quota.CodeStale, "quota state unavailable, retry later", ""
	switch d.Reason {
	case quota.ReasonLimit:
		status, code, msg = http.StatusPaymentRequired, quota.CodeLimitExceeded, "the "+d.Plan+" plan's "+d.Meter+" limit is reached for period "+d.Period
		upgrade = quota.ExpandUpgradeURL(s.cfg.UpgradeURL, d.Tenant)
	case quota.ReasonRate:
		status, code, msg = http.StatusTooManyRequests, quota.CodeRateLimited, "rate limit for "+d.Meter+" exceeded, retry later"
		// The RateLimit fields describe the bucket that refused, not the
		// period's quota (which has room), as the middleware's do.
		quota.SetRateLimitHeaders(w.Header(), d)
	case quota.ReasonTooLarge:
		code, msg = codePendingFull, "this usage-api instance holds all the pending "+d.Meter+" usage it can count ("+maxQuantity.String()+") until the quota state absorbs it; retry later"
	case quota.ReasonTimestamp:
		e := badField(codeInvalidField, "timestamp", "timestamp is more than %s from now: usage of another time is not checked against this period's quota (publish it with the producer SDK)",
			schemas.DefaultMaxFutureSkew)
		e.Tag = quota.ReasonTimestamp
		s.fail(w, route, e)
		return
	case quota.ReasonInvalidTenant, quota.ReasonUnknownMeter, quota.ReasonUnsupported:
		// validKey ran first; the plan changed since (a tenant moved to a
		// plan that limits a gauge, say).
		if e := s.validKey(d.Tenant, d.Meter); e != nil {
			s.fail(w, route, e)
			return
		}
	}
	if status != http.StatusPaymentRequired {
		w.Header().Set("Retry-After", strconv.FormatInt(max(1, int64((d.RetryAfter+time.Second-1)/time.Second)), 10))
	}
	s.answers.WithLabelValues(route, strconv.Itoa(status)).Inc()
	quota.WriteJSONError(w, status, code, msg, d, upgrade)
}

func (s *Server) quotas(w http.ResponseWriter, r *http.Request) {
	const route = "quotas"
	tenant := r.PathValue("tenant")
	p, ok := s.authenticate(w, r, route)
	if !ok {
		return
	}
	if e := s.validTenant(tenant, time.Now()); e != nil {
		s.fail(w, route, e)
		return
	}
	if !s.actsFor(w, route, p, tenant) {
		return
	}
	plan, meters := s.cache.Meters(tenant)
	b := append([]byte(`{"tenant_id":`), nil...)
	b = appendString(b, tenant)
	b = append(b, `,"plan":`...)
	b = appendString(b, plan)
	b = append(b, `,"quotas":[`...)
	for i, m := range meters {
		if i > 0 {
			b = append(b, ',')
		}
		d := s.cache.Peek(r.Context(), tenant, m)
		b = appendDecision(b, &d)
	}
	writeRaw(w, http.StatusOK, append(b, "]}\n"...))
	s.answers.WithLabelValues(route, "200").Inc()
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// writeAnswer writes a 200 JSON answer without allocating: the
// Content-Type value is the server's own []string (read only), and the
// Content-Length of a body that fits net/http's 2 KiB response buffer is
// left to net/http, which writes it without allocating.
func (s *Server) writeAnswer(w http.ResponseWriter, body []byte) {
	h := w.Header()
	h["Content-Type"] = s.jsonType
	if len(body) > 1024 {
		h["Content-Length"] = []string{strconv.Itoa(len(body))}
	}
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
}

func writeRaw(w http.ResponseWriter, status int, body []byte) {
	h := w.Header()
	h["Content-Type"] = []string{"application/json"}
	h["Content-Length"] = []string{strconv.Itoa(len(body))}
	w.WriteHeader(status)
	_, _ = w.Write(body)
}
