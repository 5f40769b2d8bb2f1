package stripefake

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Subscription statuses (Stripe's enum).
const (
	Active            = "active"
	Trialing          = "trialing"
	PastDue           = "past_due"
	Incomplete        = "incomplete"
	IncompleteExpired = "incomplete_expired"
	Paused            = "paused"
	Canceled          = "canceled"
	Unpaid            = "unpaid"
)

// invoicing says which statuses produce a period's invoice. An incomplete
// subscription never started (its first invoice is unpaid), a paused one
// creates no invoices (Stripe: "invoices aren't created while paused").
var invoicing = map[string]bool{Active: true, Trialing: true, PastDue: true, Unpaid: true, Canceled: true}

// Clock is a controllable clock shared by the fake and the code under
// test (syncer.WithClock(c.Now)): scenarios run months in milliseconds.
type Clock struct {
	mu sync.Mutex
	t  time.Time
}

// NewClock starts a clock at t.
func NewClock(t time.Time) *Clock { return &Clock{t: t.UTC()} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }

// Set moves the clock to t (never backwards in a scenario, but not enforced).
func (c *Clock) Set(t time.Time) { c.mu.Lock(); c.t = t.UTC(); c.mu.Unlock() }

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

// Price is a recurring metered price: on a meter (Billing Meters, the
// meter id) or legacy metered (usage records, MeterID empty).
type Price struct {
	ID, MeterID, LookupKey string
}

// Item is a subscription item as a test creates it.
type Item struct{ ID, Price string }

// Subscription is what AddSubscription creates. Anchor is the
// billing_cycle_anchor (any second); zero means Created. Created zero
// means the fake's now.
type Subscription struct {
	ID, Customer, Status string
	Anchor, Created      time.Time
	Items                []Item
}

type subscription struct {
	id, customer, status string
	anchor, created      time.Time
	canceledAt           time.Time // when it ended (Stripe's ended_at)
	// A cancel at period end (cancel_at_period_end): requested at
	// cancelRequestedAt (Stripe's canceled_at), it stays active until
	// cancelAt (its period end), then it is canceled with ended_at =
	// cancelAt.
	cancelRequestedAt, cancelAt time.Time
	items                       []*subItem
	invoicedTo                  time.Time // end of the last period with an invoice
}

type subItem struct {
	id, price string
	sub       *subscription
	created   time.Time
	deleted   bool
	deletedAt time.Time
}

// InvoiceLine is what an invoice charged for one subscription item.
type InvoiceLine struct {
	Item, Price, MeterID string
	Quantity             int64
}

// Invoice is one period's invoice of a subscription. Status is draft
// during the finalization grace, then open (finalized): its lines are
// fixed at finalization and usage reported later never reaches it.
type Invoice struct {
	ID, Subscription, Customer string
	PeriodStart, PeriodEnd     time.Time
	Created, FinalizedAt       time.Time
	Status                     string
	Lines                      []InvoiceLine
}

// addMonths is Stripe's monthly step from an anchor: the anchor's day of
// month and time of day, clamped to the month's last day (an anchor on
// the 31st bills on 30 Apr, 28 Feb, then the 31st again).
func addMonths(anchor time.Time, k int) time.Time {
	a := anchor.UTC()
	y, m := a.Year(), int(a.Month())-1+k
	y += m / 12
	m %= 12
	if m < 0 {
		m += 12
		y--
	}
	first := time.Date(y, time.Month(m+1), 1, a.Hour(), a.Minute(), a.Second(), 0, time.UTC)
	last := first.AddDate(0, 1, -1).Day()
	return first.AddDate(0, 0, min(a.Day(), last)-1)
}

// periodAt is the subscription's period containing t: monthly from the
// anchor; before the anchor, the (prorated) first period from creation.
func (s *subscription) periodAt(t time.Time) (time.Time, time.Time) {
	if t.Before(s.anchor) {
		return s.created, s.anchor
	}
	k := (t.Year()-s.anchor.Year())*12 + int(t.Month()) - int(s.anchor.Month())
	for k > 0 && addMonths(s.anchor, k).After(t) {
		k--
	}
	for !addMonths(s.anchor, k+1).After(t) {
		k++
	}
	return addMonths(s.anchor, k), addMonths(s.anchor, k+1)
}

// current is current_period_start/end: a canceled subscription keeps the
// period it ended in.
func (s *subscription) current(now time.Time) (time.Time, time.Time) {
	if !s.canceledAt.IsZero() && now.After(s.canceledAt) {
		now = s.canceledAt
	}
	return s.periodAt(now)
}

// AddPrice registers a price (meter-backed when MeterID is set).
func (f *Fake) AddPrice(p Price) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.prices[p.ID] = p
}

// SetMeterSettings sets a meter's default_aggregation.formula (sum,
// count; the spec of API 2023-10-16 has no last) and event_time_window ("", hour, day), as read by GET
// /v1/billing/meters/{id}. AddMeter's meters are sum meters without a
// window.
func (f *Fake) SetMeterSettings(id, formula, eventTimeWindow string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.meterSettings[id] = [2]string{formula, eventTimeWindow}
}

// AddSubscription creates a subscription of a customer.
func (f *Fake) AddSubscription(sub Subscription) {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := f.Now().UTC()
	s := &subscription{id: sub.ID, customer: sub.Customer, status: sub.Status, anchor: sub.Anchor.UTC(), created: sub.Created.UTC()}
	if s.status == "" {
		s.status = Active
	}
	if s.created.IsZero() {
		s.created = now
	}
	if s.anchor.IsZero() {
		s.anchor = s.created
	}
	// No invoice for periods that ended before the subscription existed.
	s.invoicedTo, _ = s.periodAt(s.created)
	f.subs[s.id] = s
	f.subOrder = append(f.subOrder, s.id)
	f.rolled = false
	for _, it := range sub.Items {
		f.addItemLocked(s, it.ID, it.Price, s.created)
	}
}

func (f *Fake) addItemLocked(s *subscription, id, price string, at time.Time) {
	it := &subItem{id: id, price: price, sub: s, created: at}
	s.items = append(s.items, it)
	f.items[id] = it
	if _, ok := f.prices[price]; !ok {
		f.prices[price] = Price{ID: price}
	}
}

// AddSubscriptionItem adds an active subscription of customer with one
// item on price (a legacy metered price unless AddPrice said otherwise),
// anchored at the start of the fake's current calendar month.
func (f *Fake) AddSubscriptionItem(customer, item, price string) {
	now := f.Now().UTC()
	start := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)
	f.AddSubscription(Subscription{ID: "sub_" + item, Customer: customer, Anchor: start, Created: start, Items: []Item{{ID: item, Price: price}}})
}

// SetStatus changes a subscription's status (past_due, paused, ...).
func (f *Fake) SetStatus(subID, status string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.subs[subID]
	if !ok {
		return fmt.Errorf("no subscription %s", subID)
	}
	f.rollLocked(f.Now())
	s.status = status
	f.rolled = false
	return nil
}

// Invoices returns the invoices of a customer ("" = all), by period.
func (f *Fake) Invoices(customer string) []Invoice {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rollLocked(f.Now())
	var out []Invoice
	for _, in := range f.invoices {
		if customer == "" || in.Customer == customer {
			c := *in
			c.Lines = append([]InvoiceLine(nil), in.Lines...)
			out = append(out, c)
		}
	}
	return out
}

// rollLocked brings invoices up to now: every period that ended gets an
// invoice (if the status invoices), which finalizes InvoiceGrace after
// the period end and then records what it charged. Called on every
// request and accessor, so a clock moved by hours or months is caught up.
func (f *Fake) rollLocked(now time.Time) {
	if f.rolled && now.Before(f.nextRoll) {
		return // nothing ends or finalizes before nextRoll
	}
	next := now.Add(365 * 24 * time.Hour)
	defer func() { f.rolled, f.nextRoll = true, next }()
	for _, id := range f.subOrder {
		s := f.subs[id]
		if !s.cancelAt.IsZero() && s.canceledAt.IsZero() {
			if now.Before(s.cancelAt) {
				next = minTime(next, s.cancelAt)
			} else {
				// The period ended: canceled then (its last period's
				// invoice is the final one, below).
				s.status, s.canceledAt = Canceled, s.cancelAt
			}
		}
		for {
			start := s.invoicedTo
			if !s.canceledAt.IsZero() && !start.Before(s.canceledAt) {
				break
			}
			_, end := s.periodAt(start)
			if !s.canceledAt.IsZero() && s.canceledAt.Before(end) {
				end = s.canceledAt // the final invoice of a canceled subscription
			}
			if end.After(now) {
				if end.Before(next) {
					next = end
				}
				break
			}
			s.invoicedTo = end
			if !invoicing[s.status] {
				continue
			}
			f.invoices = append(f.invoices, &Invoice{ID: fmt.Sprintf("in_%s_%d", s.id, start.Unix()), Subscription: s.id, Customer: s.customer,
				PeriodStart: start, PeriodEnd: end, Created: end, Status: "draft"})
		}
	}
	for _, in := range f.invoices {
		if in.Status != "draft" {
			continue
		}
		if at := in.Created.Add(f.InvoiceGrace); now.Before(at) {
			if at.Before(next) {
				next = at
			}
			continue
		}
		in.FinalizedAt = in.Created.Add(f.InvoiceGrace)
		in.Status = "open"
		in.Lines = f.chargedLocked(f.subs[in.Subscription], in.PeriodStart, in.PeriodEnd, in.FinalizedAt)
	}
}

// chargedLocked is what one period of a subscription charges per item, as
// known at finalization: meter-backed prices the customer's live events
// on the meter with timestamps in the period received before then;
// legacy prices the item's usage records in the period.
func (f *Fake) chargedLocked(s *subscription, start, end, at time.Time) []InvoiceLine {
	var lines []InvoiceLine
	for _, it := range s.items {
		if it.deleted && !it.deletedAt.After(start) || it.created.After(at) {
			continue
		}
		p := f.prices[it.price]
		line := InvoiceLine{Item: it.id, Price: it.price, MeterID: p.MeterID}
		if p.MeterID != "" {
			name := f.Meters[p.MeterID]
			for _, e := range f.eventOrder {
				live := !e.cancelled || e.cancelledAt.After(at)
				if live && e.customer == s.customer && e.eventName == name && e.ts >= start.Unix() && e.ts < end.Unix() && e.received.Before(at) {
					line.Quantity += e.value
				}
			}
		} else {
			for ts, r := range f.records[it.id] {
				if ts >= start.Unix() && ts < end.Unix() {
					line.Quantity += r.quantity
				}
			}
		}
		lines = append(lines, line)
	}
	return lines
}

func (f *Fake) priceJSON(id string, now time.Time) map[string]any {
	p := f.prices[id]
	rec := map[string]any{"aggregate_usage": nil, "interval": "month", "interval_count": 1, "meter": nil, "usage_type": "metered"}
	if p.MeterID != "" {
		rec["meter"] = p.MeterID
	} else {
		rec["aggregate_usage"] = "sum"
	}
	out := map[string]any{"object": "price", "id": id, "active": true, "billing_scheme": "per_unit", "created": now.Unix(),
		"currency": "usd", "livemode": false, "metadata": map[string]string{}, "product": "prod_usage", "type": "recurring", "recurring": rec}
	if p.LookupKey != "" {
		out["lookup_key"] = p.LookupKey
	}
	return out
}

func (f *Fake) subscriptionJSON(s *subscription, now time.Time) map[string]any {
	start, end := s.current(now)
	var items []any
	for _, it := range s.items {
		if it.deleted {
			continue
		}
		items = append(items, f.itemJSON(it, now))
	}
	if items == nil {
		items = []any{}
	}
	out := map[string]any{"object": "subscription", "id": s.id, "customer": s.customer, "status": s.status,
		"automatic_tax": map[string]any{"enabled": false}, "billing_cycle_anchor": s.anchor.Unix(), "cancel_at_period_end": !s.cancelAt.IsZero(),
		"collection_method": "charge_automatically", "created": s.created.Unix(), "currency": "usd", "current_period_start": start.Unix(),
		"current_period_end": end.Unix(), "discounts": []string{}, "invoice_settings": map[string]any{"issuer": map[string]any{"type": "self"}},
		"livemode": false, "metadata": map[string]string{}, "start_date": s.created.Unix(),
		"items": map[string]any{"object": "list", "has_more": false, "url": "/v1/subscription_items?subscription=" + s.id, "data": items}}
	// canceled_at is when the cancel was requested; ended_at when the
	// subscription stopped (the same for an immediate cancel).
	if !s.cancelAt.IsZero() {
		out["cancel_at"], out["canceled_at"] = s.cancelAt.Unix(), s.cancelRequestedAt.Unix()
	}
	if !s.canceledAt.IsZero() {
		out["ended_at"] = s.canceledAt.Unix()
		if s.cancelAt.IsZero() {
			out["canceled_at"] = s.canceledAt.Unix()
		}
	}
	return out
}

func (f *Fake) itemJSON(it *subItem, now time.Time) map[string]any {
	return map[string]any{"object": "subscription_item", "id": it.id, "created": it.created.Unix(), "discounts": []string{},
		"metadata": map[string]string{}, "price": f.priceJSON(it.price, now), "subscription": it.sub.id}
}

// listSubscriptions serves GET /v1/subscriptions: by customer and status
// (Stripe's default leaves canceled ones out; status=all includes them).
func (f *Fake) listSubscriptions(form url.Values, now time.Time) (any, *apiError) {
	cus, status := form.Get("customer"), form.Get("status")
	var match []*subscription
	for _, id := range f.subOrder {
		s := f.subs[id]
		if cus != "" && s.customer != cus {
			continue
		}
		switch status {
		case "", "active":
			if status == "" && (s.status == Canceled || s.status == IncompleteExpired) || status == "active" && s.status != Active {
				continue
			}
		case "all":
		case "ended":
			if s.status != Canceled && s.status != IncompleteExpired {
				continue
			}
		default:
			if _, ok := map[string]bool{Trialing: true, PastDue: true, Incomplete: true, IncompleteExpired: true, Paused: true, Canceled: true, Unpaid: true}[status]; !ok {
				return nil, invalid("parameter_invalid", "status: "+status+" is not a subscription status")
			}
			if s.status != status {
				continue
			}
		}
		match = append(match, s)
	}
	// Page before rendering: a listing of 10k subscriptions renders each
	// once, not once per page.
	if after := form.Get("starting_after"); after != "" {
		for i, s := range match {
			if s.id == after {
				match = match[i+1:]
				break
			}
		}
	}
	limit := 10
	if l, err := strconv.Atoi(form.Get("limit")); err == nil && l > 0 {
		limit = min(l, 100)
	}
	data := []any{}
	for i, s := range match {
		if i > limit {
			break
		}
		data = append(data, f.subscriptionJSON(s, now))
	}
	return page(data, url.Values{"limit": {strconv.Itoa(limit)}}, "/v1/subscriptions"), nil
}

func (f *Fake) subscriptionByPath(path string) (*subscription, *apiError) {
	id := strings.TrimPrefix(path, "/v1/subscriptions/")
	s, ok := f.subs[id]
	if !ok {
		return nil, &apiError{status: 404, typ: "invalid_request_error", code: "resource_missing", msg: "No such subscription: '" + id + "'"}
	}
	return s, nil
}

// cancelLocked ends a subscription now: its period ends at now and a
// final invoice covers the part of the period used (as invoice_now).
func (f *Fake) cancelLocked(s *subscription, now time.Time) {
	if s.status == Canceled {
		return
	}
	f.rollLocked(now)
	s.status, s.canceledAt = Canceled, now
	s.cancelRequestedAt, s.cancelAt = time.Time{}, time.Time{} // canceled now, not at period end
	f.rolled = false
}

// cancelAtPeriodEndLocked schedules the cancel at the end of the current
// period (cancel_at_period_end=true): the subscription stays active, and
// its usage invoiced, until then; false withdraws a request not yet
// effective.
func (f *Fake) cancelAtPeriodEndLocked(s *subscription, on bool, now time.Time) *apiError {
	f.rollLocked(now)
	if s.status == Canceled {
		return invalid("", "A canceled subscription can only update its cancellation_details and metadata.")
	}
	s.cancelRequestedAt, s.cancelAt = time.Time{}, time.Time{}
	if on {
		_, end := s.current(now)
		s.cancelRequestedAt, s.cancelAt = now, end
	}
	f.rolled = false
	return nil
}

// CancelAtPeriodEnd requests the cancel of a subscription at the end of
// its current period (as POST cancel_at_period_end=true does).
func (f *Fake) CancelAtPeriodEnd(id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.subs[id]
	if !ok {
		return fmt.Errorf("no subscription %s", id)
	}
	if err := f.cancelAtPeriodEndLocked(s, true, f.Now()); err != nil {
		return fmt.Errorf("cancel %s at period end: %s", id, err.msg)
	}
	return nil
}

// updateSubscription serves POST /v1/subscriptions/{id}: only
// cancel_at_period_end is modelled; any other parameter is refused.
func (f *Fake) updateSubscription(s *subscription, form url.Values, now time.Time) (any, *apiError) {
	for k := range form {
		if k != "cancel_at_period_end" {
			return nil, invalid("parameter_unknown", "Received unknown parameter: "+k+" (the fake models cancel_at_period_end only)")
		}
	}
	v := form.Get("cancel_at_period_end")
	if v != "true" && v != "false" {
		return nil, invalid("parameter_invalid", "cancel_at_period_end: must be true or false")
	}
	if err := f.cancelAtPeriodEndLocked(s, v == "true", now); err != nil {
		return nil, err
	}
	return f.subscriptionJSON(s, now), nil
}

// CancelSubscription cancels a subscription now (as DELETE does).
func (f *Fake) CancelSubscription(id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.subs[id]
	if !ok {
		return fmt.Errorf("no subscription %s", id)
	}
	f.cancelLocked(s, f.Now())
	return nil
}

// itemChange serves the item endpoints: POST /v1/subscription_items (add
// an item: subscription, price), POST /v1/subscription_items/{id} (change
// its price) and DELETE /v1/subscription_items/{id} (remove it; a legacy
// item's usage records then 404, a meter-backed price's usage is invoiced
// to nobody).
func (f *Fake) itemChange(method, path string, form url.Values, now time.Time) (any, *apiError) {
	if path == "/v1/subscription_items" {
		s, ok := f.subs[form.Get("subscription")]
		if !ok || form.Get("price") == "" {
			return nil, invalid("parameter_missing", "subscription (existing) and price are required")
		}
		f.itemSeq++
		it := fmt.Sprintf("si_%s_%d", s.id, f.itemSeq)
		f.addItemLocked(s, it, form.Get("price"), now)
		return f.itemJSON(f.items[it], now), nil
	}
	id := strings.TrimPrefix(path, "/v1/subscription_items/")
	it, ok := f.items[id]
	if !ok || it.deleted {
		return nil, &apiError{status: 404, typ: "invalid_request_error", code: "resource_missing", msg: "No such subscription_item: '" + id + "'"}
	}
	if method == "DELETE" {
		it.deleted, it.deletedAt = true, now
		return map[string]any{"object": "subscription_item", "id": id, "deleted": true}, nil
	}
	if p := form.Get("price"); p != "" {
		it.price = p
		if _, ok := f.prices[p]; !ok {
			f.prices[p] = Price{ID: p}
		}
	}
	return f.itemJSON(it, now), nil
}

// listInvoices serves GET /v1/invoices by customer, subscription and
// status (draft or open here).
func (f *Fake) listInvoices(form url.Values, now time.Time) any {
	var data []any
	for i := len(f.invoices) - 1; i >= 0; i-- { // newest first, as Stripe
		in := f.invoices[i]
		if c := form.Get("customer"); c != "" && in.Customer != c {
			continue
		}
		if s := form.Get("subscription"); s != "" && in.Subscription != s {
			continue
		}
		if st := form.Get("status"); st != "" && in.Status != st {
			continue
		}
		data = append(data, f.invoiceJSON(in, now))
	}
	return page(data, form, "/v1/invoices")
}

func (f *Fake) invoiceJSON(in *Invoice, now time.Time) map[string]any {
	lines := []any{}
	for i, l := range in.Lines {
		lines = append(lines, map[string]any{"object": "line_item", "id": fmt.Sprintf("il_%s_%d", in.ID, i), "amount": 0, "currency": "usd",
			"discountable": true, "discounts": []string{}, "livemode": false, "metadata": map[string]string{},
			"period": map[string]any{"start": in.PeriodStart.Unix(), "end": in.PeriodEnd.Unix()}, "proration": false,
			"tax_amounts": []any{}, "tax_rates": []any{}, "type": "subscription", "quantity": l.Quantity,
			"price": f.priceJSON(l.Price, now), "subscription": in.Subscription, "subscription_item": l.Item})
	}
	var finalized any
	if !in.FinalizedAt.IsZero() {
		finalized = in.FinalizedAt.Unix()
	}
	return map[string]any{"object": "invoice", "id": in.ID, "customer": in.Customer, "subscription": in.Subscription, "status": in.Status,
		"amount_due": 0, "amount_paid": 0, "amount_remaining": 0, "amount_shipping": 0, "attempt_count": 0, "attempted": false,
		"automatic_tax": map[string]any{"enabled": false}, "collection_method": "charge_automatically", "created": in.Created.Unix(),
		"currency": "usd", "default_tax_rates": []any{}, "discounts": []string{}, "issuer": map[string]any{"type": "self"},
		"lines":    map[string]any{"object": "list", "data": lines, "has_more": false, "url": "/v1/invoices/" + in.ID + "/lines"},
		"livemode": false, "paid": false, "paid_out_of_band": false, "payment_settings": map[string]any{},
		"period_start": in.PeriodStart.Unix(), "period_end": in.PeriodEnd.Unix(), "post_payment_credit_notes_amount": 0,
		"pre_payment_credit_notes_amount": 0, "starting_balance": 0, "subtotal": 0, "total": 0, "total_tax_amounts": []any{},
		"status_transitions": map[string]any{"finalized_at": finalized}, "billing_reason": "subscription_cycle"}
}

// meter serves GET /v1/billing/meters/{id}.
func (f *Fake) meter(path string, now time.Time) (any, *apiError) {
	id := strings.TrimPrefix(path, "/v1/billing/meters/")
	name, ok := f.Meters[id]
	if !ok {
		return nil, &apiError{status: 404, typ: "invalid_request_error", code: "resource_missing", msg: "No such billing meter: '" + id + "'"}
	}
	set, ok := f.meterSettings[id]
	if !ok {
		set = [2]string{"sum", ""}
	}
	var window any
	if set[1] != "" {
		window = set[1]
	}
	return map[string]any{"object": "billing.meter", "id": id, "created": now.Unix(), "updated": now.Unix(), "display_name": name,
		"event_name": name, "livemode": false, "status": "active", "event_time_window": window,
		"customer_mapping":    map[string]any{"event_payload_key": "stripe_customer_id", "type": "by_id"},
		"default_aggregation": map[string]any{"formula": set[0]}, "status_transitions": map[string]any{"deactivated_at": nil},
		"value_settings": map[string]any{"event_payload_key": "value"}}, nil
}

// MeterTotal returns the customer's live events on a meter's event name
// with timestamps in [from, to), as Stripe's meter holds them (invoiced
// or not), ignoring the summary lag.
func (f *Fake) MeterTotal(customer, eventName string, from, to time.Time) int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	var n int64
	for _, e := range f.eventOrder {
		if !e.cancelled && e.customer == customer && e.eventName == eventName && e.ts >= from.Unix() && e.ts < to.Unix() {
			n += e.value
		}
	}
	return n
}

// Charged returns what the invoice of subscription sub for the period
// starting at start charged on item, and whether that invoice exists and
// is finalized.
func (f *Fake) Charged(sub string, start time.Time, item string) (int64, bool) {
	for _, in := range f.Invoices("") {
		if in.Subscription == sub && in.PeriodStart.Equal(start) && in.Status != "draft" {
			for _, l := range in.Lines {
				if l.Item == item {
					return l.Quantity, true
				}
			}
			return 0, true
		}
	}
	return 0, false
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}
