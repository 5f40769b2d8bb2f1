package quota_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/shopspring/decimal"
	"go.uber.org/zap"

	"github.com/usagemeter/usagemeter/producer"
	"github.com/usagemeter/usagemeter/quota"
	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/testenv"
)

// BenchmarkFreshness: an event published (sync, acks=all) -> a decision of
// a running cache shows it, while 10k events/s (BENCH_EVENTS_PER_SEC) of
// background traffic for 1000 tenants flow through the real
// usage-aggregator with its default flush (1 s) and coalescing (250 ms).
// 8 probe tenants publish one ai_generation at a time and poll Peek every
// millisecond until the usage counts it. Run with -benchtime 1x.
func BenchmarkFreshness(b *testing.B) {
	rate := 10000
	if n, err := strconv.Atoi(os.Getenv("BENCH_EVENTS_PER_SEC")); err == nil && n > 0 {
		rate = n
	}
	secs := 15
	if n, err := strconv.Atoi(os.Getenv("BENCH_SECONDS")); err == nil && n > 0 {
		secs = n
	}
	broker := testenv.Kafka(b)
	tp := newTopics(b, broker)
	startAggregator(b, tp, "USAGE_LOG_LEVEL=warn") // default flush_interval and quota_coalesce
	c := startCache(b, tp, zap.NewNop(), nil)
	bg, err := producer.New([]string{broker}, producer.WithTopic(tp.events), producer.WithAsync(nil))
	if err != nil {
		b.Fatal(err)
	}
	defer bg.Close()
	probe, err := producer.New([]string{broker}, producer.WithTopic(tp.events), producer.WithBatching(1, 1<<20, time.Millisecond))
	if err != nil {
		b.Fatal(err)
	}
	defer probe.Close()

	for range b.N {
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(secs)*time.Second)
		var wg sync.WaitGroup
		wg.Go(func() { background(ctx, bg, rate) })
		var mu sync.Mutex
		var lat []time.Duration
		for p := range 8 {
			wg.Go(func() {
				tenant := testenv.Name(fmt.Sprintf("probe%d", p))
				for n := int64(1); ctx.Err() == nil; n++ {
					t0 := time.Now()
					if err := probe.Publish(ctx, producer.NewEvent(tenant, schemas.MeterAIGeneration, decimal.NewFromInt(1))); err != nil {
						return
					}
					for c.Peek(ctx, tenant, schemas.MeterAIGeneration).Usage.Cmp(quota.Units(n)) < 0 {
						if time.Since(t0) > 10*time.Second {
							b.Errorf("probe %s: event %d not seen after 10 s", tenant, n)
							return
						}
						time.Sleep(time.Millisecond)
					}
					mu.Lock()
					lat = append(lat, time.Since(t0))
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		cancel()
		slices.Sort(lat)
		if len(lat) == 0 {
			b.Fatal("no samples")
		}
		pct := func(q float64) time.Duration { return lat[min(len(lat)-1, int(q*float64(len(lat))))] }
		b.ReportMetric(float64(pct(0.5).Milliseconds()), "p50-ms")
		b.ReportMetric(float64(pct(0.99).Milliseconds()), "p99-ms")
		b.ReportMetric(float64(lat[len(lat)-1].Milliseconds()), "max-ms")
		fmt.Printf("freshness at %d events/s (usage-aggregator defaults): %d probes, p50 %s, p99 %s, max %s\n",
			rate, len(lat), pct(0.5).Round(time.Millisecond), pct(0.99).Round(time.Millisecond), lat[len(lat)-1].Round(time.Millisecond))
	}
}

// background publishes rate events/s (api_calls, 1000 tenants) until ctx ends.
func background(ctx context.Context, p *producer.Publisher, rate int) {
	const tick = 10 * time.Millisecond
	per := max(1, rate/100)
	t := time.NewTicker(tick)
	defer t.Stop()
	buf := make([]schemas.UsageEvent, per)
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for j := range buf {
			buf[j] = schemas.UsageEvent{TenantID: "bg-" + strconv.Itoa((i*per+j)%1000), FeatureType: schemas.MeterAPICalls,
				Quantity: decimal.NewFromInt(1)}
		}
		_ = p.Publish(context.Background(), buf...)
	}
}
