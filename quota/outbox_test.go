package quota

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"github.com/usagemeter/usagemeter/schemas"
)

type failTracker struct{}

func (failTracker) Track(context.Context, *schemas.UsageEvent) error {
	return errors.New("broker down")
}

// A handler still serving when Run returned (srv.Shutdown timed out, then
// the outbox was stopped) puts its event in the file for the next process;
// after Close, Put, Requeue and Reserve fail instead of keeping it in
// memory only. From the review's TestReviewPutAfterRunIsNotDurable (which
// failed before: the restarted outbox held 0 events).
func TestOutboxPutAfterRunIsDurable(t *testing.T) {
	dir := t.TempDir()
	o, err := NewOutbox(OutboxConfig{Dir: dir}, failTracker{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = o.Run(ctx); close(done) }()
	time.Sleep(50 * time.Millisecond)
	cancel()
	<-done
	if !o.Reserve() {
		t.Fatal("reserve")
	}
	e := schemas.UsageEvent{TenantID: "acme", FeatureType: "api_calls", Quantity: decimal.NewFromInt(1)}
	if err := o.Put(&e, true); err != nil {
		t.Fatalf("put: %v", err)
	}
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}
	e2 := schemas.UsageEvent{TenantID: "acme", FeatureType: "api_calls", Quantity: decimal.NewFromInt(1)}
	if err := o.Put(&e2, false); !errors.Is(err, ErrOutboxClosed) {
		t.Fatalf("put after Close: %v, want ErrOutboxClosed", err)
	}
	if err := o.Requeue(errors.New("async failure"), []schemas.UsageEvent{e2}); !errors.Is(err, ErrOutboxClosed) {
		t.Fatalf("requeue after Close: %v, want ErrOutboxClosed", err)
	}
	if o.Reserve() {
		t.Fatal("reserve after Close succeeded")
	}
	if st := o.Stats(); st.Closed != 2 {
		t.Fatalf("Stats().Closed %d, want 2", st.Closed)
	}
	again, err := NewOutbox(OutboxConfig{Dir: dir}, failTracker{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if again.Len() != 1 || again.queue[0].ID != e.ID {
		t.Fatalf("restarted outbox holds %d events (want 1, id %s): the served event is lost", again.Len(), e.ID)
	}

	// Without Dir nothing delivers after Run: Put says so.
	mem, err := NewOutbox(OutboxConfig{}, failTracker{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	mctx, mcancel := context.WithCancel(context.Background())
	mcancel()
	_ = mem.Run(mctx)
	if err := mem.Put(&schemas.UsageEvent{TenantID: "acme", FeatureType: "api_calls", Quantity: decimal.NewFromInt(1)}, false); !errors.Is(err, ErrOutboxClosed) {
		t.Fatalf("in-memory put after Run: %v, want ErrOutboxClosed", err)
	}
}

// load() rewrites the log as the undelivered events and resets the
// cursor: when the process dies (or the cursor write fails) between the
// two, no undelivered event may be skipped. From the review's
// TestReviewLoadRewriteThenCursorFails (which failed before: 0 of 2).
func TestOutboxRewriteCursorFailureSkipsNothing(t *testing.T) {
	dir := t.TempDir()
	o, err := NewOutbox(OutboxConfig{Dir: dir}, failTracker{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for range 4 {
		e := schemas.UsageEvent{TenantID: "acme", FeatureType: "api_calls", Quantity: decimal.NewFromInt(1)}
		if err := o.Put(&e, false); err != nil {
			t.Fatal(err)
		}
	}
	o.done(2) // two delivered: cursor 2, two undelivered in the log
	o.close()
	// The crash point: the cursor's temp file cannot be written.
	if err := os.Mkdir(filepath.Join(dir, "outbox.cursor.tmp"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := NewOutbox(OutboxConfig{Dir: dir}, failTracker{}, nil); err == nil {
		t.Fatal("expected the cursor write to fail")
	}
	_ = os.Remove(filepath.Join(dir, "outbox.cursor.tmp"))
	again, err := NewOutbox(OutboxConfig{Dir: dir}, failTracker{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if again.Len() != 2 {
		t.Fatalf("restarted outbox holds %d undelivered events, want 2", again.Len())
	}
}

const childDirEnv = "QUOTA_TEST_KILLED_CHILD_DIR"

// TestKilledChildHelper is the child process of
// TestServedRequestSurvivesSIGKILL: an HTTP server behind the middleware,
// its outbox in the given dir, the broker down. It prints its URL and
// serves until killed.
func TestKilledChildHelper(t *testing.T) {
	dir := os.Getenv(childDirEnv)
	if dir == "" {
		t.Skip("child process of TestServedRequestSurvivesSIGKILL")
	}
	clk := &clock{}
	clk.set(time.Now())
	c := offline(t, clk, nil)
	out, err := NewOutbox(OutboxConfig{Dir: dir, RetryMin: time.Hour, RetryMax: time.Hour}, failTracker{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = out.Run(context.Background()) }()
	mw, err := NewMiddleware(c, MiddlewareConfig{Meter: "ai_generation", Outbox: out,
		Tenant: func(r *http.Request) string { return r.URL.Query().Get("tenant") },
		// The event is built (and written) with a slow UserID: it widens
		// the gap between the handler's answer and the outbox write that
		// the code before had, so the kill lands in it every time.
		UserID: func(*http.Request) string { time.Sleep(300 * time.Millisecond); return "u1" }})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(mw.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("fail") != "" {
			http.Error(w, "boom", http.StatusInternalServerError)
			return
		}
		_, _ = io.WriteString(w, "done")
	})))
	os.Stdout.WriteString(srv.URL + "\n")
	select {}
}

// A process SIGKILLed right after a client got its 200 delivers that
// request's event after restart; a 500 (track 2xx) is never delivered.
// Real child process (this test binary re-run), real HTTP, real kill.
func TestServedRequestSurvivesSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a child process")
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestKilledChildHelper$", "-test.count=1")
	cmd.Env = append(os.Environ(), childDirEnv+"="+dir)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	defer func() {
		if !killed {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	}()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("child: %v", err)
	}
	url := strings.TrimSpace(line)
	cl := &http.Client{Timeout: 10 * time.Second}
	get := func(q string) (int, string) {
		res, err := cl.Get(url + "?" + q)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b)
	}
	if code, _ := get("tenant=t-failed&fail=1"); code != http.StatusInternalServerError {
		t.Fatalf("failing handler answered %d", code)
	}
	// Killed as soon as the client has the answer's status and body, not
	// waiting for the end of the (chunked) response: the code before
	// flushed them, then wrote the event.
	res, err := cl.Get(url + "?tenant=t-served")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body := make([]byte, len("done"))
	if _, err := io.ReadFull(res.Body, body); err != nil || res.StatusCode != http.StatusOK || string(body) != "done" {
		t.Fatalf("served request: %d %q: %v", res.StatusCode, body, err)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	killed = true

	tr := &countingTracker{ids: map[string]bool{}}
	var tenants []string
	after, err := NewOutbox(OutboxConfig{Dir: dir}, trackFunc(func(e *schemas.UsageEvent) error {
		tenants = append(tenants, e.TenantID)
		return tr.Track(context.Background(), e)
	}), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = after.Run(ctx); close(done) }()
	deadline := time.Now().Add(5 * time.Second)
	for after.Len() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
	if len(tenants) != 1 || tenants[0] != "t-served" {
		t.Fatalf("delivered after restart: %v, want exactly [t-served]", tenants)
	}
}

type trackFunc func(*schemas.UsageEvent) error

func (f trackFunc) Track(_ context.Context, e *schemas.UsageEvent) error { return f(e) }

// A handler that flushes (http.ResponseController, so FlushError) before
// writing anything sends its 200 then: the event must be in the outbox's
// file by the time the client has the headers, while the handler is still
// streaming.
func TestEventWrittenBeforeAFlushedStatus(t *testing.T) {
	clk := &clock{}
	clk.set(time.Now())
	c := offline(t, clk, nil)
	dir := t.TempDir()
	out, err := NewOutbox(OutboxConfig{Dir: dir}, failTracker{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	mw, err := NewMiddleware(c, MiddlewareConfig{Meter: "ai_generation", Outbox: out,
		Tenant: func(*http.Request) string { return "t-stream" }})
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	srv := httptest.NewServer(mw.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = http.NewResponseController(w).Flush()
		<-release
		_, _ = io.WriteString(w, "streamed")
	})))
	defer srv.Close()
	defer close(release)
	res, err := (&http.Client{Timeout: 5 * time.Second}).Get(srv.URL) // returns with the headers
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := os.ReadFile(filepath.Join(dir, "outbox.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != http.StatusOK || strings.Count(string(b), "\n") != 1 || !strings.Contains(string(b), `"t-stream"`) {
		t.Fatalf("status %d with the handler still running, outbox file %q: want the event in it", res.StatusCode, b)
	}
}

// A handler that panics before answering serves nothing: its outbox slot
// and pending go back (the code before kept the slot, so an outbox of 1
// answered 503 TRACKING_BACKLOG for good after one panic).
func TestPanickedHandlerGivesItsSlotBack(t *testing.T) {
	clk := &clock{}
	clk.set(time.Now())
	c := offline(t, clk, nil)
	out, err := NewOutbox(OutboxConfig{MaxEvents: 1}, failTracker{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	mw, err := NewMiddleware(c, MiddlewareConfig{Meter: "ai_generation", Outbox: out,
		Tenant: func(*http.Request) string { return "t-panic" }})
	if err != nil {
		t.Fatal(err)
	}
	h := mw.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("panic") != "" {
			panic(http.ErrAbortHandler)
		}
		_, _ = io.WriteString(w, "ok")
	}))
	func() {
		defer func() { _ = recover() }()
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/?panic=1", nil))
	}()
	if p := c.Peek(context.Background(), "t-panic", "ai_generation"); !p.Pending.IsZero() {
		t.Fatalf("pending %s after a panic before answering, want 0", p.Pending)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	if rec.Code != http.StatusOK || out.Len() != 1 {
		t.Fatalf("after a panicked handler: %d %s, outbox %d; want 200 and the event queued", rec.Code, rec.Body, out.Len())
	}
}
