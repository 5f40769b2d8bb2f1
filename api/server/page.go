package server

import (
	"context"
	_ "embed"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/shopspring/decimal"
	"go.uber.org/zap"

	"github.com/usagemeter/usagemeter/api/forecast"
	"github.com/usagemeter/usagemeter/api/usageread"
	"github.com/usagemeter/usagemeter/quota"
	"github.com/usagemeter/usagemeter/schemas/plans"
)

// keyCookie carries a page visitor's API key (set by POST /login):
// HttpOnly, SameSite=Strict, and accepted only on GET routes, so a page
// visit can read but another site can never make it act.
const keyCookie = "usage_key"

//go:embed page.html
var pageHTML string

var pageTmpl = template.Must(template.New("page").Funcs(template.FuncMap{
	"pct": func(v float64) string { return fmt.Sprintf("%.0f", v) },
}).Parse(pageHTML))

// pageAuth is authenticate for GET pages: the bearer key, else the cookie.
func (s *Server) pageAuth(w http.ResponseWriter, r *http.Request, route string) (principal, bool) {
	if p, ok := s.keys.authenticate(r); ok {
		return p, true
	}
	if c, err := r.Cookie(keyCookie); err == nil {
		if p, ok := s.keys.lookup(c.Value); ok {
			return p, true
		}
	}
	if strings.Contains(r.Header.Get("Accept"), "text/html") {
		http.Redirect(w, r, "/login?next="+url.QueryEscape(r.URL.Path), http.StatusSeeOther)
		s.answers.WithLabelValues(route, "303").Inc()
		return principal{}, false
	}
	return s.authenticate(w, r, route) // answers 401
}

// login shows a form for a key (GET) or sets the cookie (POST) and goes to
// the key's page: the tenant's usage, or the admin page.
func (s *Server) login(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodGet {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_ = pageTmpl.ExecuteTemplate(w, "login", nil)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 4096)
	key := r.PostFormValue("key")
	p, ok := s.keys.lookup(key)
	if !ok {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(http.StatusUnauthorized)
		_ = pageTmpl.ExecuteTemplate(w, "login", "unknown key")
		s.answers.WithLabelValues("login", "401").Inc()
		return
	}
	http.SetCookie(w, &http.Cookie{Name: keyCookie, Value: key, Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode})
	to := "/admin"
	if p.tenant != "" {
		to = "/usage/" + p.tenant
	}
	http.Redirect(w, r, to, http.StatusSeeOther)
}

type meterView struct {
	Meter, Aggregation, Usage, Limit, Remaining, Percent string
	Stored                                               string // usage_period by the meter's own aggregation, when it differs from the cache's
	Unlimited                                            bool
	Color                                                string // ok, amber, red
	Width                                                float64
	Level                                                string
	Chart                                                *chartView
	Forecast                                             *forecastView
}

type chartView struct {
	W, H   int
	Points []chartPoint
	Trend  string // SVG polyline points of the forecast (additive meters)
	Max    string
}

type chartPoint struct {
	X, Y  float64
	Day   string
	Value string
}

type forecastView struct {
	Total, Low, High, Overage string
	ReachedAt                 string
}

type pageView struct {
	Tenant, Plan, PeriodStart, PeriodEnd, UpgradeURL string
	Meters                                           []meterView
	Banner                                           string // "", "warn", "limit"
	BannerMeter, BannerPercent                       string
	Users                                            []usageread.Row
	Key                                              string
	ByKey                                            []usageread.Row
	CSV                                              map[string]string
	Note                                             string
	Alerts                                           []alertRow // this tenant's only (AlertFeed.Tenant)
	AlertsOn                                         bool
}

// tenantPage answers GET /usage/{tenant}: the tenant's period by meter.
func (s *Server) tenantPage(w http.ResponseWriter, r *http.Request) {
	const route = "page"
	tenant := r.PathValue("tenant")
	p, ok := s.pageAuth(w, r, route)
	if !ok {
		return
	}
	if e := s.validTenant(tenant, time.Now()); e != nil {
		s.fail(w, route, e)
		return
	}
	if !s.actsFor(w, route, p, tenant) {
		return
	}
	now := s.now().UTC()
	v := pageView{Tenant: tenant, UpgradeURL: strings.ReplaceAll(s.cfg.UpgradeURL, "{tenant}", url.QueryEscape(tenant)), CSV: map[string]string{}}
	plan, meters := s.cache.Meters(tenant)
	v.Plan = plan
	if s.alerts != nil {
		v.AlertsOn, v.Alerts = true, alertRows(s.alerts.Tenant(tenant))
	}
	period := pagePeriod(s.plans.Plans[plan], s.cache.Assignment(tenant), meters, now)
	start, end := period.Start, period.End
	decisions := make([]quota.Decision, 0, len(meters))
	for _, m := range meters {
		decisions = append(decisions, s.cache.Peek(r.Context(), tenant, m))
	}
	v.PeriodStart, v.PeriodEnd = start.Format("2006-01-02"), end.Format("2006-01-02")
	daily, users, byKey, err := s.pageRows(r.Context(), tenant, start, end, now, r.URL.Query().Get("key"))
	if err != nil {
		s.usageFailed.Inc()
		s.log.Warn("usage page read failed", zap.String("tenant", tenant), zap.Error(err))
		v.Note = "usage history could not be read now"
	}
	if s.usage == nil {
		v.Note = "usage history is not configured on this instance (clickhouse.addr)"
	}
	days := int(end.Sub(start).Hours()/24 + 0.5)
	elapsed := min(int(now.Sub(start).Hours()/24)+1, days)
	top := decimal.Zero
	for i, m := range meters {
		d := decisions[i]
		agg, _ := s.cache.Aggregation(m)
		mv := meterView{Meter: m, Aggregation: string(agg), Usage: d.Usage.String(), Level: d.Level, Unlimited: d.Unlimited, Color: "ok"}
		for _, row := range daily {
			if row.Group == "period" && row.Meter == m && row.Value != mv.Usage {
				mv.Stored = row.Value
			}
		}
		pct := float64(d.Percentage) / 100
		if !d.Unlimited {
			mv.Limit, mv.Remaining = d.Limit.String(), d.Remaining.String()
			mv.Percent = decimal.New(d.Percentage, -2).String()
			mv.Width = min(pct, 100)
			switch {
			case pct >= 90:
				mv.Color = "red"
			case d.Warning > 0:
				mv.Color = "amber"
			}
			if pd := decimal.New(d.Percentage, -2); pct >= 80 && pd.GreaterThan(top) {
				top, v.BannerMeter, v.BannerPercent = pd, m, pd.String()
				v.Banner = "warn"
				if pct >= 100 {
					v.Banner = "limit"
				}
			}
		}
		if s.usage != nil {
			series := make([]float64, elapsed)
			vals := make([]string, elapsed)
			for j := range vals {
				vals[j] = "0"
			}
			for _, row := range daily {
				if row.Meter == m && row.Group == "" {
					if j := int(row.Window.Sub(start).Hours() / 24); j >= 0 && j < elapsed {
						f, _ := decimal.RequireFromString(row.Value).Float64() // plotted only
						series[j], vals[j] = f, row.Value
					}
				}
			}
			limit := -1.0
			if !d.Unlimited {
				limit, _ = d.Limit.Decimal().Float64()
			}
			var fc *forecast.Forecast
			if agg == plans.Sum || agg == plans.Count {
				f := forecast.Project(series, days, limit, start)
				fc = &f
				mv.Forecast = &forecastView{Total: round(f.Total), Low: round(f.Low), High: round(f.High), Overage: round(f.Overage)}
				if !f.ReachedAt.IsZero() {
					mv.Forecast.ReachedAt = f.ReachedAt.Format("2006-01-02")
				}
			}
			if slices.ContainsFunc(series, func(f float64) bool { return f != 0 }) {
				mv.Chart = chart(series, vals, start, days, fc) // no empty charts
			}
		}
		v.Meters = append(v.Meters, mv)
	}
	v.Users, v.Key, v.ByKey = users, r.URL.Query().Get("key"), byKey
	base := "/v1/usage/" + url.PathEscape(tenant) + "?format=csv&limit=10000&from=" + start.Format(time.RFC3339) + "&to="
	v.CSV["daily"] = base + end.Format(time.RFC3339) + "&granularity=day"
	v.CSV["users"] = base + end.Format(time.RFC3339) + "&granularity=period&group_by=user"
	if v.Key != "" {
		v.CSV["key"] = "/v1/usage/" + url.PathEscape(tenant) + "?format=csv&limit=10000&granularity=day&from=" +
			later(start, now.Add(-usageread.MaxMetadataRange).Truncate(time.Second)).Format(time.RFC3339) + "&to=" + now.Truncate(time.Second).Format(time.RFC3339) +
			"&group_by=" + url.QueryEscape("metadata."+v.Key)
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Security-Policy", "default-src 'self'; style-src 'unsafe-inline'")
	if err := pageTmpl.ExecuteTemplate(w, "tenant", v); err != nil {
		s.log.Warn("render usage page", zap.Error(err))
	}
	s.answers.WithLabelValues(route, "200").Inc()
}

// pagePeriod is the period the page shows, by the one rule the
// aggregator (usage_period) and the quota caches (reset_at) use,
// plans.Assignment.PeriodFor (PeriodOf for anchor days), for the tenant's
// assignment as the cache has it: the
// first anchored meter of the plan (its subscription's period), else the
// calendar month. Never reset_at minus a month: an anchor clamped at a
// short month's end (the 31st: 2027-02-28 to 2027-03-31) does not step
// back by a calendar month.
func pagePeriod(pl plans.Plan, a plans.Assignment, meters []string, now time.Time) plans.Period {
	q := plans.Quota{Period: plans.CalendarMonth}
	for _, m := range meters {
		if mq, ok := pl.Meters[m]; ok && mq.Period == plans.Anchored {
			q = mq
			break
		}
	}
	return a.PeriodFor(q, now)
}

// WithClock makes the pages read the time from now instead of time.Now
// (tests: a period of another date; give the quota cache the same clock).
func (s *Server) WithClock(now func() time.Time) *Server {
	s.now = now
	return s
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func round(f float64) string { return decimal.NewFromFloat(f).Round(2).String() }

// pageRows reads the page's history: daily rows of the period, the
// period by user, and (key != "") the period by that metadata key.
func (s *Server) pageRows(ctx context.Context, tenant string, start, end, now time.Time, key string) (daily, users, byKey []usageread.Row, err error) {
	if s.usage == nil {
		return nil, nil, nil, nil
	}
	// The period by meter first: appended to daily with Group "period".
	pr := usageread.Request{Tenant: tenant, From: start, To: end, Granularity: usageread.Period, GroupBy: usageread.ByMeter, Limit: usageread.MaxLimit}
	periods, err := s.usage.Read(ctx, pr)
	if err != nil {
		return nil, nil, nil, err
	}
	defer func() {
		for _, r := range periods.Rows {
			r.Group = "period"
			daily = append(daily, r)
		}
	}()
	req := usageread.Request{Tenant: tenant, From: start, To: end, Granularity: usageread.Day, GroupBy: usageread.ByMeter, Limit: usageread.MaxLimit}
	pg, err := s.usage.Read(ctx, req)
	if err != nil {
		return nil, nil, nil, err
	}
	daily = pg.Rows
	req.Granularity, req.GroupBy = usageread.Period, usageread.ByUser
	if pg, err = s.usage.Read(ctx, req); err != nil {
		return nil, nil, nil, err
	}
	users = pg.Rows
	if key != "" {
		kr, perr := usageread.Parse(usageread.Params{Tenant: tenant, GroupBy: "metadata." + key, From: later(start, now.Add(-usageread.MaxMetadataRange)).Format(time.RFC3339),
			To: now.Format(time.RFC3339), Limit: fmt.Sprint(usageread.MaxLimit)}, now)
		if perr != nil {
			return daily, users, nil, nil // a bad key shows nothing
		}
		if pg, err = s.usage.Read(ctx, kr); err != nil {
			return nil, nil, nil, err
		}
		byKey = sumByGroup(pg.Rows)
	}
	return daily, users, byKey, nil
}

// sumByGroup adds daily rows of each meter and group into one row each.
func sumByGroup(rows []usageread.Row) []usageread.Row {
	type k struct{ meter, group string }
	acc := map[k]*usageread.Row{}
	var order []k
	for _, r := range rows {
		key := k{r.Meter, r.Group}
		a, ok := acc[key]
		if !ok {
			c := r
			acc[key], order = &c, append(order, key)
			continue
		}
		a.Value = decimal.RequireFromString(a.Value).Add(decimal.RequireFromString(r.Value)).String()
		a.Events += r.Events
	}
	slices.SortFunc(order, func(a, b k) int { return strings.Compare(a.meter+"\x00"+a.group, b.meter+"\x00"+b.group) })
	out := make([]usageread.Row, 0, len(order))
	for _, key := range order {
		out = append(out, *acc[key])
	}
	return out
}

// chart lays out one point per elapsed day of the period and the
// forecast's trend over the rest (daily values: the period's limit is for
// their sum, so it is not drawn here).
func chart(series []float64, vals []string, start time.Time, days int, fc *forecast.Forecast) *chartView {
	c := &chartView{W: 600, H: 140}
	top := 0.0
	for _, v := range series {
		top = max(top, v)
	}
	if fc != nil {
		for _, v := range fc.DailyTrend {
			top = max(top, v)
		}
	}
	if top <= 0 {
		top = 1
	}
	x := func(i int) float64 { return 10 + float64(i)*float64(c.W-20)/float64(max(days-1, 1)) }
	y := func(v float64) float64 { return float64(c.H-10) - v*float64(c.H-30)/top } // 20 px under the label
	for i, v := range series {
		c.Points = append(c.Points, chartPoint{X: x(i), Y: y(v), Day: start.AddDate(0, 0, i).Format("2006-01-02"), Value: vals[i]})
	}
	if fc != nil && len(series) > 0 {
		var b strings.Builder
		for i := len(series) - 1; i < days; i++ {
			fmt.Fprintf(&b, "%.1f,%.1f ", x(i), y(fc.DailyTrend[i]))
		}
		c.Trend = b.String()
	}
	c.Max = round(top)
	return c
}
