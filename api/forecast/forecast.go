// Package forecast projects a meter's period-end usage from its daily series
// for the usage page: a least-squares line with a band.
package forecast

import (
	"math"
	"time"
)

// Forecast is a projection of an additive meter's (sum, count) period-end
// usage. It is an estimate for a chart and a warning, never a number that
// is billed: it is computed in float64 and shown rounded.
type Forecast struct {
	Total      float64   // projected usage at the period's end
	Low, High  float64   // the band: Total ± 1.96·s·√k (k days left)
	Overage    float64   // max(0, Total - limit); 0 without a limit
	ReachedAt  time.Time // the day the projection reaches the limit; zero if it does not (or already has)
	DailyTrend []float64 // the fitted value of every day of the period
}

// Project fits a straight line y = a + b·i by least squares to the daily
// usage of the elapsed days (daily[0] is the period's first day, the last
// one may be partial) and extends it over the remaining days of a period of
// days days, a day never below 0. The band assumes independent daily
// residuals with the fit's standard error s: ±1.96·s·√k over the k days
// left (the line's own uncertainty is left out, so the band is narrow early
// in a period). With one day the trend is flat at that day's value and the
// band is 0. limit < 0 means unlimited. start is the period's first day.
func Project(daily []float64, days int, limit float64, start time.Time) Forecast {
	n := len(daily)
	var f Forecast
	if n == 0 || days <= 0 {
		return f
	}
	a, b, s := fit(daily)
	f.DailyTrend = make([]float64, days)
	used := 0.0
	for i, v := range daily {
		used += v
		f.DailyTrend[i] = v
	}
	f.Total = used
	cum := used
	for i := n; i < days; i++ {
		y := math.Max(0, a+b*float64(i))
		f.DailyTrend[i] = y
		f.Total += y
		cum += y
		if limit >= 0 && f.ReachedAt.IsZero() && used < limit && cum >= limit {
			f.ReachedAt = start.AddDate(0, 0, i)
		}
	}
	half := 1.96 * s * math.Sqrt(float64(max(days-n, 0)))
	f.Low, f.High = math.Max(used, f.Total-half), f.Total+half
	if limit >= 0 {
		f.Overage = math.Max(0, f.Total-limit)
	}
	return f
}

// fit returns the least-squares line a + b·i through ys (i = 0..n-1) and
// the residuals' standard error (n-2 degrees of freedom; 0 below 3 points).
func fit(ys []float64) (a, b, s float64) {
	n := float64(len(ys))
	if len(ys) == 1 {
		return ys[0], 0, 0
	}
	var sx, sy, sxx, sxy float64
	for i, y := range ys {
		x := float64(i)
		sx, sy, sxx, sxy = sx+x, sy+y, sxx+x*x, sxy+x*y
	}
	b = (n*sxy - sx*sy) / (n*sxx - sx*sx)
	a = (sy - b*sx) / n
	if len(ys) < 3 {
		return a, b, 0
	}
	var rss float64
	for i, y := range ys {
		r := y - (a + b*float64(i))
		rss += r * r
	}
	return a, b, math.Sqrt(rss / (n - 2))
}
