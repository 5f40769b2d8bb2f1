package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"github.com/usagemeter/usagemeter/producer"
	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/testenv"
)

// writersTenants are the customers of the two-writers case (meter builds).
func writersTenants() []string {
	var out []string
	for i := range 8 {
		out = append(out, fmt.Sprintf("e2e-w%02d", i))
	}
	return out
}

// twoRunsAndReconcile starts two `run` processes and a `reconcile` at the
// same moment (a rolling deploy with an operator's reconcile), publishes
// late events into hours already billed while they run, and starts a
// second reconcile: every unit is billed once. The lease makes one process
// at a time the writer, and every audit row names its generation.
func (w *world) twoRunsAndReconcile(t *testing.T, services ...*proc) {
	tenants := writersTenants()
	fake, url := w.fakeStripe(t, tenants, map[string]string{"mtr_builds": "builds"})
	fake.SetDelay(10 * time.Millisecond) // passes take a while, so they overlap
	cfg := w.billingConfig(t, url, `    builds: { mode: meter_events, meter_id: mtr_builds }`, "  interval: 1s\n  workers: 4")
	env := cleanEnv()
	runA := start(t, w.dir, "run-a", w.bins.billing, env, "--config", cfg, "run")
	runB := start(t, w.dir, "run-b", w.bins.billing, env, "--config", cfg, "run")
	rec1 := start(t, w.dir, "reconcile-1", w.bins.billing, env, "--config", cfg, "reconcile")
	t.Cleanup(func() { runA.stop(10 * time.Second); runB.stop(10 * time.Second) })
	testenv.Eventually(t, 60*time.Second, "the first writes", func() (bool, error) {
		for _, p := range []*proc{runA, runB} {
			if p.exited() {
				return false, fmt.Errorf("%s exited (%v):\n%s", p.name, p.err, tail(p.log, 10))
			}
		}
		return len(fake.Writes()) >= 4, nil
	})

	// Late events into hours already billed, while both runs are up.
	var late []schemas.UsageEvent
	for i, tenant := range tenants {
		for _, h := range []int{2, 4} {
			e := producer.NewEvent(tenant, "builds", decimal.NewFromInt(int64(1+i%3)))
			e.Timestamp = closedHour(h).Add(40 * time.Minute)
			late = append(late, e)
		}
	}
	p, err := producer.New([]string{w.broker}, producer.WithTopic(w.topic))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := p.Publish(ctx, late...); err != nil {
		t.Fatal(err)
	}
	_ = p.Close()
	w.published = append(w.published, late...)
	w.waitIngested(t, services...)
	rec2 := start(t, w.dir, "reconcile-2", w.bins.billing, env, "--config", cfg, "reconcile")

	ch := w.sameTotals(t, "builds", "sum")
	testenv.Eventually(t, 90*time.Second, "Stripe's totals reach ClickHouse's with both runs up", func() (bool, error) {
		for _, tenant := range tenants {
			if fake.Total("cus_"+tenant, "builds") != ch[tenant].IntPart() {
				return false, nil
			}
		}
		return true, nil
	})
	for _, r := range []*proc{rec1, rec2} {
		if err := r.wait(t, 90*time.Second); err != nil {
			t.Errorf("%s: %v\n%s", r.name, err, tail(r.log, 10))
		}
	}
	// Both runs kept going: one wrote, the other stood by (or took over).
	time.Sleep(3 * time.Second)
	runA.stop(15 * time.Second)
	runB.stop(15 * time.Second)
	for _, r := range []*proc{runA, runB} {
		if r.err != nil {
			t.Errorf("%s exited with %v:\n%s", r.name, r.err, tail(r.log, 10))
		}
	}

	var diffs []string
	for _, tenant := range tenants {
		if got, want := fake.Total("cus_"+tenant, "builds"), ch[tenant].IntPart(); got != want {
			diffs = append(diffs, fmt.Sprintf("%s: Stripe %d, ClickHouse %d (%d billed twice)", tenant, got, want, got-want))
		}
	}
	if len(diffs) > 0 {
		t.Errorf("totals differ:\n%s", strings.Join(diffs, "\n"))
	}
	writes := writesOnce(t, fake)
	if reuse := fake.KeyReuse(); len(reuse) > 0 {
		t.Errorf("two writers planned the same intent differently:\n%s", strings.Join(reuse, "\n"))
	}
	// Every audit row of the meter names the lease generation it was
	// written under; more than one term billed (the reconciles took it).
	var rows, unfenced, gens uint64
	if err := w.conn.QueryRow(context.Background(), `SELECT count(), countIf(NOT match(pass_id, '^g[0-9]+-')),
 uniqExact(extract(pass_id, '^g([0-9]+)-')) FROM billing_audit WHERE meter = 'builds'`).Scan(&rows, &unfenced, &gens); err != nil {
		t.Fatal(err)
	}
	if rows == 0 || unfenced != 0 || gens < 2 {
		t.Errorf("audit: %d rows, %d without a generation, %d generations; want every row fenced and >= 2 terms", rows, unfenced, gens)
	}
	calls := posts(fake)
	again := passDone(t, runCmd(t, w.dir, w.bins.billing, env, "--config", cfg, "run", "--once"))
	if again["writes"] != 0.0 || posts(fake) != calls {
		t.Errorf("a pass afterwards wrote: %v; POSTs %d -> %d", again, calls, posts(fake))
	}
	w.noDrift(t, w.bins.billing, cfg)
	t.Logf("%d writes accepted once each, %d audit rows over %d lease generations; replays %d", writes, rows, gens, len(fake.Replays()))
}
