package quota

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/felixge/httpsnoop"

	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/schemas/plans"
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
	CodeInvalid       = "INVALID_REQUEST"      // 400: a tenant id or meter the contract refuses
	CodeBacklog       = "TRACKING_BACKLOG"     // 503: the outbox is full (the broker has been down long)
	CodePendingFull   = "PENDING_FULL"         // 503: the quantity cannot be held pending (quantity_too_large)
)

// DefaultUpgradeURL is MiddlewareConfig.UpgradeURL when none is set: a
// 402 always says where to upgrade.
const DefaultUpgradeURL = "/upgrade?tenant={tenant}"

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
	// UpgradeURL is the link in a 402 ({tenant} is replaced by the
	// tenant, query-escaped); DefaultUpgradeURL when empty.
	UpgradeURL string
	Track      TrackMode // default TrackOn2xx
	// Tracker publishes the usage event (see NewProducerTracker). Required
	// unless Track is TrackNever. Events reach it through an Outbox: the
	// middleware never waits for the broker, and an event whose publish
	// fails is retried, not dropped.
	Tracker Tracker
	// Outbox is the retry path (the caller runs it; give it a Dir to keep
	// events across restarts). Nil: the middleware makes an in-memory one
	// with the OutboxConfig defaults around Tracker, runs it, and stops it
	// on Close. A Tracker that is an *Outbox is used as the Outbox.
	Outbox *Outbox
	// OnTrackError is told about every event the outbox could not take (for
	// the log); the request has already been answered and is never failed
	// for it, and its usage stays pending (counted against the tenant).
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
	out   *Outbox // nil with TrackNever
	hold  bool    // tracked events are held for expiry (the outbox acknowledges)
	stop  context.CancelFunc
	done  chan struct{}
	stats struct {
		allowed, limited, rateLimited, stale, tracked, trackFailures, invalid, backlog atomic.Int64
	}
}

// MiddlewareStats are counts since NewMiddleware.
type MiddlewareStats struct {
	Allowed, Limited, RateLimited, Stale, Tracked, TrackFailures int64
	Invalid                                                      int64 // 400: tenant id the contract refuses
	Backlog                                                      int64 // 503: the outbox was full
}

// NewMiddleware returns middleware for one meter. The meter must be one
// the plans define, aggregated as sum or count: the middleware publishes
// each request as an increment, which a gauge (max, latest) or a unique
// count is not.
func NewMiddleware(c *Cache, cfg MiddlewareConfig) (*Middleware, error) {
	if cfg.Meter == "" || cfg.Tenant == nil {
		return nil, errors.New("quota middleware: Meter and Tenant are required")
	}
	if err := schemas.CheckFeatureType(cfg.Meter); err != nil {
		return nil, fmt.Errorf("quota middleware: Meter: %w", err)
	}
	switch agg, ok := c.Aggregation(cfg.Meter); {
	case !ok:
		return nil, fmt.Errorf("quota middleware: Meter %q: %w", cfg.Meter, ErrUnknownMeter)
	case agg != plans.Sum && agg != plans.Count:
		return nil, fmt.Errorf("quota middleware: Meter %q is aggregated as %s: a request is not an increment of it (publish its value yourself)", cfg.Meter, agg)
	}
	if cfg.Track == "" {
		cfg.Track = TrackOn2xx
	}
	if cfg.UpgradeURL == "" {
		cfg.UpgradeURL = DefaultUpgradeURL
	}
	m := &Middleware{c: c, cfg: cfg}
	switch cfg.Track {
	case TrackAlways, TrackOn2xx:
		if o, ok := cfg.Tracker.(*Outbox); ok && cfg.Outbox == nil {
			cfg.Outbox = o
		}
		m.out = cfg.Outbox
		if m.out == nil {
			if cfg.Tracker == nil {
				return nil, errors.New("quota middleware: a Tracker is required unless Track is never")
			}
			o, err := NewOutbox(OutboxConfig{}, cfg.Tracker, nil)
			if err != nil {
				return nil, err
			}
			ctx, stop := context.WithCancel(context.Background())
			m.out, m.stop, m.done = o, stop, make(chan struct{})
			go func() {
				defer close(m.done)
				_ = o.Run(ctx)
			}()
		}
	case TrackNever:
	default:
		return nil, errors.New("quota middleware: Track must be always, 2xx or never")
	}
	if m.out != nil && m.out.acknowledges() {
		// Acknowledged events' pending expires once the aggregator's
		// position covers them (expire.go). An async tracker acknowledges
		// nothing: its events are not held (they would never leave).
		m.out.OnDelivered(m.c.Acknowledged)
		m.hold = true
	}
	return m, nil
}

// Close stops the outbox the middleware made (not one given in the config).
// Events still undelivered then are lost with the process: give an Outbox
// with a Dir to keep them. Requests after Close get 503 TRACKING_BACKLOG.
func (m *Middleware) Close() {
	if m.stop != nil {
		m.stop()
		<-m.done
	}
}

// Outbox returns the retry path the middleware tracks through (nil with
// TrackNever).
func (m *Middleware) Outbox() *Outbox { return m.out }

// Requeue takes back events an async Publisher failed to deliver: pass it
// as producer.WithAsync's callback. Events the outbox could not keep (it
// was closed) count in TrackFailures and go to OnTrackError.
func (m *Middleware) Requeue(err error, events []schemas.UsageEvent) {
	if m.out == nil {
		return
	}
	if rerr := m.out.Requeue(err, events); rerr != nil {
		m.stats.trackFailures.Add(1)
		if m.cfg.OnTrackError != nil {
			m.cfg.OnTrackError(rerr)
		}
	}
}

// Stats returns the counts.
func (m *Middleware) Stats() MiddlewareStats {
	return MiddlewareStats{Allowed: m.stats.allowed.Load(), Limited: m.stats.limited.Load(), RateLimited: m.stats.rateLimited.Load(),
		Stale: m.stats.stale.Load(), Tracked: m.stats.tracked.Load(), TrackFailures: m.stats.trackFailures.Load(),
		Invalid: m.stats.invalid.Load(), Backlog: m.stats.backlog.Load()}
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
		// One allocation for what the hooks need (the decision escapes anyway).
		sv := &served{m: m, r: r, qty: qty}
		sv.d = m.c.Check(r.Context(), tenant, m.cfg.Meter, qty)
		d := &sv.d
		if !d.Allowed {
			m.refuse(w, d)
			return
		}
		SetHeaders(w.Header(), d)
		// A slot in the outbox before serving: served usage always has
		// somewhere to wait for the broker, and a full outbox refuses here.
		if m.out != nil && !m.out.Reserve() {
			m.c.Release(*d)
			m.stats.backlog.Add(1)
			setRetryAfter(w.Header(), time.Second)
			WriteJSONError(w, http.StatusServiceUnavailable, CodeBacklog, "usage tracking is backlogged, retry later", d, "")
			return
		}
		m.stats.allowed.Add(1)
		// The event is written ahead of the response: final runs when the
		// handler's status is first known, before it goes to the client
		// (the hooks call next after it), so a process killed once the
		// client could see an answer has the event in the outbox's file.
		// A handler that dies before answering is not charged.
		sw := httpsnoop.Wrap(w, httpsnoop.Hooks{
			WriteHeader: func(next httpsnoop.WriteHeaderFunc) httpsnoop.WriteHeaderFunc {
				return func(code int) { sv.final(code); next(code) }
			},
			Write: func(next httpsnoop.WriteFunc) httpsnoop.WriteFunc {
				return func(b []byte) (int, error) { sv.final(http.StatusOK); return next(b) }
			},
			ReadFrom: func(next httpsnoop.ReadFromFunc) httpsnoop.ReadFromFunc {
				return func(src io.Reader) (int64, error) { sv.final(http.StatusOK); return next(src) }
			},
			// A flush before any write sends a 200; a hijacked connection
			// is served outside the writer (counted as a 200, as before).
			Flush: func(next httpsnoop.FlushFunc) httpsnoop.FlushFunc {
				return func() { sv.final(http.StatusOK); next() }
			},
			Hijack: func(next httpsnoop.HijackFunc) httpsnoop.HijackFunc {
				return func() (net.Conn, *bufio.ReadWriter, error) { sv.final(http.StatusOK); return next() }
			},
		})
		defer func() {
			// Still unsettled here only when the handler panicked before
			// answering (net/http drops the connection): nothing was
			// served, so the slot and the pending go back (else every
			// panic would keep an outbox slot for good).
			if sv.status == 0 {
				sv.status = -1
				sv.giveBack()
			}
		}()
		next.ServeHTTP(sw, r)
		// Nothing written: net/http sends 200 once we return; the event is
		// in the outbox before. The outbox's disk write is the only
		// tracking work before the answer: the broker is never waited for.
		sv.final(http.StatusOK)
		_ = http.NewResponseController(w).Flush()
	})
}

// served is one allowed request being served.
type served struct {
	m      *Middleware
	r      *http.Request
	d      Decision
	qty    Amount
	status int // the first final status, 0 until known
}

// final settles the request at its first final status (1xx are
// informational): tracked before the client sees it, or the slot and the
// pending given back when it is not tracked.
func (s *served) final(code int) {
	if s.status != 0 || (code < 200 && code != http.StatusSwitchingProtocols) {
		return
	}
	s.status = code
	m := s.m
	if m.cfg.Track == TrackNever || (m.cfg.Track == TrackOn2xx && (code < 200 || code > 299)) {
		s.giveBack()
		return
	}
	m.track(s.r, &s.d, s.qty)
}

// giveBack returns the outbox slot and the pending of an untracked request.
func (s *served) giveBack() {
	if s.m.out != nil {
		s.m.out.Unreserve()
	}
	s.m.c.Release(s.d)
}

// track queues the request's event in the outbox slot taken before
// serving. It never gives the pending back: the usage happened, and an
// event the outbox could not take is still counted against the tenant
// until the period ends.
func (m *Middleware) track(r *http.Request, d *Decision, qty Amount) {
	e := schemas.UsageEvent{ID: schemas.NewID(), TenantID: d.Tenant, FeatureType: m.cfg.Meter, Quantity: qty.Decimal(), Timestamp: m.c.now().UTC()}
	if m.cfg.UserID != nil {
		e.UserID = m.cfg.UserID(r)
	}
	if m.cfg.Metadata != nil {
		e.Metadata = m.cfg.Metadata(r)
	}
	var hold func()
	if m.hold {
		hold = func() { m.c.Hold(*d, &e) } // in queue order, before Run can deliver it
	}
	if err := m.out.put(&e, true, hold); err != nil {
		if m.hold {
			m.c.Unhold(&e)
		}
		m.stats.trackFailures.Add(1)
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
		SetHeaders(w.Header(), d)
		SetRateLimitHeaders(w.Header(), d)
		setRetryAfter(w.Header(), d.RetryAfter)
		WriteJSONError(w, http.StatusTooManyRequests, CodeRateLimited, "rate limit for "+d.Meter+" exceeded, retry later", d, "")
	case ReasonTooLarge:
		// Not a limit (the meter may be unlimited): the amount cannot be
		// held pending in one instance (more than 2^64-1 nano-units), the
		// request's own quantity or, rarely, together with what is pending.
		m.stats.invalid.Add(1)
		SetHeaders(w.Header(), d)
		setRetryAfter(w.Header(), time.Second)
		WriteJSONError(w, http.StatusServiceUnavailable, CodePendingFull,
			"the quantity is beyond what this instance can hold pending for "+d.Meter+" ("+Nanos(math.MaxUint64).String()+" units at once): track it in smaller parts or retry later", d, "")
	case ReasonLimit:
		m.stats.limited.Add(1)
		SetHeaders(w.Header(), d)
		WriteJSONError(w, http.StatusPaymentRequired, CodeLimitExceeded,
			"the "+d.Plan+" plan's "+d.Meter+" limit is reached for period "+d.Period, d, ExpandUpgradeURL(m.cfg.UpgradeURL, d.Tenant))
	case ReasonInvalidTenant, ReasonUnknownMeter, ReasonUnsupported:
		m.stats.invalid.Add(1)
		msg := d.Reason
		if err := m.c.ValidateKey(d.Tenant, d.Meter); err != nil {
			msg = err.Error()
		}
		WriteJSONError(w, http.StatusBadRequest, CodeInvalid, msg, nil, "")
	default:
		m.stats.stale.Add(1)
		SetHeaders(w.Header(), d)
		setRetryAfter(w.Header(), d.RetryAfter)
		WriteJSONError(w, http.StatusServiceUnavailable, CodeStale, "quota state unavailable, retry later", d, "")
	}
}

// SetRateLimitHeaders describes, on a rate_limited refusal, the token
// bucket that refused (the quota's fields would say the tenant has room):
// RateLimit-Policy "<meter>-rate";q=<burst>;w=<seconds to refill it> and
// RateLimit "<meter>-rate";r=<whole tokens left>;t=<seconds until enough>.
func SetRateLimitHeaders(h http.Header, d *Decision) {
	if d.lim == nil {
		return
	}
	burst := d.lim.Burst()
	per := float64(d.lim.Limit())
	w := int64(1)
	if per > 0 {
		w = max(1, int64(math.Ceil(float64(burst)/per)))
	}
	tokens := max(0, int64(math.Floor(d.tokens)))
	name := `"` + d.Meter + `-rate"`
	h["Ratelimit-Policy"] = []string{name + ";q=" + strconv.Itoa(burst) + ";w=" + strconv.FormatInt(w, 10)}
	h["Ratelimit"] = []string{name + ";r=" + strconv.FormatInt(tokens, 10) + ";t=" + strconv.FormatInt(ceilSeconds(d.RetryAfter), 10)}
}

func ceilSeconds(d time.Duration) int64 { return max(1, int64((d+time.Second-1)/time.Second)) }

// ExpandUpgradeURL replaces {tenant} in u by the query-escaped tenant
// (tenant ids may hold @ and :).
func ExpandUpgradeURL(u, tenant string) string {
	return strings.ReplaceAll(u, "{tenant}", url.QueryEscape(tenant))
}

func setRetryAfter(h http.Header, d time.Duration) {
	h.Set("Retry-After", strconv.FormatInt(ceilSeconds(d), 10))
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
