package syncer_test

import (
	"context"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/usagemeter/usagemeter/billing-sync/stripeapi"
	"github.com/usagemeter/usagemeter/billing-sync/stripefake"
	"github.com/usagemeter/usagemeter/billing-sync/syncer"
	"github.com/usagemeter/usagemeter/testenv"
)

func hoursAgo(h int) time.Time {
	return time.Now().UTC().Truncate(time.Hour).Add(-time.Duration(h) * time.Hour)
}

// thisMonth keeps usage inside the current calendar month (usage records
// take only the current period).
func thisMonthHour(h int) time.Time {
	t := hoursAgo(h)
	if m := time.Now().UTC(); t.Month() != m.Month() {
		return time.Date(m.Year(), m.Month(), 1, 0, 0, 0, 0, time.UTC)
	}
	return t
}

func TestSyncReconcileZeroDriftBothModes(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	for _, tenant := range []string{"acme", "globex"} {
		e.customer(tenant)
	}
	e.insert(
		ev{"acme", "api_calls", "3", hoursAgo(3).Add(5 * time.Minute)},
		ev{"acme", "api_calls", "4", hoursAgo(3).Add(50 * time.Minute)},
		ev{"acme", "api_calls", "2", hoursAgo(2).Add(time.Minute)},
		ev{"globex", "api_calls", "10", hoursAgo(5)},
		// 0.4 + 0.7 + 0.9 thousand tokens: 0, 1, 2 units; the period sums to floor(2.0).
		ev{"acme", "tokens", "400", hoursAgo(4)}, ev{"acme", "tokens", "700", hoursAgo(3)}, ev{"acme", "tokens", "900", hoursAgo(2)},
		ev{"acme", "storage", "500", thisMonthHour(3)}, ev{"acme", "storage", "800", thisMonthHour(2)},
		ev{"nobody", "api_calls", "1", hoursAgo(2)}, // unmapped: reported, others still billed
	)
	s := e.syncer()
	rep, err := s.Sync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Unmapped) != 1 || rep.Unmapped[0] != "nobody/api_calls" {
		t.Errorf("unmapped %v", rep.Unmapped)
	}
	if got := e.fake.Total("cus_acme", "api_calls"); got != 9 {
		t.Errorf("acme api_calls on Stripe %d, want 9", got)
	}
	if got := e.fake.Total("cus_acme", "tokens"); got != 2 {
		t.Errorf("acme tokens on Stripe %d, want 2 (floor of 2.0 thousand, remainders carried)", got)
	}
	if got := e.fake.UsageTotal("si_acme"); got != 800 {
		t.Errorf("acme storage on Stripe %d, want 800 (max)", got)
	}
	writes := e.noDoubleWrites()
	// A second pass and a reconcile write nothing; drift is zero.
	for i, pass := range []func() (*syncer.Report, error){
		func() (*syncer.Report, error) { return s.Sync(ctx) },
		func() (*syncer.Report, error) { return s.Reconcile(ctx, time.Time{}, time.Time{}) },
	} {
		rep, err := pass()
		if err != nil {
			t.Fatal(err)
		}
		if rep.Writes != 0 || rep.Observed != 0 {
			t.Errorf("pass %d: %d writes, %d observed, want none", i, rep.Writes, rep.Observed)
		}
	}
	ds, err := s.Drift(ctx, hoursAgo(24), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range ds {
		if d.Status != "unmapped" {
			t.Errorf("drift %+v", d)
		}
	}
	if n := e.noDoubleWrites(); n != writes {
		t.Errorf("writes grew from %d to %d", writes, n)
	}
}

func TestFaultsThenRerunBillsOnce(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	var evs []ev
	for _, tenant := range []string{"t1", "t2", "t3", "t4"} {
		e.customer(tenant)
		for h := 1; h <= 6; h++ {
			evs = append(evs, ev{tenant, "api_calls", "5", hoursAgo(h)}, ev{tenant, "storage", "7", thisMonthHour(h)})
		}
	}
	e.insert(evs...)
	e.fake.Inject(stripefake.Fault{Prefix: "/v1/billing/meter_events", Count: 3, Status: 500, AfterWrite: true})
	e.fake.Inject(stripefake.Fault{Prefix: "/v1/billing/meter_events", Count: 3, Status: 429})
	e.fake.Inject(stripefake.Fault{Prefix: "/v1/subscription_items", Count: 2, Status: 503, AfterWrite: true})
	e.fake.Inject(stripefake.Fault{Prefix: "/v1/billing/meter_events", Count: 2, Delay: 2500 * time.Millisecond, AfterWrite: true}) // timeouts
	// Retries run out for some windows (max_attempts 2): they stay pending.
	e.apiCf.MaxAttempts = 2
	e.api = stripeapi.New(e.apiCf, zap.NewNop(), nil)
	s := e.syncer()
	if _, err := s.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	rep, err := s.Sync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("second pass: %+v", rep)
	if rep, err = s.Reconcile(ctx, time.Time{}, time.Time{}); err != nil {
		t.Fatal(err)
	}
	for _, tenant := range []string{"t1", "t2", "t3", "t4"} {
		if got := e.fake.Total("cus_"+tenant, "api_calls"); got != 30 {
			t.Errorf("%s api_calls %d, want 30", tenant, got)
		}
		if got := e.fake.UsageTotal("si_" + tenant); got != 7 {
			t.Errorf("%s storage %d, want 7", tenant, got)
		}
	}
	e.noDoubleWrites()
	ds, err := s.Drift(ctx, hoursAgo(24), time.Now())
	if err != nil || len(ds) != 0 {
		t.Fatalf("drift %v %v", ds, err)
	}
}

func TestLateEventsCorrectedWithinGraceReportedAfter(t *testing.T) {
	e := newEnv(t)
	e.cfg.Grace = 8 * time.Hour
	ctx := context.Background()
	e.customer("acme")
	e.insert(ev{"acme", "api_calls", "10", hoursAgo(3)}, ev{"acme", "api_calls", "10", hoursAgo(12)})
	s := e.syncer()
	e.cfg.Grace = 24 * time.Hour // the first pass bills both hours
	first := e.syncer()
	if _, err := first.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	// Late events: one inside the grace (3 h ago), one past it (12 h ago).
	e.insert(ev{"acme", "api_calls", "5", hoursAgo(3).Add(30 * time.Minute)}, ev{"acme", "api_calls", "6", hoursAgo(12).Add(time.Minute)})
	rep, err := s.Sync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Writes != 1 {
		t.Fatalf("late pass: %+v", rep)
	}
	// The hour past the grace keeps what Stripe holds (10); its 6 late
	// units carry into the next hour of the period still billed (issue 12
	// item 7: each window bills floor(running total) minus what the
	// ledger billed before it), so the period bills all 31.
	if got := e.fake.Total("cus_acme", "api_calls"); got != 31 {
		t.Errorf("Stripe holds %d, want 31 (the late event inside the grace, and the one past it carried)", got)
	}
	ds, err := s.Drift(ctx, hoursAgo(24), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) != 0 {
		t.Fatalf("drift %+v, want none (the late units past the grace are billed in a later hour)", ds)
	}
	// A decrease within 24 h of sending: cancel and re-send (no negative events).
	if err := e.conn.Exec(ctx, "ALTER TABLE usage_events DELETE WHERE quantity = 5"); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "a pass that writes the decrease", func() (bool, error) {
		rep, err = s.Sync(ctx)
		return err == nil && rep.Writes > 0, err
	})
	if got := e.fake.Total("cus_acme", "api_calls"); got != 26 {
		t.Errorf("after the decrease Stripe holds %d, want 26", got)
	}
	e.noDoubleWrites()
}
