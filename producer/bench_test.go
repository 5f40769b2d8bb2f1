package producer

import (
	"context"
	"fmt"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/testenv"
)

// The benchmarks publish b.N events in Publish calls of 1000 to a fresh
// 4-partition topic on the test broker and report events/s acknowledged
// (acks=all): the clock stops after Close, so events still queued count.
// Use a fixed count, e.g.
//
//	USAGE_TEST_KAFKA=127.0.0.1:19092 go test -run x -bench Publish -benchtime 200000x ./

func BenchmarkPublishAsync(b *testing.B) {
	b.Run("lz4", func(b *testing.B) { benchPublish(b, WithAsync(nil), WithCompression("lz4")) })
	// As usage-bench and most apps publish: with a delivery-failure callback,
	// which keeps each event for it.
	b.Run("lz4-callback", func(b *testing.B) {
		benchPublish(b, WithAsync(func(err error, _ []schemas.UsageEvent) { b.Error(err) }), WithCompression("lz4"))
	})
	b.Run("zstd", func(b *testing.B) { benchPublish(b, WithAsync(nil), WithCompression("zstd")) })
}

func BenchmarkPublishSync(b *testing.B) {
	b.Run("lz4", func(b *testing.B) { benchPublish(b, WithCompression("lz4")) })
	b.Run("zstd", func(b *testing.B) { benchPublish(b, WithCompression("zstd")) })
}

const benchBatch = 1000

// benchEvents returns n realistic events (about 200 bytes of JSON each once
// the SDK fills the UUIDv7 and timestamp): 100 tenants, 1000 users, API
// calls and AI generations with their endpoint and method.
func benchEvents(n int) []schemas.UsageEvent {
	one := decimal.NewFromInt(1)
	apiMeta := []map[string]string{
		{"endpoint": "/v1/items", "method": "GET"},
		{"endpoint": "/v1/items", "method": "POST"},
		{"endpoint": "/v1/search", "method": "GET"},
		{"endpoint": "/v1/export", "method": "POST"},
	}
	aiMeta := []map[string]string{
		{"endpoint": "/v1/generate", "method": "POST", "model": "gpt-4o-mini"},
		{"endpoint": "/v1/generate", "method": "POST", "model": "claude-haiku"},
	}
	events := make([]schemas.UsageEvent, n)
	for i := range events {
		e := schemas.UsageEvent{
			TenantID:    fmt.Sprintf("tenant-%03d", i%100),
			UserID:      fmt.Sprintf("user-%04d", (i*7)%1000),
			FeatureType: schemas.MeterAPICalls,
			Quantity:    one,
			Metadata:    apiMeta[i%len(apiMeta)],
		}
		if i%5 == 0 {
			e.FeatureType = schemas.MeterAIGeneration
			e.Metadata = aiMeta[i%len(aiMeta)]
		}
		events[i] = e
	}
	return events
}

func benchPublish(b *testing.B, opts ...Option) {
	if testing.Short() || os.Getenv(testenv.EnvKafka) == "" {
		b.Skip("needs the test broker: set " + testenv.EnvKafka + " (make bench)")
	}
	broker := testenv.Kafka(b)
	topic := testenv.Name("producer_bench")
	testenv.CreateTopic(b, broker, topic, 4)
	p, err := New([]string{broker}, append([]Option{WithTopic(topic)}, opts...)...)
	if err != nil {
		b.Fatal(err)
	}
	templates := benchEvents(benchBatch)
	sample := templates[1]
	sample.ID, sample.Timestamp = "0192f4c5-7a3e-7b9c-8d2e-3f4a5b6c7d8e", time.Now()
	if err := schemas.NewValidator().Validate(&sample); err != nil {
		b.Fatal(err)
	}
	eventBytes := len(sample.AppendJSON(nil))
	batch := make([]schemas.UsageEvent, benchBatch)
	ctx := context.Background()

	b.ReportAllocs()
	b.ResetTimer()
	start, cpu0 := time.Now(), processCPU()
	for sent := 0; sent < b.N; sent += benchBatch {
		n := min(benchBatch, b.N-sent)
		copy(batch, templates[:n]) // fresh events: no ID, no timestamp
		if err := p.Publish(ctx, batch[:n]...); err != nil {
			b.Fatal(err)
		}
	}
	if err := p.Close(); err != nil {
		b.Fatal(err)
	}
	elapsed, cpu := time.Since(start), processCPU()-cpu0
	b.StopTimer()

	s := p.Stats()
	if s.Published != int64(b.N) || s.Failed != 0 {
		b.Fatalf("stats %+v after publishing %d events", s, b.N)
	}
	b.ReportMetric(float64(s.Published)/elapsed.Seconds(), "events/s")
	b.ReportMetric(float64(eventBytes), "B/event")
	// CPU time depends much less than wall time on what else the machine
	// runs; it covers encoding and kafka-go's writer goroutines.
	b.ReportMetric(float64(cpu.Nanoseconds())/1000/float64(b.N), "cpu-us/event")
}

// processCPU is this process's user+system CPU time so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
