package server_test

import (
	"context"
	"fmt"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/shopspring/decimal"
	"go.uber.org/zap"

	"github.com/usagemeter/usagemeter/api/usageread"
	"github.com/usagemeter/usagemeter/quota"
	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/schemas/plans"
	"github.com/usagemeter/usagemeter/svckit/chconn"
	"github.com/usagemeter/usagemeter/testenv"
)

// TestAdminGrant: tenant-a (FREE) at 50 of 50 gets 402 on /v1/track; an
// admin grant of +10 for this period is seen by a second, independent
// cache within a second, usage-api serves exactly 10 more and then 402,
// the grant is audited in quota_grants and listed on the admin page, and a
// cache in the next period has the plan's 50.
func TestAdminGrant(t *testing.T) {
	conn, _ := testenv.ClickHouse(t)
	ctx := context.Background()
	if err := chconn.Migrate(ctx, conn, zap.NewNop()); err != nil {
		t.Fatal(err)
	}
	p, err := plans.Load(filepath.Join(testenv.RepoRoot(t), "schemas", "plans", "plans.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	e := newEnvUsage(t, p, usageread.NewReader(conn, p))
	other := otherCache(t, e, p)
	e.publishState("tenant-a", "ai_generation", 50)
	track := func() answer {
		return e.do("POST", "/v1/track", keyA, `{"tenant_id":"tenant-a","feature_type":"ai_generation"}`)
	}
	if a := track(); a.status != 402 {
		t.Fatalf("at 50 of 50: %d %s", a.status, a.raw)
	}

	for name, c := range map[string]struct {
		key, field string
		form       url.Values
	}{
		"tenant key":     {keyA, "", url.Values{"tenant": {"tenant-a"}, "meter": {"ai_generation"}, "amount": {"10"}}},
		"hostile tenant": {keyAdmin, "tenant", url.Values{"tenant": {"x' OR 1=1"}, "meter": {"ai_generation"}, "amount": {"10"}}},
		"unknown meter":  {keyAdmin, "meter", url.Values{"tenant": {"tenant-a"}, "meter": {"gold"}, "amount": {"10"}}},
		"unlimited":      {keyAdmin, "meter", url.Values{"tenant": {"tenant-a"}, "meter": {"tokens"}, "amount": {"10"}}},
		"negative":       {keyAdmin, "amount", url.Values{"tenant": {"tenant-a"}, "meter": {"ai_generation"}, "amount": {"-3"}}},
		"not a number":   {keyAdmin, "amount", url.Values{"tenant": {"tenant-a"}, "meter": {"ai_generation"}, "amount": {"1e"}}},
		"10 decimals":    {keyAdmin, "amount", url.Values{"tenant": {"tenant-a"}, "meter": {"ai_generation"}, "amount": {"0.0000000001"}}},
	} {
		got := e.post("/admin/grant", c.key, c.form)
		if c.field == "" && got.status != 403 || c.field != "" && (got.status != 400 || got.body["field"] != c.field) {
			t.Errorf("%s: %d %s", name, got.status, got.raw)
		}
	}

	got := e.post("/admin/grant", keyAdmin, url.Values{"tenant": {"tenant-a"}, "meter": {"ai_generation"}, "amount": {"10"}, "reason": {"ticket 7"}})
	sent := time.Now()
	if got.status != 303 || !strings.Contains(got.header.Get("Location"), "tenant-a+gets+10+more+ai_generation") {
		t.Fatalf("grant: %d %v %s", got.status, got.header, got.raw)
	}
	for other.Peek(ctx, "tenant-a", "ai_generation").Limit.Cmp(quota.Units(60)) != 0 {
		if time.Since(sent) > time.Second {
			t.Fatalf("another quota cache a second after the grant: %+v", other.Peek(ctx, "tenant-a", "ai_generation"))
		}
		time.Sleep(10 * time.Millisecond)
	}
	served := 0
	for i := 0; i < 11; i++ {
		a := track()
		if a.status == 200 {
			served++
			continue
		}
		if a.status != 402 {
			t.Fatalf("after %d granted: %d %s", served, a.status, a.raw)
		}
	}
	if served != 10 {
		t.Fatalf("served %d after a grant of 10, want exactly 10", served)
	}
	if d := other.Peek(ctx, "tenant-a", "ai_generation"); d.Plan != "FREE" {
		t.Fatalf("a grant changed the plan: %+v", d)
	}

	per := plans.PeriodOf(plans.Quota{Period: plans.CalendarMonth}, 0, time.Now())
	var audit []struct {
		Tenant string `ch:"tenant_id"`
		Meter  string `ch:"feature_type"`
		Period string `ch:"period_id"`
		Amount string `ch:"amount"`
		Plan   string `ch:"plan"`
		Reason string `ch:"reason"`
		Offset int64  `ch:"offset"`
	}
	if err := conn.Select(ctx, &audit, "SELECT tenant_id, feature_type, period_id, toString(amount) AS amount, plan, reason, offset FROM quota_grants"); err != nil {
		t.Fatal(err)
	}
	if len(audit) != 1 || audit[0].Tenant != "tenant-a" || audit[0].Meter != "ai_generation" || audit[0].Period != per.ID ||
		!decimal.RequireFromString(audit[0].Amount).Equal(decimal.NewFromInt(10)) || audit[0].Plan != "FREE" || audit[0].Reason != "ticket 7" {
		t.Fatalf("quota_grants: %+v", audit)
	}
	// The audited offset is the record every cache applied: read it back.
	rec := readAt(t, e.broker, e.assign, audit[0].Offset)
	if _, a, err := plans.ParseAssignmentRecord(rec.Key, rec.Value); err != nil || a.Granted("ai_generation", per.ID).Cmp(decimal.NewFromInt(10)) != 0 {
		t.Fatalf("record at the audited offset: %s %v", rec.Value, err)
	}
	if page := e.get("/admin", keyAdmin); !strings.Contains(page.raw, `<tr data-tenant="tenant-a">`) || !strings.Contains(page.raw, "ticket 7") {
		t.Fatalf("admin page lists no grant: %s", page.raw)
	}

	// A second grant carries the first on (one record per tenant).
	if got := e.post("/admin/grant", keyAdmin, url.Values{"tenant": {"tenant-a"}, "meter": {"ai_generation"}, "amount": {"2.5"}}); got.status != 303 {
		t.Fatalf("second grant: %d %s", got.status, got.raw)
	}
	testenv.Eventually(t, 5*time.Second, "limit 62.5", func() (bool, error) {
		return other.Peek(ctx, "tenant-a", "ai_generation").Limit.Decimal().Equal(decimal.RequireFromString("62.5")), nil
	})

	// The tenant's usage page draws the granted limit; a plan change from
	// the admin page keeps the grants.
	if pg := e.get("/usage/tenant-a", keyA); !strings.Contains(pg.raw, `<span class="limit">62.5</span>`) {
		t.Fatalf("usage page without the granted limit: %s", pg.raw)
	}
	if got := e.post("/admin/plan", keyAdmin, url.Values{"tenant": {"tenant-a"}, "plan": {"FREE"}}); got.status != 303 {
		t.Fatalf("plan change: %d %s", got.status, got.raw)
	}
	testenv.Eventually(t, 5*time.Second, "the plan change's record keeps the grants", func() (bool, error) {
		a := e.cache.Assignment("tenant-a")
		return a.Version > 0 && a.Granted("ai_generation", per.ID).String() == "12.5", fmt.Errorf("%+v", a)
	})

	// Next period: the plan's 50 again.
	next := time.Date(per.End.Year(), per.End.Month(), 1, 0, 0, 5, 0, time.UTC)
	qc := quota.DefaultConfig()
	qc.Brokers, qc.StateTopic, qc.AssignmentTopic = []string{e.broker}, e.state, e.assign
	nc, err := quota.New(qc, p, zap.NewNop(), quota.WithClock(func() time.Time { return next }))
	if err != nil {
		t.Fatal(err)
	}
	nctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = nc.Run(nctx) }()
	defer func() { cancel(); <-done }()
	if err := nc.WaitReady(nctx); err != nil {
		t.Fatal(err)
	}
	if d := nc.Peek(ctx, "tenant-a", "ai_generation"); d.Limit.Cmp(quota.Units(50)) != 0 || d.Period == per.ID {
		t.Fatalf("next period: %+v", d)
	}
}

// TestPageAlerts: the tenant page lists its tenant's alerts from the alert
// topic and never another tenant's; the admin page lists all of them.
func TestPageAlerts(t *testing.T) {
	conn, _ := testenv.ClickHouse(t)
	ctx := context.Background()
	if err := chconn.Migrate(ctx, conn, zap.NewNop()); err != nil {
		t.Fatal(err)
	}
	p, err := plans.Load(filepath.Join(testenv.RepoRoot(t), "schemas", "plans", "plans.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	e := newEnvUsage(t, p, usageread.NewReader(conn, p))
	per := plans.PeriodOf(plans.Quota{Period: plans.CalendarMonth}, 0, time.Now())
	alert := func(tenant string, pct int64, usage int64) schemas.UsageAlert {
		th := decimal.NewFromInt(pct)
		a := schemas.UsageAlert{AlertID: schemas.AlertID(tenant, "ai_generation", per.ID, schemas.AlertKindPercent, th), TenantID: tenant,
			FeatureType: "ai_generation", Period: per.ID, Plan: "FREE", Kind: schemas.AlertKindPercent, Threshold: th,
			Usage: decimal.NewFromInt(usage), Limit: decimal.NewFromInt(50), Percentage: decimal.NewFromInt(usage * 2), Level: "ok",
			PeriodStart: per.Start, PeriodEnd: per.End, SourceOffsets: map[int32]int64{0: usage}, DetectedAt: time.Now().UTC().Truncate(time.Second),
			SchemaVersion: 1}
		if err := a.Validate(); err != nil {
			t.Fatal(err)
		}
		return a
	}
	as := []schemas.UsageAlert{alert("tenant-a", 50, 25), alert("tenant-a", 75, 38), alert("tenant-b", 50, 26), alert("tenant-a", 50, 25)} // the last: a replayed duplicate
	w := &kafka.Writer{Addr: kafka.TCP(e.broker), Topic: e.alerts, Balancer: kafka.Murmur2Balancer{}, BatchTimeout: time.Millisecond}
	defer w.Close()
	for _, a := range as {
		if err := w.WriteMessages(ctx, kafka.Message{Key: []byte(a.AlertID), Value: a.AppendJSON(nil)}); err != nil {
			t.Fatal(err)
		}
	}
	ids := func(raw string) []string {
		var out []string
		for _, part := range strings.Split(raw, `data-alert="`)[1:] {
			out = append(out, part[:strings.Index(part, `"`)])
		}
		return out
	}
	testenv.Eventually(t, 10*time.Second, "the admin page shows the three alerts", func() (bool, error) {
		return len(ids(e.get("/admin", keyAdmin).raw)) == 3, nil
	})
	pa := e.get("/usage/tenant-a", keyA)
	got := ids(pa.raw)
	if pa.status != 200 || len(got) != 2 || !strings.Contains(strings.Join(got, " "), as[0].AlertID) || !strings.Contains(strings.Join(got, " "), as[1].AlertID) {
		t.Fatalf("tenant-a's page alerts %v (status %d)", got, pa.status)
	}
	if strings.Contains(pa.raw, as[2].AlertID) || strings.Contains(pa.raw, "tenant-b") {
		t.Fatal("tenant-a's page shows tenant-b's alert")
	}
	if pb := e.get("/usage/tenant-b", keyB); len(ids(pb.raw)) != 1 || !strings.Contains(pb.raw, as[2].AlertID) || strings.Contains(pb.raw, as[0].AlertID) {
		t.Fatalf("tenant-b's page alerts %v", ids(pb.raw))
	}
	if x := e.get("/usage/tenant-b", keyA); x.status != 403 || strings.Contains(x.raw, as[2].AlertID) {
		t.Fatalf("tenant-a's key on tenant-b's page: %d", x.status)
	}
}

// readAt returns the record at offset of partition 0.
func readAt(t *testing.T, broker, topic string, offset int64) kafka.Message {
	t.Helper()
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{broker}, Topic: topic, Partition: 0, MaxWait: 100 * time.Millisecond})
	defer r.Close()
	if err := r.SetOffset(offset); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, err := r.ReadMessage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return m
}
