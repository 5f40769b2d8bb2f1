package ingest

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"

	"github.com/usagemeter/usagemeter/producer"
	"github.com/usagemeter/usagemeter/schemas"
)

// BenchmarkConsumeToClickHouse measures Kafka -> ClickHouse through the
// consumer: b.N events are published first (not timed), then the timer runs
// from the consumer's start until all b.N rows are inserted. Run it with a
// fixed count, e.g. -benchtime 500000x; it reports events/s.
func BenchmarkConsumeToClickHouse(b *testing.B) {
	e := newEnv(b, "")
	e.log = zap.NewNop()
	p := e.publisher(producer.WithAsync(func(err error, _ []schemas.UsageEvent) { b.Errorf("publish: %v", err) }))
	events, _ := mixed(b.N, time.Now().Add(-time.Hour))
	for i := 0; i < len(events); i += 1000 {
		if err := p.Publish(context.Background(), events[i:min(i+1000, len(events))]...); err != nil {
			b.Fatal(err)
		}
	}
	if err := p.Close(); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	cpu0 := benchCPU(b)
	start := time.Now()
	r := e.start()
	deadline := time.Now().Add(10 * time.Minute)
	for testutil.ToFloat64(r.c.m.inserted) < float64(b.N) {
		if time.Now().After(deadline) {
			b.Fatalf("only %v of %d inserted", testutil.ToFloat64(r.c.m.inserted), b.N)
		}
		time.Sleep(5 * time.Millisecond)
	}
	elapsed := time.Since(start)
	cpu := benchCPU(b) - cpu0
	b.StopTimer()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "events/s")
	// The consumer's CPU (this process; ClickHouse and the broker are not in it).
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu_us/event")
	if err := r.shutdown(b); err != nil {
		b.Fatal(err)
	}
	if got := e.count("FROM usage_events FINAL"); got != uint64(b.N) {
		b.Fatalf("%d deduplicated rows, want %d", got, b.N)
	}
}

// BenchmarkEndToEnd measures SDK -> Kafka -> consumer -> ClickHouse with
// both running at once on the same machine as the engines: the timer runs
// from the first publish until the last of b.N events is inserted.
func BenchmarkEndToEnd(b *testing.B) {
	e := newEnv(b, "")
	e.log = zap.NewNop()
	events, _ := mixed(b.N, time.Now().Add(-time.Hour))
	r := e.start()
	p := e.publisher(producer.WithAsync(func(err error, _ []schemas.UsageEvent) { b.Errorf("publish: %v", err) }))
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < len(events); i += 1000 {
		if err := p.Publish(context.Background(), events[i:min(i+1000, len(events))]...); err != nil {
			b.Fatal(err)
		}
	}
	if err := p.Close(); err != nil {
		b.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Minute)
	for testutil.ToFloat64(r.c.m.inserted) < float64(b.N) {
		if time.Now().After(deadline) {
			b.Fatalf("only %v of %d inserted", testutil.ToFloat64(r.c.m.inserted), b.N)
		}
		time.Sleep(5 * time.Millisecond)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "events/s")
	if err := r.shutdown(b); err != nil {
		b.Fatal(err)
	}
	if got := e.count("FROM usage_events FINAL"); got != uint64(b.N) {
		b.Fatalf("%d deduplicated rows, want %d", got, b.N)
	}
}

// benchCPU is this process's user + system CPU time (getrusage).
func benchCPU(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
