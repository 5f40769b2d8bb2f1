package sqlcookbook

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"time"

	"github.com/shopspring/decimal"
)

// table is rows for one table, in the column order of cols.
type table struct {
	name string
	cols []string
	rows [][]any
}

// event is one seeded raw event; dups are extra rows of the same
// identity (a consumer re-insert), which every query must count once.
type event struct {
	tenant, id, user, meter string
	qty                     decimal.Decimal
	at                      time.Time
	delay                   time.Duration // ingested_at - event time
	meta                    [][2]string
	dups                    int
	notAggregated           bool // left out of the aggregates: the inconsistency query 13 finds
}

type seed struct {
	now, month, prevMonth time.Time
	events                []event
	plans                 map[string]string // tenant -> plan
	tables                []table
	aggregates            map[string]map[aggKey]*agg // table -> rows
}

type aggKey struct {
	tenant, meter, subject string
	start                  time.Time
}

type agg struct {
	value  decimal.Decimal
	events uint64
}

func d(v int64) decimal.Decimal { return decimal.NewFromInt(v) }

// newSeed builds four tenants over this month and last: acme (PRO, many
// users, endpoints, models, late events), globex (FREE, at 90 % of both
// limits), initech (FREE, one event missing from the aggregates),
// umbrella (last month only).
func newSeed(now time.Time) *seed {
	s := &seed{now: now, plans: map[string]string{"acme": "PRO", "globex": "FREE", "initech": "FREE", "umbrella": "FREE"}}
	s.month = time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)
	s.prevMonth = s.month.AddDate(0, -1, 0)
	add := func(e event) { s.events = append(s.events, e) }
	endpoints := []string{"/v1/check", "/v1/track", "/v1/quotas"}
	for i := range 40 {
		e := event{tenant: "acme", id: fmt.Sprintf("acme-call-%d", i), user: fmt.Sprintf("u%d", i%4), meter: "api_calls",
			qty: d(int64(i%3 + 1)), at: s.month.Add(time.Duration(i%5)*24*time.Hour + 2*time.Hour + time.Duration(i%7)*time.Minute),
			delay: 2 * time.Second, meta: [][2]string{{"endpoint", endpoints[i%3]}, {"method", "POST"}}}
		if i%8 == 0 {
			e.delay = 20*time.Minute + time.Duration(i)*time.Second
		}
		if i%10 == 3 {
			e.dups = 1
		}
		add(e)
	}
	models := []string{"gpt-x", "claude-y"}
	for i := range 6 {
		add(event{tenant: "acme", id: fmt.Sprintf("acme-gen-%d", i), user: fmt.Sprintf("u%d", i%2), meter: "ai_generation", qty: d(1),
			at: s.month.Add(3*time.Hour + time.Duration(i)*time.Minute), delay: time.Second,
			meta: [][2]string{{"model", models[i%2]}, {"tokens", strconv.Itoa(100 * (i + 1))}}, dups: i % 2})
	}
	for i := range 9 {
		add(event{tenant: "globex", id: fmt.Sprintf("globex-call-%d", i), user: "g1", meter: "api_calls", qty: d(1000),
			at: s.month.Add(time.Duration(i) * time.Hour), delay: time.Second, meta: [][2]string{{"endpoint", "/v1/check"}}})
	}
	for i := range 45 {
		add(event{tenant: "globex", id: fmt.Sprintf("globex-gen-%d", i), user: fmt.Sprintf("g%d", i%2+1), meter: "ai_generation",
			qty: d(1), at: s.month.Add(time.Duration(i) * time.Minute), delay: time.Second,
			meta: [][2]string{{"model", models[0]}, {"tokens", "10"}}, dups: boolInt(i%15 == 0)})
	}
	for i := range 5 {
		add(event{tenant: "initech", id: fmt.Sprintf("initech-call-%d", i), meter: "api_calls", qty: d(2),
			at: s.month.Add(5*time.Hour + time.Duration(i)*time.Second), delay: 15 * time.Minute, notAggregated: i == 4})
	}
	for i := range 10 {
		add(event{tenant: "initech", id: fmt.Sprintf("initech-gen-%d", i), user: "i1", meter: "ai_generation", qty: d(1),
			at: s.month.Add(6*time.Hour + time.Duration(i)*time.Minute), delay: time.Second})
	}
	// Last month.
	for i := range 20 {
		add(event{tenant: "acme", id: fmt.Sprintf("acme-old-%d", i), user: "u1", meter: "api_calls", qty: d(2),
			at: s.prevMonth.Add(time.Duration(i) * time.Hour), delay: time.Second})
	}
	for i := range 3 {
		add(event{tenant: "globex", id: fmt.Sprintf("globex-old-%d", i), user: "g1", meter: "api_calls", qty: d(100),
			at: s.prevMonth.Add(48*time.Hour + time.Duration(i)*time.Hour), delay: time.Second})
	}
	for i := range 7 {
		add(event{tenant: "umbrella", id: fmt.Sprintf("umbrella-old-%d", i), user: "x1", meter: "api_calls", qty: d(3),
			at: s.prevMonth.Add(72*time.Hour + time.Duration(i)*time.Hour), delay: time.Second})
	}
	s.build()
	return s
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func (s *seed) thisMonth(e event) bool { return !e.at.Before(s.month) }

// build derives the table rows: raw rows (with duplicates), the aggregate
// rows computed from the events (as usage-aggregator would), dead
// letters and replay records.
func (s *seed) build() {
	raw := table{name: "usage_events", cols: []string{"id", "tenant_id", "user_id", "feature_type", "quantity", "event_time",
		"event_time_ns", "billing_period", "metadata_keys", "metadata_values", "schema_version", "ingested_at", "kafka_partition",
		"kafka_offset", "version"}}
	offset := int64(0)
	s.aggregates = map[string]map[aggKey]*agg{"usage_1m": {}, "usage_1h": {}, "usage_1d": {}, "usage_period": {}}
	for _, e := range s.events {
		keys, values := []string{}, []string{}
		for _, kv := range e.meta {
			keys, values = append(keys, kv[0]), append(values, kv[1])
		}
		for range 1 + e.dups {
			offset++
			raw.rows = append(raw.rows, []any{e.id, e.tenant, e.user, e.meter, e.qty, e.at, uint32(0), e.at.Format("2006-01"),
				keys, values, uint8(1), e.at.Add(e.delay), int32(0), offset, uint64(math.MaxInt64) - uint64(offset)})
		}
		if e.notAggregated {
			continue
		}
		for tbl, start := range map[string]time.Time{"usage_1m": e.at.Truncate(time.Minute), "usage_1h": e.at.Truncate(time.Hour),
			"usage_1d": e.at.Truncate(24 * time.Hour), "usage_period": time.Date(e.at.Year(), e.at.Month(), 1, 0, 0, 0, 0, time.UTC)} {
			k := aggKey{e.tenant, e.meter, e.user, start}
			a := s.aggregates[tbl][k]
			if a == nil {
				a = &agg{}
				s.aggregates[tbl][k] = a
			}
			a.value = a.value.Add(e.qty)
			a.events++
		}
	}
	s.tables = append(s.tables, raw)
	for _, tbl := range []string{"usage_1m", "usage_1h", "usage_1d"} {
		t := table{name: tbl, cols: []string{"tenant_id", "feature_type", "subject", "window_start", "aggregation", "value", "events",
			"latest_ns", "source_partition", "source_offset", "updated_at", "version"}}
		for _, k := range sortedKeys(s.aggregates[tbl]) {
			a := s.aggregates[tbl][k]
			// An older version of the row first: FINAL must read only the newest.
			t.rows = append(t.rows, []any{k.tenant, k.meter, k.subject, k.start, "sum", a.value.Sub(d(1)), a.events - 1, int64(0), int32(0), int64(0), s.now, uint64(2)},
				[]any{k.tenant, k.meter, k.subject, k.start, "sum", a.value, a.events, int64(0), int32(0), offset, s.now, uint64(4)})
		}
		s.tables = append(s.tables, t)
	}
	p := table{name: "usage_period", cols: []string{"tenant_id", "feature_type", "subject", "period_id", "period_start", "period_end",
		"plan", "aggregation", "value", "events", "latest_ns", "source_partition", "source_offset", "updated_at", "version"}}
	for _, k := range sortedKeys(s.aggregates["usage_period"]) {
		a := s.aggregates["usage_period"][k]
		p.rows = append(p.rows, []any{k.tenant, k.meter, k.subject, k.start.Format("2006-01"), k.start, k.start.AddDate(0, 1, 0),
			s.plans[k.tenant], "sum", a.value, a.events, int64(0), int32(0), offset, s.now, uint64(4)})
	}
	s.tables = append(s.tables, p)
	dl := table{name: "dead_letters", cols: []string{"target_topic", "source_topic", "source_partition", "source_offset", "message_key",
		"message_value", "header_keys", "header_values", "kafka_error", "failed_at"}}
	for i, l := range []struct{ target, key, tag string }{
		{"usage.events.dlq", "acme", "missing_field:tenant_id"}, {"usage.events.dlq", "acme", "missing_field:tenant_id"},
		{"usage.events.dlq", "globex", "malformed_json"}, {"usage.events.late", "acme", "late"},
	} {
		dl.rows = append(dl.rows, []any{l.target, "usage.events", int32(1), int64(100 + i), l.key, `{"x":1}`,
			[]string{"usage.error", "usage.error.reason"}, []string{l.tag, "because"}, "[10] Message Size Too Large", s.now})
	}
	// The same letter written twice (a consumer replay after a crash): one row in FINAL.
	dl.rows = append(dl.rows, dl.rows[0])
	s.tables = append(s.tables, dl)
	rp := table{name: "dlq_replays", cols: []string{"replay_id", "replayed_at", "letter_store", "dlq_topic", "dlq_partition", "dlq_offset",
		"message_key", "tenant_id", "event_id", "error_tag", "transform", "outcome", "detail", "target_topic"}}
	for i, r := range []struct{ run, outcome, tag string }{
		{"r1", "replayed", "missing_field:tenant_id"}, {"r1", "replayed", "missing_field:tenant_id"},
		{"r1", "duplicate_letter", "missing_field:tenant_id"}, {"r1", "still_invalid", "malformed_json"},
		{"r2", "already_replayed", "missing_field:tenant_id"}, {"r2", "already_replayed", "missing_field:tenant_id"},
	} {
		rp.rows = append(rp.rows, []any{r.run, s.now, "kafka", "usage.events.dlq", int32(0), int64(i), "acme", "acme", fmt.Sprint("e", i),
			r.tag, "rename tenant=tenant_id", r.outcome, "", "usage.events"})
	}
	s.tables = append(s.tables, rp)
}

func sortedKeys(m map[aggKey]*agg) []aggKey {
	var ks []aggKey
	for k := range m {
		ks = append(ks, k)
	}
	sort.Slice(ks, func(i, j int) bool { return fmt.Sprint(ks[i]) < fmt.Sprint(ks[j]) })
	return ks
}

// ---- expected results, computed from the seed ----

type rows [][]string

func dt(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05") }

func meta(e event, key string) string {
	for _, kv := range e.meta {
		if kv[0] == key {
			return kv[1]
		}
	}
	return ""
}

func pct(a, b float64) string {
	return strconv.FormatFloat(math.Round(1000*a/b)/10, 'f', -1, 64)
}

// sortRows sorts by the given column indexes; desc marks the numeric
// columns sorted descending.
func sortRows(r rows, less func(a, b []string) bool) rows {
	sort.SliceStable(r, func(i, j int) bool { return less(r[i], r[j]) })
	return r
}

func num(s string) decimal.Decimal { v, _ := decimal.NewFromString(s); return v }

func (s *seed) expected() map[string]rows {
	out := map[string]rows{}
	type tm struct{ tenant, meter string }
	this := func(f func(e event)) {
		for _, e := range s.events {
			if s.thisMonth(e) {
				f(e)
			}
		}
	}
	// 1, 2
	tot := map[tm]decimal.Decimal{}
	cnt := map[tm]int{}
	this(func(e event) { k := tm{e.tenant, e.meter}; tot[k] = tot[k].Add(e.qty); cnt[k]++ })
	var r rows
	calls := map[string]decimal.Decimal{}
	for k, v := range tot {
		r = append(r, []string{k.tenant, k.meter, v.String(), strconv.Itoa(cnt[k])})
		if k.meter == "api_calls" {
			calls[k.tenant] = v
		}
	}
	out["totals_this_month"] = sortRows(r, func(a, b []string) bool { return a[0]+" "+a[1] < b[0]+" "+b[1] })
	r = nil
	for t, v := range calls {
		r = append(r, []string{t, v.String()})
	}
	out["top_tenants_this_month"] = sortRows(r, func(a, b []string) bool {
		if c := num(a[1]).Cmp(num(b[1])); c != 0 {
			return c > 0
		}
		return a[0] < b[0]
	})
	// 3
	epCalls := map[string]decimal.Decimal{}
	epTenants := map[string]map[string]bool{}
	this(func(e event) {
		if e.meter != "api_calls" {
			return
		}
		ep := meta(e, "endpoint")
		epCalls[ep] = epCalls[ep].Add(e.qty)
		if epTenants[ep] == nil {
			epTenants[ep] = map[string]bool{}
		}
		epTenants[ep][e.tenant] = true
	})
	r = nil
	for ep, v := range epCalls {
		r = append(r, []string{ep, v.String(), strconv.Itoa(len(epTenants[ep]))})
	}
	out["api_calls_by_endpoint"] = sortRows(r, func(a, b []string) bool {
		if c := num(a[1]).Cmp(num(b[1])); c != 0 {
			return c > 0
		}
		return a[0] < b[0]
	})
	// 4
	gens, tokens := map[string]int{}, map[string]int{}
	this(func(e event) {
		if e.meter == "ai_generation" {
			m := meta(e, "model")
			n, _ := strconv.Atoi(meta(e, "tokens"))
			gens[m]++
			tokens[m] += n
		}
	})
	r = nil
	for m, n := range gens {
		r = append(r, []string{m, strconv.Itoa(n), strconv.Itoa(tokens[m])})
	}
	out["ai_by_model"] = sortRows(r, func(a, b []string) bool { return a[0] < b[0] })
	// 5: from the aggregate rows (what usage_1d holds)
	type dm struct {
		day   time.Time
		meter string
	}
	dv, de := map[dm]decimal.Decimal{}, map[dm]uint64{}
	for k, a := range s.aggregates["usage_1d"] {
		if k.tenant == "acme" && !k.start.Before(s.month) {
			x := dm{k.start, k.meter}
			dv[x], de[x] = dv[x].Add(a.value), de[x]+a.events
		}
	}
	r = nil
	for k, v := range dv {
		r = append(r, []string{dt(k.day), k.meter, v.String(), strconv.FormatUint(de[k], 10)})
	}
	out["daily_series"] = sortRows(r, func(a, b []string) bool { return a[0]+a[1] < b[0]+b[1] })
	// 6
	cur, prev := map[string]decimal.Decimal{}, map[string]decimal.Decimal{}
	for _, e := range s.events {
		if e.meter != "api_calls" || e.at.Before(s.prevMonth) {
			continue
		}
		if s.thisMonth(e) {
			cur[e.tenant] = cur[e.tenant].Add(e.qty)
		} else {
			prev[e.tenant] = prev[e.tenant].Add(e.qty)
		}
	}
	r = nil
	for t := range s.plans {
		c, p := cur[t], prev[t]
		growth := "NULL"
		if !p.IsZero() {
			growth = pct(c.Sub(p).InexactFloat64(), p.InexactFloat64())
		}
		r = append(r, []string{t, c.String(), p.String(), growth})
	}
	out["month_over_month"] = sortRows(r, func(a, b []string) bool { return a[0] < b[0] })
	// 7: from usage_1m
	type tmin struct {
		tenant string
		min    time.Time
	}
	perMin := map[tmin]decimal.Decimal{}
	for k, a := range s.aggregates["usage_1m"] {
		if k.meter == "api_calls" && !k.start.Before(s.month) {
			perMin[tmin{k.tenant, k.start}] = perMin[tmin{k.tenant, k.start}].Add(a.value)
		}
	}
	best := map[string]tmin{}
	for k, v := range perMin {
		b, ok := best[k.tenant]
		if !ok || v.Cmp(perMin[b]) > 0 || (v.Equal(perMin[b]) && k.min.Before(b.min)) {
			best[k.tenant] = k
		}
	}
	r = nil
	for t, k := range best {
		r = append(r, []string{t, dt(k.min), perMin[k].String()})
	}
	out["peak_minute"] = sortRows(r, func(a, b []string) bool { return a[0] < b[0] })
	// 8
	users, ev := map[string]map[string]bool{}, map[string]int{}
	this(func(e event) {
		if e.user == "" {
			return
		}
		if users[e.tenant] == nil {
			users[e.tenant] = map[string]bool{}
		}
		users[e.tenant][e.user] = true
		ev[e.tenant]++
	})
	r = nil
	for t, u := range users {
		r = append(r, []string{t, strconv.Itoa(len(u)), strconv.Itoa(ev[t])})
	}
	out["active_users"] = sortRows(r, func(a, b []string) bool { return a[0] < b[0] })
	// 9: from usage_period, the limits of plans.example.yaml
	limits := map[[2]string]int64{{"FREE", "ai_generation"}: 50, {"FREE", "api_calls"}: 10000, {"PRO", "api_calls"}: 1000000}
	used := map[tm]decimal.Decimal{}
	for k, a := range s.aggregates["usage_period"] {
		if k.start.Equal(s.month) {
			used[tm{k.tenant, k.meter}] = used[tm{k.tenant, k.meter}].Add(a.value)
		}
	}
	r = nil
	for k, u := range used {
		lim, ok := limits[[2]string{s.plans[k.tenant], k.meter}]
		if !ok {
			continue
		}
		p := math.Round(1000*u.InexactFloat64()/float64(lim)) / 10
		if p >= 80 {
			r = append(r, []string{k.tenant, k.meter, s.plans[k.tenant], u.String(), strconv.FormatInt(lim, 10), strconv.FormatFloat(p, 'f', -1, 64)})
		}
	}
	out["near_limits"] = sortRows(r, func(a, b []string) bool {
		if c := num(a[5]).Cmp(num(b[5])); c != 0 {
			return c > 0
		}
		return a[0]+a[1] < b[0]+b[1]
	})
	// 10
	lateN, lateQ, lateMax := map[string]int{}, map[string]decimal.Decimal{}, map[string]int{}
	this(func(e event) {
		if e.delay > 10*time.Minute {
			lateN[e.tenant]++
			lateQ[e.tenant] = lateQ[e.tenant].Add(e.qty)
			lateMax[e.tenant] = max(lateMax[e.tenant], int(e.delay.Seconds()))
		}
	})
	r = nil
	for t, n := range lateN {
		r = append(r, []string{t, strconv.Itoa(n), lateQ[t].String(), strconv.Itoa(lateMax[t])})
	}
	out["late_events"] = sortRows(r, func(a, b []string) bool { return a[0] < b[0] })
	// 11, 12: from the seeded rows (FINAL collapses the letter written twice)
	letters := map[[3]string]int{}
	seen := map[string]bool{}
	for _, row := range s.tables[len(s.tables)-2].rows {
		id := fmt.Sprint(row[1], row[2], row[3], row[0])
		if seen[id] {
			continue
		}
		seen[id] = true
		letters[[3]string{row[7].([]string)[0], row[4].(string), row[0].(string)}]++
	}
	r = nil
	for k, n := range letters {
		r = append(r, []string{k[0], k[1], k[2], strconv.Itoa(n)})
	}
	out["rejected_by_tag"] = sortRows(r, func(a, b []string) bool { return a[0]+" "+a[1]+" "+a[2] < b[0]+" "+b[1]+" "+b[2] })
	outc, runs := map[[2]string]int{}, map[[2]string]map[string]bool{}
	for _, row := range s.tables[len(s.tables)-1].rows {
		k := [2]string{row[11].(string), row[9].(string)}
		outc[k]++
		if runs[k] == nil {
			runs[k] = map[string]bool{}
		}
		runs[k][row[0].(string)] = true
	}
	r = nil
	for k, n := range outc {
		r = append(r, []string{k[0], k[1], strconv.Itoa(n), strconv.Itoa(len(runs[k]))})
	}
	out["replays_by_outcome"] = sortRows(r, func(a, b []string) bool { return a[0]+" "+a[1] < b[0]+" "+b[1] })
	// 13
	r = nil
	for k, v := range tot {
		pv := used[k]
		r = append(r, []string{k.tenant, k.meter, v.String(), pv.String(), strconv.Itoa(boolInt(!v.Equal(pv)))})
	}
	out["raw_vs_aggregates"] = sortRows(r, func(a, b []string) bool { return a[0]+" "+a[1] < b[0]+" "+b[1] })
	return out
}
