package state

import (
	"testing"
	"time"

	"github.com/usagemeter/usagemeter/schemas/plans"
)

// Issue 12 item 1 (quotas and billing agree): a tenant whose Stripe
// subscription is anchored on the 15th at 14:32:10 (the plan hook's record
// carries the anchor to the second). An event at 14:32:09 on 15 Feb counts
// in the usage_period row and quota of the period that began 15 Jan
// 14:32:10, one at 14:32:10 in the next, as billing-sync bills them.
func TestAnchorSecondPeriods(t *testing.T) {
	p, err := plans.Parse([]byte(`
meters:
  ai_generation: { aggregation: sum }
plans:
  FREE: { meters: {} }
  TEAM:
    meters:
      ai_generation: { limit: 50, period: anchored }
default_plan: FREE
`))
	if err != nil {
		t.Fatal(err)
	}
	anc := time.Date(2027, 1, 15, 14, 32, 10, 0, time.UTC)
	boundary := anc.AddDate(0, 1, 0)
	if err := p.Assign("t15", &plans.Assignment{Plan: "TEAM", AnchorDay: 15, Anchor: anc, Version: 1}); err != nil {
		t.Fatal(err)
	}
	s := New(Config{Plans: p, AllowedLateness: time.Hour, DedupHorizon: 1000}, time.Time{}, func(Key) (*Row, error) { return nil, nil })
	for i, e := range []struct {
		qty string
		at  time.Time
	}{{"3", boundary.Add(-time.Second)}, {"5", boundary}} {
		if _, err := s.Apply(ev("t15", "ai_generation", "u1", e.qty, e.at, e.qty), 0, int64(i)); err != nil {
			t.Fatal(err)
		}
	}
	for id, want := range map[string]struct {
		usage string
		start time.Time
		end   time.Time
	}{"2027-01-15": {"3", anc, boundary}, "2027-02-15": {"5", boundary, anc.AddDate(0, 2, 0)}} {
		q, ok := s.QuotaOf(QuotaKey{"t15", "ai_generation", id})
		if !ok || q.Usage.String() != want.usage {
			t.Errorf("quota %s: %+v (found %v), want usage %s", id, q.Usage, ok, want.usage)
		}
		r := s.rows[Key{Tenant: "t15", Meter: "ai_generation", Subject: "u1", Grain: Period, Start: want.start.Unix()}]
		if r == nil || r.PeriodID != id || r.PeriodEnd != want.end.Unix() {
			t.Errorf("usage_period row of %s: %+v, want period %s ending %s", id, r, id, want.end.Format(time.RFC3339))
		}
	}
}

// The series' cached period row is not reused after a plan change moves
// the tenant's periods: the next event, inside the old period, counts in
// the new plan's period (TouchTenant clears the cache).
func TestPeriodCacheFollowsPlanChange(t *testing.T) {
	p, err := plans.Parse([]byte(`
meters:
  ai_generation: { aggregation: sum }
plans:
  FREE: { meters: {} }
  TEAM:
    meters:
      ai_generation: { limit: 50, period: anchored }
default_plan: FREE
`))
	if err != nil {
		t.Fatal(err)
	}
	s := New(Config{Plans: p, AllowedLateness: time.Hour, DedupHorizon: 1000}, time.Time{}, func(Key) (*Row, error) { return nil, nil })
	at := time.Date(2027, 1, 20, 10, 0, 0, 0, time.UTC)
	if _, err := s.Apply(ev("t", "ai_generation", "u1", "3", at, "a"), 0, 1); err != nil {
		t.Fatal(err)
	}
	if err := p.Assign("t", &plans.Assignment{Plan: "TEAM", AnchorDay: 15}); err != nil {
		t.Fatal(err)
	}
	s.TouchTenant("t")
	if _, err := s.Apply(ev("t", "ai_generation", "u1", "5", at.Add(time.Minute), "b"), 0, 2); err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]string{"2027-01": "3", "2027-01-15": "5"} {
		if q, ok := s.QuotaOf(QuotaKey{"t", "ai_generation", id}); !ok || q.Usage.String() != want {
			t.Errorf("quota %s: %s (found %v), want %s", id, q.Usage, ok, want)
		}
	}
}
