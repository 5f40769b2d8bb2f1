package server_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shopspring/decimal"
	"go.uber.org/zap"

	"github.com/usagemeter/usagemeter/api/usageread"
	"github.com/usagemeter/usagemeter/quota"
	"github.com/usagemeter/usagemeter/schemas/plans"
	"github.com/usagemeter/usagemeter/svckit/chconn"
	"github.com/usagemeter/usagemeter/testenv"
)

func TestAdminPage(t *testing.T) {
	conn, _ := testenv.ClickHouse(t)
	ctx := context.Background()
	if err := chconn.Migrate(ctx, conn, zap.NewNop()); err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	per := plans.PeriodOf(plans.Quota{Period: plans.CalendarMonth}, 0, now)
	frac := decimal.NewFromInt(int64(now.Sub(per.Start))).Div(decimal.NewFromInt(int64(per.End.Sub(per.Start))))
	fifty := decimal.NewFromInt(50)
	// FREE allows 50 ai_generation. tenant-d runs at 102 % of the pace that
	// ends the period at 50 (an upgrade candidate, under the limit today),
	// tenant-e at 90 % of it (not one); tenant-c is at the limit; tenant-a
	// splits 45 over two users; tenant-b's storage gauge never counts.
	values := map[string][]string{
		"tenant-a": {"20", "25"},
		"tenant-b": {"20"},
		"tenant-c": {"50"},
		"tenant-d": {fifty.Mul(frac).Mul(decimal.RequireFromString("1.02")).Round(6).String()},
		"tenant-e": {fifty.Mul(frac).Mul(decimal.RequireFromString("0.9")).Round(6).String()},
	}
	b, err := conn.PrepareBatch(ctx, `INSERT INTO usage_period (tenant_id, feature_type, subject, period_id, period_start, period_end, plan,
 aggregation, value, events, latest_ns, source_partition, source_offset, updated_at, version)`)
	if err != nil {
		t.Fatal(err)
	}
	for tenant, vs := range values {
		for i, v := range vs {
			if err := b.Append(tenant, "ai_generation", "u"+string(rune('1'+i)), per.ID, per.Start, per.End, "FREE", "sum",
				decimal.RequireFromString(v), uint64(1), int64(0), int32(0), int64(1), now, uint64(2)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := b.Append("tenant-b", "storage", "u1", per.ID, per.Start, per.End, "FREE", "max", decimal.NewFromInt(5000), uint64(3), int64(0), int32(0), int64(1), now, uint64(2)); err != nil {
		t.Fatal(err)
	}
	if err := b.Send(); err != nil {
		t.Fatal(err)
	}
	ab, err := conn.PrepareBatch(ctx, `INSERT INTO billing_audit (tenant_id, meter, mode, window_start, window_end, customer, target, seq, action,
 quantity, ours, stripe, delta, identifier, idempotency_key, result, error, pass_id, at, at_ns)`)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range []struct {
		pass  string
		delta int64
		err   string
	}{{"pass-1", 99, ""}, {"pass-2", 3, ""}, {"pass-2", -4, "stripe 500"}} {
		at := now.Add(time.Duration(i) * time.Second)
		if err := ab.Append("tenant-a", "ai_generation", "meter_events", per.Start, per.End, "cus_1", "m", uint32(i), "observe",
			decimal.Zero, int64(0), int64(0), r.delta, "", "", "ok", r.err, r.pass, at, at.UnixNano()); err != nil {
			t.Fatal(err)
		}
	}
	if err := ab.Send(); err != nil {
		t.Fatal(err)
	}
	p, err := plans.Load(filepath.Join(testenv.RepoRoot(t), "schemas", "plans", "plans.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	e := newEnvUsage(t, p, usageread.NewReader(conn, p))

	if a := e.get("/admin", keyA); a.status != 403 {
		t.Fatalf("tenant key on /admin: %d", a.status)
	}
	a := e.get("/admin", keyAdmin)
	if a.status != 200 {
		t.Fatalf("admin: %d %s", a.status, a.raw)
	}
	rowRe := regexp.MustCompile(`<tr class="(\w*)" data-tenant="([^"]+)" data-meter="([^"]+)">.*?class="n pct">([^<]*)<`)
	var got []string
	for _, m := range rowRe.FindAllStringSubmatch(a.raw, -1) {
		got = append(got, m[2]+"/"+m[3]+"="+m[4]+":"+m[1])
	}
	pd := decimal.RequireFromString(values["tenant-d"][0]).Mul(decimal.NewFromInt(2)).Round(2).String()
	pe := decimal.RequireFromString(values["tenant-e"][0]).Mul(decimal.NewFromInt(2)).Round(2).String()
	want := []string{"tenant-c/ai_generation=100:amber", "tenant-a/ai_generation=90:amber", "tenant-b/ai_generation=40:"}
	want = append(want, "tenant-d/ai_generation="+pd+":", "tenant-e/ai_generation="+pe+":")
	slices.SortStableFunc(want[1:], func(x, y string) int { // by percent, highest first, as the page sorts
		return pctOf(y).Cmp(pctOf(x))
	})
	if !slices.Equal(got, fixColors(want)) {
		t.Fatalf("rows by percent\n got %v\nwant %v", got, fixColors(want))
	}
	sugg := regexp.MustCompile(`<li data-tenant="([^"]+)">`).FindAllStringSubmatch(a.raw[strings.Index(a.raw, `id="suggest"`):], -1)
	var cands []string
	for _, m := range sugg {
		cands = append(cands, m[1])
	}
	if !slices.Equal(cands, []string{"tenant-c", "tenant-d"}) {
		t.Fatalf("upgrade candidates %v, want tenant-c (at the limit) and tenant-d (on pace to exceed)", cands)
	}
	if !strings.Contains(a.raw, "<code>pass-2</code>") || !strings.Contains(a.raw, `<b id="drift">7</b>`) || !strings.Contains(a.raw, "1 errors") {
		t.Fatalf("billing pass not shown: %s", a.raw[strings.Index(a.raw, "<h2>Billing"):])
	}
	sorted := e.get("/admin?sort=tenant", keyAdmin)
	var byTenant []string
	for _, m := range rowRe.FindAllStringSubmatch(sorted.raw, -1) {
		byTenant = append(byTenant, m[2])
	}
	if !slices.IsSorted(byTenant) || len(byTenant) != 5 {
		t.Fatalf("sort=tenant: %v", byTenant)
	}

	// A plan change: refused for a tenant key, a plan outside the file or a
	// hostile tenant; applied for the admin, seen by another cache within a
	// second, and audited.
	other := otherCache(t, e, p)
	if got := e.post("/admin/plan", keyA, url.Values{"tenant": {"tenant-a"}, "plan": {"PRO"}}); got.status != 403 {
		t.Fatalf("tenant key changes a plan: %d", got.status)
	}
	if got := e.post("/admin/plan", keyAdmin, url.Values{"tenant": {"tenant-a"}, "plan": {"GOLD"}}); got.status != 400 || got.body["field"] != "plan" {
		t.Fatalf("unknown plan: %d %s", got.status, got.raw)
	}
	if got := e.post("/admin/plan", keyAdmin, url.Values{"tenant": {"x' OR 1=1"}, "plan": {"PRO"}}); got.status != 400 || got.body["field"] != "tenant" {
		t.Fatalf("hostile tenant: %d %s", got.status, got.raw)
	}
	if plan, _ := other.Meters("tenant-e"); plan != "FREE" {
		t.Fatalf("tenant-e starts on %s", plan)
	}
	got2 := e.post("/admin/plan", keyAdmin, url.Values{"tenant": {"tenant-e"}, "plan": {"PRO"}, "reason": {"ticket 42"}})
	sent := time.Now()
	if got2.status != 303 || !strings.Contains(got2.header.Get("Location"), "tenant-e+is+now+on+PRO") {
		t.Fatalf("plan change: %d %v %s", got2.status, got2.header, got2.raw)
	}
	for {
		if plan, _ := other.Meters("tenant-e"); plan == "PRO" {
			break
		}
		if time.Since(sent) > time.Second {
			t.Fatal("another quota cache did not see the new plan within a second")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if d := other.Peek(ctx, "tenant-e", "ai_generation"); !d.Unlimited {
		t.Fatalf("tenant-e on PRO is not unlimited in the other cache: %+v", d)
	}
	var audit []struct {
		Tenant   string `ch:"tenant_id"`
		Plan     string `ch:"plan"`
		Previous string `ch:"previous_plan"`
		Reason   string `ch:"reason"`
		Version  int64  `ch:"version"`
	}
	if err := conn.Select(ctx, &audit, "SELECT tenant_id, plan, previous_plan, reason, version FROM plan_changes"); err != nil {
		t.Fatal(err)
	}
	if len(audit) != 1 || audit[0].Tenant != "tenant-e" || audit[0].Plan != "PRO" || audit[0].Previous != "FREE" ||
		audit[0].Reason != "ticket 42" || audit[0].Version < sent.Unix()-5 {
		t.Fatalf("plan_changes: %+v", audit)
	}
}

func pctOf(s string) decimal.Decimal {
	v := s[strings.Index(s, "=")+1 : strings.LastIndex(s, ":")]
	return decimal.RequireFromString(v)
}

// fixColors marks rows at 80 % or more amber, as the page does (over the
// limit would be red).
func fixColors(rows []string) []string {
	out := make([]string, len(rows))
	for i, r := range rows {
		base := r[:strings.LastIndex(r, ":")+1]
		if pctOf(r).GreaterThanOrEqual(decimal.NewFromInt(80)) {
			base += "amber"
		}
		out[i] = base
	}
	return out
}

// otherCache is a second quota cache on e's topics, as another app runs.
func otherCache(t *testing.T, e *env, p *plans.Config) *quota.Cache {
	t.Helper()
	qc := quota.DefaultConfig()
	qc.Brokers, qc.StateTopic, qc.AssignmentTopic = []string{e.broker}, e.state, e.assign
	c, err := quota.New(qc, p, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	if err := c.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	return c
}

// get and post send page requests (not in openapi.yaml), never following
// a redirect.
func (e *env) get(path, key string) answer { return e.raw("GET", path, key, "") }

func (e *env) post(path, key string, form url.Values) answer {
	return e.raw("POST", path, key, form.Encode())
}

func (e *env) raw(method, path, key, form string) answer {
	e.t.Helper()
	req, _ := http.NewRequest(method, e.srv.URL+path, strings.NewReader(form))
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	if form != "" {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	res, err := client.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	a := answer{status: res.StatusCode, header: res.Header, raw: string(raw)}
	_ = json.Unmarshal(raw, &a.body)
	return a
}
