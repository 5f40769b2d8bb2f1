package quota

import (
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/schemas/plans"
)

// TestExpiryGivesBackOnlyWhatStatesLeft: a state's increase is taken off
// held events oldest first, and an expiry gives back only what is left, so
// pending never drops below what is really outstanding (here 2 units a
// handler is still serving, never held). Undelivered events never expire;
// acknowledged ones expire by position or by age.
func TestExpiryGivesBackOnlyWhatStatesLeft(t *testing.T) {
	p, err := plans.Parse([]byte("meters: {api_calls: {aggregation: sum}}\nplans: {FREE: {meters: {api_calls: {limit: 100}}}}\ndefault_plan: FREE\n"))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	cfg := DefaultConfig()
	cfg.MaxPendingAge = time.Minute
	cfg.BeforeReady = Open // never started: every decision is "before ready"
	c, err := New(cfg, p, zap.NewNop(), WithClock(func() time.Time { return now }))
	if err != nil {
		t.Fatal(err)
	}
	pending := func() Amount { return c.Peek(t.Context(), "t1", "api_calls").Pending }
	var evs []schemas.UsageEvent
	for range 3 {
		d := c.Check(t.Context(), "t1", "api_calls", Units(1))
		e := schemas.UsageEvent{ID: schemas.NewID(), TenantID: "t1"}
		c.Hold(d, &e)
		evs = append(evs, e)
	}
	c.Check(t.Context(), "t1", "api_calls", Units(2)) // in the handler: not held
	if got := pending(); got.Cmp(Units(5)) != 0 {
		t.Fatalf("pending %s, want 5", got)
	}
	b := c.Peek(t.Context(), "t1", "api_calls").b
	absorb(b, Units(2)) // a state counted two of them
	c.Acknowledged(evs)
	c.pend.mu.Lock()
	for _, pe := range c.pend.byKey {
		pe.partition, pe.bound = 0, 10
	}
	c.pend.covered[0] = 10
	c.pend.mu.Unlock()
	c.expireDue()
	if got := pending(); got.Cmp(Units(2)) != 0 {
		t.Fatalf("after expiry: pending %s, want 2 (the handler's)", got)
	}
	if s := c.ExpiryStats(); s.ByPosition != 3 || s.Held != 0 {
		t.Fatalf("stats %+v", s)
	}

	// Undelivered: never; acknowledged: by age.
	d := c.Check(t.Context(), "t1", "api_calls", Units(1))
	e := schemas.UsageEvent{ID: schemas.NewID(), TenantID: "t1"}
	c.Hold(d, &e)
	now = now.Add(time.Hour)
	c.expireDue()
	if got := pending(); got.Cmp(Units(3)) != 0 {
		t.Fatalf("undelivered expired: pending %s, want 3", got)
	}
	c.Acknowledged([]schemas.UsageEvent{e})
	now = now.Add(59 * time.Second)
	c.expireDue()
	if got := pending(); got.Cmp(Units(3)) != 0 {
		t.Fatalf("expired before max_pending_age: pending %s", got)
	}
	now = now.Add(time.Second)
	c.expireDue()
	if got := pending(); got.Cmp(Units(2)) != 0 || c.ExpiryStats().ByAge != 1 {
		t.Fatalf("by age: pending %s, stats %+v", got, c.ExpiryStats())
	}
}
