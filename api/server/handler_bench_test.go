package server_test

import (
	"net/http"
	"strings"
	"testing"
)

// benchWriter is a ResponseWriter that keeps its header map and discards
// the body, so that what a benchmark counts is the handler's own work
// (net/http's per-request cost is the floor's: api/bench/wrkbench).
type benchWriter struct {
	h      http.Header
	status int
	n      int
}

func (w *benchWriter) Header() http.Header  { return w.h }
func (w *benchWriter) WriteHeader(code int) { w.status = code }
func (w *benchWriter) Write(b []byte) (int, error) {
	w.n += len(b)
	return len(b), nil
}

// BenchmarkCheckHandler is one POST /v1/check through the mux as usage-api
// serves it (routing, the key, the body read and validated with the
// contract's decoder, the cache's decision, the headers and the JSON
// answer, the metrics) on a fresh cache holding the tenant's state: the
// CPU and allocations per request that usage-api adds to net/http.
func BenchmarkCheckHandler(b *testing.B) {
	e := newEnv(b)
	e.publishState("tenant-a", "ai_generation", 20)
	benchPost(b, e.srv.Config.Handler, "/v1/check", `{"tenant_id":"tenant-a","feature_type":"ai_generation","quantity":"1"}`)
}

// BenchmarkCheckBatchHandler is one POST /v1/check/batch of 10 checks
// (the body of api/bench/batch.lua) through the mux: divide by 10 for the
// cost per check.
func BenchmarkCheckBatchHandler(b *testing.B) {
	e := newEnv(b)
	e.publishState("tenant-a", "ai_generation", 20)
	item := `{"tenant_id":"tenant-a","feature_type":"ai_generation","quantity":"1"}`
	benchPost(b, e.srv.Config.Handler, "/v1/check/batch", `{"checks":[`+strings.TrimSuffix(strings.Repeat(item+",", 10), ",")+`]}`)
}

// benchPost serves one authenticated JSON POST of body to path through h
// per iteration, reusing the request and the writer, and fails on any
// status but 200.
func benchPost(b *testing.B, h http.Handler, path, body string) {
	rd := strings.NewReader(body)
	r, _ := http.NewRequest(http.MethodPost, path, rd)
	r.Header.Set("Authorization", "Bearer "+keyA)
	r.Header.Set("Content-Type", "application/json")
	r.ContentLength = int64(len(body))
	w := &benchWriter{h: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		rd.Reset(body)
		r.Body = readCloser{rd}
		clear(w.h)
		h.ServeHTTP(w, r)
		if w.status != http.StatusOK {
			b.Fatalf("status %d", w.status)
		}
	}
}

type readCloser struct{ *strings.Reader }

func (readCloser) Close() error { return nil }
