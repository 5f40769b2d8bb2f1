package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/usagemeter/usagemeter/billing-sync/stripefake"
)

// post sends a form POST as stripe-go does and returns the status.
func post(t *testing.T, base, path, key string, form url.Values) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, base+path, strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer sk_test_demo")
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// customersListed counts the customers GET /v1/customers returns.
func customersListed(t *testing.T, base string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, base+"/v1/customers?limit=100", nil)
	req.Header.Set("Authorization", "Bearer sk_test_demo")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return strings.Count(string(b), `"object":"customer"`)
}

func meterEvent(cus, ident string, value int, ts time.Time) url.Values {
	return url.Values{"event_name": {"api_calls"}, "identifier": {ident}, "timestamp": {strconv.FormatInt(ts.Unix(), 10)},
		"payload[stripe_customer_id]": {cus}, "payload[value]": {strconv.Itoa(value)}}
}

func open(t *testing.T, path string) (*stripefake.Fake, *journaled, *httptest.Server) {
	t.Helper()
	fake := stripefake.New()
	fake.AddMeter("mtr_api_calls", "api_calls")
	j, err := openJournal(path, fake, zap.NewNop(), nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(j)
	t.Cleanup(func() { srv.Close(); j.Close() })
	return fake, j, srv
}

// A restarted fake holds what the first one was told: meter events,
// cancellations, customers and idempotency keys (a retry after the restart
// is replayed, not billed again).
func TestJournalSurvivesRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "stripe.jsonl")
	hour := time.Now().UTC().Truncate(time.Hour).Add(-2 * time.Hour)

	fake, j, srv := open(t, path)
	if err := j.addCustomer("cus_acme", "acme"); err != nil {
		t.Fatal(err)
	}
	if err := j.addCustomer("cus_acme", "acme"); err != nil { // a second seed adds nothing
		t.Fatal(err)
	}
	for i, v := range []int{7, 5, 11} {
		if st := post(t, srv.URL, "/v1/billing/meter_events", "k"+strconv.Itoa(i), meterEvent("cus_acme", "ev"+strconv.Itoa(i), v, hour)); st != 200 {
			t.Fatalf("meter event %d: status %d", i, st)
		}
	}
	cancel := url.Values{"event_name": {"api_calls"}, "type": {"cancel"}, "cancel[identifier]": {"ev1"}}
	if st := post(t, srv.URL, "/v1/billing/meter_event_adjustments", "k-cancel", cancel); st != 200 {
		t.Fatalf("cancel: status %d", st)
	}
	if got := fake.Total("cus_acme", "api_calls"); got != 18 {
		t.Fatalf("before restart: total %d, want 18", got)
	}
	srv.Close()
	j.Close()

	fake2, j2, srv2 := open(t, path)
	if got := fake2.Total("cus_acme", "api_calls"); got != 18 {
		t.Fatalf("after restart: total %d, want 18 (7 + 11, 5 cancelled)", got)
	}
	// The same key and parameters: the stored answer, no second event.
	if st := post(t, srv2.URL, "/v1/billing/meter_events", "k0", meterEvent("cus_acme", "ev0", 7, hour)); st != 200 {
		t.Fatalf("retry after restart: status %d", st)
	}
	// Another key, same identifier: refused as an existing event.
	if st := post(t, srv2.URL, "/v1/billing/meter_events", "k-other", meterEvent("cus_acme", "ev0", 7, hour)); st != 400 {
		t.Fatalf("duplicate identifier after restart: status %d, want 400", st)
	}
	if got := fake2.Total("cus_acme", "api_calls"); got != 18 {
		t.Fatalf("after retries: total %d, want 18", got)
	}
	if got := fake2.Replays()["k0"]; got != 1 {
		t.Fatalf("replays of k0: %d, want 1", got)
	}
	// The customer is known after the restart: a seed does not add it twice.
	if err := j2.addCustomer("cus_acme", "acme"); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(b), `"kind":"customer"`); n != 1 {
		t.Fatalf("journal holds %d customer entries, want 1", n)
	}
	// A second writer on the same journal added the customer again: replayed once.
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = f.WriteString(`{"kind":"customer","at":"2026-11-29T00:00:00Z","customer":"cus_acme","tenant":"acme"}` + "\n")
	f.Close()
	_, _, srv3 := open(t, path)
	if n := customersListed(t, srv3.URL); n != 1 {
		t.Fatalf("after replaying a repeated customer entry, %d customers listed, want 1", n)
	}
	// Unauthenticated requests change nothing and are not journaled.
	req, _ := http.NewRequest(http.MethodPost, srv2.URL+"/v1/billing/meter_events", strings.NewReader(meterEvent("cus_acme", "ev9", 1, hour).Encode()))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Fatalf("no API key: status %d, want 401", resp.StatusCode)
	}
	b2, _ := os.ReadFile(path)
	if strings.Contains(string(b2), "ev9") || strings.Contains(string(b2), "sk_test_demo") {
		t.Fatal("journal holds an unauthenticated request or an API key")
	}
}

// A line torn by a kill mid-write is dropped (and cut, so the next entry
// starts a line); a bad line before the end is an error naming it.
func TestJournalTornAndCorrupt(t *testing.T) {
	dir := t.TempDir()
	hour := time.Now().UTC().Truncate(time.Hour).Add(-time.Hour)
	path := filepath.Join(dir, "torn.jsonl")
	fake, j, srv := open(t, path)
	_ = j.addCustomer("cus_a", "a")
	if st := post(t, srv.URL, "/v1/billing/meter_events", "k1", meterEvent("cus_a", "e1", 3, hour)); st != 200 {
		t.Fatalf("status %d", st)
	}
	_ = fake
	srv.Close()
	j.Close()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = f.WriteString(`{"kind":"request","at":"2026-`)
	f.Close()

	fake2, j2, srv2 := open(t, path)
	if got := fake2.Total("cus_a", "api_calls"); got != 3 {
		t.Fatalf("after a torn tail: total %d, want 3", got)
	}
	if st := post(t, srv2.URL, "/v1/billing/meter_events", "k2", meterEvent("cus_a", "e2", 4, hour)); st != 200 {
		t.Fatalf("status %d", st)
	}
	srv2.Close()
	j2.Close()
	fake3, _, _ := open(t, path)
	if got := fake3.Total("cus_a", "api_calls"); got != 7 {
		t.Fatalf("after the torn tail was cut and a new entry written: total %d, want 7", got)
	}

	bad := filepath.Join(dir, "bad.jsonl")
	if err := os.WriteFile(bad, []byte("{\"kind\":\"customer\",\"customer\":\"cus_a\",\"tenant\":\"a\"}\nnot json\n{\"kind\":\"customer\"}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := openJournal(bad, stripefake.New(), zap.NewNop(), nil); err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Fatalf("corrupt line 2: err %v, want one naming line 2", err)
	}
}
