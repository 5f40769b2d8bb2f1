// Package stripeapi is billing-sync's Stripe client: the few calls it makes
// (meter events, cancel adjustments, usage records and their summaries,
// customer and subscription look-ups), each within a shared rate limit,
// retried with backoff and jitter on 429, 5xx and timeouts under the same
// idempotency key, with at most one call in flight per customer and meter.
// It holds no globals: stripe-go's client.API gets its own backend.
package stripeapi

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/client"
	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/usagemeter/usagemeter/svckit/backoff"
)

// Config for the Stripe API.
type Config struct {
	APIKey string `mapstructure:"api_key"`
	// URL overrides https://api.stripe.com (stripe-mock, the fake in demo mode).
	URL string `mapstructure:"url"`
	// Rate and Burst bound all calls together (requests per second). Stripe
	// live mode allows 100/s per account (usage records share it); stay below.
	Rate  float64 `mapstructure:"rate"`
	Burst int     `mapstructure:"burst"`
	// Timeout bounds one attempt.
	Timeout     time.Duration `mapstructure:"timeout"`
	RetryMin    time.Duration `mapstructure:"retry_min"`
	RetryMax    time.Duration `mapstructure:"retry_max"`
	MaxAttempts int           `mapstructure:"max_attempts"`
}

// DefaultConfig is safe for live mode.
func DefaultConfig() Config {
	return Config{Rate: 50, Burst: 10, Timeout: 20 * time.Second, RetryMin: 200 * time.Millisecond, RetryMax: 10 * time.Second, MaxAttempts: 6}
}

// Validate names the first bad key.
func (c Config) Validate() error {
	switch {
	case c.Rate <= 0:
		return errors.New("stripe.rate: must be > 0")
	case c.Burst < 1:
		return errors.New("stripe.burst: must be >= 1")
	case c.Timeout <= 0:
		return errors.New("stripe.timeout: must be > 0")
	case c.MaxAttempts < 1:
		return errors.New("stripe.max_attempts: must be >= 1")
	case c.RetryMin <= 0 || c.RetryMax < c.RetryMin:
		return errors.New("stripe.retry_min/retry_max: need 0 < retry_min <= retry_max")
	}
	return nil
}

// Client makes billing-sync's Stripe calls. Safe for concurrent use.
type Client struct {
	api   *client.API
	cfg   Config
	lim   *rate.Limiter
	log   *zap.Logger
	locks sync.Map // serial key -> *sync.Mutex

	calls   *prometheus.CounterVec
	retries *prometheus.CounterVec
	rekeys  prometheus.Counter
}

// attempt is what the transport saw of one attempt's response.
type attempt struct {
	shouldRetry string // Stripe-Should-Retry: "true", "false" or absent
	replayed    bool   // Idempotent-Replayed: a stored response
}

type attemptKey struct{}

// headerTransport hands the response headers stripe-go drops from its
// errors (Stripe-Should-Retry, Idempotent-Replayed) to the attempt.
type headerTransport struct{ base http.RoundTripper }

func (t headerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.base.RoundTrip(r)
	if resp != nil {
		if a, ok := r.Context().Value(attemptKey{}).(*attempt); ok {
			a.shouldRetry = resp.Header.Get("Stripe-Should-Retry")
			a.replayed = resp.Header.Get("Idempotent-Replayed") == "true"
		}
	}
	return resp, err
}

// ServerError reports a 5xx answer: the request may or may not have been
// applied, and Stripe stores it under the key (a retry under the same key
// gets it back for 24 h).
func ServerError(err error) bool {
	var se *stripe.Error
	return errors.As(err, &se) && se.HTTPStatusCode >= 500
}

// New returns a client. reg may be nil.
func New(cfg Config, log *zap.Logger, reg prometheus.Registerer) *Client {
	bc := &stripe.BackendConfig{
		// Our own retries keep the idempotency key and respect the limiter.
		MaxNetworkRetries: stripe.Int64(0),
		HTTPClient:        &http.Client{Timeout: cfg.Timeout, Transport: headerTransport{http.DefaultTransport}},
		LeveledLogger:     &stripe.LeveledLogger{Level: stripe.LevelNull},
	}
	if cfg.URL != "" {
		bc.URL = stripe.String(cfg.URL)
	}
	backends := &stripe.Backends{
		API:     stripe.GetBackendWithConfig(stripe.APIBackend, bc),
		Connect: stripe.GetBackendWithConfig(stripe.ConnectBackend, bc),
		Uploads: stripe.GetBackendWithConfig(stripe.UploadsBackend, bc),
	}
	c := &Client{
		api: client.New(cfg.APIKey, backends),
		cfg: cfg,
		lim: rate.NewLimiter(rate.Limit(cfg.Rate), cfg.Burst),
		log: log,
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "billing_stripe_calls_total",
			Help: "Stripe API calls by operation and outcome (ok, retry, error)."}, []string{"op", "outcome"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "billing_stripe_retries_total",
			Help: "Stripe attempts retried, by operation."}, []string{"op"}),
		rekeys: prometheus.NewCounter(prometheus.CounterOpts{Name: "billing_stripe_rekeys_total",
			Help: "Meter events re-sent under a new idempotency key (same identifier) after a 5xx, which Stripe stores under the key."}),
	}
	if reg != nil {
		reg.MustRegister(c.calls, c.retries, c.rekeys)
	}
	return c
}

// Retryable reports whether err is worth another attempt with the same
// idempotency key: 429, 5xx, 409 (a concurrent request with the key) and
// network errors or timeouts.
func Retryable(err error) bool {
	if err == nil {
		return false
	}
	var se *stripe.Error
	if errors.As(err, &se) {
		return se.HTTPStatusCode == http.StatusTooManyRequests || se.HTTPStatusCode == http.StatusConflict || se.HTTPStatusCode >= 500
	}
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, errAttemptTimeout)
}

// DuplicateIdentifier reports whether Stripe refused a meter event because
// an event with its identifier exists: ours are unique per intent, so the
// intent was already recorded.
func DuplicateIdentifier(err error) bool {
	var se *stripe.Error
	return errors.As(err, &se) && se.Code == "resource_already_exists"
}

// Missing reports a 404 / resource_missing: the object (a subscription
// item replaced mid-period, a deleted customer) no longer exists.
func Missing(err error) bool {
	var se *stripe.Error
	return errors.As(err, &se) && (se.HTTPStatusCode == http.StatusNotFound || se.Code == stripe.ErrorCodeResourceMissing)
}

// KeyReused reports whether Stripe refused a request because its
// idempotency key was first used with other parameters (idempotency_error):
// the first request's outcome is unknown to this caller.
func KeyReused(err error) bool {
	var se *stripe.Error
	return errors.As(err, &se) && se.Type == stripe.ErrorTypeIdempotency
}

var errAttemptTimeout = errors.New("stripe attempt timed out")

// do runs one operation: serialised on serial (customer/meter) when not
// empty, each attempt waiting for the rate limiter, retried on transient
// errors up to MaxAttempts. Permanent errors return at once.
func (c *Client) do(ctx context.Context, op, serial string, fn func(ctx context.Context) error) error {
	return c.doRekey(ctx, op, serial, false, fn)
}

// doRekey is do; with rekey, a 5xx is retried even when Stripe says the key
// should not be (fn then uses a new key: meter events, whose identifier
// dedups a first try that was applied).
func (c *Client) doRekey(ctx context.Context, op, serial string, rekey bool, fn func(ctx context.Context) error) error {
	if serial != "" {
		m, _ := c.locks.LoadOrStore(serial, &sync.Mutex{})
		mu := m.(*sync.Mutex)
		mu.Lock()
		defer mu.Unlock()
	}
	var last error
	attempts := 0
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	err := backoff.Retry(rctx, backoff.Policy{Min: c.cfg.RetryMin, Max: c.cfg.RetryMax}, func(ctx context.Context) error {
		attempts++
		if err := c.lim.Wait(ctx); err != nil {
			return err
		}
		actx, acancel := context.WithTimeout(ctx, c.cfg.Timeout)
		defer acancel()
		at := &attempt{}
		last = fn(context.WithValue(actx, attemptKey{}, at))
		if last != nil && actx.Err() != nil && ctx.Err() == nil {
			last = fmt.Errorf("%w: %w", errAttemptTimeout, last)
		}
		retry := Retryable(last)
		switch {
		case last == nil:
		case rekey && ServerError(last):
			retry = true // under the next key
		case at.shouldRetry == "false":
			// Stripe says this key cannot succeed (e.g. a stored 500
			// replayed): retrying it only burns the rate limit.
			retry = false
			last = fmt.Errorf("%w (Stripe-Should-Retry: false, replayed: %v)", last, at.replayed)
		case at.shouldRetry == "true":
			retry = true
		}
		if last == nil || !retry || attempts >= c.cfg.MaxAttempts {
			cancel() // stop retrying; last says how it ended
			return nil
		}
		c.calls.WithLabelValues(op, "retry").Inc()
		c.retries.WithLabelValues(op).Inc()
		return last
	}, func(attempt int, pause time.Duration, err error) {
		c.log.Debug("stripe call failed, retrying", zap.String("op", op), zap.Int("attempt", attempt), zap.Duration("pause", pause), zap.Error(err))
	})
	switch {
	case ctx.Err() != nil:
		return ctx.Err()
	case last != nil:
		c.calls.WithLabelValues(op, "error").Inc()
		return fmt.Errorf("stripe %s (%d attempts): %w", op, attempts, last)
	case err != nil && !errors.Is(err, context.Canceled):
		return err
	}
	c.calls.WithLabelValues(op, "ok").Inc()
	return nil
}

// MeterEvent is one meter event to record.
type MeterEvent struct {
	EventName      string
	Customer       string
	Identifier     string
	Value          int64
	Timestamp      time.Time
	IdempotencyKey string
}

// SendMeterEvent records e once: a retry, or a later pass re-sending the
// same intent, is deduplicated by its idempotency key and its identifier.
//
// After a 5xx (which Stripe stores under the key and replays for 24 h) the
// next attempt goes under a new key, key-r1, key-r2 ...: deterministic, so
// another pass or process follows the same sequence, and the identifier is
// the same, so a first try that was applied is refused as a duplicate
// (counted as done) instead of billed twice.
func (c *Client) SendMeterEvent(ctx context.Context, e MeterEvent) error {
	rekeyed := 0
	return c.doRekey(ctx, "meter_event", e.Customer+"/"+e.EventName, true, func(ctx context.Context) error {
		p := &stripe.BillingMeterEventParams{
			EventName:  stripe.String(e.EventName),
			Identifier: stripe.String(e.Identifier),
			Payload:    map[string]string{"stripe_customer_id": e.Customer, "value": strconv.FormatInt(e.Value, 10)},
			Timestamp:  stripe.Int64(e.Timestamp.Unix()),
		}
		p.Context = ctx
		key := e.IdempotencyKey
		if rekeyed > 0 {
			key = fmt.Sprintf("%s-r%d", e.IdempotencyKey, rekeyed)
		}
		p.SetIdempotencyKey(key)
		_, err := c.api.BillingMeterEvents.New(p)
		if DuplicateIdentifier(err) {
			return nil
		}
		if ServerError(err) {
			rekeyed++
			c.rekeys.Inc()
		}
		return err
	})
}

// CancelMeterEvent cancels the event with identifier (Stripe allows it
// within 24 h of receiving the event).
func (c *Client) CancelMeterEvent(ctx context.Context, customer, eventName, identifier, key string) error {
	return c.do(ctx, "meter_event_cancel", customer+"/"+eventName, func(ctx context.Context) error {
		p := &stripe.BillingMeterEventAdjustmentParams{
			EventName: stripe.String(eventName),
			Type:      stripe.String("cancel"),
			Cancel:    &stripe.BillingMeterEventAdjustmentCancelParams{Identifier: stripe.String(identifier)},
		}
		p.Context = ctx
		p.SetIdempotencyKey(key)
		_, err := c.api.BillingMeterEventAdjustments.New(p)
		return err
	})
}

// SetUsage writes a legacy usage record with action=set: the quantity at
// ts is replaced, so re-sending it never adds.
func (c *Client) SetUsage(ctx context.Context, item string, quantity int64, ts time.Time, key string) error {
	return c.do(ctx, "usage_record", item, func(ctx context.Context) error {
		p := &stripe.UsageRecordParams{
			SubscriptionItem: stripe.String(item),
			Action:           stripe.String(string(stripe.UsageRecordActionSet)),
			Quantity:         stripe.Int64(quantity),
			Timestamp:        stripe.Int64(ts.Unix()),
		}
		p.Context = ctx
		p.SetIdempotencyKey(key)
		_, err := c.api.UsageRecords.New(p)
		return err
	})
}

// MeterSummaries returns Stripe's hourly totals for customer on meterID in
// [from, to) (hour aligned), keyed by hour start (unix seconds).
func (c *Client) MeterSummaries(ctx context.Context, meterID, customer, eventName string, from, to time.Time) (map[int64]int64, error) {
	out := map[int64]int64{}
	err := c.do(ctx, "meter_event_summaries", customer+"/"+eventName, func(ctx context.Context) error {
		clear(out)
		p := &stripe.BillingMeterEventSummaryListParams{
			ID:                  stripe.String(meterID),
			Customer:            stripe.String(customer),
			StartTime:           stripe.Int64(from.Unix()),
			EndTime:             stripe.Int64(to.Unix()),
			ValueGroupingWindow: stripe.String("hour"),
		}
		p.Context = ctx
		p.Limit = stripe.Int64(100)
		it := c.api.BillingMeterEventSummaries.List(p)
		for it.Next() {
			s := it.BillingMeterEventSummary()
			out[s.StartTime] += int64(math.Round(s.AggregatedValue))
		}
		return it.Err()
	})
	return out, err
}

// UsageSummary is one period of a subscription item.
type UsageSummary struct {
	Start, End time.Time
	Total      int64
}

// UsageSummaries lists the usage record summaries of a subscription item.
func (c *Client) UsageSummaries(ctx context.Context, item string) ([]UsageSummary, error) {
	var out []UsageSummary
	err := c.do(ctx, "usage_record_summaries", item, func(ctx context.Context) error {
		out = out[:0]
		p := &stripe.UsageRecordSummaryListParams{SubscriptionItem: stripe.String(item)}
		p.Context = ctx
		p.Limit = stripe.Int64(100)
		it := c.api.UsageRecordSummaries.List(p)
		for it.Next() {
			s := it.UsageRecordSummary()
			us := UsageSummary{Total: s.TotalUsage}
			if s.Period != nil {
				us.Start, us.End = time.Unix(s.Period.Start, 0).UTC(), time.Unix(s.Period.End, 0).UTC()
			}
			out = append(out, us)
		}
		return it.Err()
	})
	return out, err
}

// CustomersByTenant lists every customer once and maps metadata tenant_id
// to the customer id (one page per 100 customers, not one search per
// tenant).
func (c *Client) CustomersByTenant(ctx context.Context) (map[string]string, error) {
	out := map[string]string{}
	err := c.do(ctx, "customers", "", func(ctx context.Context) error {
		clear(out)
		p := &stripe.CustomerListParams{}
		p.Context = ctx
		p.Limit = stripe.Int64(100)
		it := c.api.Customers.List(p)
		for it.Next() {
			cu := it.Customer()
			if t := cu.Metadata["tenant_id"]; t != "" {
				out[t] = cu.ID
			}
		}
		return it.Err()
	})
	return out, err
}

// CustomerTenant reads a customer's metadata tenant_id ("" when it has
// none or the customer does not exist).
func (c *Client) CustomerTenant(ctx context.Context, customer string) (string, error) {
	var tenant string
	err := c.do(ctx, "customer", "", func(ctx context.Context) error {
		p := &stripe.CustomerParams{}
		p.Context = ctx
		cu, err := c.api.Customers.Get(customer, p)
		if Missing(err) {
			tenant = ""
			return nil
		}
		if err != nil {
			return err
		}
		tenant = cu.Metadata["tenant_id"]
		return nil
	})
	return tenant, err
}

// CustomersForTenant searches the customers whose metadata tenant_id is
// tenant (Stripe's search API; its index may lag a new customer by about a
// minute). More than one is an ambiguity the caller must refuse.
func (c *Client) CustomersForTenant(ctx context.Context, tenant string) ([]string, error) {
	var out []string
	err := c.do(ctx, "customers_search", "", func(ctx context.Context) error {
		out = out[:0]
		p := &stripe.CustomerSearchParams{}
		p.Query = "metadata['tenant_id']:'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(tenant) + "'"
		p.Context = ctx
		p.Limit = stripe.Int64(10)
		it := c.api.Customers.Search(p)
		for it.Next() {
			out = append(out, it.Customer().ID)
		}
		return it.Err()
	})
	return out, err
}

// SubscriptionItemFor finds the customer's active subscription item whose
// price is priceID (usage records need the item).
func (c *Client) SubscriptionItemFor(ctx context.Context, customer, priceID string) (string, error) {
	var found string
	err := c.do(ctx, "subscriptions", "", func(ctx context.Context) error {
		found = ""
		p := &stripe.SubscriptionListParams{Customer: stripe.String(customer)}
		p.Context = ctx
		it := c.api.Subscriptions.List(p)
		for it.Next() {
			s := it.Subscription()
			if s.Items == nil {
				continue
			}
			for _, item := range s.Items.Data {
				if item.Price != nil && item.Price.ID == priceID && found == "" {
					found = item.ID
				}
			}
		}
		return it.Err()
	})
	return found, err
}

// Subscription is one of a customer's subscriptions as billing needs it:
// its status, anchor and current period, and its items.
type Subscription struct {
	ID, Customer, Status   string
	Anchor, Created        time.Time // billing_cycle_anchor, start_date
	PeriodStart, PeriodEnd time.Time // current_period_start/end
	// CanceledAt is when cancellation was requested: with
	// cancel_at_period_end the subscription stays active (and billed)
	// until EndedAt. EndedAt is when it really stopped; zero while it runs.
	CanceledAt, EndedAt time.Time
	Items               []SubscriptionItem
}

// SubscriptionItem is an item and its price: MeterID is set for a price
// on a Billing Meter (meter_events), empty for a legacy metered price.
type SubscriptionItem struct {
	ID, PriceID, LookupKey, MeterID string
}

// Subscriptions lists every subscription of a customer, canceled ones
// included (status=all): billing needs the periods of ended ones too.
func (c *Client) Subscriptions(ctx context.Context, customer string) ([]Subscription, error) {
	var out []Subscription
	err := c.do(ctx, "subscriptions", "", func(ctx context.Context) error {
		out = out[:0]
		p := &stripe.SubscriptionListParams{Customer: stripe.String(customer), Status: stripe.String("all")}
		p.Context = ctx
		p.Limit = stripe.Int64(100)
		it := c.api.Subscriptions.List(p)
		for it.Next() {
			out = append(out, subscriptionOf(it.Subscription()))
		}
		return it.Err()
	})
	return out, err
}

// AllSubscriptions lists every subscription of the account (status=all)
// by customer: one listing for all tenants instead of a call per tenant.
// Each page of 100 is its own call (own attempt timeout and retries), so
// a listing of tens of thousands never has to fit in one attempt.
func (c *Client) AllSubscriptions(ctx context.Context) (map[string][]Subscription, error) {
	out := map[string][]Subscription{}
	after := ""
	for {
		var page []Subscription
		more := false
		err := c.do(ctx, "subscriptions", "", func(ctx context.Context) error {
			page = page[:0]
			p := &stripe.SubscriptionListParams{Status: stripe.String("all")}
			p.Context = ctx
			p.Limit = stripe.Int64(100)
			if after != "" {
				p.StartingAfter = stripe.String(after)
			}
			it := c.api.Subscriptions.List(p)
			for len(page) < 100 && it.Next() { // stop before the iterator fetches the next page
				page = append(page, subscriptionOf(it.Subscription()))
			}
			if err := it.Err(); err != nil {
				return err
			}
			more = it.SubscriptionList() != nil && it.SubscriptionList().HasMore
			return nil
		})
		if err != nil {
			return nil, err
		}
		for _, sub := range page {
			out[sub.Customer] = append(out[sub.Customer], sub)
		}
		if !more || len(page) == 0 {
			return out, nil
		}
		after = page[len(page)-1].ID
	}
}

func subscriptionOf(s *stripe.Subscription) Subscription {
	sub := Subscription{ID: s.ID, Status: string(s.Status), Anchor: time.Unix(s.BillingCycleAnchor, 0).UTC(), Created: time.Unix(s.StartDate, 0).UTC(),
		PeriodStart: time.Unix(s.CurrentPeriodStart, 0).UTC(), PeriodEnd: time.Unix(s.CurrentPeriodEnd, 0).UTC()}
	if s.Customer != nil {
		sub.Customer = s.Customer.ID
	}
	if s.CanceledAt > 0 {
		sub.CanceledAt = time.Unix(s.CanceledAt, 0).UTC()
	}
	if s.EndedAt > 0 {
		sub.EndedAt = time.Unix(s.EndedAt, 0).UTC()
	}
	if s.Items != nil {
		for _, item := range s.Items.Data {
			si := SubscriptionItem{ID: item.ID}
			if item.Price != nil {
				si.PriceID, si.LookupKey = item.Price.ID, item.Price.LookupKey
				if item.Price.Recurring != nil {
					si.MeterID = item.Price.Recurring.Meter
				}
			}
			sub.Items = append(sub.Items, si)
		}
	}
	return sub
}

// MeterSettings is what a Billing Meter does with events.
type MeterSettings struct {
	ID, EventName, Status string
	Formula               string // sum, count, last
	EventTimeWindow       string // "", hour, day (pre-aggregated: the newest event of a window replaces the rest)
}

// Meter reads a meter's settings (GET /v1/billing/meters/{id}).
func (c *Client) Meter(ctx context.Context, id string) (MeterSettings, error) {
	var out MeterSettings
	err := c.do(ctx, "meter", "", func(ctx context.Context) error {
		p := &stripe.BillingMeterParams{}
		p.Context = ctx
		m, err := c.api.BillingMeters.Get(id, p)
		if err != nil {
			return err
		}
		out = MeterSettings{ID: m.ID, EventName: m.EventName, Status: string(m.Status), EventTimeWindow: string(m.EventTimeWindow)}
		if m.DefaultAggregation != nil {
			out.Formula = string(m.DefaultAggregation.Formula)
		}
		return nil
	})
	return out, err
}

// InvoiceLine is what a finalized invoice charged for one item.
type InvoiceLine struct {
	Item, PriceID, MeterID string
	Quantity               int64
}

// Invoice is a finalized invoice of one subscription period.
type Invoice struct {
	ID, Subscription, Status string
	PeriodStart, PeriodEnd   time.Time
	FinalizedAt              time.Time
	Lines                    []InvoiceLine
}

// FinalizedInvoices lists a customer's invoices that are no longer drafts
// (open, paid, uncollectible): what they charged can no longer change.
func (c *Client) FinalizedInvoices(ctx context.Context, customer string) ([]Invoice, error) {
	var out []Invoice
	err := c.do(ctx, "invoices", "", func(ctx context.Context) error {
		out = out[:0]
		p := &stripe.InvoiceListParams{Customer: stripe.String(customer)}
		p.Context = ctx
		p.Limit = stripe.Int64(100)
		it := c.api.Invoices.List(p)
		for it.Next() {
			in := it.Invoice()
			if in.Status == stripe.InvoiceStatusDraft || in.Status == stripe.InvoiceStatusVoid {
				continue
			}
			inv := Invoice{ID: in.ID, Status: string(in.Status), PeriodStart: time.Unix(in.PeriodStart, 0).UTC(), PeriodEnd: time.Unix(in.PeriodEnd, 0).UTC()}
			if in.Subscription != nil {
				inv.Subscription = in.Subscription.ID
			}
			if in.StatusTransitions != nil && in.StatusTransitions.FinalizedAt > 0 {
				inv.FinalizedAt = time.Unix(in.StatusTransitions.FinalizedAt, 0).UTC()
			}
			if in.Lines != nil {
				for _, l := range in.Lines.Data {
					line := InvoiceLine{Quantity: l.Quantity}
					if l.SubscriptionItem != nil {
						line.Item = l.SubscriptionItem.ID
					}
					if l.Price != nil {
						line.PriceID = l.Price.ID
						if l.Price.Recurring != nil {
							line.MeterID = l.Price.Recurring.Meter
						}
					}
					inv.Lines = append(inv.Lines, line)
				}
			}
			out = append(out, inv)
		}
		return it.Err()
	})
	return out, err
}
