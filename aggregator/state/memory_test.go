package state

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"github.com/usagemeter/usagemeter/schemas"
)

// BenchmarkMemoryPerRow holds the rows of many tenants as usage-bench's
// tenant curve makes them (two events per tenant, of one meter and one
// user, decoded from JSON as the service decodes them), written and
// published, and reports the live heap per open row after a GC, the dedup
// sets excluded (their 200,000 ids per partition are a fixed cost):
//
//	go test -run '^$' -bench MemoryPerRow -benchtime 1x ./aggregator/state/
func BenchmarkMemoryPerRow(b *testing.B) {
	for _, tenants := range []int{100_000, 1_000_000} {
		b.Run(fmt.Sprint(tenants, "-tenants"), func(b *testing.B) {
			for range b.N {
				memoryPerRow(b, tenants)
			}
		})
	}
}

func memoryPerRow(b *testing.B, tenants int) {
	v := schemas.NewValidator()
	s := New(Config{Plans: seedPlans(b), AllowedLateness: time.Hour, DedupHorizon: 1}, time.Time{}, func(Key) (*Row, error) { return nil, nil })
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	meters := []string{"api_calls", "tokens"}
	var view schemas.EventView
	for i := range 2 * tenants {
		q := decimal.NewFromInt(int64(i%7 + 1))
		if meters[i%2] == "tokens" {
			q = decimal.New(int64(i%100_000), -3)
		}
		in := schemas.UsageEvent{ID: fmt.Sprint("m-", i), TenantID: fmt.Sprintf("tenant-%07d", i%tenants), UserID: fmt.Sprint("user-", i%500),
			FeatureType: meters[i%2], Quantity: q, Timestamp: t0.Add(time.Duration(i) * time.Microsecond), SchemaVersion: schemas.CurrentSchemaVersion}
		if err := v.DecodeView(in.AppendJSON(nil), &view); err != nil {
			b.Fatal(err)
		}
		if _, err := s.ApplyView(&view, 0, int64(i)); err != nil {
			b.Fatal(err)
		}
	}
	for _, rows := range s.Dirty() {
		s.MarkClean(rows)
	}
	s.DueQuotas(t0.Add(time.Hour), 0)
	for _, pt := range s.parts {
		pt.dedup = nil
	}
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	rows := s.Rows()
	b.ReportMetric(float64(rows), "rows")
	b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(rows), "heap_B/row")
	b.ReportMetric(float64(after.HeapObjects-before.HeapObjects)/float64(rows), "objects/row")
	runtime.KeepAlive(s)
}
