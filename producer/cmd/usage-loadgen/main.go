// Command usage-loadgen publishes demo usage events through the Go SDK:
// several tenants, users and meters with exact decimal quantities, at a
// target rate or as fast as the broker takes them.
//
//	usage-loadgen -brokers 127.0.0.1:19092 -rate 2000 -duration 60s
//	usage-loadgen -count 1000000 -rate 0      # as fast as possible
package main

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/shopspring/decimal"

	"github.com/usagemeter/usagemeter/producer"
	"github.com/usagemeter/usagemeter/schemas"
)

func main() {
	var (
		brokers  = flag.String("brokers", "127.0.0.1:19092", "comma-separated Kafka brokers")
		topic    = flag.String("topic", producer.DefaultTopic, "topic")
		rate     = flag.Int("rate", 1000, "events per second; 0 = as fast as possible")
		duration = flag.Duration("duration", 0, "stop after this long (0 = until -count or Ctrl-C)")
		count    = flag.Int64("count", 0, "stop after this many events (0 = no limit)")
		tenants  = flag.Int("tenants", 12, "number of tenants")
		codec    = flag.String("compression", "lz4", "lz4, zstd, snappy, gzip or none")
	)
	flag.Parse()
	if err := run(*brokers, *topic, *rate, *duration, *count, *tenants, *codec); err != nil {
		fmt.Fprintln(os.Stderr, "usage-loadgen:", err)
		os.Exit(1)
	}
}

var meters = []struct {
	name string
	qty  func(r *rand.Rand) decimal.Decimal
}{
	{schemas.MeterAPICalls, func(*rand.Rand) decimal.Decimal { return decimal.NewFromInt(1) }},
	{schemas.MeterAIGeneration, func(*rand.Rand) decimal.Decimal { return decimal.NewFromInt(1) }},
	{"tokens", func(r *rand.Rand) decimal.Decimal { return decimal.NewFromInt(int64(r.IntN(4000) + 1)) }},
	{schemas.MeterStorage, func(r *rand.Rand) decimal.Decimal { return decimal.New(int64(r.IntN(5_000_000)), -3) }}, // GB, 3 decimals
}

var endpoints = []string{"/v1/items", "/v1/search", "/v1/generate", "/v1/export"}

func run(brokers, topic string, rate int, duration time.Duration, count int64, tenants int, codec string) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, duration)
		defer cancel()
	}
	p, err := producer.New(strings.Split(brokers, ","), producer.WithTopic(topic), producer.WithCompression(codec),
		producer.WithAsync(func(err error, _ []schemas.UsageEvent) {
			fmt.Fprintln(os.Stderr, "usage-loadgen: delivery failed:", err)
		}))
	if err != nil {
		return err
	}
	r := rand.New(rand.NewPCG(1, uint64(time.Now().UnixNano())))
	names := make([]string, tenants)
	for i := range names {
		names[i] = fmt.Sprintf("tenant-%02d", i+1)
	}
	const batch = 500
	start := time.Now()
	var sent int64
	lastReport := start
	buf := make([]schemas.UsageEvent, 0, batch)
	for ctx.Err() == nil && (count == 0 || sent < count) {
		n := int64(batch)
		if count > 0 {
			n = min(n, count-sent)
		}
		buf = buf[:0]
		for range n {
			m := meters[r.IntN(len(meters))]
			buf = append(buf, schemas.UsageEvent{
				TenantID:    names[r.IntN(len(names))],
				UserID:      fmt.Sprintf("user-%03d", r.IntN(200)),
				FeatureType: m.name,
				Quantity:    m.qty(r),
				Metadata:    map[string]string{"endpoint": endpoints[r.IntN(len(endpoints))], "method": "POST"},
			})
		}
		// Not ctx: the duration or Ctrl-C stops the loop between batches,
		// never half-way through a batch.
		if err := p.Publish(context.Background(), buf...); err != nil {
			return err
		}
		sent += n
		if rate > 0 { // pace to the target rate
			if ahead := time.Duration(float64(sent)/float64(rate)*float64(time.Second)) - time.Since(start); ahead > 0 {
				select {
				case <-time.After(ahead):
				case <-ctx.Done():
				}
			}
		}
		if time.Since(lastReport) >= 5*time.Second {
			lastReport = time.Now()
			fmt.Printf("usage-loadgen: %d events queued, %.0f events/s\n", sent, float64(sent)/time.Since(start).Seconds())
		}
	}
	if err := p.Close(); err != nil {
		return err
	}
	st := p.Stats()
	el := time.Since(start)
	fmt.Printf("usage-loadgen: %d events acknowledged, %d failed in %s (%.0f events/s)\n", st.Published, st.Failed, el.Round(time.Millisecond), float64(st.Published)/el.Seconds())
	if st.Failed > 0 {
		return fmt.Errorf("%d events were not delivered", st.Failed)
	}
	return nil
}
