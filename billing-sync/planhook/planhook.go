// Package planhook turns Stripe subscription webhooks into plan
// assignments on the compacted topic usage.plan-assignments, so a plan
// bought or changed in Stripe reaches every quota cache within seconds.
// Signatures are verified with stripe-go's webhook package. Records carry
// the Stripe event's creation time as their version; the handler learns the
// newest version per tenant from the topic at start and never writes an
// older one, so a replayed or reordered webhook cannot regress a plan, not
// even after compaction.
package planhook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	"github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/webhook"
	"go.uber.org/zap"

	"github.com/usagemeter/usagemeter/billing-sync/stripeapi"
	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/schemas/plans"
)

// Price maps a Stripe price lookup_key to a plan. A list, not a map:
// viper lower-cases map keys and lookup keys are case sensitive.
type Price struct {
	LookupKey string `mapstructure:"lookup_key"`
	Plan      string `mapstructure:"plan"`
}

// Config of the webhook endpoint.
type Config struct {
	// Secret is the endpoint's signing secret (whsec_...); empty disables
	// the endpoint.
	Secret string  `mapstructure:"secret"`
	Path   string  `mapstructure:"path"`
	Prices []Price `mapstructure:"prices"`
	// CanceledPlan is assigned when a subscription ends (default: the
	// plans file's default_plan). A versioned record, not a tombstone, so
	// that ordering survives.
	CanceledPlan    string        `mapstructure:"canceled_plan"`
	Brokers         []string      `mapstructure:"brokers"`
	AssignmentTopic string        `mapstructure:"assignment_topic"`
	Tolerance       time.Duration `mapstructure:"tolerance"`
	// Addr is the webhook's own listener, apart from /metrics: it faces
	// Stripe (the internet), so its timeouts and body limit are its own.
	Addr string `mapstructure:"addr"`
	// ReadTimeout bounds reading a whole request (headers and body): a
	// client that trickles its body is cut off. WriteTimeout bounds the
	// handler and its answer (the Kafka write included).
	ReadTimeout  time.Duration `mapstructure:"read_timeout"`
	WriteTimeout time.Duration `mapstructure:"write_timeout"`
	// MaxBodyBytes: a larger body is refused with 413 without being read
	// to its end (Stripe's events are a few KB).
	MaxBodyBytes int64 `mapstructure:"max_body_bytes"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{Path: "/stripe/webhook", Brokers: []string{"127.0.0.1:19092"}, AssignmentTopic: "usage.plan-assignments",
		Tolerance: webhook.DefaultTolerance, Addr: "127.0.0.1:9468", ReadTimeout: 10 * time.Second, WriteTimeout: 30 * time.Second,
		MaxBodyBytes: 1 << 20}
}

// Validate names the first bad key (only when the endpoint is enabled).
func (c Config) Validate() error {
	switch {
	case c.Secret == "":
		return nil
	case c.Addr == "":
		return errors.New("webhook.addr: empty (the webhook has its own listener)")
	case !strings.HasPrefix(c.Path, "/"):
		return fmt.Errorf("webhook.path %q: must start with /", c.Path)
	case c.ReadTimeout <= 0:
		return errors.New("webhook.read_timeout: must be > 0")
	case c.WriteTimeout <= 0:
		return errors.New("webhook.write_timeout: must be > 0")
	case c.MaxBodyBytes <= 0:
		return errors.New("webhook.max_body_bytes: must be > 0")
	}
	return nil
}

// Serve serves h at cfg.Path on its own listener cfg.Addr, with the read
// and write timeouts; nothing else is served there. Close the server on exit.
func Serve(cfg Config, h http.Handler, log *zap.Logger) (*http.Server, error) {
	mux := http.NewServeMux()
	mux.Handle("POST "+cfg.Path, h)
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("webhook.addr %s: %w", cfg.Addr, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: min(cfg.ReadTimeout, 5*time.Second), ReadTimeout: cfg.ReadTimeout,
		WriteTimeout: cfg.WriteTimeout, IdleTimeout: 60 * time.Second, MaxHeaderBytes: 64 << 10}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("webhook server", zap.Error(err))
		}
	}()
	log.Info("serving the Stripe webhook", zap.String("url", "http://"+ln.Addr().String()+cfg.Path))
	return srv, nil
}

// TenantOf finds the tenant of a Stripe customer.
type TenantOf func(ctx context.Context, customerID string) (string, bool)

// Stripe is what the handler reads back from Stripe (stripeapi.Client):
// every subscription of the customer (status=all), and a customer's
// metadata tenant_id when the event does not say it.
type Stripe interface {
	Subscriptions(ctx context.Context, customer string) ([]stripeapi.Subscription, error)
	CustomerTenant(ctx context.Context, customer string) (string, error)
}

// entitled says which subscription statuses grant their prices' plan.
// active, trialing: yes. past_due: yes, deliberately: Stripe is retrying
// the payment (dunning) and the account's settings decide when it ends as
// unpaid or canceled; cutting a paying customer off on the first failed
// charge would be wrong. unpaid (retries exhausted), incomplete (the first
// payment never succeeded), incomplete_expired, paused (no invoices while
// paused) and canceled: no. A status that grants nothing never downgrades
// by itself: the plan comes from every subscription of the customer.
var entitled = map[stripe.SubscriptionStatus]bool{
	stripe.SubscriptionStatusActive: true, stripe.SubscriptionStatusTrialing: true, stripe.SubscriptionStatusPastDue: true,
}

// Handler is the webhook endpoint.
type Handler struct {
	cfg      Config
	plans    map[string]string
	rank     map[string]int // lookup_key -> position in webhook.prices (later = higher plan)
	tenantOf TenantOf
	stripe   Stripe
	w        *kafka.Writer
	log      *zap.Logger

	gateMu sync.Mutex
	gate   func(context.Context) error // nil: apply; else apply only when it returns nil

	// beforeWrite runs between the read and the write of an assignment
	// (tests: another writer landing there).
	beforeWrite func()

	mu         sync.Mutex
	partitions int                         // of the assignment topic, read at start
	versions   map[string]int64            // newest version per tenant on the topic
	written    map[string]plans.Assignment // the record at that version

	events   *prometheus.CounterVec
	unmapped *prometheus.CounterVec
}

// New reads the assignment topic to its end (the newest version per
// tenant) and returns the handler. Close it to flush the writer. With st,
// the plan comes from all the customer's subscriptions as Stripe holds them
// when the event arrives; without it (tests of the event path), from the
// event's subscription alone.
func New(ctx context.Context, cfg Config, p *plans.Config, tenantOf TenantOf, st Stripe, log *zap.Logger, reg prometheus.Registerer) (*Handler, error) {
	h := &Handler{cfg: cfg, plans: map[string]string{}, rank: map[string]int{}, tenantOf: tenantOf, stripe: st, log: log,
		versions: map[string]int64{}, written: map[string]plans.Assignment{},
		events: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "billing_webhooks_total",
			Help: "Stripe webhooks by outcome (assigned, stale, ignored, refused, too_large, timeout, standby, error)."}, []string{"outcome"}),
		unmapped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "billing_webhook_unmapped_prices_total",
			Help: "Prices on entitled subscriptions that webhook.prices does not map to a plan, by price id."}, []string{"price"})}
	for i, pr := range cfg.Prices {
		if _, ok := p.Plans[pr.Plan]; !ok {
			return nil, fmt.Errorf("webhook.prices: lookup_key %q: plan %q is not defined in the plans file", pr.LookupKey, pr.Plan)
		}
		h.plans[pr.LookupKey] = pr.Plan
		h.rank[pr.LookupKey] = i
	}
	if h.cfg.CanceledPlan == "" {
		h.cfg.CanceledPlan = p.DefaultPlan
	}
	if reg != nil {
		reg.MustRegister(h.events, h.unmapped)
	}
	if err := h.load(ctx); err != nil {
		return nil, err
	}
	h.w = &kafka.Writer{Addr: kafka.TCP(cfg.Brokers...), Topic: cfg.AssignmentTopic, Balancer: &kafka.Murmur2Balancer{},
		RequiredAcks: kafka.RequireAll, BatchTimeout: 5 * time.Millisecond}
	return h, nil
}

// SetGate makes webhooks apply only while gate returns nil (the billing
// lease's Term.Check: this process is the one writer); otherwise they are
// answered 503 and Stripe retries them, reaching the lease holder. Two
// processes applying at once would each read-modify-write the tenant's
// assignment and could write equal versions. nil: always apply (no lease).
func (h *Handler) SetGate(gate func(context.Context) error) {
	h.gateMu.Lock()
	h.gate = gate
	h.gateMu.Unlock()
}

// Standby is the gate of a process that does not hold the lease.
func Standby(context.Context) error {
	return errors.New("standing by: another process holds the billing lease")
}

// Close flushes and closes the writer.
func (h *Handler) Close() error { return h.w.Close() }

// load reads every partition of the topic up to its end offset.
func (h *Handler) load(ctx context.Context) error {
	client := &kafka.Client{Addr: kafka.TCP(h.cfg.Brokers...), Timeout: 10 * time.Second}
	md, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{h.cfg.AssignmentTopic}})
	if err != nil {
		return fmt.Errorf("read %s metadata: %w", h.cfg.AssignmentTopic, err)
	}
	if len(md.Topics) != 1 || md.Topics[0].Error != nil {
		return fmt.Errorf("topic %s: %v", h.cfg.AssignmentTopic, md.Topics)
	}
	h.partitions = len(md.Topics[0].Partitions)
	for _, p := range md.Topics[0].Partitions {
		if err := h.loadPartition(ctx, client, p.ID); err != nil {
			return err
		}
	}
	return nil
}

// loadPartition reads one partition of the topic to its end offset.
func (h *Handler) loadPartition(ctx context.Context, client *kafka.Client, partition int) error {
	_, err := h.readPartition(ctx, client, partition)
	return err
}

// readPartition reads one partition to its end offset and returns it.
func (h *Handler) readPartition(ctx context.Context, client *kafka.Client, partition int) (int64, error) {
	res, err := client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{
		h.cfg.AssignmentTopic: {kafka.FirstOffsetOf(partition), kafka.LastOffsetOf(partition)}}})
	if err != nil {
		return 0, fmt.Errorf("offsets of %s/%d: %w", h.cfg.AssignmentTopic, partition, err)
	}
	po := res.Topics[h.cfg.AssignmentTopic]
	if len(po) == 0 || po[0].Error != nil {
		return 0, fmt.Errorf("offsets of %s/%d: %v", h.cfg.AssignmentTopic, partition, po)
	}
	first, end := po[0].FirstOffset, po[0].LastOffset
	if end <= first {
		return end, nil
	}
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: h.cfg.Brokers, Topic: h.cfg.AssignmentTopic, Partition: partition, MaxWait: 200 * time.Millisecond})
	defer func() { _ = r.Close() }()
	if err := r.SetOffset(first); err != nil {
		return 0, err
	}
	for {
		m, err := r.ReadMessage(ctx)
		if err != nil {
			return 0, fmt.Errorf("read %s/%d: %w", h.cfg.AssignmentTopic, partition, err)
		}
		if tenant, a, err := plans.ParseAssignmentRecord(m.Key, m.Value); err == nil && a != nil && a.Version >= h.versions[tenant] {
			h.versions[tenant], h.written[tenant] = a.Version, *a
		}
		if m.Offset+1 >= end {
			return end, nil
		}
	}
}

// refresh re-reads the partition that holds tenant's records: other
// writers (usage-api's admin plan changes and quota grants) publish there
// too, and a Stripe change must neither drop their grants nor lose to
// their newer version.
// It returns the partition's end offset after the read (-1: no topic).
func (h *Handler) refresh(ctx context.Context, tenant string) (int64, error) {
	if h.partitions == 0 {
		return -1, nil // the topic had no partitions at start: nothing to read
	}
	client := &kafka.Client{Addr: kafka.TCP(h.cfg.Brokers...), Timeout: 10 * time.Second}
	return h.readPartition(ctx, client, schemas.PartitionFor(tenant, h.partitions))
}

// moved reports whether the tenant's partition grew past end since it was
// read: another writer (usage-api's admin, a grant) published there.
func (h *Handler) moved(ctx context.Context, tenant string, end int64) (bool, error) {
	if end < 0 {
		return false, nil
	}
	client := &kafka.Client{Addr: kafka.TCP(h.cfg.Brokers...), Timeout: 10 * time.Second}
	partition := schemas.PartitionFor(tenant, h.partitions)
	res, err := client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{
		h.cfg.AssignmentTopic: {kafka.LastOffsetOf(partition)}}})
	if err != nil {
		return false, fmt.Errorf("end offset of %s/%d: %w", h.cfg.AssignmentTopic, partition, err)
	}
	po := res.Topics[h.cfg.AssignmentTopic]
	if len(po) == 0 || po[0].Error != nil {
		return false, fmt.Errorf("end offset of %s/%d: %v", h.cfg.AssignmentTopic, partition, po)
	}
	return po[0].LastOffset != end, nil
}

// samePlan reports whether a and b assign the same plan (versions and
// grants aside).
func samePlan(a, b plans.Assignment) bool {
	if !a.Anchor.Equal(b.Anchor) {
		return false
	}
	a.Version, a.Grants, b.Version, b.Grants, a.Anchor, b.Anchor = 0, nil, 0, nil, time.Time{}, time.Time{}
	return a == b
}

// ServeHTTP verifies and applies one webhook. 400 for a bad signature or
// body (Stripe retries nothing it should not); 500 when the record could
// not be written (Stripe retries later).
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	limit := h.cfg.MaxBodyBytes
	if limit <= 0 {
		limit = DefaultConfig().MaxBodyBytes
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var tooLarge *http.MaxBytesError
		var ne net.Error
		switch {
		case errors.As(err, &tooLarge):
			h.events.WithLabelValues("too_large").Inc()
			http.Error(w, fmt.Sprintf("body larger than %d bytes (webhook.max_body_bytes)", limit), http.StatusRequestEntityTooLarge)
		case errors.As(err, &ne) && ne.Timeout():
			h.events.WithLabelValues("timeout").Inc()
			http.Error(w, "body not received within webhook.read_timeout", http.StatusRequestTimeout)
		default:
			http.Error(w, "read body", http.StatusBadRequest)
		}
		return
	}
	ev, err := webhook.ConstructEventWithOptions(body, r.Header.Get("Stripe-Signature"), h.cfg.Secret,
		webhook.ConstructEventOptions{Tolerance: h.cfg.Tolerance, IgnoreAPIVersionMismatch: true})
	if err != nil {
		h.events.WithLabelValues("refused").Inc()
		h.log.Warn("webhook refused", zap.Error(err))
		http.Error(w, "invalid signature", http.StatusBadRequest)
		return
	}
	h.gateMu.Lock()
	gate := h.gate
	h.gateMu.Unlock()
	if gate != nil {
		if err := gate(r.Context()); err != nil {
			// Not the lease holder: Stripe retries (with backoff, for
			// days) and reaches the process that holds it.
			h.events.WithLabelValues("standby").Inc()
			h.log.Info("webhook answered 503: not the billing writer", zap.String("event", ev.ID), zap.Error(err))
			w.Header().Set("Retry-After", "10")
			http.Error(w, "standby: not the billing writer", http.StatusServiceUnavailable)
			return
		}
	}
	outcome, err := h.apply(r.Context(), ev)
	if err != nil {
		h.events.WithLabelValues("error").Inc()
		h.log.Error("webhook not applied", zap.String("event", ev.ID), zap.Error(err))
		http.Error(w, "not applied", http.StatusInternalServerError)
		return
	}
	h.events.WithLabelValues(outcome).Inc()
	w.Header().Set("Content-Type", "application/json")
	_, _ = fmt.Fprintf(w, "{\"outcome\":%q}\n", outcome)
}

func (h *Handler) apply(ctx context.Context, ev stripe.Event) (string, error) {
	if !strings.HasPrefix(string(ev.Type), "customer.subscription.") || ev.Data == nil {
		return "ignored", nil
	}
	var sub stripe.Subscription
	if err := json.Unmarshal(ev.Data.Raw, &sub); err != nil {
		return "", fmt.Errorf("decode subscription: %w", err)
	}
	tenant := sub.Metadata["tenant_id"]
	if tenant == "" && sub.Customer != nil {
		if sub.Customer.Metadata["tenant_id"] != "" {
			tenant = sub.Customer.Metadata["tenant_id"]
		} else if t, ok := h.tenantOf(ctx, sub.Customer.ID); ok {
			tenant = t
		} else if h.stripe != nil {
			// A customer not seen yet (its events may arrive before any
			// pass found it): ask Stripe. A failure answers 5xx, so Stripe
			// retries the event later instead of it being lost.
			t, err := h.stripe.CustomerTenant(ctx, sub.Customer.ID)
			if err != nil {
				return "", fmt.Errorf("look up customer %s: %w", sub.Customer.ID, err)
			}
			tenant = t
		}
	}
	if tenant == "" {
		h.log.Warn("subscription webhook for an unknown tenant", zap.String("event", ev.ID))
		return "ignored", nil
	}
	var plan string
	var anchor time.Time // the subscription's billing_cycle_anchor (zero: none)
	if h.stripe != nil && sub.Customer != nil {
		// The plan is what all the customer's subscriptions say now, not
		// what this one event says: cancelling an add-on, or the old
		// subscription after an upgrade, must not downgrade the tenant,
		// and events arriving out of order read the same truth.
		subs, err := h.stripe.Subscriptions(ctx, sub.Customer.ID)
		if err != nil {
			return "", fmt.Errorf("list subscriptions of %s: %w", sub.Customer.ID, err)
		}
		plan, anchor = h.planFrom(subs, tenant)
	} else {
		plan, anchor = h.planOf(ev, &sub)
	}
	if plan == "" {
		return "ignored", nil
	}
	h.mu.Lock()
	defer h.mu.Unlock() // one write at a time: versions stay ordered
	// Read-modify-write of the tenant's record against the topic's end:
	// if another writer published to the partition between the read and
	// the write, read again (its version and grants must be seen), a few
	// times; then 500 and Stripe retries later.
	const attempts = 5
	for i := 0; ; i++ {
		a, outcome, end, err := h.next(ctx, ev, tenant, plan, anchor)
		if err != nil || outcome != "" {
			return outcome, err
		}
		if h.beforeWrite != nil {
			h.beforeWrite()
		}
		moved, err := h.moved(ctx, tenant, end)
		if err != nil {
			return "", err
		}
		if moved {
			if i+1 < attempts {
				continue
			}
			return "", fmt.Errorf("the assignments of %s kept changing during %d attempts", tenant, attempts)
		}
		key, value := plans.AssignmentRecord(tenant, &a)
		if err := h.w.WriteMessages(ctx, kafka.Message{Key: key, Value: value}); err != nil {
			return "", fmt.Errorf("write plan assignment: %w", err)
		}
		h.versions[tenant], h.written[tenant] = a.Version, a
		h.log.Info("plan assigned from Stripe", zap.String("tenant", tenant), zap.String("plan", plan), zap.Int64("version", a.Version), zap.String("event", ev.ID))
		return "assigned", nil
	}
}

// next reads the tenant's newest record and returns the record to write
// (outcome "") or the outcome without a write ("stale"), and the end
// offset the read reached. The caller holds h.mu.
func (h *Handler) next(ctx context.Context, ev stripe.Event, tenant, plan string, anchor time.Time) (plans.Assignment, string, int64, error) {
	end, err := h.refresh(ctx, tenant)
	if err != nil {
		return plans.Assignment{}, "", 0, fmt.Errorf("read the assignments of %s: %w", tenant, err) // 500: Stripe retries
	}
	cur, v := h.written[tenant], h.versions[tenant]
	// The tenant's grants (one-off increases for named periods) stay.
	// The anchor to the second: quotas' anchored periods then start where
	// Stripe's do, so quotas and billing put every unit in one period.
	a := plans.Assignment{Plan: plan, Anchor: anchor, Version: ev.Created, Grants: cur.Grants}
	if !anchor.IsZero() {
		a.AnchorDay = anchor.Day()
	}
	if h.stripe != nil {
		// The plan is Stripe's truth read now, whatever the event's age:
		// it replaces an older record even when that record's version
		// (an admin's plan change, a grant: Unix seconds) is newer than
		// the event, as a webhook retried hours later is.
		if v > 0 && samePlan(cur, a) {
			return a, "stale", end, nil // nothing to change
		}
		a.Version = max(ev.Created, v+1)
	} else if ev.Created < v || ev.Created == v && samePlan(cur, a) {
		// From the event alone: older is stale. Same second (an upgrade
		// creates the new subscription and cancels the old one in one
		// second): written only if it differs from what that version wrote.
		return a, "stale", end, nil
	}
	return a, "", end, nil
}

// planFrom is the plan of a customer's subscriptions: among the entitled
// ones (see entitled), the mapped price listed last in webhook.prices (list
// them from the lowest plan to the highest), with its subscription's
// billing_cycle_anchor; none: canceled_plan. Prices not in webhook.prices are counted and
// logged (an add-on is expected there; a new plan price missing from the
// config is a mistake to see).
func (h *Handler) planFrom(subs []stripeapi.Subscription, tenant string) (string, time.Time) {
	best, anchor := -1, time.Time{}
	for _, sub := range subs {
		if !entitled[stripe.SubscriptionStatus(sub.Status)] {
			continue
		}
		for _, it := range sub.Items {
			r, ok := h.rank[it.LookupKey]
			if !ok {
				h.unmapped.WithLabelValues(it.PriceID).Inc()
				h.log.Info("subscription price not in webhook.prices: no plan from it", zap.String("tenant", tenant),
					zap.String("subscription", sub.ID), zap.String("price", it.PriceID), zap.String("lookup_key", it.LookupKey))
				continue
			}
			if r > best {
				best, anchor = r, sub.Anchor.UTC()
			}
		}
	}
	if best < 0 {
		return h.cfg.CanceledPlan, time.Time{}
	}
	return h.cfg.Prices[best].Plan, anchor
}

// planOf maps the subscription to a plan: the canceled plan when it ended,
// else the first item whose price lookup_key is configured.
func (h *Handler) planOf(ev stripe.Event, sub *stripe.Subscription) (string, time.Time) {
	var anchor time.Time
	if sub.BillingCycleAnchor > 0 {
		anchor = time.Unix(sub.BillingCycleAnchor, 0).UTC()
	}
	if ev.Type == "customer.subscription.deleted" || sub.Status == stripe.SubscriptionStatusCanceled ||
		sub.Status == stripe.SubscriptionStatusIncompleteExpired || sub.Status == stripe.SubscriptionStatusUnpaid {
		return h.cfg.CanceledPlan, time.Time{}
	}
	if sub.Items == nil {
		return "", time.Time{}
	}
	for _, it := range sub.Items.Data {
		if it.Price != nil {
			if p, ok := h.plans[it.Price.LookupKey]; ok {
				return p, anchor
			}
		}
	}
	return "", time.Time{}
}
