package producer

import (
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/usagemeter/usagemeter/schemas"
)

// TestFillIDsAcrossCalls: ids from calls of every size around the shared
// string's, some events with ids already, from concurrent callers: each a
// canonical UUIDv7 of the call's millisecond, all distinct, and each
// caller's ids growing from call to call.
func TestFillIDsAcrossCalls(t *testing.T) {
	p, err := New([]string{"127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	sizes := []int{1, 2, 31, 32, 33, 63, 64, 65, 1000}
	var mu sync.Mutex
	seen := map[string]bool{}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			last := ""
			for c := range 40 {
				events := make([]schemas.UsageEvent, sizes[(g+c)%len(sizes)])
				if len(events) > 3 {
					events[0].ID, events[len(events)/2].ID = "kept-0", "kept-1"
				}
				before := time.Now().UnixMilli()
				if err := p.fillIDs(events, time.Now().UnixNano()); err != nil {
					t.Error(err)
					return
				}
				after := time.Now().UnixMilli()
				mu.Lock()
				for i, e := range events {
					if len(events) > 3 && (i == 0 || i == len(events)/2) {
						if e.ID != "kept-0" && e.ID != "kept-1" {
							t.Errorf("a set id was replaced: %q", e.ID)
						}
						continue
					}
					id, err := uuid.Parse(e.ID)
					if err != nil || id.Version() != 7 || id.Variant() != uuid.RFC4122 || id.String() != e.ID {
						t.Errorf("id %q is not a canonical UUIDv7 (%v)", e.ID, err)
					} else if sec, nsec := id.Time().UnixTime(); sec*1000+nsec/1e6 < before || sec*1000+nsec/1e6 > after {
						t.Errorf("id %q has a time outside the call's %d-%d ms", e.ID, before, after)
					}
					if seen[e.ID] || e.ID <= last {
						t.Errorf("id %q repeated or not after %q", e.ID, last)
					}
					seen[e.ID], last = true, e.ID
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
}

func BenchmarkFillIDs(b *testing.B) {
	p, err := New([]string{"127.0.0.1:1"})
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	events := make([]schemas.UsageEvent, 1000)
	b.ReportAllocs()
	for b.Loop() {
		clear(events)
		if err := p.fillIDs(events, time.Now().UnixNano()); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(events)), "ns/id")
}
