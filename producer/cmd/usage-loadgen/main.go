// Command usage-loadgen publishes demo usage events through the Go SDK:
// several tenants, users and meters with exact decimal quantities, at a
// target rate or as fast as the broker takes them.
//
//	usage-loadgen -brokers 127.0.0.1:19092 -rate 2000 -duration 60s
//	usage-loadgen -count 1000000 -rate 0      # as fast as possible
//	usage-loadgen -app-url http://127.0.0.1:9471/v1/generate   # ai_generation through an app behind quota.Middleware
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
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
		appURL   = flag.String("app-url", "", "send ai_generation as POST requests (X-Tenant, X-User) to this app instead of to Kafka")
	)
	flag.Parse()
	if err := run(*brokers, *topic, *rate, *duration, *count, *tenants, *codec, *appURL); err != nil {
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

func run(brokers, topic string, rate int, duration time.Duration, count int64, tenants int, codec, appURL string) error {
	if appURL != "" {
		if u, err := url.Parse(appURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("-app-url %q: want an http(s) URL such as http://127.0.0.1:9471/v1/generate", appURL)
		}
	}
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
	app := &appClient{url: appURL}
	for ctx.Err() == nil && (count == 0 || sent < count) {
		n := int64(batch)
		if count > 0 {
			n = min(n, count-sent)
		}
		buf = buf[:0]
		app.batch = app.batch[:0]
		for range n {
			m := meters[r.IntN(len(meters))]
			if appURL != "" && m.name == schemas.MeterAIGeneration {
				app.batch = append(app.batch, [2]string{names[r.IntN(len(names))], fmt.Sprintf("user-%03d", r.IntN(200))})
				continue
			}
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
		app.send()
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
			fmt.Printf("usage-loadgen: %d events queued, %.0f events/s%s\n", sent, float64(sent)/time.Since(start).Seconds(), app.report())
		}
	}
	if err := p.Close(); err != nil {
		return err
	}
	st := p.Stats()
	el := time.Since(start)
	fmt.Printf("usage-loadgen: %d events acknowledged, %d failed in %s (%.0f events/s)%s\n", st.Published, st.Failed, el.Round(time.Millisecond), float64(st.Published)/el.Seconds(), app.report())
	if st.Failed > 0 {
		return fmt.Errorf("%d events were not delivered", st.Failed)
	}
	return nil
}

// appClient sends one batch's ai_generation requests to the app, 16 at a
// time, and counts the answers: 402 is the quota saying no.
type appClient struct {
	url                     string
	batch                   [][2]string // tenant, user
	served, refused, failed atomic.Int64
}

func (a *appClient) send() {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for _, tu := range a.batch {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			req, _ := http.NewRequest(http.MethodPost, a.url, nil) // the URL was checked at start
			req.Header.Set("X-Tenant", tu[0])
			req.Header.Set("X-User", tu[1])
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				a.failed.Add(1)
				return
			}
			_, _ = io.Copy(io.Discard, res.Body)
			_ = res.Body.Close()
			switch {
			case res.StatusCode < 300:
				a.served.Add(1)
			case res.StatusCode == http.StatusPaymentRequired:
				a.refused.Add(1)
			default:
				a.failed.Add(1)
			}
		})
	}
	wg.Wait()
}

func (a *appClient) report() string {
	if a.url == "" {
		return ""
	}
	return fmt.Sprintf("; app: %d ai_generation served, %d refused (402), %d failed", a.served.Load(), a.refused.Load(), a.failed.Load())
}
