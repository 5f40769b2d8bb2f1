package service

// Benchmarks against the real engines (USAGE_TEST_KAFKA and
// USAGE_TEST_CLICKHOUSE, see testenv), e.g. from aggregator/:
//
//	USAGE_TEST_KAFKA=127.0.0.1:19092 USAGE_TEST_CLICKHOUSE=127.0.0.1:19000 \
//	  go test -run '^$' -bench QuotaFreshness ./service/
//	USAGE_TEST_KAFKA=127.0.0.1:19092 USAGE_TEST_CLICKHOUSE=127.0.0.1:19000 \
//	  go test -run '^$' -bench AggregatorThroughput -benchtime 300000x ./service/

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	"github.com/shopspring/decimal"

	"github.com/usagemeter/usagemeter/aggregator/aggstore"
	"github.com/usagemeter/usagemeter/producer"
	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/testenv"
)

const (
	// benchFreshnessDuration is how long BenchmarkQuotaFreshness publishes;
	// USAGE_BENCH_FRESHNESS (a Go duration, e.g. 30s) overrides it.
	benchFreshnessDuration = 10 * time.Second
	benchFreshnessRate     = 10_000 // events/s
	benchFreshnessTick     = 10 * time.Millisecond
	benchFreshnessTenants  = 50
)

// benchEnv is the tests' env with production intervals and no raw consumer.
type benchEnv = env

func newBenchEnv(tb testing.TB) *benchEnv {
	tb.Helper()
	if testing.Short() {
		tb.Skip("integration benchmark skipped in -short mode")
	}
	if os.Getenv(testenv.EnvKafka) == "" || os.Getenv(testenv.EnvClickHouse) == "" {
		tb.Skipf("%s and %s must be set (eval $(scripts/engines.sh start))", testenv.EnvKafka, testenv.EnvClickHouse)
	}
	e := setupEnv(tb, false)
	// USAGE_BENCH_QUOTA_COALESCE and USAGE_BENCH_FLUSH_INTERVAL (Go
	// durations) try other settings with the same binary.
	for name, dst := range map[string]*time.Duration{"USAGE_BENCH_QUOTA_COALESCE": &e.cfg.QuotaCoalesce, "USAGE_BENCH_FLUSH_INTERVAL": &e.cfg.FlushInterval} {
		if v := os.Getenv(name); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil {
				tb.Fatalf("%s=%q: %v", name, v, err)
			}
			*dst = d
		}
	}
	return e
}

// startBenchAggregator runs the aggregator until the benchmark ends.
func (e *benchEnv) startBenchAggregator() {
	e.t.Helper()
	svc, err := New(e.cfg, e.plans, aggstore.New(e.store.Conn()), e.log, WithRegisterer(prometheus.NewRegistry()))
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	e.t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				e.t.Errorf("aggregator stopped with %v", err)
			}
		case <-time.After(30 * time.Second):
			e.t.Error("aggregator did not stop")
		}
	})
}

// checkpointed returns how many messages the group's checkpoint covers.
func (e *benchEnv) checkpointed(ctx context.Context) (int, error) {
	cps, err := aggstore.New(e.store.Conn()).Checkpoints(ctx, e.cfg.GroupID, e.cfg.Topic)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, c := range cps {
		n += int(c.Offset) + 1
	}
	return n, nil
}

// freshness tracks, per tenant, when its k-th api_calls event (quantity 1,
// so usage k) was published, and records publish-to-visible latencies as
// quota states arrive. Events of a tenant share a partition and are applied
// in publish order, so usage U covers exactly the first U events.
type freshness struct {
	mu        sync.Mutex
	published map[string][]time.Time // tenant -> publish time of its k-th event at [k-1]
	visible   map[string]int         // tenant -> events already recorded
	latencies []time.Duration
	// The same events split in two at the time the aggregator wrote the
	// state that shows them (the record's timestamp): publish -> state
	// written (fetch, apply, coalescing, tick), and state written ->
	// read by a follower (the broker and the reader's fetch).
	toWritten, toRead []time.Duration
	acks              []time.Duration // publish -> acks=all acknowledged
	ahead             int             // states whose usage exceeded what was published (must stay 0)
	states            int
}

func (f *freshness) publish(tenant string, at time.Time) {
	f.published[tenant] = append(f.published[tenant], at)
}

func (f *freshness) observe(tenant string, usage int, at, written time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.states++
	pub := f.published[tenant]
	if usage > len(pub) {
		f.ahead++
		usage = len(pub)
	}
	for k := f.visible[tenant]; k < usage; k++ {
		f.latencies = append(f.latencies, at.Sub(pub[k]))
		f.toWritten = append(f.toWritten, written.Sub(pub[k]))
		f.toRead = append(f.toRead, at.Sub(written))
	}
	f.visible[tenant] = max(f.visible[tenant], usage)
}

func (f *freshness) pending() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for t, pub := range f.published {
		n += len(pub) - f.visible[t]
	}
	return n
}

// followQuotas reads every partition of the quota-state topic from its end
// and passes each api_calls state to f, until ctx ends.
func (e *benchEnv) followQuotas(ctx context.Context, f *freshness, partitions int) *sync.WaitGroup {
	var wg sync.WaitGroup
	for p := range partitions {
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{e.broker}, Topic: e.cfg.QuotaTopic, Partition: p,
			MinBytes: 1, MaxBytes: 16 << 20, MaxWait: 50 * time.Millisecond})
		if err := r.SetOffset(kafka.LastOffset); err != nil {
			e.t.Fatal(err)
		}
		wg.Go(func() {
			defer r.Close()
			for {
				m, err := r.FetchMessage(ctx)
				if err != nil {
					if ctx.Err() == nil {
						e.t.Errorf("read %s[%d]: %v", e.cfg.QuotaTopic, p, err)
					}
					return
				}
				now := time.Now()
				qs, err := schemas.DecodeQuotaState(m.Value)
				if err != nil {
					e.t.Errorf("quota state %s: %v", m.Value, err)
					continue
				}
				if qs.FeatureType == "api_calls" {
					f.observe(qs.TenantID, int(qs.Usage.IntPart()), now, m.Time)
				}
			}
		})
	}
	return &wg
}

func benchDuration(tb testing.TB) time.Duration {
	d := benchFreshnessDuration
	if v := os.Getenv("USAGE_BENCH_FRESHNESS"); v != "" {
		var err error
		if d, err = time.ParseDuration(v); err != nil || d <= 0 {
			tb.Fatalf("USAGE_BENCH_FRESHNESS=%q: want a positive Go duration", v)
		}
	}
	return d
}

// BenchmarkQuotaFreshness publishes api_calls events at a steady
// benchFreshnessRate over benchFreshnessTenants tenants and measures how
// long each takes to be reflected in a QuotaState on the compacted topic,
// as a quota cache reading it sees it. One measurement per run, whatever
// b.N: the duration is benchFreshnessDuration.
func BenchmarkQuotaFreshness(b *testing.B) {
	e := newBenchEnv(b)
	ctx, cancel := context.WithCancel(context.Background())
	f := &freshness{published: map[string][]time.Time{}, visible: map[string]int{}}
	readers := e.followQuotas(ctx, f, 2)
	defer func() { cancel(); readers.Wait() }()
	e.startBenchAggregator()

	var failed atomic.Int64
	w := &kafka.Writer{Addr: kafka.TCP(e.broker), Topic: e.cfg.Topic, Balancer: kafka.Murmur2Balancer{},
		RequiredAcks: kafka.RequireAll, Async: true, BatchSize: 10000, BatchTimeout: 5 * time.Millisecond, // the producer SDK's defaults
		Completion: func(msgs []kafka.Message, err error) {
			if err != nil {
				failed.Add(int64(len(msgs)))
			}
			now := time.Now()
			f.mu.Lock()
			for _, m := range msgs {
				if at, ok := m.WriterData.(time.Time); ok {
					f.acks = append(f.acks, now.Sub(at))
				}
			}
			f.mu.Unlock()
		}}
	defer w.Close()
	tenants := make([]string, benchFreshnessTenants)
	for i := range tenants {
		tenants[i] = fmt.Sprintf("fresh-%02d", i)
	}
	seq := 0
	send := func(n int, now time.Time) {
		msgs := make([]kafka.Message, n)
		f.mu.Lock()
		for i := range msgs {
			seq++
			t := tenants[seq%len(tenants)]
			msgs[i] = eventMsg(&schemas.UsageEvent{ID: fmt.Sprintf("fr-%d", seq), TenantID: t, UserID: fmt.Sprintf("u%d", seq%7),
				FeatureType: "api_calls", Quantity: decimal.NewFromInt(1), Timestamp: now.UTC()})
			f.publish(t, now)
			msgs[i].WriterData = now
		}
		f.mu.Unlock()
		if err := w.WriteMessages(ctx, msgs...); err != nil {
			b.Fatal(err)
		}
	}
	wait := func(what string, timeout time.Duration) {
		testenv.Eventually(b, timeout, what, func() (bool, error) { return f.pending() == 0, nil })
	}

	// Warm up: one event per tenant, visible once the group has joined.
	send(len(tenants), time.Now())
	wait("warm-up quota states", 60*time.Second)
	f.mu.Lock()
	f.latencies, f.toWritten, f.toRead, f.acks, f.states = nil, nil, nil, nil, 0
	f.mu.Unlock()
	time.Sleep(time.Second) // let the warm-up's coalescing window pass

	b.ResetTimer()
	dur := benchDuration(b)
	start := time.Now()
	sent := 0
	tick := time.NewTicker(benchFreshnessTick)
	for now := start; now.Sub(start) < dur; now = <-tick.C {
		// Catch up on ticks the scheduler delayed, so the average holds.
		due := int(float64(benchFreshnessRate)*now.Sub(start).Seconds()) - sent
		if due > 0 {
			send(due, time.Now())
			sent += due
		}
	}
	tick.Stop()
	elapsed := time.Since(start)
	wait("every event in a quota state", 60*time.Second)
	b.StopTimer()

	f.mu.Lock()
	lat := slices.Clone(f.latencies)
	stages := map[string][]time.Duration{"ack": slices.Clone(f.acks), "to_written": slices.Clone(f.toWritten), "to_read": slices.Clone(f.toRead)}
	states, ahead := f.states, f.ahead
	f.mu.Unlock()
	if n := failed.Load(); n > 0 {
		b.Fatalf("%d events failed to publish", n)
	}
	if ahead > 0 {
		b.Fatalf("%d quota states counted more events than were published", ahead)
	}
	if len(lat) != sent {
		b.Fatalf("measured %d latencies for %d events", len(lat), sent)
	}
	slices.Sort(lat)
	ms := func(q float64) float64 {
		return float64(lat[min(len(lat)-1, int(q*float64(len(lat))))].Microseconds()) / 1000
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(ms(0.50), "p50_ms")
	b.ReportMetric(ms(0.99), "p99_ms")
	b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, "max_ms")
	for name, d := range stages {
		if len(d) == 0 {
			continue
		}
		slices.Sort(d)
		b.ReportMetric(float64(d[len(d)/2].Microseconds())/1000, name+"_p50_ms")
		b.ReportMetric(float64(d[min(len(d)-1, len(d)*99/100)].Microseconds())/1000, name+"_p99_ms")
	}
	b.ReportMetric(float64(sent)/elapsed.Seconds(), "events/s")
	b.ReportMetric(float64(states)/elapsed.Seconds(), "states/s")
	if p99 := ms(0.99); p99 >= 1000 {
		b.Logf("p99 freshness %.0f ms is above the 1000 ms target", p99)
	}
}

// BenchmarkAggregatorThroughput times how fast the aggregator catches up on
// a backlog of b.N events (run with -benchtime 300000x): from its start
// (group join and restore included) until its ClickHouse checkpoint covers
// every event. Production defaults, so the last flush can add up to
// FlushInterval (1s).
//
// cpu_us/event is the user+system CPU time of this whole process over that
// span, divided by b.N. The process hosts the aggregator and its kafka-go
// and clickhouse-go clients (and this benchmark's checkpoint polling), not
// the Kafka broker or the ClickHouse server, whose CPU is not counted.
func BenchmarkAggregatorThroughput(b *testing.B) {
	e := newBenchEnv(b)
	r := rand.New(rand.NewPCG(uint64(b.N), 42))
	tenants := 8
	// Sum meters mostly, some unique_count (by user and by metadata).
	meters := []string{"api_calls", "api_calls", "api_calls", "api_calls", "tokens", "tokens", "tokens", "active_users", "projects", "ai_generation"}
	base := time.Now().UTC().Add(-5 * time.Minute)
	span := 4 * time.Minute // in order over the last minutes: none late
	msgs := make([]kafka.Message, b.N)
	for i := range msgs {
		meter := meters[r.IntN(len(meters))]
		q := decimal.NewFromInt(1)
		if meter == "tokens" {
			q = decimal.New(r.Int64N(100_000), -int32(r.IntN(4)))
		}
		msgs[i] = eventMsg(&schemas.UsageEvent{ID: fmt.Sprintf("tp-%d", i), TenantID: fmt.Sprintf("tp-%d", r.IntN(tenants)),
			UserID: fmt.Sprintf("user-%d", r.IntN(50)), FeatureType: meter, Quantity: q,
			Timestamp: base.Add(span * time.Duration(i) / time.Duration(b.N)),
			Metadata:  map[string]string{"project_id": fmt.Sprintf("p%d", r.IntN(20)), "endpoint": "/v1/things"}})
	}
	w := &kafka.Writer{Addr: kafka.TCP(e.broker), Topic: e.cfg.Topic, Balancer: kafka.Murmur2Balancer{},
		RequiredAcks: kafka.RequireAll, BatchSize: 10000, BatchTimeout: time.Millisecond}
	for chunk := range slices.Chunk(msgs, 50_000) {
		if err := w.WriteMessages(context.Background(), chunk...); err != nil {
			b.Fatal(firstWriteError(err))
		}
	}
	_ = w.Close()
	msgs = nil

	ctx := context.Background()
	b.ResetTimer()
	cpu0 := benchCPU(b)
	start := time.Now()
	e.startBenchAggregator()
	var done int
	for deadline := start.Add(10 * time.Minute); ; {
		n, err := e.checkpointed(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if done = n; done >= b.N || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	elapsed := time.Since(start)
	cpu := benchCPU(b) - cpu0
	b.StopTimer()
	if done != b.N {
		b.Fatalf("checkpoint covers %d of %d events after %s", done, b.N, elapsed)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "events/s")
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu_us/event")
}

// benchCPU returns the user+system CPU time of this process so far.
func benchCPU(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// firstWriteError shortens kafka.WriteErrors (one error per message) to
// its first error and a count.
func firstWriteError(err error) error {
	var we kafka.WriteErrors
	if errors.As(err, &we) {
		for _, e := range we {
			if e != nil {
				return fmt.Errorf("%d of %d messages failed, first: %w", we.Count(), len(we), e)
			}
		}
	}
	return err
}

// BenchmarkPipeline measures the whole pipeline at once on this machine:
// the SDK publishes b.N events while the raw consumer writes them to
// ClickHouse and the aggregator folds them into the aggregate tables and
// quota state. The timer runs from the first publish until both have
// durably written everything (raw rows inserted, aggregator checkpoint at
// the end of the topic). Run with a fixed count: -benchtime 300000x.
func BenchmarkPipeline(b *testing.B) {
	e := newBenchEnv(b)
	e.startRawConsumer()
	e.startBenchAggregator()
	p, err := producer.New([]string{e.broker}, producer.WithTopic(e.cfg.Topic),
		producer.WithAsync(func(err error, _ []schemas.UsageEvent) { b.Errorf("publish: %v", err) }))
	if err != nil {
		b.Fatal(err)
	}
	events := make([]schemas.UsageEvent, b.N)
	now := time.Now().UTC()
	for i := range events {
		events[i] = schemas.UsageEvent{TenantID: fmt.Sprintf("tenant-%02d", i%50), UserID: fmt.Sprintf("user-%d", i%500),
			FeatureType: []string{"api_calls", "tokens", "active_users"}[i%3], Quantity: decimal.NewFromInt(int64(i%7 + 1)),
			Timestamp: now.Add(-time.Duration(b.N-i) * time.Microsecond)}
	}
	ctx := context.Background()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < len(events); i += 1000 {
		if err := p.Publish(ctx, events[i:min(i+1000, len(events))]...); err != nil {
			b.Fatal(err)
		}
	}
	if err := p.Close(); err != nil {
		b.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Minute)
	for {
		agg, err := e.checkpointed(ctx)
		if err != nil {
			b.Fatal(err)
		}
		raw, err := testenv.CountRows(ctx, e.store.Conn(), "FROM usage_events")
		if err != nil {
			b.Fatal(err)
		}
		if agg >= b.N && raw >= uint64(b.N) {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("after 10 minutes: aggregator at %d, raw rows %d of %d", agg, raw, b.N)
		}
		time.Sleep(100 * time.Millisecond)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "events/s")
}
