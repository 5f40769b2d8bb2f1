package quota

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/usagemeter/usagemeter/schemas"
)

// TrackMode says when the middleware publishes the usage event.
type TrackMode string

const (
	TrackAlways TrackMode = "always" // whatever the handler answered
	TrackOn2xx  TrackMode = "2xx"    // only when the handler answered 2xx (default)
	TrackNever  TrackMode = "never"  // the app publishes itself
)

// Error codes in JSON refusals.
const (
	CodeLimitExceeded = "USAGE_LIMIT_EXCEEDED" // 402
	CodeRateLimited   = "RATE_LIMITED"         // 429
	CodeStale         = "QUOTA_STATE_STALE"    // 503: stale state and a closed fail mode
	CodeNoTenant      = "TENANT_REQUIRED"      // 401
)

// MiddlewareConfig configures Middleware.
type MiddlewareConfig struct {
	// Meter is the feature_type a request uses, e.g. ai_generation.
	Meter string
	// Tenant returns the request's tenant ("" answers 401). Required.
	Tenant func(*http.Request) string
	// Quantity returns how much a request uses; nil means 1.
	Quantity func(*http.Request) Amount
	// UserID and Metadata feed the published event; both optional.
	UserID   func(*http.Request) string
	Metadata func(*http.Request) map[string]string
	// UpgradeURL is the link in a 402 ({tenant} is replaced by the tenant).
	UpgradeURL string
	Track      TrackMode // default TrackOn2xx
	// Tracker publishes the usage event (see NewProducerTracker). Required
	// unless Track is TrackNever.
	Tracker Tracker
	// OnTrackError is told about every tracking failure (for the log); the
	// request has already been answered and is never failed for it.
	OnTrackError func(error)
}

// Tracker publishes one usage event.
type Tracker interface {
	Track(ctx context.Context, e *schemas.UsageEvent) error
}

// Middleware checks quotas before a handler and tracks usage after it.
type Middleware struct {
	c     *Cache
	cfg   MiddlewareConfig
	stats struct {
		allowed, limited, rateLimited, stale, tracked, trackFailures atomic.Int64
	}
}

// MiddlewareStats are counts since NewMiddleware.
type MiddlewareStats struct {
	Allowed, Limited, RateLimited, Stale, Tracked, TrackFailures int64
}

// NewMiddleware returns middleware for one meter.
func NewMiddleware(c *Cache, cfg MiddlewareConfig) (*Middleware, error) {
	if cfg.Meter == "" || cfg.Tenant == nil {
		return nil, errors.New("quota middleware: Meter and Tenant are required")
	}
	if cfg.Track == "" {
		cfg.Track = TrackOn2xx
	}
	switch cfg.Track {
	case TrackAlways, TrackOn2xx:
		if cfg.Tracker == nil {
			return nil, errors.New("quota middleware: a Tracker is required unless Track is never")
		}
	case TrackNever:
	default:
		return nil, errors.New("quota middleware: Track must be always, 2xx or never")
	}
	return &Middleware{c: c, cfg: cfg}, nil
}

// Stats returns the counts.
func (m *Middleware) Stats() MiddlewareStats {
	return MiddlewareStats{Allowed: m.stats.allowed.Load(), Limited: m.stats.limited.Load(), RateLimited: m.stats.rateLimited.Load(),
		Stale: m.stats.stale.Load(), Tracked: m.stats.tracked.Load(), TrackFailures: m.stats.trackFailures.Load()}
}

// Wrap returns next behind the quota check.
func (m *Middleware) Wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tenant := m.cfg.Tenant(r)
		if tenant == "" {
			WriteJSONError(w, http.StatusUnauthorized, CodeNoTenant, "no tenant for this request", nil, "")
			return
		}
		qty := Units(1)
		if m.cfg.Quantity != nil {
			qty = m.cfg.Quantity(r)
		}
		d := m.c.Check(r.Context(), tenant, m.cfg.Meter, qty)
		SetHeaders(w.Header(), &d)
		if !d.Allowed {
			m.refuse(w, &d)
			return
		}
		m.stats.allowed.Add(1)
		sw := &statusWriter{ResponseWriter: w}
		next.ServeHTTP(sw, r)
		status := sw.status
		if status == 0 {
			status = http.StatusOK
		}
		if m.cfg.Track == TrackNever || (m.cfg.Track == TrackOn2xx && (status < 200 || status > 299)) {
			m.c.Release(d)
			return
		}
		m.track(r, tenant, qty, &d)
	})
}

func (m *Middleware) track(r *http.Request, tenant string, qty Amount, d *Decision) {
	e := schemas.UsageEvent{TenantID: tenant, FeatureType: m.cfg.Meter, Quantity: qty.Decimal(), Timestamp: m.c.now()}
	if m.cfg.UserID != nil {
		e.UserID = m.cfg.UserID(r)
	}
	if m.cfg.Metadata != nil {
		e.Metadata = m.cfg.Metadata(r)
	}
	// The request is answered: tracking must not depend on the client
	// staying connected, nor take longer than a few seconds.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 10*time.Second)
	defer cancel()
	if err := m.cfg.Tracker.Track(ctx, &e); err != nil {
		m.stats.trackFailures.Add(1)
		m.c.Release(*d) // not published: the aggregator will never count it
		if m.cfg.OnTrackError != nil {
			m.cfg.OnTrackError(err)
		}
		return
	}
	m.stats.tracked.Add(1)
}

func (m *Middleware) refuse(w http.ResponseWriter, d *Decision) {
	switch d.Reason {
	case ReasonRate:
		m.stats.rateLimited.Add(1)
		setRetryAfter(w.Header(), d.RetryAfter)
		WriteJSONError(w, http.StatusTooManyRequests, CodeRateLimited, "rate limit for "+d.Meter+" exceeded, retry later", d, "")
	case ReasonLimit, ReasonTooLarge:
		m.stats.limited.Add(1)
		WriteJSONError(w, http.StatusPaymentRequired, CodeLimitExceeded,
			"the "+d.Plan+" plan's "+d.Meter+" limit is reached for period "+d.Period, d, ExpandUpgradeURL(m.cfg.UpgradeURL, d.Tenant))
	default:
		m.stats.stale.Add(1)
		setRetryAfter(w.Header(), d.RetryAfter)
		WriteJSONError(w, http.StatusServiceUnavailable, CodeStale, "quota state unavailable, retry later", d, "")
	}
}

// ExpandUpgradeURL replaces {tenant} in u.
func ExpandUpgradeURL(u, tenant string) string {
	for i := 0; i+len("{tenant}") <= len(u); i++ {
		if u[i:i+len("{tenant}")] == "{tenant}" {
			return u[:i] + tenant + u[i+len("{tenant}"):]
		}
	}
	return u
}

func setRetryAfter(h http.Header, d time.Duration) {
	secs := int64((d + time.Second - 1) / time.Second)
	h.Set("Retry-After", strconv.FormatInt(max(1, secs), 10))
}

// SetHeaders writes the usage headers of d: X-Usage-Current, -Limit and
// -Remaining (-1 when unlimited), X-Usage-Warning from the first warning
// threshold, and for limited meters the IETF RateLimit-Policy and
// RateLimit fields (draft-ietf-httpapi-ratelimit-headers: quota q over
// window w seconds, remaining r, reset in t seconds).
func SetHeaders(h http.Header, d *Decision) {
	var buf [64]byte
	h["X-Usage-Current"] = []string{string(d.Usage.AppendText(buf[:0]))}
	if d.Unlimited {
		h["X-Usage-Limit"] = []string{"-1"}
		h["X-Usage-Remaining"] = []string{"-1"}
	} else {
		h["X-Usage-Limit"] = []string{string(d.Limit.AppendText(buf[:0]))}
		h["X-Usage-Remaining"] = []string{string(d.Remaining.AppendText(buf[:0]))}
		reset := max(0, int64(time.Until(d.ResetAt)/time.Second))
		h["Ratelimit-Policy"] = []string{`"` + d.Meter + `";q=` + strconv.FormatUint(wholeFloor(d.Limit), 10) + ";w=" + strconv.FormatInt(periodSeconds(d), 10)}
		h["Ratelimit"] = []string{`"` + d.Meter + `";r=` + strconv.FormatUint(wholeFloor(d.Remaining), 10) + ";t=" + strconv.FormatInt(reset, 10)}
	}
	if d.Warning > 0 {
		h["X-Usage-Warning"] = []string{d.Level + "; " + strconv.FormatInt(d.Percentage/100, 10) + "% of " + d.Meter + " used"}
	}
}

// wholeFloor is a in whole units (the RateLimit fields are integers).
func wholeFloor(a Amount) uint64 {
	if a.hi != 0 {
		return ^uint64(0)
	}
	return a.lo / nanosPerUnit
}

func periodSeconds(d *Decision) int64 {
	// The period's length: one calendar month or anchored month ending at ResetAt.
	start := d.ResetAt.AddDate(0, -1, 0)
	return int64(d.ResetAt.Sub(start) / time.Second)
}

// QuotaJSON is the quota object of refusals and of usage-api answers.
type QuotaJSON struct {
	TenantID   string    `json:"tenant_id"`
	Feature    string    `json:"feature_type"`
	Plan       string    `json:"plan"`
	Period     string    `json:"period"`
	Level      string    `json:"level"`
	Usage      string    `json:"usage"`
	Limit      string    `json:"limit"`
	Remaining  string    `json:"remaining"`
	Percentage string    `json:"percentage"`
	ResetAt    time.Time `json:"reset_at"`
}

// QuotaOf returns d's quota object: decimals as strings, -1 when unlimited.
func QuotaOf(d *Decision) QuotaJSON {
	q := QuotaJSON{TenantID: d.Tenant, Feature: d.Meter, Plan: d.Plan, Period: d.Period, Level: d.Level,
		Usage: d.Usage.String(), Limit: "-1", Remaining: "-1", Percentage: "0", ResetAt: d.ResetAt.UTC()}
	if !d.Unlimited {
		q.Limit, q.Remaining, q.Percentage = d.Limit.String(), d.Remaining.String(), PercentString(d.Percentage)
	}
	return q
}

// PercentString writes basis points as a percentage with up to 2 decimals.
func PercentString(bp int64) string {
	s := strconv.FormatInt(bp/100, 10)
	if f := bp % 100; f != 0 {
		s += "." + strconv.FormatInt(f/10, 10)
		if f%10 != 0 {
			s += strconv.FormatInt(f%10, 10)
		}
	}
	return s
}

// WriteJSONError answers {error, code, upgrade_url?, quota?}.
func WriteJSONError(w http.ResponseWriter, status int, code, msg string, d *Decision, upgradeURL string) {
	body := struct {
		Error      string     `json:"error"`
		Code       string     `json:"code"`
		UpgradeURL string     `json:"upgrade_url,omitempty"`
		Quota      *QuotaJSON `json:"quota,omitempty"`
	}{Error: msg, Code: code, UpgradeURL: upgradeURL}
	if d != nil {
		q := QuotaOf(d)
		body.Quota = &q
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}

// statusWriter records the status the handler wrote.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (s *statusWriter) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach Flush and deadlines.
func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }
