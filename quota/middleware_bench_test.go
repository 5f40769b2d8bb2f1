package quota

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/usagemeter/usagemeter/schemas"
)

type nopTracker struct{}

func (nopTracker) Track(context.Context, *schemas.UsageEvent) error { return nil }

// BenchmarkMiddleware is one request through Wrap (Check, the outbox slot,
// the event written to a durable outbox's file, the handler's answer) with
// a tracker that takes everything: the per-request cost the middleware
// adds, without HTTP I/O. Fsync off (the default).
func BenchmarkMiddleware(b *testing.B) {
	clk := &clock{}
	clk.set(time.Now())
	c := offline(b, clk, nil)
	out, err := NewOutbox(OutboxConfig{Dir: b.TempDir()}, nopTracker{}, nil)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = out.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	mw, err := NewMiddleware(c, MiddlewareConfig{Meter: "ai_generation", Outbox: out,
		Tenant: func(*http.Request) string { return "acme" }}) // PRO: unlimited
	if err != nil {
		b.Fatal(err)
	}
	h := mw.Wrap(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") }))
	req := httptest.NewRequest(http.MethodPost, "/v1/generate", nil)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			b.Fatalf("status %d: %s", rec.Code, rec.Body)
		}
	}
}
