package server_test

import (
	"cmp"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"
)

// BenchmarkCheckHTTP drives POST /v1/check on a real listener on loopback
// with vegeta at constant rates (BENCH_RATES, default "2000,5000,10000"
// req/s, each for BENCH_SECONDS, default 5 s), 1000 tenants, admin key,
// and reports the
// latency percentiles vegeta measured. Run it with -benchtime 1x: every
// iteration is a whole attack. Server and load generator share the cores.
func BenchmarkCheckHTTP(b *testing.B) {
	rates := strings.Split(cmp.Or(os.Getenv("BENCH_RATES"), "2000,5000,10000"), ",")
	secs := envInt("BENCH_SECONDS", 5)
	e := newEnv(b)
	targets := make([]vegeta.Target, 1000)
	for i := range targets {
		targets[i] = vegeta.Target{Method: "POST", URL: e.srv.URL + "/v1/check",
			Body:   []byte(fmt.Sprintf(`{"tenant_id":"tenant-%04d","feature_type":"api_calls","quantity":"1"}`, i)),
			Header: http.Header{"Authorization": {"Bearer " + keyAdmin}, "Content-Type": {"application/json"}}}
	}
	for range b.N {
		// Warm up every tenant's entry, then measure.
		attack(e, targets, 2000, time.Second)
		for _, r := range rates {
			rate, err := strconv.Atoi(strings.TrimSpace(r))
			if err != nil {
				b.Fatalf("BENCH_RATES: %v", err)
			}
			m := attack(e, targets, rate, time.Duration(secs)*time.Second)
			if m.Success < 1 {
				b.Logf("%d req/s: success ratio %.4f (the server did not keep up), codes %v", rate, m.Success, m.StatusCodes)
			}
			fmt.Printf("usage-api POST /v1/check, vegeta %d req/s for %ds on loopback: %d requests, p50 %s, p90 %s, p99 %s, max %s, throughput %.0f/s, success %.4f\n",
				rate, secs, m.Requests, m.Latencies.P50, m.Latencies.P90, m.Latencies.P99, m.Latencies.Max, m.Throughput, m.Success)
		}
	}
}

func attack(e *env, targets []vegeta.Target, rate int, d time.Duration) *vegeta.Metrics {
	a := vegeta.NewAttacker(vegeta.KeepAlive(true), vegeta.Connections(256), vegeta.Workers(64), vegeta.Timeout(5*time.Second))
	var m vegeta.Metrics
	for res := range a.Attack(vegeta.NewStaticTargeter(targets...), vegeta.Rate{Freq: rate, Per: time.Second}, d, "check") {
		m.Add(res)
	}
	m.Close()
	return &m
}

func envInt(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n > 0 {
		return n
	}
	return def
}
