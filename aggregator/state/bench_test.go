package state

import (
	"fmt"
	"testing"

	"github.com/shopspring/decimal"

	"github.com/usagemeter/usagemeter/schemas"
)

// benchEvents are sum-meter events of 50 tenants in one minute, with
// integer and fractional quantities, as the pipeline benchmark publishes.
func benchEvents(n int) []schemas.UsageEvent {
	evs := make([]schemas.UsageEvent, n)
	for i := range evs {
		q := decimal.NewFromInt(int64(i%7 + 1))
		if i%2 == 1 {
			q = decimal.New(int64(i%100_000), -3)
		}
		evs[i] = schemas.UsageEvent{ID: fmt.Sprint("b", i), TenantID: fmt.Sprintf("tenant-%02d", i%50), UserID: fmt.Sprint("u", i%500),
			FeatureType: []string{"api_calls", "tokens"}[i%2], Quantity: q, Timestamp: t0}
	}
	return evs
}

// BenchmarkApply is the aggregator's per-event fold (four grains, quota
// total, overflow check, dedup) on rows that already exist:
//
//	go test -run '^$' -bench Apply -benchmem ./aggregator/state/
func BenchmarkApply(b *testing.B) {
	s := New(Config{Plans: seedPlans(b), AllowedLateness: 1 << 62, DedupHorizon: 200_000}, t0, nil)
	evs := benchEvents(b.N + 1000) // every id new: no duplicates
	for i := range evs[:1000] {    // the rows exist
		if _, err := s.Apply(&evs[i], 0, int64(i)); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if out, err := s.Apply(&evs[1000+i], 0, int64(1000+i)); err != nil || out != Applied {
			b.Fatalf("event %d: %s, %v", i, out, err)
		}
	}
}

// BenchmarkApplyView is BenchmarkApply on the service's path: events as
// schemas.Validator.DecodeView gives them (Fixed9 quantity, flat metadata).
//
//	go test -run '^$' -bench ApplyView -benchmem ./aggregator/state/
func BenchmarkApplyView(b *testing.B) {
	s := New(Config{Plans: seedPlans(b), AllowedLateness: 1 << 62, DedupHorizon: 200_000}, t0, nil)
	v := schemas.NewValidator()
	evs := benchEvents(b.N + 1000)
	views := make([]schemas.EventView, len(evs))
	for i := range evs {
		if err := v.DecodeView(evs[i].AppendJSON(nil), &views[i]); err != nil {
			b.Fatal(err)
		}
		views[i].Metadata = nil // each view its own (DecodeView reuses the slice)
	}
	for i := range views[:1000] { // the rows exist
		if _, err := s.ApplyView(&views[i], 0, int64(i)); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if out, err := s.ApplyView(&views[1000+i], 0, int64(1000+i)); err != nil || out != Applied {
			b.Fatalf("event %d: %s, %v", i, out, err)
		}
	}
}
