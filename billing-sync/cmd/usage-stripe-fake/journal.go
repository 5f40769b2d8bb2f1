package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/usagemeter/usagemeter/billing-sync/stripefake"
)

// entry is one line of the journal: a customer or subscription item the
// demo added, or a mutating request the fake executed. Replaying the lines
// in order, each at its recorded time, rebuilds the same state.
type entry struct {
	Kind string    `json:"kind"` // customer, item or request
	At   time.Time `json:"at"`
	// customer and item
	Customer string `json:"customer,omitempty"`
	Tenant   string `json:"tenant,omitempty"`
	Item     string `json:"item,omitempty"`
	Price    string `json:"price,omitempty"`
	// request: the API key itself is never written, only that one was sent
	Method  string `json:"method,omitempty"`
	URI     string `json:"uri,omitempty"`
	IdemKey string `json:"idempotency_key,omitempty"`
	Body    string `json:"body,omitempty"`
}

// clock is the fake's Now: the wall clock, or the time of the entry being
// replayed or journaled, so that a replayed request sees the time it first
// ran at (24 h idempotency, 35-day timestamps, subscription periods).
type clock struct{ pinned atomic.Pointer[time.Time] }

func (c *clock) now() time.Time {
	if t := c.pinned.Load(); t != nil {
		return *t
	}
	return time.Now().UTC()
}

func (c *clock) pin(t time.Time) { c.pinned.Store(&t) }
func (c *clock) unpin()          { c.pinned.Store(nil) }

// journaled wraps a stripefake.Fake: every POST is executed one at a time
// and appended (fsynced) to the journal before its answer is sent, so what
// a client was told is never lost by a restart. GETs read the fake
// directly.
type journaled struct {
	fake  *stripefake.Fake
	clock *clock
	log   *zap.Logger

	mu     sync.Mutex // one POST at a time: the journal's order is the fake's order
	file   *os.File
	seen   map[string]bool // "tenant:<id>" and "item:<id>" already added
	failed prometheus.Counter
	writes prometheus.Counter
}

// openJournal replays path (created when missing) into fake and returns the
// wrapper that keeps appending to it. A torn last line (the process was
// killed mid-write) is dropped with a warning; any other bad line is an
// error naming it, since skipping it would silently change the state.
func openJournal(path string, fake *stripefake.Fake, log *zap.Logger, reg prometheus.Registerer) (*journaled, error) {
	j := &journaled{fake: fake, clock: &clock{}, log: log, seen: map[string]bool{},
		failed: prometheus.NewCounter(prometheus.CounterOpts{Name: "stripe_fake_journal_failures_total",
			Help: "Requests executed but answered 500 because the journal write failed (lost on restart; the client retries)."}),
		writes: prometheus.NewCounter(prometheus.CounterOpts{Name: "stripe_fake_journal_writes_total",
			Help: "Entries appended to the journal."}),
	}
	if reg != nil {
		reg.MustRegister(j.failed, j.writes)
	}
	fake.Now = j.clock.now
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("journal %s: %w", path, err)
	}
	good, n, err := j.replay(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("journal %s: %w", path, err)
	}
	// Cut a torn tail so the next entry starts on a line of its own.
	if err := f.Truncate(good); err != nil {
		f.Close()
		return nil, fmt.Errorf("journal %s: truncate torn tail: %w", path, err)
	}
	if _, err := f.Seek(good, io.SeekStart); err != nil {
		f.Close()
		return nil, fmt.Errorf("journal %s: %w", path, err)
	}
	j.file = f
	log.Info("journal replayed", zap.String("path", path), zap.Int("entries", n))
	return j, nil
}

// replay applies every complete line and returns the offset after the last
// good one and the number of entries.
func (j *journaled) replay(r io.Reader) (int64, int, error) {
	br := bufio.NewReader(r)
	var off int64
	n := 0
	for line := 1; ; line++ {
		b, err := br.ReadBytes('\n')
		if errors.Is(err, io.EOF) {
			if len(b) > 0 {
				j.log.Warn("journal: dropping a torn last line (killed mid-write)", zap.Int("line", line), zap.Int("bytes", len(b)))
			}
			return off, n, nil
		}
		if err != nil {
			return off, n, err
		}
		var e entry
		if err := json.Unmarshal(b, &e); err != nil {
			return off, n, fmt.Errorf("line %d: %w", line, err)
		}
		if err := j.apply(e); err != nil {
			return off, n, fmt.Errorf("line %d: %w", line, err)
		}
		off += int64(len(b))
		n++
	}
}

func (j *journaled) apply(e entry) error {
	j.clock.pin(e.At)
	defer j.clock.unpin()
	switch e.Kind {
	// A customer or item already added is skipped: two fakes started on one
	// journal (a demo and a test at once) may both have written it.
	case "customer":
		if !j.seen["tenant:"+e.Tenant] {
			j.fake.AddCustomer(e.Customer, e.Tenant)
			j.seen["tenant:"+e.Tenant] = true
		}
	case "item":
		if !j.seen["item:"+e.Item] {
			j.fake.AddSubscriptionItem(e.Customer, e.Item, e.Price)
			j.seen["item:"+e.Item] = true
		}
	case "request":
		req := httptest.NewRequest(e.Method, e.URI, strings.NewReader(e.Body))
		req.Header.Set("Authorization", "Bearer sk_journal_replay")
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if e.IdemKey != "" {
			req.Header.Set("Idempotency-Key", e.IdemKey)
		}
		j.fake.ServeHTTP(httptest.NewRecorder(), req)
	default:
		return fmt.Errorf("kind %q is not customer, item or request", e.Kind)
	}
	return nil
}

// append writes e and fsyncs; the caller holds j.mu.
func (j *journaled) append(e entry) error {
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	if _, err := j.file.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("journal write: %w", err)
	}
	if err := j.file.Sync(); err != nil {
		return fmt.Errorf("journal sync: %w", err)
	}
	j.writes.Inc()
	return nil
}

// addCustomer adds a customer for tenant (and journals it) unless one
// exists; addItem does the same for a usage_records meter's item.
func (j *journaled) addCustomer(id, tenant string) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.seen["tenant:"+tenant] {
		return nil
	}
	e := entry{Kind: "customer", At: time.Now().UTC(), Customer: id, Tenant: tenant}
	if err := j.append(e); err != nil {
		return err
	}
	j.apply(e) //nolint:errcheck // a known kind
	return nil
}

func (j *journaled) addItem(customer, item, price string) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.seen["item:"+item] {
		return nil
	}
	e := entry{Kind: "item", At: time.Now().UTC(), Customer: customer, Item: item, Price: price}
	if err := j.append(e); err != nil {
		return err
	}
	j.apply(e) //nolint:errcheck // a known kind
	return nil
}

// ServeHTTP serves the Stripe API.
func (j *journaled) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodGet {
		j.fake.ServeHTTP(w, r)
		return
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return // never fully arrived: Stripe neither executes nor stores it
	}
	// Without a key the fake refuses it (401) and changes nothing: not journaled.
	authorized := strings.HasPrefix(r.Header.Get("Authorization"), "Bearer sk_")
	j.mu.Lock()
	defer j.mu.Unlock()
	at := time.Now().UTC()
	j.clock.pin(at)
	rec := httptest.NewRecorder()
	req := r.Clone(r.Context())
	req.Body = io.NopCloser(bytes.NewReader(body))
	j.fake.ServeHTTP(rec, req)
	j.clock.unpin()
	if authorized {
		e := entry{Kind: "request", At: at, Method: r.Method, URI: r.URL.RequestURI(), IdemKey: r.Header.Get("Idempotency-Key"), Body: string(body)}
		if err := j.append(e); err != nil {
			// Executed in memory but not durable: answer as a Stripe 500,
			// which billing-sync retries under the same key.
			j.failed.Inc()
			j.log.Error("journal write failed; answered 500", zap.Error(err))
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusInternalServerError)
			_, _ = w.Write([]byte(`{"error":{"type":"api_error","message":"fake Stripe could not journal the request"}}`))
			return
		}
	}
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.Code)
	_, _ = w.Write(rec.Body.Bytes())
}

// Close closes the journal file.
func (j *journaled) Close() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.file.Close()
}
