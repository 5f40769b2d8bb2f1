package state

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/schemas/plans"
)

func seedPlans(t testing.TB) *plans.Config {
	t.Helper()
	c, err := plans.Load("../../schemas/plans/plans.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func newState(t *testing.T) *State {
	return New(Config{Plans: seedPlans(t), AllowedLateness: 10 * time.Minute, DedupHorizon: 1000}, time.Time{},
		func(Key) (*Row, error) { return nil, nil })
}

var t0 = time.Date(2026, 11, 20, 10, 0, 0, 0, time.UTC)

func ev(tenant, meter, user, qty string, at time.Time, id string) *schemas.UsageEvent {
	return &schemas.UsageEvent{ID: id, TenantID: tenant, UserID: user, FeatureType: meter,
		Quantity: decimal.RequireFromString(qty), Timestamp: at}
}

func TestSeedScenarioLevels(t *testing.T) {
	s := newState(t)
	cfg := seedPlans(t)
	level := func(tenant, period string) (string, decimal.Decimal) {
		q, ok := s.QuotaOf(QuotaKey{tenant, "ai_generation", period})
		if !ok {
			t.Fatalf("no quota for %s %s", tenant, period)
		}
		_, quota, _ := cfg.QuotaFor(tenant, "ai_generation")
		return plans.Evaluate(quota, q.Usage).Level, q.Usage
	}
	for i := 1; i <= 51; i++ {
		if _, err := s.Apply(ev("free-co", "ai_generation", "u1", "1", t0.Add(time.Duration(i)*time.Second), fmt.Sprint("f", i)), 0, int64(i)); err != nil {
			t.Fatal(err)
		}
		if i == 50 {
			if l, u := level("free-co", "2026-11"); l != plans.LevelAtLimit {
				t.Fatalf("50th: %s at %s", l, u)
			}
		}
	}
	if l, _ := level("free-co", "2026-11"); l != plans.LevelBlocked {
		t.Fatalf("51st: %s", l)
	}
	for i := 1; i <= 120; i++ {
		if _, err := s.Apply(ev("globex", "ai_generation", "u1", "1", t0, fmt.Sprint("g", i)), 1, int64(i)); err != nil {
			t.Fatal(err)
		}
	}
	if l, u := level("globex", "2026-11"); l != plans.LevelOK || !u.Equal(decimal.NewFromInt(120)) {
		t.Fatalf("PRO/ENTERPRISE at 120: %s %s", l, u)
	}
	// The first event of the next month starts a fresh period at 1.
	if _, err := s.Apply(ev("free-co", "ai_generation", "u1", "1", time.Date(2026, 12, 1, 0, 0, 1, 0, time.UTC), "dec-1"), 0, 100); err != nil {
		t.Fatal(err)
	}
	if l, u := level("free-co", "2026-12"); l != plans.LevelOK || !u.Equal(decimal.NewFromInt(1)) {
		t.Fatalf("new period: %s %s", l, u)
	}
}

func TestDuplicatesReplaysAndLateEvents(t *testing.T) {
	s := newState(t)
	e := ev("acme", "tokens", "u", "2.5", t0, "x")
	mustOutcome(t, s, e, 0, 1, Applied)
	mustOutcome(t, s, e, 0, 2, Duplicate) // same id again
	// A re-read of the same offset after a crash changes nothing.
	for _, pt := range s.parts {
		pt.dedup = nil
	}
	mustOutcome(t, s, e, 0, 1, Replayed)
	mustOutcome(t, s, ev("acme", "tokens", "u", "1", t0.Add(time.Hour), "y"), 0, 3, Applied)
	mustOutcome(t, s, ev("acme", "tokens", "u", "1", t0.Add(50*time.Minute), "z"), 0, 4, Applied) // within lateness
	mustOutcome(t, s, ev("acme", "tokens", "u", "1", t0.Add(49*time.Minute), "w"), 0, 5, Late)
	q, _ := s.QuotaOf(QuotaKey{"acme", "tokens", "2026-11"}) // PRO lists no tokens quota: calendar month
	if !q.Usage.Equal(decimal.RequireFromString("4.5")) || q.Offset != 4 {
		t.Fatalf("quota %+v", q)
	}
	dirty := s.Dirty()
	if len(dirty[Minute]) != 3 || len(dirty[Hour]) != 2 || len(dirty[Day]) != 1 || len(dirty[Period]) != 1 {
		t.Fatalf("dirty rows per grain: %d %d %d %d", len(dirty[Minute]), len(dirty[Hour]), len(dirty[Day]), len(dirty[Period]))
	}
}

func mustOutcome(t *testing.T, s *State, e *schemas.UsageEvent, p int32, o int64, want Outcome) {
	t.Helper()
	got, err := s.Apply(e, p, o)
	if err != nil || got != want {
		t.Fatalf("event %s at %d: %v %v, want %v", e.ID, o, got, err, want)
	}
}

func TestAggregations(t *testing.T) {
	s := newState(t)
	apply := func(meter, user, qty string, at time.Time, o int64) {
		t.Helper()
		if _, err := s.Apply(ev("t", meter, user, qty, at, fmt.Sprint(meter, o)), 0, o); err != nil {
			t.Fatal(err)
		}
	}
	apply("storage", "a", "5", t0, 1)
	apply("storage", "b", "9", t0.Add(time.Second), 2)
	apply("storage", "a", "7", t0.Add(2*time.Second), 3)
	apply("users", "", "10", t0.Add(3*time.Second), 4)
	apply("users", "", "4", t0.Add(2*time.Second), 5) // older: not the latest
	apply("active_users", "a", "1", t0, 6)
	apply("active_users", "a", "1", t0, 7)
	apply("active_users", "b", "1", t0, 8)
	apply("exports", "a", "123", t0, 9)
	apply("exports", "a", "0.5", t0, 10)
	for meter, want := range map[string]string{"storage": "9", "users": "10", "active_users": "2", "exports": "2"} {
		q, _ := s.QuotaOf(QuotaKey{"t", meter, "2026-11"})
		if !q.Usage.Equal(decimal.RequireFromString(want)) {
			t.Errorf("%s: %s, want %s", meter, q.Usage, want)
		}
	}
}

func TestLoadRebuildsQuotasAndEvictMarksFinal(t *testing.T) {
	s := newState(t)
	for i, u := range []string{"a", "b", "a"} {
		if _, err := s.Apply(ev("t", "tokens", u, "3", t0, fmt.Sprint(i)), 0, int64(i)); err != nil {
			t.Fatal(err)
		}
	}
	d := s.Dirty()
	s2 := newState(t)
	for _, g := range Grains {
		for _, r := range d[g] {
			cp := *r
			s2.Load(&cp)
		}
	}
	q, _ := s2.QuotaOf(QuotaKey{"t", "tokens", "2026-11"})
	if !q.Usage.Equal(decimal.NewFromInt(9)) || q.Offset != 2 {
		t.Fatalf("reloaded quota %+v", q)
	}
	// A replay of offset 2 after the reload is recognised as applied.
	mustOutcome(t, s2, ev("t", "tokens", "a", "3", t0, "2"), 0, 2, Replayed)
	// Time moves past the period's end and grace: rows go, the quota is final.
	mustOutcome(t, s2, ev("t", "tokens", "a", "1", time.Date(2027, 1, 5, 0, 0, 0, 0, time.UTC), "jan"), 0, 3, Applied)
	s2.MarkClean(flatten(s2.Dirty()))
	if n := s2.Evict(); n < 4 {
		t.Fatalf("evicted %d rows", n)
	}
	due := s2.DueQuotas(time.Now(), 0)
	final := 0
	for _, q := range due {
		if q.PeriodID == "2026-11" && q.Final {
			final++
		}
	}
	if final != 1 {
		t.Fatalf("final quotas: %+v", due)
	}
}

func flatten(d [len(Grains)][]*Row) []*Row {
	var out []*Row
	for _, rs := range d {
		out = append(out, rs...)
	}
	return out
}

func TestDedupIsBounded(t *testing.T) {
	d, h := newDedup(3), newIDHasher()
	for _, k := range []string{"a", "b", "c", "d"} {
		if !d.add(h.sum("t", k), 3) {
			t.Fatalf("%s not new", k)
		}
	}
	if d.len() != 3 || !d.add(h.sum("t", "a"), 3) || d.add(h.sum("t", "d"), 3) {
		t.Fatalf("horizon not enforced: %d keys", d.len())
	}
}

// Keys that share their first 64 bits are told apart by the second, as
// they come and go through the horizon.
func TestDedupKeysSharingAFirstHalf(t *testing.T) {
	d := newDedup(3)
	a, b, c, x := idHash{7, 1}, idHash{7, 2}, idHash{7, 3}, idHash{9, 9}
	for _, k := range []idHash{a, b, c} {
		if !d.add(k, 3) {
			t.Fatalf("%v not new", k)
		}
	}
	if d.add(a, 3) || d.add(b, 3) || d.add(c, 3) {
		t.Fatal("a key sharing its first half with another is not remembered")
	}
	if !d.add(x, 3) { // a leaves the horizon; b and c stay
		t.Fatal("x not new")
	}
	if d.add(b, 3) || d.add(c, 3) {
		t.Fatal("b or c forgotten when a left")
	}
	if !d.add(a, 3) { // b leaves
		t.Fatal("a still remembered past the horizon")
	}
	if d.add(c, 3) || d.add(x, 3) || d.add(a, 3) {
		t.Fatal("c, x or a forgotten")
	}
}

// The dedup key tells tenants and ids apart however the bytes split
// between them: the same id of another tenant is a new event.
func TestDedupKeySeparatesTenantAndID(t *testing.T) {
	h := newIDHasher()
	if h.sum("ab", "c") == h.sum("a", "bc") || h.sum("t1", "x") == h.sum("t2", "x") || h.sum("", "ab") == h.sum("ab", "") {
		t.Fatal("distinct (tenant, id) pairs share a key")
	}
	if h.sum("acme", "e1") != h.sum("acme", "e1") {
		t.Fatal("the key of one (tenant, id) changes")
	}
	s := newState(t)
	mustOutcome(t, s, ev("ab", "tokens", "u", "1", t0, "c"), 0, 1, Applied)
	mustOutcome(t, s, ev("a", "tokens", "u", "1", t0, "bc"), 0, 2, Applied)
	mustOutcome(t, s, ev("a", "tokens", "u", "1", t0, "bc"), 0, 3, Duplicate)
}

func TestUnknownMeters(t *testing.T) {
	s := newState(t)
	mustOutcome(t, s, ev("t", "mystery", "u", "2", t0, "m1"), 0, 1, Applied) // unknown_meters: sum
	if q, ok := s.QuotaOf(QuotaKey{"t", "mystery", "2026-11"}); !ok || !q.Usage.Equal(decimal.NewFromInt(2)) || q.Aggregation != plans.Sum {
		t.Fatalf("unknown meter not summed: %+v", q)
	}
	s.cfg.Plans.UnknownMeters = "reject"
	mustOutcome(t, s, ev("t", "mystery", "u", "2", t0, "m2"), 0, 2, UnknownMeter)
	if q, _ := s.QuotaOf(QuotaKey{"t", "mystery", "2026-11"}); !q.Usage.Equal(decimal.NewFromInt(2)) {
		t.Fatalf("rejected event counted: %+v", q)
	}
}

// One tenant's huge quantities must not make a write fail: the event that
// would pass MaxValue is refused (Overflow) before it touches any row, the
// same on a replay, and other tenants are untouched.
func TestOverflowIsRefusedBeforeAnyRow(t *testing.T) {
	s := newState(t)
	big := "60000000000000000000000000000" // 6 x 10^28: two of them pass MaxValue
	if out, _ := s.Apply(ev("whale", "api_calls", "u1", big, t0, "w1"), 0, 1); out != Applied {
		t.Fatalf("first: %s", out)
	}
	if out, _ := s.Apply(ev("whale", "api_calls", "u2", big, t0.Add(time.Second), "w2"), 0, 2); out != Overflow {
		t.Fatalf("second (another subject, same quota total): %s, want %s", out, Overflow)
	}
	if out, _ := s.Apply(ev("whale", "api_calls", "u1", big, t0.Add(2*time.Second), "w3"), 0, 3); out != Overflow {
		t.Fatalf("third (same row): %s, want %s", out, Overflow)
	}
	if out, _ := s.Apply(ev("minnow", "api_calls", "u1", "5", t0, "m1"), 1, 1); out != Applied {
		t.Fatalf("other tenant: %s", out)
	}
	for _, r := range s.Dirty() {
		for _, row := range r {
			if row.Value.GreaterThan(decimal.RequireFromString(MaxValue)) {
				t.Fatalf("row %+v holds %s", row.Key, row.Value)
			}
			if row.Tenant == "whale" && !row.Value.Equal(decimal.RequireFromString(big)) {
				t.Fatalf("whale row %s/%s = %s, want only the first event", row.Grain, row.Subject, row.Value)
			}
		}
	}
	// A replay of the first event is recognised, not refused.
	s2 := newState(t)
	_, _ = s2.Apply(ev("whale", "api_calls", "u1", big, t0, "w1"), 0, 1)
	if out, _ := s2.Apply(ev("whale", "api_calls", "u1", big, t0, "w1b"), 0, 1); out != Replayed {
		t.Fatalf("replay at the same offset: %s, want %s", out, Replayed)
	}
}

// A unique_count meter counts subjects: an event without one adds nobody.
func TestUniqueCountIgnoresEventsWithoutSubject(t *testing.T) {
	s := newState(t)
	cfg := seedPlans(t)
	var meter string
	for name, m := range cfg.Meters {
		if m.Aggregation == plans.UniqueCount && (m.UniqueBy == "" || m.UniqueBy == "user_id") {
			meter = name
		}
	}
	if meter == "" {
		t.Skip("the example plans have no unique_count meter by user_id")
	}
	if out, _ := s.Apply(ev("acme", meter, "", "1", t0, "a1"), 0, 1); out != NoSubject {
		t.Fatalf("no user_id: %s, want %s", out, NoSubject)
	}
	_, _ = s.Apply(ev("acme", meter, "u1", "1", t0, "a2"), 0, 2)
	_, _ = s.Apply(ev("acme", meter, "", "1", t0, "a3"), 0, 3)
	q, ok := s.QuotaOf(QuotaKey{"acme", meter, "2026-11"})
	if !ok || !q.Usage.Equal(decimal.NewFromInt(1)) {
		t.Fatalf("active users = %v (%v), want 1", q.Usage, ok)
	}
}

// The open-addressing set answers as a plain map with the same horizon
// would, on keys crowded into few slots (long clusters that wrap around
// the table, deletions inside them), keys whose slots look alike (the
// same upper bits: told apart by the ring), and the zero key.
func TestDedupMatchesAMap(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, capacity := range []int{1, 3, 7, 50, 300} {
		d := newDedup(capacity)
		var ring []idHash
		inSet := map[idHash]bool{}
		for i := range 20_000 {
			// Homes near the table's end (clusters wrap around) or among
			// a few others, the same upper bits with other lower ones,
			// and the zero key.
			h := r.Uint64N(64)
			if r.IntN(2) == 0 {
				h = 1<<40 - 2 + r.Uint64N(4)
			}
			k := idHash{h<<posBits | r.Uint64N(3), r.Uint64N(3)}
			want := !inSet[k]
			if want {
				if len(ring) == capacity {
					delete(inSet, ring[0])
					ring = ring[1:]
				}
				ring = append(ring, k)
				inSet[k] = true
			}
			if got := d.add(k, capacity); got != want {
				t.Fatalf("capacity %d, step %d, key %v: new = %v, want %v", capacity, i, k, got, want)
			}
			if d.len() != len(inSet) {
				t.Fatalf("capacity %d, step %d: %d keys, want %d", capacity, i, d.len(), len(inSet))
			}
		}
	}
}
