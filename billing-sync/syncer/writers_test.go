package syncer_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/usagemeter/usagemeter/billing-sync/audit"
	"github.com/usagemeter/usagemeter/billing-sync/syncer"
	"github.com/usagemeter/usagemeter/billing-sync/usage"
)

// staleLedger is a second writer's view of the ledger: it loaded it before
// the first writer's rows existed (an empty ledger); writes go through.
type staleLedger struct{ syncer.Ledger }

func (staleLedger) Load(context.Context, string, time.Time, time.Time) (map[audit.WindowKey]*audit.Window, error) {
	return map[audit.WindowKey]*audit.Window{}, nil
}

// crashingLedger writes the write-ahead rows but loses every result row:
// a process killed after its call and before its results were flushed.
type crashingLedger struct{ syncer.Ledger }

func (l crashingLedger) Write(ctx context.Context, rows []audit.Row) error {
	var keep []audit.Row
	for _, r := range rows {
		if r.Result == audit.Pending {
			keep = append(keep, r)
		}
	}
	return l.Ledger.Write(ctx, keep)
}

func (e *env) syncerWith(l syncer.Ledger) *syncer.Syncer {
	return syncer.New(e.cfg, e.plans, usage.New(e.conn), l, e.api, zaptest.NewLogger(e.t, zaptest.Level(zap.ErrorLevel)))
}

// Two writers plan the same (window, seq) with different values (the
// second saw a late event and a ledger without the first one's rows):
// Stripe refuses the second under the key (idempotency_error). The first
// one's ok is final, so the window is not billed again.
func TestSecondWriterRefusedUnderKeyDoesNotHideOK(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.customer("acme")
	h := hoursAgo(3)
	e.insert(ev{"acme", "api_calls", "10", h.Add(time.Minute)})
	if _, err := e.syncer().Sync(ctx); err != nil {
		t.Fatal(err)
	}
	e.insert(ev{"acme", "api_calls", "2", h.Add(2 * time.Minute)}) // a late event
	rep, err := e.syncerWith(staleLedger{audit.New(e.conn, nil)}).Sync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Failed != 1 || len(e.fake.KeyReuse()) != 1 {
		t.Fatalf("the second writer: %d failed, key reuse %v; want its seq 0 refused under the key", rep.Failed, e.fake.KeyReuse())
	}
	for range 2 { // the next passes bring Stripe to 12, and only to 12
		if _, err := e.syncer().Sync(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if got := e.fake.Total("cus_acme", "api_calls"); got != 12 {
		t.Fatalf("Stripe holds %d api_calls for acme, ClickHouse 12 (%d billed twice)", got, got-12)
	}
	e.noDoubleWrites()
}

// The first writer's call succeeded but its result row was lost; the
// second writer's same-key request is refused. The outcome is unknown,
// not failed: run plans nothing more for the window, reconcile reads
// Stripe back and bills only the difference.
func TestIdempotencyErrorIsUnknownAndReadBack(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.customer("acme")
	h := hoursAgo(3)
	e.insert(ev{"acme", "api_calls", "10", h.Add(time.Minute)})
	if _, err := e.syncerWith(crashingLedger{audit.New(e.conn, nil)}).Sync(ctx); err != nil {
		t.Fatal(err)
	}
	e.insert(ev{"acme", "api_calls", "2", h.Add(2 * time.Minute)})
	if _, err := e.syncerWith(staleLedger{audit.New(e.conn, nil)}).Sync(ctx); err != nil {
		t.Fatal(err)
	}
	s := e.syncer()
	rep, err := s.Sync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := e.fake.Total("cus_acme", "api_calls"); got != 10 {
		t.Fatalf("after run: Stripe holds %d, want 10 (nothing planned while the outcome is unknown)", got)
	}
	if rep.Writes != 0 || len(rep.Unfixable) != 1 || rep.Unfixable[0].Status != "outcome_unknown" {
		t.Fatalf("run: %d writes, unfixable %+v; want none and outcome_unknown", rep.Writes, rep.Unfixable)
	}
	if _, err := s.Reconcile(ctx, time.Time{}, time.Time{}); err != nil {
		t.Fatal(err)
	}
	if got := e.fake.Total("cus_acme", "api_calls"); got != 12 {
		t.Fatalf("after reconcile: Stripe holds %d, ClickHouse 12", got)
	}
	rep, err = s.Sync(ctx)
	if err != nil || rep.Writes != 0 {
		t.Fatalf("a later pass: %v, %d writes; want none", err, rep.Writes)
	}
	e.noDoubleWrites()
}

// fence allows n checks, then reports the lease lost.
type fence struct{ left atomic.Int64 }

var errLost = errors.New("lease lost (test)")

func (f *fence) Check(context.Context) error {
	if f.left.Add(-1) < 0 {
		return errLost
	}
	return nil
}
func (f *fence) Generation() int32 { return 7 }

// Once the fence fails, the pass makes no further Stripe write, says so,
// and its intents stay pending for the next writer, which bills them once.
func TestFencedPassStopsWriting(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	for _, tn := range []string{"a1", "a2", "a3", "a4"} {
		e.customer(tn)
		e.insert(ev{tn, "api_calls", "5", hoursAgo(3)}, ev{tn, "api_calls", "6", hoursAgo(2)})
	}
	s := e.syncer()
	f := &fence{}
	f.left.Store(3)
	s.SetFence(f)
	rep, err := s.Sync(ctx)
	if !errors.Is(err, errLost) {
		t.Fatalf("pass with a lost lease: %v, want the fence's error", err)
	}
	if !strings.HasPrefix(rep.PassID, "g7-") {
		t.Errorf("pass id %q does not carry the generation", rep.PassID)
	}
	if n := len(e.fake.Writes()); n != 3 {
		t.Fatalf("Stripe accepted %d writes, want the 3 made before the lease was lost", n)
	}
	var rows uint64
	if err := e.conn.QueryRow(ctx, "SELECT count() FROM billing_audit WHERE pass_id = ?", rep.PassID).Scan(&rows); err != nil || rows < 8 {
		t.Fatalf("audit rows of the fenced pass: %d, %v; want its 8 intents with the generation", rows, err)
	}
	s.SetFence(nil)
	if _, err := s.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	for _, tn := range []string{"a1", "a2", "a3", "a4"} {
		if got := e.fake.Total("cus_"+tn, "api_calls"); got != 11 {
			t.Errorf("%s: Stripe %d, want 11", tn, got)
		}
	}
	e.noDoubleWrites()
}
