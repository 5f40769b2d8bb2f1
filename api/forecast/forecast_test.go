package forecast

import (
	"math"
	"testing"
	"time"
)

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

func TestProjectKnownAnswers(t *testing.T) {
	start := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	// An exact line 2 + 3i over 10 of 30 days: the fit is exact, the band
	// empty, the total the line's sum over 30 days: 30·2 + 3·435 = 1365.
	line := make([]float64, 10)
	for i := range line {
		line[i] = 2 + 3*float64(i)
	}
	f := Project(line, 30, 1000, start)
	if !near(f.Total, 1365) || !near(f.Low, 1365) || !near(f.High, 1365) || !near(f.Overage, 365) {
		t.Fatalf("line: %+v", f)
	}
	// Cumulative sums of 2+3i reach 1000 first at i = 25 (975 at 24, 1052 at 25).
	if want := start.AddDate(0, 0, 25); !f.ReachedAt.Equal(want) {
		t.Fatalf("line reaches the limit on %s, want %s", f.ReachedAt, want)
	}
	// A flat 5 a day: 150 in 30 days; a limit of 100 is reached on day 19
	// (cumulative 100 at index 19); unlimited: no overage, no date.
	flat := []float64{5, 5, 5, 5, 5, 5, 5, 5, 5, 5}
	if f := Project(flat, 30, 100, start); !near(f.Total, 150) || !near(f.Overage, 50) || !f.ReachedAt.Equal(start.AddDate(0, 0, 19)) {
		t.Fatalf("flat: %+v", f)
	}
	if f := Project(flat, 30, -1, start); !near(f.Total, 150) || f.Overage != 0 || !f.ReachedAt.IsZero() {
		t.Fatalf("flat unlimited: %+v", f)
	}
	// Alternating 4, 6: slope Σ(x-4.5)(y-5)/Σ(x-4.5)² = 5/82.5, residuals about ±1, so
	// the band is Total ± 1.96·s·√20 with s = √(Σr²/(n-2)) of that fit.
	alt := []float64{4, 6, 4, 6, 4, 6, 4, 6, 4, 6}
	f = Project(alt, 30, -1, start)
	a, b, s := fit(alt)
	if !near(b, 5/82.5) || !near(a, 5-b*4.5) || s <= 0.9 || s >= 1.2 {
		t.Fatalf("fit of 4,6,...: a %v b %v s %v", a, b, s)
	}
	if half := f.High - f.Total; !near(half, 1.96*s*math.Sqrt(20)) || !near(f.Total-f.Low, half) {
		t.Fatalf("band %v..%v around %v", f.Low, f.High, f.Total)
	}
	// A falling trend never projects negative days; usage already past
	// the limit has no "reached" date.
	if f := Project([]float64{50, 40, 30, 20, 10}, 30, 100, start); !near(f.Total, 150) || !f.ReachedAt.IsZero() {
		t.Fatalf("falling: %+v", f)
	}
}
