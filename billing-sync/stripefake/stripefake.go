// Package stripefake is a stateful fake of the Stripe endpoints
// billing-sync uses, for tests and the demo: meter events (identifier
// dedup for 24 h, timestamps within 35 days back and 5 minutes ahead),
// cancel adjustments (within 24 h), hourly meter event summaries that lag
// by a configured delay, legacy usage records (set/increment, current
// period only) and their summaries, customers and subscriptions, and
// idempotency keys (the stored response replayed for 24 h; the same key
// with other parameters is an error). Faults (429, 500, timeouts, before
// or after the write) are injected per request.
//
// It is kept honest by stripe-mock: with Upstream set, every request it
// accepts is sent to stripe-mock as well, and one that stripe-mock refuses
// is reported in Violations (the request would not pass Stripe's spec).
package stripefake

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// searchQuery is the customer search the fake serves (see searchCustomers).
var searchQuery = regexp.MustCompile(`^metadata\[['"]tenant_id['"]\]:['"]([^'"]*)['"]$`)

// Fault is injected into the next Count requests whose path has Prefix.
type Fault struct {
	Prefix string
	Count  int
	Status int // 429 or 5xx; 0 with Delay set = a timeout
	// Delay holds the response (longer than the client's timeout: a timeout).
	Delay time.Duration
	// AfterWrite applies the request before failing: Stripe did it but the
	// client does not know.
	AfterWrite bool
	// Store keeps the failure under the request's idempotency key, as
	// Stripe keeps a 500 of a request that began executing: every retry
	// under that key for 24 h gets the same 500 back (Idempotent-Replayed:
	// true), with Stripe-Should-Retry: false (the key cannot succeed).
	// Only a new key gets the request executed (or, for a meter event whose
	// first try was applied, refused as a duplicate identifier).
	Store bool
}

type stored struct {
	fingerprint string
	status      int
	body        []byte
	at          time.Time
}

type event struct {
	identifier, customer, eventName string
	value                           int64
	ts                              int64
	received, cancelledAt           time.Time
	cancelled                       bool
}

type usageRecord struct {
	quantity int64
	received time.Time
}

// Fake is the fake Stripe. Create with New; it is an http.Handler.
type Fake struct {
	// Now is the fake's clock (default time.Now).
	Now func() time.Time
	// Lag delays what summaries show after a write (eventual consistency).
	Lag time.Duration
	// Upstream is stripe-mock's base URL; empty disables the check.
	Upstream string
	// Meters maps meter ids to event names (for summaries).
	Meters map[string]string
	// InvoiceGrace is how long after a period ends its invoice stays a
	// draft (Stripe's default finalization grace: 1 h); usage for the
	// period is accepted until then, and invoiced only if it arrived by then.
	InvoiceGrace time.Duration
	// CheckResponse, when set, sees every response the fake sends (status
	// and body, errors and injected faults included); an error is recorded
	// in Violations. Tests set it to stripespec's check, so the fake never
	// answers with a shape Stripe's spec does not allow.
	CheckResponse func(method, path string, status int, body []byte) error

	mu            sync.Mutex
	idem          map[string]stored
	events        map[string]*event // by identifier
	eventOrder    []*event
	records       map[string]map[int64]*usageRecord // item -> timestamp -> record
	customers     []customer
	prices        map[string]Price
	meterSettings map[string][2]string // meter id -> formula, event_time_window
	subs          map[string]*subscription
	subOrder      []string
	items         map[string]*subItem
	itemSeq       int
	invoices      []*Invoice
	rolled        bool      // invoices are up to date until nextRoll
	nextRoll      time.Time // the next period end or finalization
	faults        []*Fault
	inflight      map[string]bool
	requests      []time.Time
	writes        map[string]int // accepted (not replayed) writes per identifier or usage key
	violations    []string
	concurrency   int
	calls         map[string]int
	replays       map[string]int // idempotency key -> stored responses replayed
	keyReuse      []string       // "key: first parameters | later parameters", for diagnostics
	dupIdents     map[string]int // meter event identifier -> refused as already existing
	delay         time.Duration  // before each POST is processed (a slow Stripe)
	client        *http.Client
}

type customer struct{ id, tenant string }

// New returns an empty fake.
func New() *Fake {
	return &Fake{
		Now: time.Now, Meters: map[string]string{}, InvoiceGrace: time.Hour, idem: map[string]stored{}, events: map[string]*event{},
		records: map[string]map[int64]*usageRecord{}, items: map[string]*subItem{}, inflight: map[string]bool{},
		prices: map[string]Price{}, meterSettings: map[string][2]string{}, subs: map[string]*subscription{},
		writes: map[string]int{}, calls: map[string]int{}, replays: map[string]int{}, dupIdents: map[string]int{}, client: &http.Client{Timeout: 10 * time.Second},
	}
}

// AddMeter registers a meter id and its event name.
func (f *Fake) AddMeter(id, eventName string) { f.mu.Lock(); f.Meters[id] = eventName; f.mu.Unlock() }

// AddCustomer adds a customer whose metadata tenant_id is tenant (again:
// updates it; ids are unique).
func (f *Fake) AddCustomer(id, tenant string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, c := range f.customers {
		if c.id == id { // ids are unique on Stripe: adding it again updates it
			f.customers[i].tenant = tenant
			return
		}
	}
	f.customers = append(f.customers, customer{id, tenant})
}

// SetDelay makes every POST wait d before it is processed, while it
// counts as in flight: a slow Stripe, so that a test can kill a client
// mid-pass. The wait does not watch the client: a request whose client
// died is still applied, as Stripe would.
func (f *Fake) SetDelay(d time.Duration) { f.mu.Lock(); f.delay = d; f.mu.Unlock() }

// InFlight returns the POSTs being processed now.
func (f *Fake) InFlight() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.inflight)
}

// KeyReuse lists the idempotency keys reused with other parameters (each
// refused with idempotency_error): the first and the later request.
func (f *Fake) KeyReuse() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.keyReuse...)
}

// Replays returns, per idempotency key, how often a stored response was
// replayed (a retry or a re-sent intent under the same key).
func (f *Fake) Replays() map[string]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[string]int, len(f.replays))
	for k, v := range f.replays {
		out[k] = v
	}
	return out
}

// DuplicateIdentifiers returns, per meter event identifier, how often an
// event was refused because one with its identifier exists (a re-send
// under another key, or after the key expired).
func (f *Fake) DuplicateIdentifiers() map[string]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[string]int, len(f.dupIdents))
	for k, v := range f.dupIdents {
		out[k] = v
	}
	return out
}

// Inject queues a fault.
func (f *Fake) Inject(ft Fault) { f.mu.Lock(); f.faults = append(f.faults, &ft); f.mu.Unlock() }

// Writes returns the accepted (not replayed, not deduplicated) writes per
// meter event identifier or usage record idempotency key.
func (f *Fake) Writes() map[string]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[string]int, len(f.writes))
	for k, v := range f.writes {
		out[k] = v
	}
	return out
}

// Calls returns the requests served per operation.
func (f *Fake) Calls() map[string]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]int{}
	for k, v := range f.calls {
		out[k] = v
	}
	return out
}

// Violations lists requests stripe-mock refused and concurrent calls on
// one customer and meter.
func (f *Fake) Violations() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.violations...)
}

// MaxRate returns the most requests seen within any window of length d.
func (f *Fake) MaxRate(d time.Duration) int {
	f.mu.Lock()
	ts := append([]time.Time(nil), f.requests...)
	f.mu.Unlock()
	sort.Slice(ts, func(i, j int) bool { return ts[i].Before(ts[j]) })
	best, j := 0, 0
	for i := range ts {
		for ts[i].Sub(ts[j]) >= d {
			j++
		}
		best = max(best, i-j+1)
	}
	return best
}

// Total returns Stripe's total of live (not cancelled) events for a
// customer and event name, ignoring the summary lag.
func (f *Fake) Total(customerID, eventName string) int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	var n int64
	for _, e := range f.eventOrder {
		if !e.cancelled && e.customer == customerID && e.eventName == eventName {
			n += e.value
		}
	}
	return n
}

// UsageTotal returns the usage of item over records at any timestamp.
func (f *Fake) UsageTotal(item string) int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	var n int64
	for _, r := range f.records[item] {
		n += r.quantity
	}
	return n
}

type apiError struct {
	status         int
	typ, code, msg string
}

func (e apiError) body() []byte {
	b, _ := json.Marshal(map[string]any{"error": map[string]any{"type": e.typ, "code": e.code, "message": e.msg}})
	return b
}

func invalid(code, msg string) *apiError {
	return &apiError{status: 400, typ: "invalid_request_error", code: code, msg: msg}
}

// ServeHTTP routes one request.
func (f *Fake) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		// The client went away mid-request (a SIGKILLed process): the
		// request never fully arrived, so Stripe neither executes it nor
		// stores anything under its idempotency key.
		return
	}
	form, _ := url.ParseQuery(string(body))
	if r.Method == http.MethodGet {
		form = r.URL.Query()
	}
	op := operation(r.Method, r.URL.Path)
	f.mu.Lock()
	f.requests = append(f.requests, time.Now())
	f.calls[op]++
	fault := f.takeFault(r.URL.Path)
	f.mu.Unlock()
	if !strings.HasPrefix(r.Header.Get("Authorization"), "Bearer sk_") {
		f.respond(w, r, 401, (&apiError{status: 401, typ: "invalid_request_error", msg: "no API key"}).body())
		return
	}
	if fault != nil && !fault.AfterWrite {
		f.storeFault(r, form, fault)
		f.fail(w, r, fault)
		return
	}
	serial := ""
	if r.Method == http.MethodPost {
		serial = form.Get("payload[stripe_customer_id]") + "/" + form.Get("event_name")
		if strings.Contains(r.URL.Path, "usage_records") {
			serial = r.URL.Path
		}
		f.mu.Lock()
		if f.inflight[serial] {
			f.violations = append(f.violations, "two calls in flight for "+serial)
			f.mu.Unlock()
			f.respond(w, r, 429, (&apiError{status: 429, typ: "invalid_request_error", code: "lock_timeout", msg: "concurrent call"}).body())
			return
		}
		f.inflight[serial] = true
		delay := f.delay
		f.mu.Unlock()
		time.Sleep(delay)
	}
	status, resp, replayed := f.handle(r, op, form)
	if replayed {
		w.Header().Set("Idempotent-Replayed", "true")
		if status >= 500 {
			w.Header().Set("Stripe-Should-Retry", "false")
		}
	}
	if serial != "" {
		// Done processing; a delayed answer below is the network's.
		f.mu.Lock()
		delete(f.inflight, serial)
		f.mu.Unlock()
	}
	if fault != nil {
		f.storeFault(r, form, fault)
		f.fail(w, r, fault) // applied, but the client sees a failure
		return
	}
	if status < 300 && r.Method != http.MethodGet && f.Upstream != "" {
		if err := f.upstream(r, body); err != nil {
			f.mu.Lock()
			f.violations = append(f.violations, fmt.Sprintf("%s %s: %v", r.Method, r.URL.Path, err))
			f.mu.Unlock()
		}
	}
	f.respond(w, r, status, resp)
}

// respond writes a response after CheckResponse saw it.
func (f *Fake) respond(w http.ResponseWriter, r *http.Request, status int, body []byte) {
	if f.CheckResponse != nil {
		if err := f.CheckResponse(r.Method, r.URL.Path, status, body); err != nil {
			f.mu.Lock()
			f.violations = append(f.violations, err.Error())
			f.mu.Unlock()
		}
	}
	writeJSON(w, status, body)
}

func (f *Fake) fail(w http.ResponseWriter, r *http.Request, ft *Fault) {
	if ft.Delay > 0 {
		time.Sleep(ft.Delay)
	}
	if ft.Store && r.Header.Get("Idempotency-Key") != "" {
		w.Header().Set("Stripe-Should-Retry", "false")
	}
	f.respond(w, r, faultStatus(ft), faultBody(ft))
}

func faultStatus(ft *Fault) int {
	if ft.Status == 0 {
		return http.StatusGatewayTimeout
	}
	return ft.Status
}

func faultBody(ft *Fault) []byte {
	st := faultStatus(ft)
	return (&apiError{status: st, typ: "api_error", msg: "injected fault"}).body()
}

// storeFault keeps a Store fault's answer under the request's key.
func (f *Fake) storeFault(r *http.Request, form url.Values, ft *Fault) {
	key := r.Header.Get("Idempotency-Key")
	if !ft.Store || key == "" || r.Method != http.MethodPost {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.idem[key] = stored{fingerprint: r.Method + " " + r.URL.Path + "?" + form.Encode(), status: faultStatus(ft), body: faultBody(ft), at: f.Now()}
}

func (f *Fake) takeFault(path string) *Fault {
	for i, ft := range f.faults {
		if strings.HasPrefix(path, ft.Prefix) && ft.Count > 0 {
			ft.Count--
			if ft.Count == 0 {
				f.faults = append(f.faults[:i], f.faults[i+1:]...)
			}
			return ft
		}
	}
	return nil
}

// upstream sends an accepted request to stripe-mock, which must accept it.
func (f *Fake) upstream(r *http.Request, body []byte) error {
	req, err := http.NewRequest(r.Method, strings.TrimSuffix(f.Upstream, "/")+r.URL.RequestURI(), bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer sk_test_123")
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := f.client.Do(req)
	if err != nil {
		return fmt.Errorf("stripe-mock: %w", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 300 {
		return fmt.Errorf("stripe-mock refused it (%d): %s", resp.StatusCode, b)
	}
	return nil
}

func operation(method, path string) string {
	switch {
	case path == "/v1/billing/meter_events":
		return "meter_event"
	case path == "/v1/billing/meter_event_adjustments":
		return "meter_event_adjustment"
	case strings.HasSuffix(path, "/event_summaries"):
		return "meter_event_summaries"
	case strings.HasSuffix(path, "/usage_records"):
		return "usage_record"
	case strings.HasSuffix(path, "/usage_record_summaries"):
		return "usage_record_summaries"
	case path == "/v1/customers":
		return "customers"
	case path == "/v1/customers/search":
		return "customers_search"
	case strings.HasPrefix(path, "/v1/customers/") && strings.Count(path, "/") == 3:
		return method + " customer"
	case path == "/v1/subscriptions":
		return "subscriptions"
	case strings.HasPrefix(path, "/v1/subscriptions/"):
		return method + " subscription"
	case path == "/v1/subscription_items" || strings.HasPrefix(path, "/v1/subscription_items/") && strings.Count(path, "/") == 3:
		return method + " subscription_item"
	case path == "/v1/invoices":
		return "invoices"
	case strings.HasPrefix(path, "/v1/billing/meters/") && strings.Count(path, "/") == 4:
		return "meter"
	}
	return method + " " + path
}

// handle applies one request under the idempotency rules.
func (f *Fake) handle(r *http.Request, op string, form url.Values) (int, []byte, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := f.Now()
	f.rollLocked(now)
	key := r.Header.Get("Idempotency-Key")
	fp := r.Method + " " + r.URL.Path + "?" + form.Encode()
	if r.Method == http.MethodPost && key != "" {
		if len(key) > 255 {
			e := invalid("idempotency_key_too_long", "Idempotency-Key longer than 255 characters")
			return e.status, e.body(), false
		}
		// Keys expire 24 h after first use, by the fake's clock: the same
		// key then executes the request again.
		if s, ok := f.idem[key]; ok && now.Sub(s.at) < 24*time.Hour {
			if s.fingerprint != fp {
				f.keyReuse = append(f.keyReuse, key+": "+s.fingerprint+" | "+fp)
				e := &apiError{status: 400, typ: "idempotency_error", msg: "Keys for idempotent requests can only be used with the same parameters they were first used with."}
				return e.status, e.body(), false
			}
			f.replays[key]++
			return s.status, s.body, true // replayed
		}
	}
	status, body := f.apply(r, op, form, key, now)
	// Stripe stores the result of a request that began executing, even an
	// error; a refused-by-validation request is stored too here (it would
	// be refused again anyway).
	if r.Method == http.MethodPost && key != "" {
		f.idem[key] = stored{fingerprint: fp, status: status, body: body, at: now}
	}
	return status, body, false
}

func (f *Fake) apply(r *http.Request, op string, form url.Values, key string, now time.Time) (int, []byte) {
	var (
		obj any
		err *apiError
	)
	switch op {
	case "meter_event":
		obj, err = f.meterEvent(form, now)
	case "meter_event_adjustment":
		obj, err = f.adjustment(form, now)
	case "meter_event_summaries":
		obj, err = f.summaries(r.URL.Path, form, now)
	case "usage_record":
		obj, err = f.usageRecord(r.URL.Path, form, key, now)
	case "usage_record_summaries":
		obj, err = f.usageSummaries(r.URL.Path, now)
	case "customers":
		obj = f.listCustomers(form, now)
	case "customers_search":
		obj, err = f.searchCustomers(form, now)
	case "GET customer":
		obj, err = f.getCustomer(r.URL.Path, now)
	case "subscriptions":
		obj, err = f.listSubscriptions(form, now)
	case "GET subscription":
		var s *subscription
		if s, err = f.subscriptionByPath(r.URL.Path); err == nil {
			obj = f.subscriptionJSON(s, now)
		}
	case "POST subscription":
		var s *subscription
		if s, err = f.subscriptionByPath(r.URL.Path); err == nil {
			obj, err = f.updateSubscription(s, form, now)
		}
	case "DELETE subscription":
		var s *subscription
		if s, err = f.subscriptionByPath(r.URL.Path); err == nil {
			f.cancelLocked(s, now)
			obj = f.subscriptionJSON(s, now)
		}
	case "POST subscription_item", "DELETE subscription_item":
		obj, err = f.itemChange(r.Method, r.URL.Path, form, now)
	case "invoices":
		obj = f.listInvoices(form, now)
	case "meter":
		obj, err = f.meter(r.URL.Path, now)
	default:
		err = &apiError{status: 404, typ: "invalid_request_error", msg: "unrecognized request URL " + r.URL.Path}
	}
	if err != nil {
		return err.status, err.body()
	}
	b, _ := json.Marshal(obj)
	return 200, b
}

func (f *Fake) meterEvent(form url.Values, now time.Time) (any, *apiError) {
	name := form.Get("event_name")
	cus := form.Get("payload[stripe_customer_id]")
	ident := form.Get("identifier")
	if name == "" || cus == "" || form.Get("payload[value]") == "" {
		return nil, invalid("parameter_missing", "event_name, payload[stripe_customer_id] and payload[value] are required")
	}
	v, perr := strconv.ParseInt(form.Get("payload[value]"), 10, 64)
	if perr != nil || v < 0 {
		return nil, invalid("parameter_invalid_integer", "payload[value] must be a non-negative integer")
	}
	ts := now.Unix()
	if s := form.Get("timestamp"); s != "" {
		ts, _ = strconv.ParseInt(s, 10, 64)
	}
	if ts < now.Add(-35*24*time.Hour).Unix() || ts > now.Add(5*time.Minute).Unix() {
		return nil, invalid("timestamp_out_of_range", "timestamp must be within the past 35 calendar days or up to 5 minutes in the future")
	}
	if ident == "" {
		ident = fmt.Sprintf("gen_%d", len(f.eventOrder))
	}
	if e, ok := f.events[ident]; ok && now.Sub(e.received) < 24*time.Hour {
		f.dupIdents[ident]++
		return nil, &apiError{status: 400, typ: "invalid_request_error", code: "resource_already_exists",
			msg: "An event with identifier " + ident + " already exists"}
	}
	e := &event{identifier: ident, customer: cus, eventName: name, value: v, ts: ts, received: now}
	f.events[ident] = e
	f.eventOrder = append(f.eventOrder, e)
	f.writes[ident]++
	return map[string]any{"object": "billing.meter_event", "created": now.Unix(), "event_name": name, "identifier": ident,
		"livemode": false, "payload": map[string]string{"stripe_customer_id": cus, "value": form.Get("payload[value]")}, "timestamp": ts}, nil
}

func (f *Fake) adjustment(form url.Values, now time.Time) (any, *apiError) {
	ident := form.Get("cancel[identifier]")
	if form.Get("event_name") == "" || form.Get("type") != "cancel" || ident == "" {
		return nil, invalid("parameter_missing", "event_name, type=cancel and cancel[identifier] are required")
	}
	e, ok := f.events[ident]
	if !ok || e.eventName != form.Get("event_name") {
		return nil, invalid("resource_missing", "no meter event with identifier "+ident)
	}
	if e.cancelled {
		return nil, invalid("meter_event_already_cancelled", "already cancelled")
	}
	if now.Sub(e.received) >= 24*time.Hour {
		return nil, invalid("meter_event_adjustment_window_passed", "events can only be cancelled within 24 hours of receipt")
	}
	e.cancelled, e.cancelledAt = true, now
	f.writes["cancel:"+ident]++
	return map[string]any{"object": "billing.meter_event_adjustment", "event_name": e.eventName, "livemode": false, "status": "complete",
		"type": "cancel", "cancel": map[string]string{"identifier": ident}}, nil
}

func (f *Fake) summaries(path string, form url.Values, now time.Time) (any, *apiError) {
	id := strings.TrimSuffix(strings.TrimPrefix(path, "/v1/billing/meters/"), "/event_summaries")
	name, ok := f.Meters[id]
	if !ok {
		return nil, &apiError{status: 404, typ: "invalid_request_error", code: "resource_missing", msg: "no such meter " + id}
	}
	cus := form.Get("customer")
	start, e1 := strconv.ParseInt(form.Get("start_time"), 10, 64)
	end, e2 := strconv.ParseInt(form.Get("end_time"), 10, 64)
	if cus == "" || e1 != nil || e2 != nil {
		return nil, invalid("parameter_missing", "customer, start_time and end_time are required")
	}
	grouping := form.Get("value_grouping_window")
	if start%60 != 0 || end%60 != 0 || grouping == "hour" && (start%3600 != 0 || end%3600 != 0) {
		return nil, invalid("parameter_invalid", "start_time and end_time must be aligned to the grouping window")
	}
	buckets := map[int64]int64{}
	for _, e := range f.eventOrder {
		if e.cancelled || e.customer != cus || e.eventName != name || e.ts < start || e.ts >= end || now.Sub(e.received) < f.Lag {
			continue
		}
		b := start
		if grouping == "hour" {
			b = e.ts - e.ts%3600
		}
		buckets[b] += e.value
	}
	var starts []int64
	for b := range buckets {
		starts = append(starts, b)
	}
	sort.Slice(starts, func(i, j int) bool { return starts[i] < starts[j] })
	var data []any
	for _, b := range starts {
		bEnd := end
		if grouping == "hour" {
			bEnd = b + 3600
		}
		data = append(data, map[string]any{"object": "billing.meter_event_summary", "id": fmt.Sprintf("mtrusg_%d", b), "livemode": false,
			"meter": id, "aggregated_value": float64(buckets[b]), "start_time": b, "end_time": bEnd})
	}
	return page(data, form, path), nil
}

// page applies limit and starting_after (ids) to a list.
func page(data []any, form url.Values, path string) map[string]any {
	limit := 10
	if l, err := strconv.Atoi(form.Get("limit")); err == nil && l > 0 {
		limit = min(l, 100)
	}
	if after := form.Get("starting_after"); after != "" {
		for i, d := range data {
			if d.(map[string]any)["id"] == after {
				data = data[i+1:]
				break
			}
		}
	}
	more := len(data) > limit
	if more {
		data = data[:limit]
	}
	if data == nil {
		data = []any{}
	}
	return map[string]any{"object": "list", "data": data, "has_more": more, "url": path}
}

func (f *Fake) usageRecord(path string, form url.Values, key string, now time.Time) (any, *apiError) {
	item := strings.TrimSuffix(strings.TrimPrefix(path, "/v1/subscription_items/"), "/usage_records")
	it, ok := f.items[item]
	if !ok || it.deleted {
		return nil, &apiError{status: 404, typ: "invalid_request_error", code: "resource_missing", msg: "no such subscription item " + item}
	}
	q, err := strconv.ParseInt(form.Get("quantity"), 10, 64)
	if err != nil || q < 0 {
		return nil, invalid("parameter_invalid_integer", "quantity must be a non-negative integer")
	}
	action := form.Get("action")
	if action == "" {
		action = "increment"
	}
	if action != "set" && action != "increment" {
		return nil, invalid("parameter_invalid", "action must be set or increment")
	}
	ts := now.Unix()
	if s := form.Get("timestamp"); s != "" {
		ts, _ = strconv.ParseInt(s, 10, 64)
	}
	// The current period, or the previous one while its invoice is a
	// draft (the finalization grace after its end).
	start, end := it.sub.current(now)
	prevStart, _ := it.sub.periodAt(start.Add(-time.Second))
	inCurrent := ts >= start.Unix() && ts < end.Unix()
	inDraft := ts >= prevStart.Unix() && ts < start.Unix() && now.Before(start.Add(f.InvoiceGrace))
	if !inCurrent && !inDraft || ts > now.Unix() {
		return nil, invalid("timestamp_outside_period", "the timestamp must be within the current billing period and not in the future")
	}
	if f.records[item] == nil {
		f.records[item] = map[int64]*usageRecord{}
	}
	rec := f.records[item][ts]
	if rec == nil {
		rec = &usageRecord{}
		f.records[item][ts] = rec
	}
	if action == "set" {
		rec.quantity = q
	} else {
		rec.quantity += q
	}
	rec.received = now
	f.writes[key]++
	return map[string]any{"object": "usage_record", "id": fmt.Sprintf("mbur_%d", len(f.writes)), "livemode": false,
		"quantity": q, "subscription_item": item, "timestamp": ts}, nil
}

func (f *Fake) usageSummaries(path string, now time.Time) (any, *apiError) {
	item := strings.TrimSuffix(strings.TrimPrefix(path, "/v1/subscription_items/"), "/usage_record_summaries")
	it, ok := f.items[item]
	if !ok {
		return nil, &apiError{status: 404, typ: "invalid_request_error", code: "resource_missing", msg: "no such subscription item " + item}
	}
	totals, ends := map[int64]int64{}, map[int64]int64{}
	for ts, r := range f.records[item] {
		if now.Sub(r.received) < f.Lag {
			continue
		}
		s, e := it.sub.periodAt(time.Unix(ts, 0).UTC())
		totals[s.Unix()] += r.quantity
		ends[s.Unix()] = e.Unix()
	}
	var starts []int64
	for s := range totals {
		starts = append(starts, s)
	}
	sort.Slice(starts, func(i, j int) bool { return starts[i] > starts[j] }) // newest first, as Stripe
	var data []any
	for _, s := range starts {
		data = append(data, map[string]any{"object": "usage_record_summary", "id": fmt.Sprintf("sis_%s_%d", item, s), "livemode": false,
			"invoice": nil, "period": map[string]any{"start": s, "end": ends[s]}, "subscription_item": item, "total_usage": totals[s]})
	}
	return page(data, url.Values{"limit": {"100"}}, path), nil
}

func (f *Fake) listCustomers(form url.Values, now time.Time) any {
	var data []any
	for _, c := range f.customers {
		data = append(data, map[string]any{"object": "customer", "id": c.id, "created": now.Unix(), "livemode": false,
			"metadata": map[string]string{"tenant_id": c.tenant}})
	}
	return page(data, form, "/v1/customers")
}

// getCustomer serves GET /v1/customers/{id} (a webhook for a customer the
// handler has not seen yet looks it up).
func (f *Fake) getCustomer(path string, now time.Time) (any, *apiError) {
	id := strings.TrimPrefix(path, "/v1/customers/")
	for _, c := range f.customers {
		if c.id == id {
			return map[string]any{"object": "customer", "id": c.id, "created": now.Unix(), "livemode": false,
				"metadata": map[string]string{"tenant_id": c.tenant}}, nil
		}
	}
	return nil, &apiError{status: 404, typ: "invalid_request_error", code: "resource_missing", msg: "No such customer: '" + id + "'"}
}

// searchCustomers serves the one query form a tenant lookup needs,
// metadata['tenant_id']:'X' (Stripe's search language has many more;
// anything else is refused rather than answered wrongly). Search results
// page with an opaque next_page token, here the offset.
func (f *Fake) searchCustomers(form url.Values, now time.Time) (any, *apiError) {
	m := searchQuery.FindStringSubmatch(strings.TrimSpace(form.Get("query")))
	if m == nil {
		return nil, invalid("parameter_invalid", "the fake understands only query=metadata['tenant_id']:'<tenant>'")
	}
	var data []any
	for _, c := range f.customers {
		if c.tenant == m[1] {
			data = append(data, map[string]any{"object": "customer", "id": c.id, "created": now.Unix(), "livemode": false,
				"metadata": map[string]string{"tenant_id": c.tenant}})
		}
	}
	limit := 10
	if l, err := strconv.Atoi(form.Get("limit")); err == nil && l > 0 {
		limit = min(l, 100)
	}
	offset, _ := strconv.Atoi(form.Get("page"))
	offset = min(max(offset, 0), len(data))
	data = data[offset:]
	var next any // null on the last page
	if len(data) > limit {
		data, next = data[:limit], strconv.Itoa(offset+limit)
	}
	if data == nil {
		data = []any{}
	}
	return map[string]any{"object": "search_result", "data": data, "has_more": next != nil, "next_page": next,
		"url": "/v1/customers/search"}, nil
}

func writeJSON(w http.ResponseWriter, status int, body []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}
