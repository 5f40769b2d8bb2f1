package server_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/usagemeter/usagemeter/api/server"
	"github.com/usagemeter/usagemeter/schemas/plans"
	"github.com/usagemeter/usagemeter/testenv"
)

// TestCheckBatch: /v1/check/batch answers each item in order exactly as
// /v1/check answers it alone (same decision, usage, remaining, level).
func TestCheckBatch(t *testing.T) {
	e := newEnv(t)
	e.publishState("tenant-a", "ai_generation", 20)
	items := []string{
		`{"tenant_id":"tenant-a","feature_type":"ai_generation","quantity":"1"}`,
		`{"tenant_id":"tenant-a","feature_type":"ai_generation","quantity":40}`, // 20 + 40 > 50: refused
		`{"tenant_id":"tenant-b","feature_type":"ai_generation"}`,
		`{ "feature_type" : "api_calls", "tenant_id" : "tenant-a", "quantity" : "0.5" }`,
	}
	a := e.do("POST", "/v1/check/batch", keyAdmin, `{"checks":[`+strings.Join(items, ", ")+`]}`)
	results, _ := a.body["results"].([]any)
	if a.status != 200 || len(results) != len(items) || a.header.Get("X-Usage-Current") != "" {
		t.Fatalf("batch: %d %s", a.status, a.raw)
	}
	for i, item := range items {
		one := e.do("POST", "/v1/check", keyAdmin, item)
		got := results[i].(map[string]any)
		for _, k := range []string{"allowed", "reason", "tenant_id", "feature_type", "plan", "period", "level", "usage", "pending", "limit", "remaining", "percentage", "warning", "reset_at"} {
			if fmt.Sprint(got[k]) != fmt.Sprint(one.body[k]) {
				t.Errorf("item %d %s: %s = %v in the batch, %v alone (%s)", i, item, k, got[k], one.body[k], one.raw)
			}
		}
	}
	if results[0].(map[string]any)["allowed"] != true || results[1].(map[string]any)["allowed"] != false {
		t.Fatalf("decisions: %s", a.raw)
	}
	// A tenant key answers for its own tenant in a batch too.
	if a := e.do("POST", "/v1/check/batch", keyA, `{"checks":[`+items[0]+`,`+items[3]+`]}`); a.status != 200 {
		t.Fatalf("tenant key, own tenant: %d %s", a.status, a.raw)
	}
}

// TestCheckBatchRefusals: a bad item refuses the whole call, naming the
// item and its member; the key comes first; the batch has a size limit.
func TestCheckBatchRefusals(t *testing.T) {
	e := newEnv(t)
	ok := `{"tenant_id":"tenant-a","feature_type":"ai_generation"}`
	batch := func(items ...string) string { return `{"checks":[` + strings.Join(items, ",") + `]}` }
	for _, c := range []struct {
		name, key, body  string
		status           int
		code, field, tag string
	}{
		{"no key, bad body", "", `{"checks":`, 401, "UNAUTHORIZED", "", ""},
		{"wrong key", "nope", batch(ok), 401, "UNAUTHORIZED", "", ""},
		{"malformed", keyA, `{"checks":[` + ok, 400, "MALFORMED_JSON", "", ""},
		{"no checks", keyA, `{}`, 400, "MISSING_FIELD", "checks", ""},
		{"checks not an array", keyA, `{"checks":{"tenant_id":"tenant-a"}}`, 400, "INVALID_FIELD", "checks", ""},
		{"empty", keyA, batch(), 400, "INVALID_FIELD", "checks", ""},
		{"unknown top-level member", keyA, `{"checks":[` + ok + `],"wait_ms":5}`, 400, "UNKNOWN_FIELD", "wait_ms", ""},
		{"item not an object", keyA, batch(ok, `"tenant-a"`), 400, "INVALID_FIELD", "checks[1]", ""},
		{"bad quantity", keyA, batch(ok, ok, `{"tenant_id":"tenant-a","feature_type":"ai_generation","quantity":"1e3"}`), 400, "INVALID_FIELD", "checks[2].quantity", "invalid_quantity"},
		{"unknown member", keyA, batch(ok, `{"tenant_id":"tenant-a","feature_type":"ai_generation","user_id":"u"}`), 400, "UNKNOWN_FIELD", "checks[1].user_id", ""},
		{"min_position in an item", keyA, batch(`{"tenant_id":"tenant-a","feature_type":"ai_generation","min_position":{"topic":"t","partition":0,"offset":1}}`), 400, "UNKNOWN_FIELD", "checks[0].min_position", ""},
		{"missing meter", keyA, batch(`{"tenant_id":"tenant-a"}`), 400, "MISSING_FIELD", "checks[0].feature_type", "missing_field:feature_type"},
		{"unknown meter", keyA, batch(ok, `{"tenant_id":"tenant-a","feature_type":"api_call"}`), 400, "INVALID_FIELD", "checks[1].feature_type", "unknown_meter"},
		{"duplicate member", keyA, batch(`{"tenant_id":"tenant-a","feature_type":"ai_generation","quantity":1,"quantity":2}`), 400, "INVALID_FIELD", "checks[0].quantity", "duplicate_field:quantity"},
		{"quantity past the cache's counter", keyA, batch(`{"tenant_id":"tenant-a","feature_type":"ai_generation","quantity":"20000000000"}`), 400, "INVALID_FIELD", "checks[0].quantity", "invalid_quantity"},
		{"another tenant", keyA, batch(ok, `{"tenant_id":"tenant-b","feature_type":"ai_generation"}`), 403, "FORBIDDEN", "checks[1].tenant_id", ""},
		{"oversized", keyA, batch(ok, `{"tenant_id":"tenant-a","feature_type":"ai_generation","quantity":"`+strings.Repeat("1", 2000)+`"}`), 413, "BODY_TOO_LARGE", "", ""},
	} {
		a := e.do("POST", "/v1/check/batch", c.key, c.body)
		field, _ := a.body["field"].(string)
		tag, _ := a.body["tag"].(string)
		if a.status != c.status || a.body["code"] != c.code || field != c.field || tag != c.tag || a.body["error"] == "" {
			t.Errorf("%s: %d %s, want %d %s field %q tag %q", c.name, a.status, a.raw, c.status, c.code, c.field, c.tag)
		}
	}

	// The item limit, on a server whose body limit (16 KiB, the default)
	// lets 101 items through.
	p, err := plans.Load(filepath.Join(testenv.RepoRoot(t), "schemas", "plans", "plans.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	keys, err := server.NewKeys([]string{server.HashKey(keyAdmin)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	server.New(server.DefaultConfig(), e.cache, p, keys, nil, zap.NewNop(), prometheus.NewRegistry()).Register(mux)
	big := *e
	big.srv = httptest.NewServer(mux)
	defer big.srv.Close()
	short := `{"tenant_id":"t","feature_type":"api_calls"}`
	full := make([]string, server.MaxBatch)
	for i := range full {
		full[i] = short
	}
	if a := big.do("POST", "/v1/check/batch", keyAdmin, batch(full...)); a.status != 200 || len(a.body["results"].([]any)) != server.MaxBatch {
		t.Fatalf("%d checks: %d %.300s", server.MaxBatch, a.status, a.raw)
	}
	if a := big.do("POST", "/v1/check/batch", keyAdmin, batch(append(full, short)...)); a.status != 400 || a.body["field"] != "checks" || a.body["code"] != "INVALID_FIELD" {
		t.Fatalf("%d checks: %d %.300s", server.MaxBatch+1, a.status, a.raw)
	}
}
