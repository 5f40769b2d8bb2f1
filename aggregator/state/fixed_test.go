package state

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"github.com/usagemeter/usagemeter/schemas"
)

func TestFixedBounds(t *testing.T) {
	if got := schemas.MaxFixed9().Decimal(); !got.Equal(decimal.RequireFromString(MaxValue)) {
		t.Fatalf("maxFixed = %s, want MaxValue %s", got, MaxValue)
	}
	for _, c := range []struct {
		in   string
		ok   bool
		want string
	}{
		{MaxValue, true, MaxValue},
		{"100000000000000000000000000000", false, ""}, // MaxValue + 10^-9
		{"-1", false, ""},
		{"0.0000000001", false, ""},                              // 10 fractional digits
		{"1.50000000000", true, "1.5"},                           // trailing zeros past 9 digits
		{"12E+3", true, "12000"},                                 // positive exponent
		{"999999999999999999", true, "999999999999999999"},       // the largest contract quantity
		{"60000000000000000000000000000", true, "6E+28"},         // wide coefficient: the big.Int path
		{"18446744073.709551616", true, "18446744073.709551616"}, // 2^64 units: the carry into hi
		{"0", true, "0"},
	} {
		f, ok := schemas.Fixed9FromDecimal(decimal.RequireFromString(c.in))
		if ok != c.ok {
			t.Errorf("Fixed9FromDecimal(%s): ok %v, want %v", c.in, ok, c.ok)
			continue
		}
		if ok && !f.Decimal().Equal(decimal.RequireFromString(c.want)) {
			t.Errorf("Fixed9FromDecimal(%s) = %s, want %s", c.in, f.Decimal(), c.want)
		}
	}
	if _, ok := schemas.MaxFixed9().Add(schemas.MaxFixed9()); !ok {
		t.Error("MaxValue + MaxValue must not carry out of 128 bits")
	}
	if _, ok := (schemas.Fixed9{Hi: 1 << 63}).Add(schemas.Fixed9{Hi: 1 << 63}); ok {
		t.Error("a carry out of 128 bits must be reported")
	}
}

// Sums in fixed units equal shopspring/decimal's sums (the independent
// source the aggregator used before), for random quantities of every
// scale, across the 64-bit carry.
func TestFixedSumsEqualDecimalSums(t *testing.T) {
	r := rand.New(rand.NewPCG(19, 1))
	for round := range 200 {
		var f schemas.Fixed9
		d := decimal.Zero
		for range 500 {
			q := decimal.New(r.Int64N(1_000_000_000_000_000_000), -int32(r.IntN(10)))
			if round%3 == 0 {
				q = q.Shift(int32(r.IntN(10))) // wide coefficients now and then
			}
			qf, ok := schemas.Fixed9FromDecimal(q)
			if !ok {
				t.Fatalf("Fixed9FromDecimal(%s) refused", q)
			}
			var carry bool
			if f, carry = f.Add(qf); !carry {
				t.Fatal("carry")
			}
			d = d.Add(q)
		}
		if !f.Decimal().Equal(d) {
			t.Fatalf("round %d: fixed %s, decimal %s", round, f.Decimal(), d)
		}
		if back, _ := schemas.Fixed9FromDecimal(d); back != f {
			t.Fatalf("round %d: %s does not round-trip", round, d)
		}
	}
}

// The per-event fold of a sum meter allocates only for the dedup key and
// its set, not per row (big.Int: 20 allocations per event before).
func TestApplySumAllocations(t *testing.T) {
	s := newState(t)
	for i := range 100 {
		if _, err := s.Apply(ev(fmt.Sprint("t", i%5), "tokens", "u", "1.5", t0, fmt.Sprint("w", i)), 0, int64(i)); err != nil {
			t.Fatal(err)
		}
	}
	next := 100
	e := ev("t1", "tokens", "u", "2.125", t0.Add(time.Second), "")
	ids := make([]string, 2000)
	for i := range ids {
		ids[i] = fmt.Sprint("a", i)
	}
	allocs := testing.AllocsPerRun(1000, func() {
		e.ID = ids[next-100]
		if out, err := s.Apply(e, 0, int64(next)); err != nil || out != Applied {
			t.Fatalf("%s, %v", out, err)
		}
		next++
	})
	if allocs > 3 {
		t.Fatalf("%.1f allocations per applied sum event, want <= 3", allocs)
	}
	q, _ := s.QuotaOf(QuotaKey{"t1", "tokens", "2026-11"})
	// t1 had 20 warm-up events of 1.5, then 1001 of 2.125 (AllocsPerRun runs once more).
	if want := decimal.RequireFromString("1.5").Mul(decimal.NewFromInt(20)).Add(decimal.RequireFromString("2.125").Mul(decimal.NewFromInt(1001))); !q.Usage.Equal(want) {
		t.Fatalf("usage %s, want %s", q.Usage, want)
	}
}

// The per-series row cache never serves a row that Load replaced: the
// event after the load folds into the loaded row.
func TestSeriesCacheFollowsLoad(t *testing.T) {
	s := newState(t)
	if out, err := s.Apply(ev("acme", "tokens", "u", "1", t0, "e1"), 0, 1); err != nil || out != Applied {
		t.Fatalf("%s, %v", out, err)
	}
	var period *Row
	for _, r := range s.Dirty()[Period] {
		period = r
	}
	loaded := *period
	loaded.Value, loaded.Events, loaded.Offset = decimal.NewFromInt(100), 5, 10
	loaded.acc, loaded.stale = schemas.Fixed9{}, false
	s.Load(&loaded)
	if out, err := s.Apply(ev("acme", "tokens", "u", "2", t0.Add(time.Second), "e2"), 0, 11); err != nil || out != Applied {
		t.Fatalf("%s, %v", out, err)
	}
	got := s.Dirty()[Period]
	if len(got) != 1 || got[0] != &loaded || !got[0].Value.Equal(decimal.NewFromInt(102)) || got[0].Events != 6 {
		t.Fatalf("period rows after the load: %+v, want the loaded row at 102 with 6 events", got)
	}
}

// windowStart's integer arithmetic equals time's own truncation, before
// and after 1970 and at window edges.
func TestWindowStart(t *testing.T) {
	for _, ts := range []time.Time{t0, t0.Add(59*time.Second + 999*time.Millisecond), time.Unix(0, 0), time.Unix(-1, 0),
		time.Unix(-86401, 5), time.Date(1969, 12, 31, 23, 59, 59, 0, time.UTC), time.Date(2028, 2, 29, 23, 0, 0, 0, time.UTC),
		time.Date(2026, 11, 30, 23, 59, 59, 999999999, time.UTC)} {
		ts = ts.UTC()
		want := [...]time.Time{ts.Truncate(time.Minute), ts.Truncate(time.Hour), time.Date(ts.Year(), ts.Month(), ts.Day(), 0, 0, 0, 0, time.UTC)}
		for g, w := range want {
			if got := windowStart(Grain(g), ts.Unix()); got != w.Unix() {
				t.Errorf("%s of %s: %d, want %d (%s)", Grain(g), ts, got, w.Unix(), w)
			}
		}
	}
}
