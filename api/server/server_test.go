package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pb33f/libopenapi"
	validator "github.com/pb33f/libopenapi-validator"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	"github.com/shopspring/decimal"
	"go.uber.org/zap"

	"github.com/usagemeter/usagemeter/api"
	"github.com/usagemeter/usagemeter/api/server"
	"github.com/usagemeter/usagemeter/api/usageread"
	"github.com/usagemeter/usagemeter/producer"
	"github.com/usagemeter/usagemeter/quota"
	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/schemas/plans"
	"github.com/usagemeter/usagemeter/testenv"
)

// env is a usage-api server on a real HTTP listener, private topics on the
// real broker, and the OpenAPI validator every response goes through.
type env struct {
	t      testing.TB
	srv    *httptest.Server
	broker string
	events string
	state  string
	assign string
	alerts string // the alert topic the pages' feed reads (with usage reads)
	cache  *quota.Cache
	oa     validator.Validator
}

const (
	keyA     = "key-of-tenant-a"
	keyB     = "key-of-tenant-b"
	keyAdmin = "key-of-the-operator"
)

func newEnv(t testing.TB) *env {
	t.Helper()
	p, err := plans.Load(filepath.Join(testenv.RepoRoot(t), "schemas", "plans", "plans.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	return newEnvPlans(t, p)
}

// newEnvPlans is newEnv with the meters and plans p, and the quota
// config changed by opts.
func newEnvPlans(t testing.TB, p *plans.Config, opts ...func(*quota.Config)) *env {
	t.Helper()
	return newEnvUsage(t, p, nil, opts...)
}

// newEnvUsage is newEnvPlans with usage reads from rd (nil: none).
func newEnvUsage(t testing.TB, p *plans.Config, rd *usageread.Reader, opts ...func(*quota.Config)) *env {
	t.Helper()
	return newEnvClock(t, p, rd, nil, opts...)
}

// newEnvClock is newEnvUsage with the quota cache and the pages on the
// clock now (nil: time.Now).
func newEnvClock(t testing.TB, p *plans.Config, rd *usageread.Reader, now func() time.Time, opts ...func(*quota.Config)) *env {
	t.Helper()
	broker := testenv.Kafka(t)
	e := &env{t: t, broker: broker, events: testenv.Name("events"), state: testenv.Name("qstate"), assign: testenv.Name("assign")}
	testenv.CreateTopic(t, broker, e.events, 4)
	testenv.CreateTopic(t, broker, e.state, 2, "cleanup.policy", "compact")
	testenv.CreateTopic(t, broker, e.assign, 1, "cleanup.policy", "compact")

	qc := quota.DefaultConfig()
	qc.Brokers, qc.StateTopic, qc.AssignmentTopic, qc.PollInterval = []string{broker}, e.state, e.assign, 50*time.Millisecond
	// The tracker publishes to the private events topic: the shared
	// usage.quota-positions of other runs must not expire its pending.
	qc.EventsTopic, qc.PositionTopic = e.events, ""
	for _, o := range opts {
		o(&qc)
	}
	var err error
	var copts []quota.Option
	if now != nil {
		copts = append(copts, quota.WithClock(now))
	}
	e.cache, err = quota.New(qc, p, zap.NewNop(), copts...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = e.cache.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	if err := e.cache.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	pub, err := producer.New([]string{broker}, producer.WithTopic(e.events))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pub.Close() })
	keys, err := server.NewKeys([]string{server.HashKey(keyAdmin)},
		map[string][]string{"tenant-a": {server.HashKey(keyA)}, "tenant-b": {server.HashKey(keyB)}})
	if err != nil {
		t.Fatal(err)
	}
	cfg := server.DefaultConfig()
	cfg.MaxBodyBytes = 1024
	mux := http.NewServeMux()
	srv := server.New(cfg, e.cache, p, keys, quota.NewProducerTracker(pub), zap.NewNop(), prometheus.NewRegistry())
	if now != nil {
		srv.WithClock(now)
	}
	if rd != nil {
		srv.WithUsage(rd).WithAdmin(&server.Assigner{Client: &kafka.Client{Addr: kafka.TCP(broker)}, Topic: e.assign})
		e.alerts = testenv.Name("alerts")
		testenv.CreateTopic(t, broker, e.alerts, 2, "cleanup.policy", "compact")
		feed, err := server.NewAlertFeed([]string{broker}, e.alerts, 0, 0, zap.NewNop(), nil)
		if err != nil {
			t.Fatal(err)
		}
		fctx, fcancel := context.WithCancel(context.Background())
		fdone := make(chan struct{})
		go func() { defer close(fdone); _ = feed.Run(fctx) }()
		t.Cleanup(func() { fcancel(); <-fdone })
		srv.WithAlerts(feed)
	}
	srv.Register(mux)
	e.srv = httptest.NewServer(mux)
	t.Cleanup(e.srv.Close)

	doc, err := libopenapi.NewDocument(api.OpenAPI())
	if err != nil {
		t.Fatal(err)
	}
	var errs []error
	if e.oa, errs = validator.NewValidator(doc); len(errs) > 0 {
		t.Fatalf("openapi.yaml: %v", errs)
	}
	if ok, verrs := e.oa.ValidateDocument(); !ok {
		t.Fatalf("openapi.yaml is not a valid OpenAPI 3.1 document: %v", verrs)
	}
	return e
}

type answer struct {
	status int
	header http.Header
	body   map[string]any
	raw    string
}

// do sends a request and checks the response against openapi.yaml.
func (e *env) do(method, path, key, body string) answer {
	e.t.Helper()
	req, _ := http.NewRequest(method, e.srv.URL+path, strings.NewReader(body))
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	req.Header.Set("Content-Type", "application/json")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	raw, _ := io.ReadAll(res.Body)
	res.Body.Close()
	res.Body = io.NopCloser(bytes.NewReader(raw))
	vreq, _ := http.NewRequest(method, "http://127.0.0.1:9470"+path, strings.NewReader(body))
	vreq.Header = req.Header.Clone()
	if ok, verrs := e.oa.ValidateHttpResponse(vreq, res); !ok {
		var msgs []string
		for _, v := range verrs {
			msgs = append(msgs, v.Message+": "+v.Reason)
			for _, se := range v.SchemaValidationErrors {
				msgs = append(msgs, "  "+se.Reason+" at "+se.FieldPath)
			}
		}
		e.t.Fatalf("%s %s -> %d %s does not match openapi.yaml:\n%s", method, path, res.StatusCode, raw, strings.Join(msgs, "\n"))
	}
	a := answer{status: res.StatusCode, header: res.Header, raw: string(raw)}
	_ = json.Unmarshal(raw, &a.body)
	return a
}

func (e *env) publishState(tenant, meter string, usage int64) {
	e.t.Helper()
	now := time.Now()
	p := plans.PeriodOf(plans.Quota{Period: plans.CalendarMonth}, 0, now)
	q := plans.Quota{Limit: decimal.NewFromInt(50), WarningThresholds: []int{50, 75, 90, 100}}
	st := plans.Evaluate(q, decimal.NewFromInt(usage))
	s := schemas.QuotaState{TenantID: tenant, FeatureType: meter, Period: p.ID, Plan: "FREE", Usage: decimal.NewFromInt(usage),
		Limit: q.Limit, Remaining: st.Remaining, OverageUsed: st.OverageUsed, Percentage: st.Percentage, Level: st.Level,
		PeriodStart: p.Start, PeriodEnd: p.End, SourceOffsets: map[int32]int64{0: 7}, UpdatedAt: now}
	w := &kafka.Writer{Addr: kafka.TCP(e.broker), Topic: e.state, Balancer: kafka.Murmur2Balancer{}, BatchTimeout: time.Millisecond}
	defer w.Close()
	if err := w.WriteMessages(context.Background(), kafka.Message{Key: []byte(s.Key()), Value: s.AppendJSON(nil)}); err != nil {
		e.t.Fatal(err)
	}
	testenv.Eventually(e.t, 10*time.Second, "state in the cache", func() (bool, error) {
		return e.cache.Peek(context.Background(), tenant, meter).Usage.Cmp(quota.Units(usage)) == 0, nil
	})
}

func TestKeysActOnlyForTheirTenant(t *testing.T) {
	e := newEnv(t)
	body := `{"tenant_id":"tenant-b","feature_type":"ai_generation"}`
	if a := e.do("POST", "/v1/check", keyA, body); a.status != 403 || a.body["code"] != "FORBIDDEN" {
		t.Fatalf("A for B: %d %s", a.status, a.raw)
	}
	if a := e.do("POST", "/v1/track", keyA, body); a.status != 403 {
		t.Fatalf("A tracks for B: %d %s", a.status, a.raw)
	}
	if a := e.do("GET", "/v1/quotas/tenant-b", keyA, ""); a.status != 403 {
		t.Fatalf("A reads B: %d %s", a.status, a.raw)
	}
	if a := e.do("POST", "/v1/check", "", body); a.status != 401 || a.header.Get("WWW-Authenticate") == "" {
		t.Fatalf("no key: %d %s", a.status, a.raw)
	}
	if a := e.do("POST", "/v1/check", "wrong", body); a.status != 401 {
		t.Fatalf("unknown key: %d %s", a.status, a.raw)
	}
	if a := e.do("POST", "/v1/check", keyB, body); a.status != 200 || a.body["allowed"] != true {
		t.Fatalf("B for B: %d %s", a.status, a.raw)
	}
	if a := e.do("GET", "/v1/quotas/tenant-a", keyAdmin, ""); a.status != 200 || a.body["plan"] != "FREE" {
		t.Fatalf("admin reads A: %d %s", a.status, a.raw)
	}
}

func TestBadRequestsNameTheProblem(t *testing.T) {
	e := newEnv(t)
	for _, c := range []struct {
		name, path, body string
		status           int
		code, field      string
	}{
		{"bad json", "/v1/check", `{"tenant_id":"tenant-a",`, 400, "MALFORMED_JSON", ""},
		{"not json", "/v1/check", `tenant=a`, 400, "MALFORMED_JSON", ""},
		{"empty", "/v1/track", ``, 400, "MALFORMED_JSON", ""},
		{"trailing", "/v1/check", `{"tenant_id":"tenant-a","feature_type":"x"} {}`, 400, "MALFORMED_JSON", ""},
		{"unknown field", "/v1/check", `{"tenant_id":"tenant-a","feature_type":"x","tenantId":"b"}`, 400, "UNKNOWN_FIELD", "tenantId"},
		{"event field on check", "/v1/check", `{"tenant_id":"tenant-a","feature_type":"x","user_id":"u"}`, 400, "UNKNOWN_FIELD", "user_id"},
		{"missing tenant", "/v1/track", `{"feature_type":"ai_generation"}`, 400, "MISSING_FIELD", "tenant_id"},
		{"missing meter", "/v1/check", `{"tenant_id":"tenant-a"}`, 400, "MISSING_FIELD", "feature_type"},
		{"wrong type", "/v1/check", `{"tenant_id":5,"feature_type":"x"}`, 400, "INVALID_FIELD", "tenant_id"},
		{"bad meter", "/v1/check", `{"tenant_id":"tenant-a","feature_type":"Bad Meter"}`, 400, "INVALID_FIELD", "feature_type"},
		{"bad quantity", "/v1/track", `{"tenant_id":"tenant-a","feature_type":"x","quantity":"-1"}`, 400, "INVALID_FIELD", "quantity"},
		{"too precise", "/v1/check", `{"tenant_id":"tenant-a","feature_type":"x","quantity":"0.0000000001"}`, 400, "INVALID_FIELD", "quantity"},
		{"bad timestamp", "/v1/track", `{"tenant_id":"tenant-a","feature_type":"x","timestamp":"yesterday"}`, 400, "INVALID_FIELD", "timestamp"},
		{"bad position", "/v1/check", `{"tenant_id":"tenant-a","feature_type":"x","min_position":{"topic":"t","partition":0}}`, 400, "INVALID_FIELD", "min_position.offset"},
		{"oversized", "/v1/track", `{"tenant_id":"tenant-a","feature_type":"x","metadata":{"k":"` + strings.Repeat("x", 2000) + `"}}`, 413, "BODY_TOO_LARGE", ""},
	} {
		a := e.do("POST", c.path, keyA, c.body)
		field, _ := a.body["field"].(string)
		if a.status != c.status || a.body["code"] != c.code || field != c.field || a.body["error"] == "" {
			t.Errorf("%s: %d %s, want %d %s field %q", c.name, a.status, a.raw, c.status, c.code, c.field)
		}
	}
}

func TestTrackUpToTheLimitThenCheck(t *testing.T) {
	e := newEnv(t)
	e.publishState("tenant-a", "ai_generation", 45)
	ids := map[string]bool{}
	for i := 46; i <= 50; i++ {
		a := e.do("POST", "/v1/track", keyA, `{"tenant_id":"tenant-a","feature_type":"ai_generation","user_id":"u1","metadata":{"model":"m"}}`)
		d, _ := a.body["decision"].(map[string]any)
		if a.status != 200 || d["usage"] != fmt.Sprint(i) || a.header.Get("X-Usage-Current") != fmt.Sprint(i) {
			t.Fatalf("track %d: %d %s", i, a.status, a.raw)
		}
		ids[a.body["event_id"].(string)] = true
	}
	a := e.do("POST", "/v1/track", keyA, `{"tenant_id":"tenant-a","feature_type":"ai_generation"}`)
	q, _ := a.body["quota"].(map[string]any)
	if a.status != 402 || a.body["code"] != "USAGE_LIMIT_EXCEEDED" || !strings.Contains(a.body["upgrade_url"].(string), "tenant-a") || q["remaining"] != "0" {
		t.Fatalf("51st: %d %s", a.status, a.raw)
	}
	if a := e.do("POST", "/v1/check", keyA, `{"tenant_id":"tenant-a","feature_type":"ai_generation","quantity":1}`); a.status != 200 ||
		a.body["allowed"] != false || a.body["reason"] != "limit_exceeded" || a.body["usage"] != "50" {
		t.Fatalf("check at 50: %d %s", a.status, a.raw)
	}
	// The 5 allowed events are on the events topic, once each.
	msgs := testenv.ReadN(t, e.broker, e.events, 5)
	for _, m := range msgs {
		ev, err := schemas.NewValidator().Decode(m.Value)
		if err != nil || !ids[ev.ID] || ev.TenantID != "tenant-a" || string(m.Key) != "tenant-a" {
			t.Fatalf("event %s: %v", m.Value, err)
		}
		delete(ids, ev.ID)
	}
	// Read your writes: a plan change, then a check that waits for it.
	k, v := plans.AssignmentRecord("tenant-a", &plans.Assignment{Plan: "PRO"})
	client := &kafka.Client{Addr: kafka.TCP(e.broker)}
	res, err := client.Produce(context.Background(), &kafka.ProduceRequest{Topic: e.assign, RequiredAcks: kafka.RequireAll,
		Records: kafka.NewRecordReader(kafka.Record{Key: kafka.NewBytes(k), Value: kafka.NewBytes(v)})})
	if err != nil || res.Error != nil {
		t.Fatal(err, res)
	}
	if a := e.do("POST", "/v1/check", keyA, fmt.Sprintf(`{"tenant_id":"tenant-a","feature_type":"ai_generation","min_position":{"topic":%q,"partition":0,"offset":%d}}`,
		e.assign, res.BaseOffset+100)); a.status != 409 || a.body["code"] != "NOT_CAUGHT_UP" {
		t.Fatalf("a position not written yet: %d %s", a.status, a.raw)
	}
	if a := e.do("POST", "/v1/track", keyA, fmt.Sprintf(`{"tenant_id":"tenant-a","feature_type":"ai_generation","min_position":{"topic":%q,"partition":0,"offset":%d},"wait_ms":5000}`,
		e.assign, res.BaseOffset)); a.status != 200 || a.body["decision"].(map[string]any)["plan"] != "PRO" {
		t.Fatalf("after the upgrade: %d %s", a.status, a.raw)
	}
	a = e.do("GET", "/v1/quotas/tenant-a", keyA, "")
	if a.status != 200 || a.body["plan"] != "PRO" || len(a.body["quotas"].([]any)) < 2 {
		t.Fatalf("quotas: %d %s", a.status, a.raw)
	}
}

// TestValidatorCatchesWrongBodies shows the OpenAPI check is not a no-op:
// a decision missing fields, or with a float usage, fails it.
func TestValidatorCatchesWrongBodies(t *testing.T) {
	doc, err := libopenapi.NewDocument(api.OpenAPI())
	if err != nil {
		t.Fatal(err)
	}
	v, errs := validator.NewValidator(doc)
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	for _, body := range []string{`{"allowed":true}`, `{"allowed":true,"tenant_id":"a","feature_type":"x","plan":"FREE","period":"2026-11",
		"level":"ok","usage":1.5,"pending":"0","limit":"50","remaining":"49","percentage":"2","warning":0,"reset_at":"2026-12-01T00:00:00Z",
		"retry_after_ms":0,"staleness":{"stale":false,"offset_lag":0,"age_ms":1,"reachable":true},"offsets":{"state_partition":0,"state_offset":-1,"source":{}}}`} {
		req, _ := http.NewRequest("POST", "http://127.0.0.1:9470/v1/check", strings.NewReader(`{}`))
		req.Header.Set("Content-Type", "application/json")
		res := &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {"application/json"}}, Body: io.NopCloser(strings.NewReader(body)), Request: req}
		if ok, _ := v.ValidateHttpResponse(req, res); ok {
			t.Fatalf("accepted %s", body)
		}
	}
}

// A tracked event is held and acknowledged, so its pending expires like
// the middleware's (quota/README.md): here no aggregator ever absorbs the
// 5 events, and after max_pending_age the tenant's usage is the published
// state again instead of staying pending until the period ends.
func TestTrackedPendingExpires(t *testing.T) {
	p, err := plans.Load(filepath.Join(testenv.RepoRoot(t), "schemas", "plans", "plans.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	e := newEnvPlans(t, p, func(c *quota.Config) { c.PositionTopic, c.MaxPendingAge = "", time.Second })
	e.publishState("tenant-a", "ai_generation", 45)
	for i := 0; i < 5; i++ {
		if a := e.do("POST", "/v1/track", keyA, `{"tenant_id":"tenant-a","feature_type":"ai_generation"}`); a.status != 200 {
			t.Fatalf("track %d: %d %s", i, a.status, a.raw)
		}
	}
	if a := e.do("POST", "/v1/track", keyA, `{"tenant_id":"tenant-a","feature_type":"ai_generation"}`); a.status != 402 {
		t.Fatalf("51st: %d %s", a.status, a.raw)
	}
	testenv.Eventually(t, 10*time.Second, "pending of the 5 tracked events expires", func() (bool, error) {
		a := e.do("POST", "/v1/check", keyA, `{"tenant_id":"tenant-a","feature_type":"ai_generation","quantity":1}`)
		return a.status == 200 && a.body["allowed"] == true && a.body["usage"] == "45", nil
	})
}
