package ingest

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/shopspring/decimal"

	"github.com/usagemeter/usagemeter/consumer/chstore"
	"github.com/usagemeter/usagemeter/producer"
	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/testenv"
)

// heldStore is a Store whose inserts wait until release is closed.
type heldStore struct {
	Store
	release chan struct{}
}

func (s heldStore) Insert(ctx context.Context, b *chstore.EventBatch) error {
	select {
	case <-s.release:
	case <-ctx.Done():
		return ctx.Err()
	}
	return s.Store.Insert(ctx, b)
}

// gauge reads a gauge of reg by name.
func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("no gauge %s", name)
	return 0
}

// The consumer's own fetcher (fetch, readPartition): while the writer is
// held, fetching stops with messages left behind and usage_consumer_lag
// says how many; once the writer goes on, every event is written and
// committed exactly once and the lag is back at 0. No fetch error is
// counted for the wait.
func TestFetchHeldBackAndLag(t *testing.T) {
	e := newEnv(t, "")
	e.cfg.BatchSize = 100
	e.cfg.FetchMaxBytes = 16 << 10
	held := heldStore{Store: e.store, release: make(chan struct{})}
	const n = 6000
	events, _ := mixed(n, time.Now().Add(-time.Hour))
	want := map[key]decimal.Decimal{}
	for i := range events {
		events[i].TenantID = "acme" // one partition
		k := key{events[i].TenantID, events[i].FeatureType}
		want[k] = want[k].Add(events[i].Quantity)
	}
	p := e.publisher()
	if err := p.Publish(context.Background(), events...); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	c, err := New(e.cfg, held, e.log, WithRegisterer(reg))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	// Held: at most two batches, the loop's slice and the hand-over's 1024
	// are read; the rest waits in the broker.
	testenv.Eventually(t, 30*time.Second, "fetching held back", func() (bool, error) {
		return testutil.ToFloat64(c.m.consumed) >= 200 && gauge(t, reg, "usage_consumer_lag") > 0, nil
	})
	time.Sleep(12 * time.Second) // longer than a fetch's read deadline
	if lag := gauge(t, reg, "usage_consumer_lag"); lag < n-4000 || lag > n {
		t.Fatalf("lag %v while held, want between %d and %d", lag, n-4000, n)
	}
	close(held.release)
	testenv.Eventually(t, 60*time.Second, "every event written", func() (bool, error) {
		return testutil.ToFloat64(c.m.inserted) >= n, nil
	})
	testenv.Eventually(t, 10*time.Second, "lag back at 0", func() (bool, error) {
		return gauge(t, reg, "usage_consumer_lag") == 0, nil
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	done <- nil // for the cleanup
	if errs := testutil.ToFloat64(c.m.fetchErrors); errs != 0 {
		t.Errorf("%v fetch errors counted while the writer was held", errs)
	}
	e.waitDedup(n, 30*time.Second)
	assertSums(t, e.sums(), want)
	if got := e.count("FROM usage_events"); got != n {
		t.Errorf("%d raw rows, want %d (each event inserted once)", got, n)
	}
	part := schemas.PartitionFor("acme", 4)
	if got := testutil.ToFloat64(c.m.committed.WithLabelValues(strconv.Itoa(part))); got != n-1 {
		t.Errorf("committed offset %v, want %d", got, n-1)
	}
}

// Two members of one group while events flow: a second consumer joins
// (a rebalance moves partitions away from the first mid-read), then leaves
// (they move back). Every event is counted once, the sums are exact, and
// the group ends committed at the end of every partition. The wait for the
// second member is long: on the shared test broker a member that joins
// right after another was once seen not to read for over a minute, with
// kafka.Reader as well as with this fetcher.
func TestRebalanceBetweenTwoMembers(t *testing.T) {
	e := newEnv(t, "")
	e.cfg.BatchSize = 500
	r1 := e.start()
	p := e.publisher(producer.WithAsync(func(err error, _ []schemas.UsageEvent) { t.Errorf("async publish: %v", err) }))
	const n = 30_000
	events, want := mixed(n, time.Now().Add(-time.Hour))
	publish := func(from, to int) {
		for i := from; i < to; i += 500 {
			if err := p.Publish(context.Background(), events[i:min(i+500, to)]...); err != nil {
				t.Fatal(err)
			}
			time.Sleep(20 * time.Millisecond) // keep events flowing across the rebalances
		}
	}
	publish(0, 10_000)
	r2 := e.start()
	publish(10_000, 20_000)
	testenv.Eventually(t, 120*time.Second, "the second member reading", func() (bool, error) {
		return testutil.ToFloat64(r2.c.m.consumed) > 0, nil
	})
	if err := r2.shutdown(t); err != nil {
		t.Fatalf("second member's shutdown: %v", err)
	}
	publish(20_000, n)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	e.waitDedup(n, 120*time.Second)
	assertSums(t, e.sums(), want)
	if err := r1.shutdown(t); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	assertCommittedToEnd(t, e)
	t.Logf("first member consumed %v, second %v, of %d", testutil.ToFloat64(r1.c.m.consumed), testutil.ToFloat64(r2.c.m.consumed), n)
}
