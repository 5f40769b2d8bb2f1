package state

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"github.com/usagemeter/usagemeter/schemas"
)

// The service's path (bytes -> schemas.EventView -> ApplyView: Fixed9
// quantities, metadata as a flat list, the gauges' decimal made from
// Fixed9) gives every outcome, row and quota total that Apply gives for the
// decoded UsageEvent, over every aggregation, duplicates, metadata
// subjects and quantities of every scale.
func TestApplyViewMatchesApply(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	viaView, viaEvent := newState(t), newState(t)
	v := schemas.NewValidator()
	meters := []string{"api_calls", "tokens", "exports", "storage", "users", "active_users", "projects", "custom_meter"}
	var view schemas.EventView
	for i := range 5000 {
		e := schemas.UsageEvent{ID: fmt.Sprint("v", i), TenantID: fmt.Sprint("t", r.IntN(5)), FeatureType: meters[r.IntN(len(meters))],
			Quantity:  decimal.New(r.Int64N(1_000_000_000_000), -int32(r.IntN(10))),
			Timestamp: t0.Add(time.Duration(r.Int64N(int64(3 * time.Hour)))).Truncate(time.Microsecond)}
		if r.IntN(4) > 0 {
			e.UserID = fmt.Sprint("u", r.IntN(6))
		}
		if r.IntN(3) > 0 {
			e.Metadata = map[string]string{"project_id": fmt.Sprint("p", r.IntN(4)), "endpoint": "/x"}
		}
		if r.IntN(10) == 0 {
			e.ID = fmt.Sprint("v", r.IntN(i+1)) // a duplicate, or a new id
		}
		if err := v.DecodeView(e.AppendJSON(nil), &view); err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
		a, errA := viaView.ApplyView(&view, 0, int64(i))
		b, errB := viaEvent.Apply(&e, 0, int64(i))
		if a != b || (errA == nil) != (errB == nil) {
			t.Fatalf("event %d (%s %s): ApplyView %s, %v; Apply %s, %v", i, e.FeatureType, e.Quantity, a, errA, b, errB)
		}
	}
	rows := func(s *State) map[Key]string {
		out := map[Key]string{}
		for _, rs := range s.Dirty() {
			for _, r := range rs {
				out[r.Key] = fmt.Sprintf("%s %d %d %d", r.Value.String(), r.Events, r.Offset, r.LatestNs)
			}
		}
		return out
	}
	got, want := rows(viaView), rows(viaEvent)
	if len(want) == 0 || len(got) != len(want) {
		t.Fatalf("%d rows through the view, %d through Apply", len(got), len(want))
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%+v: %q through the view, %q through Apply", k, got[k], w)
		}
	}
	qs := viaEvent.DueQuotas(t0, 0)
	for _, q := range qs {
		if g, ok := viaView.QuotaOf(q.QuotaKey); !ok || !g.Usage.Equal(q.Usage) || g.Events != q.Events {
			t.Errorf("quota %+v: %s (%d events) through the view, %s (%d) through Apply", q.QuotaKey, g.Usage, g.Events, q.Usage, q.Events)
		}
	}
}

// The meter cache answers as the plans do, for configured and unknown
// meters, as more meters than it holds come and go.
func TestMeterForMatchesThePlans(t *testing.T) {
	s := newState(t)
	cfg := seedPlans(t)
	names := []string{"api_calls", "tokens", "exports", "storage", "users", "active_users", "projects", "mystery", "", "api_calls"}
	r := rand.New(rand.NewPCG(7, 8))
	for range 1000 {
		name := names[r.IntN(len(names))]
		gm, gk := s.MeterFor(name)
		wm, wk := cfg.MeterFor(name)
		if gm != wm || gk != wk {
			t.Fatalf("MeterFor(%q) = %+v, %v; the plans say %+v, %v", name, gm, gk, wm, wk)
		}
	}
}
