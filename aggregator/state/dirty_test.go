package state

import (
	"fmt"
	"testing"
	"time"
	"unsafe"
)

// tenantsState is a state holding the rows and quota totals of n tenants
// (one tokens event each: four rows and one quota per tenant), all written
// and published, as after a flush and a quota tick.
func tenantsState(tb testing.TB, n int) *State {
	tb.Helper()
	s := New(Config{Plans: seedPlans(tb), AllowedLateness: 10 * time.Minute, DedupHorizon: 1000}, time.Time{},
		func(Key) (*Row, error) { return nil, nil })
	for i := range n {
		if _, err := s.Apply(ev(fmt.Sprintf("t%06d", i), "tokens", "u", "1", t0, fmt.Sprint("w", i)), 0, int64(i)); err != nil {
			tb.Fatal(err)
		}
	}
	s.MarkClean(flatten(s.Dirty()))
	s.Evict()
	s.DueQuotas(t0, 0)
	return s
}

// flushAndTick is what the service does per flush and per quota tick.
func flushAndTick(s *State, now time.Time) (rows, quotas int) {
	d := flatten(s.Dirty())
	s.MarkClean(d)
	s.Evict()
	return len(d), len(s.DueQuotas(now, 0))
}

// TestFlushAndTickTouchOnlyChanges: a flush and a quota tick after one
// event cost about the same with 100,000 tenants in memory as with 100
// (they used to walk every row and every quota total: ~1000x), and return
// exactly what changed, once.
func TestFlushAndTickTouchOnlyChanges(t *testing.T) {
	timeOne := func(s *State, off int64) time.Duration {
		best := time.Hour
		for i := range 5 {
			e := ev("t000042", "tokens", "u", "2", t0, fmt.Sprint("x", off, "-", i))
			start := time.Now()
			if out, err := s.Apply(e, 0, off+int64(i)); err != nil || out != Applied {
				t.Fatalf("apply: %s %v", out, err)
			}
			rows, quotas := flushAndTick(s, t0.Add(time.Duration(i+1)*time.Second))
			best = min(best, time.Since(start))
			if rows != len(Grains) || quotas != 1 {
				t.Fatalf("flush and tick after one event: %d rows, %d quotas; want %d, 1", rows, quotas, len(Grains))
			}
			if rows, quotas := flushAndTick(s, t0.Add(time.Hour)); rows != 0 || quotas != 0 {
				t.Fatalf("second flush and tick: %d rows, %d quotas; want none", rows, quotas)
			}
		}
		return best
	}
	small := timeOne(tenantsState(t, 100), 1_000_000)
	big := timeOne(tenantsState(t, 100_000), 1_000_000)
	t.Logf("flush + tick after one event: %v with 100 tenants, %v with 100,000", small, big)
	// The margin is wide for a busy machine; the walks made it ~1000x.
	if big > 50*small+time.Millisecond {
		t.Fatalf("flush + tick with 100,000 tenants took %v, with 100 %v: work grows with the state, not the changes", big, small)
	}
}

// TestDirtyListsKeepEveryChange: rows and quotas changed again after a
// flush, quotas requeued after a failed publication, held back by the
// coalescing window or touched by a plan change all come out again, once.
func TestDirtyListsKeepEveryChange(t *testing.T) {
	s := tenantsState(t, 10)
	mustOutcome(t, s, ev("t000001", "tokens", "u", "1", t0, "a"), 0, 100, Applied)
	d := s.Dirty()
	mustOutcome(t, s, ev("t000001", "tokens", "v", "1", t0, "b"), 0, 101, Applied) // before MarkClean: still queued
	if got := len(flatten(s.Dirty())); got != 2*len(Grains) {
		t.Fatalf("dirty rows %d, want %d", got, 2*len(Grains))
	}
	s.MarkClean(flatten(d))
	if got := len(flatten(s.Dirty())); got != len(Grains) {
		t.Fatalf("dirty rows after cleaning the first %d: %d", len(Grains), got)
	}
	now := t0.Add(time.Minute)
	due := s.DueQuotas(now, time.Second)
	if len(due) != 1 {
		t.Fatalf("due %d quotas, want 1", len(due))
	}
	s.Requeue(due)
	mustOutcome(t, s, ev("t000002", "tokens", "u", "1", t0, "c"), 0, 102, Applied)
	if got := len(s.DueQuotas(now, time.Second)); got != 2 {
		t.Fatalf("due after requeue %d, want 2", got)
	}
	mustOutcome(t, s, ev("t000002", "tokens", "u", "1", t0, "d"), 0, 103, Applied)
	if got := len(s.DueQuotas(now.Add(time.Millisecond), time.Second)); got != 0 {
		t.Fatalf("due within the coalescing window: %d", got)
	}
	if got := s.DueQuotas(now.Add(time.Second), time.Second); len(got) != 1 || got[0].Tenant != "t000002" {
		t.Fatalf("due after the coalescing window: %+v", got)
	}
	s.TouchTenant("t000007")
	if got := s.DueQuotas(now.Add(time.Hour), time.Second); len(got) != 1 || got[0].Tenant != "t000007" {
		t.Fatalf("due after a plan change: %+v", got)
	}
	if got := s.DueQuotas(now.Add(2*time.Hour), time.Second); len(got) != 0 {
		t.Fatalf("due with nothing changed: %+v", got)
	}
}

// BenchmarkFlushTick is one flush and one quota tick after 100 events of
// 100 tenants, with 1,000 or 100,000 tenants' rows in memory:
//
//	go test -run '^$' -bench FlushTick -benchmem ./aggregator/state/
func BenchmarkFlushTick(b *testing.B) {
	for _, n := range []int{1000, 100_000} {
		b.Run(fmt.Sprint("tenants=", n), func(b *testing.B) {
			s := tenantsState(b, n)
			off := int64(1 << 30)
			b.ResetTimer()
			for i := range b.N {
				for j := range 100 {
					off++
					e := ev(fmt.Sprintf("t%06d", (i*100+j)%n), "tokens", "u", "1", t0, fmt.Sprint("b", off))
					if _, err := s.Apply(e, 0, off); err != nil {
						b.Fatal(err)
					}
				}
				flushAndTick(s, t0.Add(time.Duration(i+1)*time.Second))
			}
		})
	}
}

// TestEvictAfterSkippedScans: flushes that skip the walk still evict once
// a watermark passes the rows' ends, and only the rows of that partition.
func TestEvictAfterSkippedScans(t *testing.T) {
	s := tenantsState(t, 10) // partition 0, minute windows of t0
	mustOutcome(t, s, ev("other", "tokens", "u", "1", t0.Add(20*time.Minute), "p1"), 1, 0, Applied)
	s.MarkClean(flatten(s.Dirty()))
	if n := s.Evict(); n != 0 {
		t.Fatalf("partition 1's watermark evicted %d rows of partition 0", n)
	}
	mustOutcome(t, s, ev("t000001", "tokens", "u", "1", t0.Add(30*time.Second), "t0"), 0, 499, Applied)
	mustOutcome(t, s, ev("t000000", "tokens", "u", "1", t0.Add(11*time.Minute+time.Second), "next"), 0, 500, Applied)
	if n := s.Evict(); n != 9 {
		t.Fatalf("evicted %d rows, want the 9 clean minute rows of t0 (t000001's is dirty)", n)
	}
	s.MarkClean(flatten(s.Dirty()))
	if n := s.Evict(); n != 1 {
		t.Fatalf("evicted %d rows once t000001's minute row was written, want 1", n)
	}
}

// Rows keep strings of their own, not the decoder's (which share one copy
// of the whole message), and a written sum row that dropped its decimal
// hands out the exact value when it changes again.
func TestRowsOwnTheirStringsAndValues(t *testing.T) {
	s := newState(t)
	e := ev("acme", "tokens", "u", "1.5", t0, "e1")
	mustOutcome(t, s, e, 0, 1, Applied)
	rows := flatten(s.Dirty())
	for _, r := range rows {
		for _, pair := range [][2]string{{r.Tenant, e.TenantID}, {r.Meter, e.FeatureType}, {r.Subject, e.UserID}} {
			if unsafe.StringData(pair[0]) == unsafe.StringData(pair[1]) {
				t.Fatalf("%s row shares the event's string %q", r.Grain, pair[0])
			}
		}
	}
	s.MarkClean(rows)
	mustOutcome(t, s, ev("acme", "tokens", "u", "2.25", t0.Add(time.Second), "e2"), 0, 2, Applied)
	for _, r := range flatten(s.Dirty()) {
		if r.Value.String() != "3.75" || r.Events != 2 {
			t.Fatalf("%s row after a flush and one more event: %s, %d events; want 3.75, 2", r.Grain, r.Value, r.Events)
		}
	}
}
