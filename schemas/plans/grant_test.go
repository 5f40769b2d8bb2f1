package plans

import (
	"strings"
	"testing"
	"time"

	"github.com/shopspring/decimal"
)

func TestGrantRecordRoundTrip(t *testing.T) {
	a := &Assignment{Plan: "FREE", Version: 9, Grants: &Grants{List: []Grant{
		{Meter: "ai_generation", Period: "2026-11", Amount: decimal.NewFromInt(10)},
		{Meter: "ai_generation", Period: "2026-11", Amount: decimal.RequireFromString("0.5")},
		{Meter: "api_calls", Period: "2026-11-15", Amount: decimal.NewFromInt(7)},
	}}}
	k, v := AssignmentRecord("acme", a)
	if !strings.Contains(string(v), `"amount":"10"`) {
		t.Fatalf("amount not an exact decimal string: %s", v)
	}
	_, got, err := ParseAssignmentRecord(k, v)
	if err != nil {
		t.Fatal(err)
	}
	if g := got.Granted("ai_generation", "2026-11"); !g.Equal(decimal.RequireFromString("10.5")) {
		t.Fatalf("granted ai_generation 2026-11: %s", g)
	}
	if g := got.Granted("ai_generation", "2026-12"); !g.IsZero() {
		t.Fatalf("a grant leaks into the next period: %s", g)
	}
	// A record without grants is byte for byte what it was before grants.
	if _, v := AssignmentRecord("acme", &Assignment{Plan: "PRO", AnchorDay: 15, Version: 7}); string(v) != `{"plan":"PRO","anchor_day":15,"version":7}` {
		t.Fatalf("record without grants changed: %s", v)
	}
	for field, bad := range map[string]string{
		"grants[0].meter":  `{"plan":"FREE","grants":[{"period":"2026-11","amount":"1"}]}`,
		"grants[0].period": `{"plan":"FREE","grants":[{"meter":"m","period":"2026-13","amount":"1"}]}`,
		"grants[1].amount": `{"plan":"FREE","grants":[{"meter":"m","period":"2026-11","amount":"1"},{"meter":"m","period":"2026-11","amount":"-3"}]}`,
		"grants[0].amount": `{"plan":"FREE","grants":[{"meter":"m","period":"2026-11","amount":"0.0000000001"}]}`,
		"grants[0].unit":   `{"plan":"FREE","grants":[{"meter":"m","period":"2026-11","amount":"1","unit":"x"}]}`,
	} {
		_, _, err := ParseAssignmentRecord([]byte("acme"), []byte(bad))
		name := field
		if field == "grants[0].unit" {
			name = "unit" // json names the unknown field itself
		}
		if err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s: err %v, want one naming %s", bad, err, name)
		}
	}
}

func TestWithGrants(t *testing.T) {
	c, err := Load("plans.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	g := &Grants{List: []Grant{{Meter: "ai_generation", Period: "2026-11", Amount: decimal.NewFromInt(10)}}}
	if err := c.Assign("t1", &Assignment{Plan: "FREE", Version: 5, Grants: g}); err != nil {
		t.Fatal(err)
	}
	_, q, a := c.QuotaFor("t1", "ai_generation")
	if l := WithGrants(q, a, "ai_generation", "2026-11").Limit; !l.Equal(decimal.NewFromInt(60)) {
		t.Fatalf("FREE + 10 in 2026-11: limit %s, want 60", l)
	}
	if l := WithGrants(q, a, "ai_generation", "2026-12").Limit; !l.Equal(decimal.NewFromInt(50)) {
		t.Fatalf("the next period: limit %s, want 50", l)
	}
	if l := q.Limit; !l.Equal(decimal.NewFromInt(50)) {
		t.Fatalf("WithGrants changed the plan's quota: %s", l)
	}
	if err := c.Assign("t2", &Assignment{Plan: "PRO", Grants: g}); err != nil {
		t.Fatal(err)
	}
	_, q, a = c.QuotaFor("t2", "ai_generation")
	if l := WithGrants(q, a, "ai_generation", "2026-11").Limit; !l.Equal(Unlimited) {
		t.Fatalf("a grant on an unlimited meter: %s", l)
	}
	bad := &Grants{List: []Grant{{Meter: "ai_generation", Period: "2026-11", Amount: decimal.Zero}}}
	if err := c.Assign("t3", &Assignment{Plan: "FREE", Grants: bad}); err == nil || !strings.Contains(err.Error(), "grants[0].amount") {
		t.Fatalf("zero grant: %v", err)
	}
}

func TestGrantsOpen(t *testing.T) {
	g := &Grants{List: []Grant{
		{Meter: "m", Period: "2026-07", Amount: decimal.NewFromInt(1)},
		{Meter: "m", Period: "2026-10-15", Amount: decimal.NewFromInt(2)},
		{Meter: "m", Period: "2026-11", Amount: decimal.NewFromInt(3)},
	}}
	got := g.Open(time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC))
	if len(got) != 2 || got[0].Period != "2026-10-15" || got[1].Period != "2026-11" {
		t.Fatalf("open grants on 2026-11-30: %+v", got)
	}
	if (*Grants)(nil).Open(time.Now()) != nil {
		t.Fatal("nil grants")
	}
}
