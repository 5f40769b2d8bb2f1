package syncer

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/usagemeter/usagemeter/billing-sync/audit"
	"github.com/usagemeter/usagemeter/billing-sync/stripeapi"
)

// execute writes the pass's intents to the ledger first (the write-ahead
// log), then makes the calls: one goroutine per (customer, meter) group at
// a time, up to Workers groups at once, each group's calls in order.
func (s *Syncer) execute(ctx context.Context, groups [][]*job, rep *Report) error {
	var wal []audit.Row
	for _, g := range groups {
		for _, j := range g {
			for i := range j.intents {
				j.intents[i].PassID = rep.PassID
			}
			wal = append(wal, j.intents...)
		}
	}
	if s.cfg.DryRun {
		for _, g := range groups {
			for _, j := range g {
				for _, in := range j.resend {
					rep.Planned = append(rep.Planned, in.First)
					rep.Resent++
				}
			}
		}
		for _, r := range wal {
			rep.Planned = append(rep.Planned, r)
			if r.Result == audit.Pending {
				rep.Writes++
			}
		}
		return nil
	}
	if err := s.ledger.Write(ctx, wal); err != nil {
		return err
	}
	results := newResultWriter(ctx, s.ledger, s.log)
	fence := s.currentFence()
	var fenced error
	work := make(chan []*job)
	var wg sync.WaitGroup
	var mu sync.Mutex
	for range min(s.cfg.Workers, max(len(groups), 1)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for g := range work {
				for _, j := range g {
					var calls []audit.Row
					for _, in := range j.resend {
						r := in.First
						r.PassID = rep.PassID
						calls = append(calls, r)
					}
					resent := len(calls)
					for _, r := range j.intents {
						if r.Result == audit.Pending {
							calls = append(calls, r)
						}
					}
					writes, failed, ferr := s.callAll(ctx, fence, calls, results)
					mu.Lock()
					rep.Writes += writes
					rep.Failed += failed
					rep.Resent += resent
					if ferr != nil && fenced == nil {
						fenced = ferr
					}
					mu.Unlock()
				}
			}
		}()
	}
	for _, g := range groups {
		select {
		case work <- g:
		case <-ctx.Done():
		}
	}
	close(work)
	wg.Wait()
	if err := results.close(); err != nil {
		return err
	}
	if fenced != nil {
		return fenced
	}
	return ctx.Err()
}

// callAll makes a window's calls in seq order. After a failure the rest
// are not made: after a transient one they stay pending (re-sent in order
// next pass); after a refusal they are marked failed, so a send planned
// after a cancel that Stripe refused never goes out alone.
//
// Before each call the writer's fence is checked: once the lease is lost
// nothing more is sent, and the intents stay pending for the next writer.
func (s *Syncer) callAll(ctx context.Context, fence Fence, calls []audit.Row, results *resultWriter) (writes, failed int, fenced error) {
	for i, r := range calls {
		if ctx.Err() != nil {
			return
		}
		if fence != nil {
			if err := fence.Check(ctx); err != nil {
				s.log.Warn("lease lost: no more Stripe writes in this pass", zap.Error(err))
				return writes, failed, err
			}
		}
		err := s.call(ctx, r)
		writes++
		res := r
		res.At = time.Time{}
		switch {
		case err == nil:
			res.Result, res.Error = audit.OK, ""
		case ctx.Err() != nil:
			return // killed: the intent stays pending
		case stripeapi.KeyReused(err):
			// Another request holds the key (another writer, other
			// parameters): it may have billed. Read back, never re-plan.
			res.Result, res.Error = audit.Unknown, err.Error()
		case stripeapi.Retryable(err):
			res.Result, res.Error = audit.Retry, err.Error()
		default:
			res.Result, res.Error = audit.Refused, err.Error()
			s.m.refused.WithLabelValues(r.Meter).Inc()
			if stripeapi.Missing(err) {
				// The item or customer is gone (an item replaced mid-period):
				// re-read the subscriptions before the next write.
				s.forgetSubscriptions()
			}
		}
		s.m.writes.WithLabelValues(r.Action, res.Result).Inc()
		results.add(res)
		if err != nil {
			failed++
			s.log.Warn("stripe write failed", zap.String("tenant", r.Tenant), zap.String("meter", r.Meter),
				zap.Time("window", r.WindowStart), zap.String("action", r.Action), zap.String("result", res.Result), zap.Error(err))
			if res.Result == audit.Refused || res.Result == audit.Unknown {
				for _, rest := range calls[i+1:] {
					rest.Result, rest.Error, rest.At = audit.Failed, "not sent: an earlier write of the window was refused", time.Time{}
					results.add(rest)
				}
			}
			return
		}
	}
	return
}

func (s *Syncer) call(ctx context.Context, r audit.Row) error {
	switch r.Action {
	case audit.Send:
		return s.stripe.SendMeterEvent(ctx, stripeapi.MeterEvent{EventName: r.Target, Customer: r.Customer, Identifier: r.Identifier,
			Value: r.Delta, Timestamp: r.WindowStart, IdempotencyKey: r.IdempotencyKey})
	case audit.Cancel:
		return s.stripe.CancelMeterEvent(ctx, r.Customer, r.Target, r.Identifier, r.IdempotencyKey)
	case audit.Set:
		return s.stripe.SetUsage(ctx, r.Target, r.Stripe, r.WindowStart, r.IdempotencyKey)
	}
	return errors.New("no call for action " + r.Action)
}

// resultWriter appends result rows in batches, every 500 ms and at close.
// Rows not written before a crash leave their intents pending: re-sent
// with the same keys, harmless.
type resultWriter struct {
	ctx    context.Context
	ledger Ledger
	log    *zap.Logger
	mu     sync.Mutex
	buf    []audit.Row
	err    error
	done   chan struct{}
	stop   chan struct{}
}

func newResultWriter(ctx context.Context, l Ledger, log *zap.Logger) *resultWriter {
	w := &resultWriter{ctx: ctx, ledger: l, log: log, done: make(chan struct{}), stop: make(chan struct{})}
	go func() {
		defer close(w.done)
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				w.flush()
			case <-w.stop:
				w.flush()
				return
			}
		}
	}()
	return w
}

func (w *resultWriter) add(r audit.Row) {
	w.mu.Lock()
	w.buf = append(w.buf, r)
	w.mu.Unlock()
}

func (w *resultWriter) flush() {
	w.mu.Lock()
	rows := w.buf
	w.buf = nil
	w.mu.Unlock()
	if len(rows) == 0 {
		return
	}
	// A cancelled pass still records the results it has: they are facts.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(w.ctx), 30*time.Second)
	defer cancel()
	if err := w.ledger.Write(ctx, rows); err != nil {
		w.log.Error("audit write failed: the intents stay pending and are re-sent next pass", zap.Error(err))
		w.mu.Lock()
		w.err = errors.Join(w.err, err)
		w.mu.Unlock()
	}
}

func (w *resultWriter) close() error {
	close(w.stop)
	<-w.done
	return w.err
}

type metrics struct {
	passes      *prometheus.CounterVec
	passSeconds prometheus.Histogram
	writes      *prometheus.CounterVec
	unmapped    prometheus.Gauge
	drift       *prometheus.GaugeVec
	// noSubscription: tenant/meter pairs with usage no subscription item invoices.
	noSubscription prometheus.Gauge
	refused        *prometheus.CounterVec // writes Stripe refused for good, by meter
	refusedWindows prometheus.Gauge       // windows left alone because their last write was refused
	lookupErrors   prometheus.Counter     // tenants skipped in a pass because a Stripe look-up failed
	edgeHeld       prometheus.Counter     // checkpoints not written: a window before the edge has an open intent
}

func newMetrics() *metrics {
	return &metrics{
		passes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "billing_passes_total", Help: "Billing passes by outcome."}, []string{"outcome"}),
		passSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "billing_pass_seconds", Help: "Duration of a billing pass.",
			Buckets: prometheus.ExponentialBuckets(0.05, 2, 14)}),
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "billing_writes_total",
			Help: "Stripe writes by action (send, cancel, set) and result (ok, retry, failed)."}, []string{"action", "result"}),
		unmapped: prometheus.NewGauge(prometheus.GaugeOpts{Name: "billing_unmapped_tenants", Help: "Tenant/meter pairs with usage but no Stripe customer or item in the last pass."}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "billing_refused_writes_total",
			Help: "Stripe writes refused for good (4xx), by meter: not re-planned until our value or the target changes."}, []string{"meter"}),
		refusedWindows: prometheus.NewGauge(prometheus.GaugeOpts{Name: "billing_refused_windows",
			Help: "Windows whose last write Stripe refused, left alone in the last pass."}),
		lookupErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "billing_lookup_errors_total",
			Help: "Tenant/meter pairs skipped in a pass because a Stripe customer or subscription look-up failed."}),
		noSubscription: prometheus.NewGauge(prometheus.GaugeOpts{Name: "billing_no_subscription_tenants",
			Help: "Tenant/meter pairs with usage in the last pass that no subscription item on the meter's price invoices."}),
		edgeHeld: prometheus.NewCounter(prometheus.CounterOpts{Name: "billing_checkpoint_edge_held_total",
			Help: "Checkpoints not written because a window before the edge has an intent whose outcome is open (pending, retry, unknown)."}),
		drift: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "billing_drift_windows",
			Help: "Windows whose Stripe value differs from ours at the last drift check, by status."}, []string{"status"}),
	}
}

func (m *metrics) register(r prometheus.Registerer) {
	r.MustRegister(m.passes, m.passSeconds, m.writes, m.unmapped, m.drift, m.noSubscription, m.refused, m.refusedWindows, m.lookupErrors, m.edgeHeld)
}
