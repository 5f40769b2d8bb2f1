package faults

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shopspring/decimal"
	"go.uber.org/zap"

	"github.com/usagemeter/usagemeter/producer"
	"github.com/usagemeter/usagemeter/quota"
	"github.com/usagemeter/usagemeter/schemas/plans"
	"github.com/usagemeter/usagemeter/testenv"
)

// Issue 13 item 1: the quota middleware with the broker down. An app
// serves requests behind quota.Middleware (sync ProducerTracker, a durable
// Outbox bounded at outboxBound events) while its private broker is
// stopped for 12 s. Usage served while the broker is down waits in the
// outbox and is counted once it is back; once the outbox is full the
// middleware answers 503 TRACKING_BACKLOG before serving. The independent
// count is the client's: every 200 it received, per tenant. It must equal,
// exactly, the rows of usage_events FINAL (the real usage-consumer) and the
// usage of the latest quota state (the real usage-aggregator, through the
// cache).
const outboxBound = 600

func TestMiddlewareBrokerDown(t *testing.T) {
	if testing.Short() {
		t.Skip("fault suite skipped in -short mode")
	}
	bins := buildBinaries(t)
	k := testenv.StartKafka(t)
	eng := engines{broker: k.Addr, clickhouse: testenv.StartClickHouse(t).Addr}
	p := newPipeline(t, bins, eng)
	defer func() {
		if t.Failed() {
			p.logProblems()
		}
	}()
	p.startConsumer()
	p.startAggregator()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pl, err := plans.Load(p.plansFile)
	if err != nil {
		t.Fatal(err)
	}
	qc := quota.DefaultConfig()
	qc.Brokers, qc.StateTopic, qc.AssignmentTopic = []string{eng.broker}, p.quota, p.asg
	cache, err := quota.New(qc, pl, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() { _ = cache.Run(ctx) })
	if err := cache.WaitReady(ctxTimeout(t, 30*time.Second)); err != nil {
		t.Fatal(err)
	}
	pub, err := producer.New([]string{eng.broker}, producer.WithTopic(p.topic), producer.WithRetries(2, 2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = pub.Close() }()
	out, err := quota.NewOutbox(quota.OutboxConfig{Dir: t.TempDir(), MaxEvents: outboxBound, RetryMax: time.Second},
		quota.NewProducerTracker(pub), zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	wg.Go(func() { _ = out.Run(ctx) })
	mw, err := quota.NewMiddleware(cache, quota.MiddlewareConfig{Meter: "api_calls",
		Tenant: func(r *http.Request) string { return r.Header.Get("X-Tenant") }, Outbox: out})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(mw.Wrap(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "done\n")
	})))
	defer srv.Close()

	// Traffic: 4 clients, 8 tenants, ~200 requests/s in all.
	tenants := []string{"mw-a", "mw-b", "mw-c", "mw-d", "mw-e", "mw-f", "mw-g", "mw-h"}
	var mu sync.Mutex
	served := map[string]int64{}
	statuses := map[int]int{}
	var stop atomic.Bool
	var traffic sync.WaitGroup
	for c := range 4 {
		traffic.Go(func() {
			for i := 0; !stop.Load(); i++ {
				tenant := tenants[(i*4+c)%len(tenants)]
				req, _ := http.NewRequest(http.MethodPost, srv.URL+"/generate", nil)
				req.Header.Set("X-Tenant", tenant)
				res, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Errorf("request: %v", err)
					return
				}
				_, _ = io.Copy(io.Discard, res.Body)
				res.Body.Close()
				mu.Lock()
				statuses[res.StatusCode]++
				if res.StatusCode == http.StatusOK {
					served[tenant]++
				}
				mu.Unlock()
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
	time.Sleep(3 * time.Second)
	k.Stop()
	stopped := time.Now()
	time.Sleep(12 * time.Second)
	maxQueued := out.Len()
	down := time.Since(stopped)
	k.Start()
	t.Logf("broker stopped for %s s, then answering again after %s s; outbox held %d events (bound %d) before the restart",
		seconds(down), seconds(time.Since(stopped)-down), maxQueued, outboxBound)
	time.Sleep(3 * time.Second)
	stop.Store(true)
	traffic.Wait()
	mu.Lock()
	t.Logf("responses by status: %v", statuses)
	total := int64(0)
	for _, n := range served {
		total += n
	}
	mu.Unlock()
	if statuses[http.StatusServiceUnavailable] == 0 || maxQueued != outboxBound {
		t.Errorf("the outbox never filled (held %d of %d, %d 503s): the case did not test the bound", maxQueued, outboxBound, statuses[http.StatusServiceUnavailable])
	}

	// Exact: the client's 200s = raw rows = quota state usage, per tenant.
	deadline := time.Now().Add(90 * time.Second)
	var last string
	for {
		last = ""
		raw, err := rawCounts(ctx, p)
		if err != nil {
			last = err.Error()
		}
		for _, tenant := range tenants {
			want := served[tenant]
			d := cache.Peek(ctx, tenant, "api_calls")
			state := d.Usage.Sub(d.Pending)
			if raw[tenant] != want || state.Cmp(quota.Units(want)) != 0 {
				last += fmt.Sprintf("%s: served %d, usage_events %d, quota state %s (pending %s); ", tenant, want, raw[tenant], state, d.Pending)
			}
		}
		if last == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not exact 90 s after the traffic stopped (outbox %d undelivered, %+v): %s", out.Len(), out.Stats(), last)
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("exact: %d requests served (the outbox peaked at %d), every one in usage_events and in the quota states; outbox %+v",
		total, maxQueued, out.Stats())
}

func rawCounts(ctx context.Context, p *pipeline) (map[string]int64, error) {
	rows, err := p.conn.Query(ctx, "SELECT tenant_id, toString(sum(quantity)), count() FROM usage_events FINAL WHERE feature_type = 'api_calls' GROUP BY tenant_id")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	got := map[string]int64{}
	for rows.Next() {
		var tenant, sum string
		var n uint64
		if err := rows.Scan(&tenant, &sum, &n); err != nil {
			return nil, err
		}
		if s, err := decimal.NewFromString(sum); err != nil || !s.Equal(decimal.NewFromInt(int64(n))) {
			return nil, fmt.Errorf("%s: sum %s over %d events of quantity 1", tenant, sum, n)
		}
		got[tenant] = int64(n)
	}
	return got, rows.Err()
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
