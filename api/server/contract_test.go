package server_test

import (
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/usagemeter/usagemeter/quota"
	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/schemas/plans"
	"github.com/usagemeter/usagemeter/testenv"
)

// TestEveryEntryPointAppliesTheContract: what the pipeline refuses,
// usage-api refuses with a 400 naming the field, on /v1/check, /v1/track
// and /v1/quotas/{tenant}, before any decision; nothing reaches the events
// topic; and openapi.yaml refuses the same requests.
func TestEveryEntryPointAppliesTheContract(t *testing.T) {
	e := newEnv(t)
	for _, c := range []struct {
		name, path, body string
		code, field, tag string
		openAPIAllows    bool // what a JSON Schema cannot say (the plans file's meters)
	}{
		{"empty user_id", "/v1/track", `{"tenant_id":"tenant-a","feature_type":"ai_generation","user_id":""}`, "INVALID_FIELD", "user_id", "invalid_field:user_id", false},
		{"null metadata value", "/v1/track", `{"tenant_id":"tenant-a","feature_type":"ai_generation","metadata":{"model":null}}`, "INVALID_FIELD", "metadata", "invalid_type:metadata", false},
		{"exponent string", "/v1/track", `{"tenant_id":"tenant-a","feature_type":"ai_generation","quantity":"1e3"}`, "INVALID_FIELD", "quantity", "invalid_quantity", false},
		{"exponent string on check", "/v1/check", `{"tenant_id":"tenant-a","feature_type":"ai_generation","quantity":"1e3"}`, "INVALID_FIELD", "quantity", "invalid_quantity", false},
		{"10 decimals as text", "/v1/track", `{"tenant_id":"tenant-a","feature_type":"ai_generation","quantity":"0.1234567890"}`, "INVALID_FIELD", "quantity", "invalid_quantity", false},
		{"19 integer digits", "/v1/check", `{"tenant_id":"tenant-a","feature_type":"ai_generation","quantity":"1000000000000000000"}`, "INVALID_FIELD", "quantity", "invalid_quantity", false},
		{"tenant outside the alphabet", "/v1/check", `{"tenant_id":"bob+1@x","feature_type":"ai_generation"}`, "INVALID_FIELD", "tenant_id", "invalid_field:tenant_id", false},
		{"tenant outside the alphabet, track", "/v1/track", `{"tenant_id":"bob+1@x","feature_type":"ai_generation"}`, "INVALID_FIELD", "tenant_id", "invalid_field:tenant_id", false},
		{"mistyped meter", "/v1/check", `{"tenant_id":"tenant-a","feature_type":"ai_generaton"}`, "INVALID_FIELD", "feature_type", "unknown_meter", true},
		{"mistyped meter, track", "/v1/track", `{"tenant_id":"tenant-a","feature_type":"ai_generaton"}`, "INVALID_FIELD", "feature_type", "unknown_meter", true},
		{"bad id", "/v1/track", `{"id":"a b","tenant_id":"tenant-a","feature_type":"ai_generation"}`, "INVALID_FIELD", "id", "invalid_field:id", false},
		{"timestamp with a comma", "/v1/track", `{"tenant_id":"tenant-a","feature_type":"ai_generation","timestamp":"2026-11-29T10:00:00,5Z"}`, "INVALID_FIELD", "timestamp", "invalid_timestamp", false},
	} {
		a := e.do("POST", c.path, keyAdmin, c.body)
		if a.status != 400 || a.body["code"] != c.code || a.body["field"] != c.field || a.body["tag"] != c.tag {
			t.Errorf("%s: %d %s, want 400 %s field %s tag %s", c.name, a.status, a.raw, c.code, c.field, c.tag)
		}
		if ok := e.openAPIAccepts(c.path, c.body); ok != c.openAPIAllows {
			t.Errorf("%s: openapi.yaml accepts the request: %v, want %v", c.name, ok, c.openAPIAllows)
		}
	}
	// Valid requests pass both.
	for _, body := range []string{
		`{"tenant_id":"tenant-a","feature_type":"ai_generation","quantity":"2.5","user_id":"u1","metadata":{"model":"m"}}`,
		`{"tenant_id":"tenant-a","feature_type":"api_calls","quantity":1e3}`,
	} {
		if a := e.do("POST", "/v1/track", keyAdmin, body); a.status != 200 || !e.openAPIAccepts("/v1/track", body) {
			t.Errorf("%s: %d %s (openapi accepts: %v)", body, a.status, a.raw, e.openAPIAccepts("/v1/track", body))
		}
	}
	if a := e.do("POST", "/v1/track", keyAdmin, `{"tenant_id":"tenant-a","feature_type":"ai_generation","quantity":1,"quantity":2}`); a.status != 400 ||
		a.body["field"] != "quantity" || a.body["tag"] != "duplicate_field:quantity" {
		t.Errorf("a member twice: %d %s", a.status, a.raw)
	}
	if a := e.do("GET", "/v1/quotas/bob+1@x", keyAdmin, ""); a.status != 400 || a.body["field"] != "tenant" {
		t.Errorf("quotas of an invalid tenant: %d %s", a.status, a.raw)
	}
	// Only the two valid events were published: the first messages on the
	// topic are those (ReadN fails on fewer; a third would be read too).
	msgs := testenv.ReadN(t, e.broker, e.events, 2)
	total := 0.0
	for _, m := range msgs {
		ev, err := schemas.NewValidator().Decode(m.Value)
		if err != nil {
			t.Fatalf("published %s: %v", m.Value, err)
		}
		f, _ := ev.Quantity.Float64()
		total += f
	}
	if total != 1002.5 {
		t.Fatalf("published quantities add up to %v, want 1002.5", total)
	}
}

// TestQuantityBeyondTheCapIsA400OnBoth: an unlimited meter and a quantity
// one instance cannot hold pending (2^64 nano-units, about 1.8e10) is a
// 400 naming quantity on /v1/check and /v1/track alike, never a 402
// "limit is reached" with limit -1; just below the cap both allow it.
func TestQuantityBeyondTheCapIsA400OnBoth(t *testing.T) {
	e := newEnv(t)
	// acme is on PRO in plans.example.yaml: ai_generation unlimited.
	over := `{"tenant_id":"acme","feature_type":"ai_generation","quantity":"20000000000"}`
	for _, path := range []string{"/v1/check", "/v1/track"} {
		a := e.do("POST", path, keyAdmin, over)
		if a.status != 400 || a.body["code"] != "INVALID_FIELD" || a.body["field"] != "quantity" || a.body["tag"] != "invalid_quantity" {
			t.Errorf("%s 2e10 on an unlimited meter: %d %s", path, a.status, a.raw)
		}
	}
	under := `{"tenant_id":"acme","feature_type":"ai_generation","quantity":"18000000000"}`
	for _, path := range []string{"/v1/check", "/v1/track"} {
		a := e.do("POST", path, keyAdmin, under)
		d, _ := a.body["decision"].(map[string]any)
		if path == "/v1/check" {
			d = a.body
		}
		if a.status != 200 || d["allowed"] != true || d["limit"] != "-1" {
			t.Errorf("%s 1.8e10: %d %s", path, a.status, a.raw)
		}
	}
}

// TestTrackTakesTheCachesEventRules: /v1/track goes through
// quota.CheckEvent: a timestamp 2 hours back is a 400 naming timestamp
// (it would stay pending for good), a retried id is answered as a
// duplicate that counts nothing, and a limit Check cannot enforce (a max
// gauge) is a 400 naming feature_type on check and track.
func TestTrackTakesTheCachesEventRules(t *testing.T) {
	p, err := plans.Parse([]byte(`
meters: { ai_generation: { aggregation: sum }, storage: { aggregation: max } }
plans: { FREE: { meters: { ai_generation: { limit: 50 }, storage: { limit: 1000 } } } }
default_plan: FREE
`))
	if err != nil {
		t.Fatal(err)
	}
	e := newEnvPlans(t, p)
	old := time.Now().Add(-2 * time.Hour).UTC().Format(time.RFC3339)
	if a := e.do("POST", "/v1/track", keyA, `{"tenant_id":"tenant-a","feature_type":"ai_generation","timestamp":"`+old+`"}`); a.status != 400 ||
		a.body["field"] != "timestamp" || a.body["tag"] != "timestamp_out_of_range" {
		t.Errorf("2 hours back: %d %s", a.status, a.raw)
	}
	body := `{"id":"retry-me-1","tenant_id":"tenant-a","feature_type":"ai_generation","quantity":"3"}`
	first := e.do("POST", "/v1/track", keyA, body)
	second := e.do("POST", "/v1/track", keyA, body)
	d1, _ := first.body["decision"].(map[string]any)
	d2, _ := second.body["decision"].(map[string]any)
	if first.status != 200 || d1["usage"] != "3" || second.status != 200 || second.body["duplicate"] != true || d2["usage"] != "3" {
		t.Errorf("a retried id: %d %s then %d %s", first.status, first.raw, second.status, second.raw)
	}
	for _, path := range []string{"/v1/check", "/v1/track"} {
		if a := e.do("POST", path, keyA, `{"tenant_id":"tenant-a","feature_type":"storage","quantity":"10"}`); a.status != 400 ||
			a.body["field"] != "feature_type" || a.body["tag"] != "unsupported_aggregation" {
			t.Errorf("%s of a limited max meter: %d %s", path, a.status, a.raw)
		}
	}
}

// TestRateLimitedSaysWhichBucket: a 429 carries the token bucket's
// RateLimit fields ("<meter>-rate", none left), not the period quota's,
// which still has room.
func TestRateLimitedSaysWhichBucket(t *testing.T) {
	p, err := plans.Load(filepath.Join(testenv.RepoRoot(t), "schemas", "plans", "plans.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	e := newEnvPlans(t, p, func(c *quota.Config) {
		c.RateLimits = map[string]quota.RateLimit{"ai_generation": {PerSecond: 0.01, Burst: 2}}
	})
	body := `{"tenant_id":"tenant-a","feature_type":"ai_generation"}`
	for i := range 2 {
		if a := e.do("POST", "/v1/track", keyA, body); a.status != 200 {
			t.Fatalf("track %d: %d %s", i, a.status, a.raw)
		}
	}
	a := e.do("POST", "/v1/track", keyA, body)
	if a.status != 429 || a.header.Get("Retry-After") == "" || !strings.HasPrefix(a.header.Get("RateLimit"), `"ai_generation-rate";r=0;`) ||
		!strings.HasPrefix(a.header.Get("RateLimit-Policy"), `"ai_generation-rate";q=2;`) {
		t.Fatalf("third track: %d RateLimit %q Policy %q %s", a.status, a.header.Get("RateLimit"), a.header.Get("RateLimit-Policy"), a.raw)
	}
}

// TestPendingFullIsNotALimit: two quantities under the cap whose sum one
// instance cannot hold pending (2^64 nano-units) on an unlimited meter:
// the second is never a 402 "limit is reached" (limit -1); it is allowed,
// or 503 PENDING_FULL with Retry-After until the quota state absorbs the
// first.
func TestPendingFullIsNotALimit(t *testing.T) {
	e := newEnv(t)
	body := `{"tenant_id":"acme","feature_type":"ai_generation","quantity":"10000000000"}`
	if a := e.do("POST", "/v1/track", keyAdmin, body); a.status != 200 {
		t.Fatalf("first 1e10: %d %s", a.status, a.raw)
	}
	a := e.do("POST", "/v1/track", keyAdmin, body)
	t.Logf("second: %d %s", a.status, a.body["code"])
	if a.status != 200 && (a.status != 503 || a.body["code"] != "PENDING_FULL" || a.header.Get("Retry-After") == "") {
		t.Fatalf("second 1e10 on an unlimited meter: %d %s", a.status, a.raw)
	}
}

// TestAuthenticatesBeforeReadingTheBody: without a valid key the answer is
// 401 whatever the body holds (malformed, oversized, invalid); the body is
// judged only for a known key.
func TestAuthenticatesBeforeReadingTheBody(t *testing.T) {
	e := newEnv(t)
	for _, body := range []string{`{"tenant_id":`, `{"tenant_id":"tenant-a","metadata":{"k":"` + strings.Repeat("x", 4000) + `"}}`,
		`{"tenant_id":"bob+1@x","feature_type":"ai_generation"}`} {
		for _, key := range []string{"", "wrong"} {
			for _, path := range []string{"/v1/check", "/v1/track"} {
				if a := e.do("POST", path, key, body); a.status != http.StatusUnauthorized || a.body["code"] != "UNAUTHORIZED" {
					t.Errorf("%s key %q body %.30s: %d %s", path, key, body, a.status, a.raw)
				}
			}
		}
	}
	if a := e.do("GET", "/v1/quotas/bob+1@x", "", ""); a.status != 401 {
		t.Errorf("quotas without a key: %d %s", a.status, a.raw)
	}
	// With a key, the body is read and judged.
	if a := e.do("POST", "/v1/check", keyA, `{"tenant_id":`); a.status != 400 {
		t.Errorf("malformed with a key: %d %s", a.status, a.raw)
	}
}

// openAPIAccepts reports whether openapi.yaml accepts the request body.
func (e *env) openAPIAccepts(path, body string) bool {
	req, _ := http.NewRequest("POST", "http://127.0.0.1:9470"+path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer x")
	ok, errs := e.oa.ValidateHttpRequest(req)
	if !ok && testing.Verbose() {
		fmt.Println(path, body, errs[0].Message, errs[0].Reason)
	}
	return ok
}
