// Package server is usage-api's HTTP face: quota checks and tracking for
// apps in other languages, answered from a quota.Cache in this process.
package server

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/usagemeter/usagemeter/quota"
	"github.com/usagemeter/usagemeter/schemas"
)

// Config bounds requests.
type Config struct {
	MaxBodyBytes int64         `mapstructure:"max_body_bytes"` // per request body
	MaxWait      time.Duration `mapstructure:"max_wait"`       // the largest wait_ms accepted
	UpgradeURL   string        `mapstructure:"upgrade_url"`    // in 402 answers; {tenant} is replaced
}

// DefaultConfig: 16 KiB bodies (an event is at most 32 KiB on the wire but
// a request here carries no more than a few fields), waits up to 5 s.
func DefaultConfig() Config {
	return Config{MaxBodyBytes: 16 << 10, MaxWait: 5 * time.Second, UpgradeURL: "https://billing.example.com/upgrade?tenant={tenant}"}
}

// Server answers /v1/check, /v1/track and /v1/quotas/{tenant}.
type Server struct {
	cfg     Config
	cache   *quota.Cache
	keys    *Keys
	tracker quota.Tracker
	log     *zap.Logger

	answers          *prometheus.CounterVec
	checkOK, trackOK prometheus.Counter // answers{route, "200"}, resolved once: the hot paths
	bufs             sync.Pool          // *[]byte response buffers
	trackFailed      prometheus.Counter
	checkLatency     prometheus.Histogram
}

// New returns a server; tracker publishes /v1/track's events.
func New(cfg Config, c *quota.Cache, keys *Keys, tracker quota.Tracker, log *zap.Logger, reg prometheus.Registerer) *Server {
	s := &Server{cfg: cfg, cache: c, keys: keys, tracker: tracker, log: log,
		answers: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "usage_api_answers_total",
			Help: "Answers by route and status code."}, []string{"route", "code"}),
		trackFailed: prometheus.NewCounter(prometheus.CounterOpts{Name: "usage_api_track_failures_total",
			Help: "Allowed /v1/track calls whose event could not be published (answered 503; pending released)."}),
		checkLatency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "usage_api_decision_seconds",
			Help: "Time to answer /v1/check and /v1/track, from body read to response written.", Buckets: prometheus.ExponentialBuckets(5e-6, 4, 8)}),
	}
	s.checkOK, s.trackOK = s.answers.WithLabelValues("check", "200"), s.answers.WithLabelValues("track", "200")
	s.bufs.New = func() any { b := make([]byte, 0, 1024); return &b }
	reg.MustRegister(s.answers, s.trackFailed, s.checkLatency,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "usage_api_cache_offset_lag", Help: "Records of both topics the quota cache had not read at its last poll."},
			func() float64 { return float64(c.Stats().Lag) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "usage_api_cache_broker_reachable", Help: "1 when the last high-water-mark poll reached the broker."},
			func() float64 {
				if c.Stats().Reachable {
					return 1
				}
				return 0
			}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "usage_api_cache_states_total", Help: "Quota states read."},
			func() float64 { return float64(c.Stats().States) }))
	return s
}

// Register adds the routes to mux.
func (s *Server) Register(mux *http.ServeMux) {
	mux.HandleFunc("POST /v1/check", s.check)
	mux.HandleFunc("POST /v1/track", s.track)
	mux.HandleFunc("GET /v1/quotas/{tenant}", s.quotas)
}

func (s *Server) fail(w http.ResponseWriter, route string, e *apiError) {
	s.answers.WithLabelValues(route, strconv.Itoa(e.status)).Inc()
	writeJSON(w, e.status, e)
}

// auth returns the caller, or answers 401/403.
func (s *Server) auth(w http.ResponseWriter, r *http.Request, route, tenant string) bool {
	p, ok := s.keys.authenticate(r)
	if !ok {
		w.Header().Set("WWW-Authenticate", `Bearer realm="usage-api"`)
		s.fail(w, route, &apiError{status: http.StatusUnauthorized, Code: codeUnauthorized, Error: "a valid API key is required: Authorization: Bearer <key>"})
		return false
	}
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
	var cr checkRequest
	if e := decode(w, r, s.cfg.MaxBodyBytes, &cr); e != nil {
		s.fail(w, route, e)
		return
	}
	req := request{TenantID: cr.TenantID, FeatureType: cr.FeatureType, Quantity: cr.Quantity, MinPosition: cr.MinPosition, WaitMS: cr.WaitMS}
	qty, e := req.validate(s.cfg.MaxWait.Milliseconds())
	if e != nil {
		s.fail(w, route, e)
		return
	}
	if !s.auth(w, r, route, req.TenantID) || !s.waitFor(w, r, route, req.MinPosition, req.WaitMS) {
		return
	}
	d := s.cache.Preview(r.Context(), req.TenantID, req.FeatureType, qty)
	quota.SetHeaders(w.Header(), &d)
	buf := s.bufs.Get().(*[]byte)
	*buf = append(appendDecision((*buf)[:0], &d), '\n')
	writeRaw(w, http.StatusOK, *buf)
	s.bufs.Put(buf)
	s.checkOK.Inc()
	s.checkLatency.Observe(time.Since(start).Seconds())
}

func (s *Server) track(w http.ResponseWriter, r *http.Request) {
	const route = "track"
	start := time.Now()
	var req request
	if e := decode(w, r, s.cfg.MaxBodyBytes, &req); e != nil {
		s.fail(w, route, e)
		return
	}
	qty, e := req.validate(s.cfg.MaxWait.Milliseconds())
	if e != nil {
		s.fail(w, route, e)
		return
	}
	ev := schemas.UsageEvent{ID: req.ID, TenantID: req.TenantID, FeatureType: req.FeatureType, Quantity: qty.Decimal(),
		UserID: req.UserID, Metadata: req.Metadata}
	if req.Timestamp != "" {
		ts, err := time.Parse(time.RFC3339Nano, req.Timestamp)
		if err != nil {
			s.fail(w, route, badField(codeInvalidField, "timestamp", "timestamp %q is not RFC 3339", req.Timestamp))
			return
		}
		ev.Timestamp = ts
	}
	if !s.auth(w, r, route, req.TenantID) || !s.waitFor(w, r, route, req.MinPosition, req.WaitMS) {
		return
	}
	d := s.cache.Check(r.Context(), req.TenantID, req.FeatureType, qty)
	quota.SetHeaders(w.Header(), &d)
	if !d.Allowed {
		s.refuse(w, route, &d)
		return
	}
	// The request is decided: publishing must not depend on the client
	// staying connected.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 10*time.Second)
	err := s.tracker.Track(ctx, &ev)
	cancel()
	if err != nil {
		s.cache.Release(d)
		s.trackFailed.Inc()
		var ve *schemas.ValidationError
		if errors.As(err, &ve) { // the event itself is invalid: the caller's fault
			s.fail(w, route, badField(codeInvalidField, ve.Field, "%s", ve.Reason))
			return
		}
		s.log.Warn("track: publish failed", zap.String("tenant", req.TenantID), zap.String("event_id", ev.ID), zap.Error(err))
		w.Header().Set("Retry-After", "1")
		s.answers.WithLabelValues(route, "503").Inc()
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "the event could not be published; retry with the same id",
			"code": codeTrackFailed, "event_id": ev.ID})
		return
	}
	buf := s.bufs.Get().(*[]byte)
	b := append((*buf)[:0], `{"event_id":`...)
	b = appendString(b, ev.ID)
	b = append(b, `,"decision":`...)
	b = append(appendDecision(b, &d), "}\n"...)
	writeRaw(w, http.StatusOK, b)
	*buf = b
	s.bufs.Put(buf)
	s.trackOK.Inc()
	s.checkLatency.Observe(time.Since(start).Seconds())
}

func (s *Server) refuse(w http.ResponseWriter, route string, d *quota.Decision) {
	status, code, msg, upgrade := http.StatusServiceUnavailable, quota.CodeStale, "quota state unavailable, retry later", ""
	switch d.Reason {
	case quota.ReasonLimit, quota.ReasonTooLarge:
		status, code, msg = http.StatusPaymentRequired, quota.CodeLimitExceeded, "the "+d.Plan+" plan's "+d.Meter+" limit is reached for period "+d.Period
		upgrade = quota.ExpandUpgradeURL(s.cfg.UpgradeURL, d.Tenant)
	case quota.ReasonRate:
		status, code, msg = http.StatusTooManyRequests, quota.CodeRateLimited, "rate limit for "+d.Meter+" exceeded, retry later"
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
	if !s.auth(w, r, route, tenant) {
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

func writeRaw(w http.ResponseWriter, status int, body []byte) {
	h := w.Header()
	h["Content-Type"] = []string{"application/json"}
	h["Content-Length"] = []string{strconv.Itoa(len(body))}
	w.WriteHeader(status)
	_, _ = w.Write(body)
}
