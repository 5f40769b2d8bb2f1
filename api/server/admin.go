package server

import (
	"context"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/shopspring/decimal"
	"go.uber.org/zap"

	"github.com/usagemeter/usagemeter/api/usageread"
	"github.com/usagemeter/usagemeter/quota"
	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/schemas/plans"
)

// Assigner publishes plan-assignment records (usage.plan-assignments).
type Assigner struct {
	Client *kafka.Client
	Topic  string
}

// publish writes one record with acks=all to the tenant's partition (the
// Murmur2 rule every record of the topic follows) and returns where it went.
func (a *Assigner) publish(ctx context.Context, tenant string, key, value []byte) (quota.Position, error) {
	md, err := a.Client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{a.Topic}})
	if err != nil || len(md.Topics) != 1 || md.Topics[0].Error != nil || len(md.Topics[0].Partitions) == 0 {
		return quota.Position{}, fmt.Errorf("metadata of %s: %v %w", a.Topic, md, err)
	}
	part := schemas.PartitionFor(tenant, len(md.Topics[0].Partitions))
	res, err := a.Client.Produce(ctx, &kafka.ProduceRequest{Topic: a.Topic, Partition: part, RequiredAcks: kafka.RequireAll,
		Records: kafka.NewRecordReader(kafka.Record{Key: kafka.NewBytes(key), Value: kafka.NewBytes(value)})})
	if err == nil && res.Error != nil {
		err = res.Error
	}
	if err != nil {
		return quota.Position{}, fmt.Errorf("publish plan assignment: %w", err)
	}
	return quota.Position{Topic: a.Topic, Partition: int32(part), Offset: res.BaseOffset}, nil
}

// WithAdmin enables the admin page's plan changes, published by a.
func (s *Server) WithAdmin(a *Assigner) *Server {
	s.assign = a
	return s
}

type adminRow struct {
	Tenant, Plan, Meter, Aggregation, Usage, Limit, Percent, Level, Cached string
	pct                                                                    decimal.Decimal
	usage                                                                  decimal.Decimal
	Near, Over                                                             bool
}

type adminView struct {
	Rows, Suggest  []adminRow
	Sort, Message  string
	Plans          []string
	Billing        usageread.BillingPass
	BillingErr     string
	Changes        []usageread.PlanChange
	Grants         []usageread.QuotaGrant
	Alerts         []alertRow
	AlertsOff      bool
	Note           string
	SuggestRule    string
	CacheLag       int64
	Lags           []GroupLag
	DLQ            *DLQTags
	OpsErr         string
	CacheReachable bool
}

// upgradeRule is the rule the page names: a limited meter whose usage so
// far, extended at the same average rate to the period's end, reaches its
// limit (or already has).
const upgradeRule = "a limited meter whose usage so far, extended at its average rate over the elapsed part of the period to the period's end, reaches the limit (or has reached it)"

// adminPage answers GET /admin: every tenant's limited meters (sortable),
// upgrade candidates, billing-sync's last pass, plan changes.
func (s *Server) adminPage(w http.ResponseWriter, r *http.Request) {
	const route = "admin"
	p, ok := s.pageAuth(w, r, route)
	if !ok {
		return
	}
	if p.tenant != "" {
		s.fail(w, route, &apiError{status: http.StatusForbidden, Code: codeForbidden, Error: "the admin page needs the admin key"})
		return
	}
	now := time.Now().UTC()
	v := adminView{Sort: r.URL.Query().Get("sort"), Message: r.URL.Query().Get("msg"), SuggestRule: upgradeRule}
	for name := range s.plans.Plans {
		v.Plans = append(v.Plans, name)
	}
	slices.Sort(v.Plans)
	st := s.cache.Stats()
	v.CacheLag, v.CacheReachable = st.Lag, st.Reachable
	if s.usage == nil {
		v.Note = "ClickHouse is not configured on this instance (clickhouse.addr): no usage, billing or audit"
	} else {
		ups, err := s.usage.OpenPeriods(r.Context(), now, 5000)
		if err != nil {
			s.usageFailed.Inc()
			s.log.Warn("admin page read failed", zap.Error(err))
			v.Note = "usage could not be read now"
		}
		for _, u := range ups {
			d := s.cache.Peek(r.Context(), u.Tenant, u.Meter)
			if d.Unlimited {
				continue
			}
			lim := d.Limit.Decimal()
			row := adminRow{Tenant: u.Tenant, Plan: d.Plan, Meter: u.Meter, Aggregation: u.Aggregation, Usage: u.Value.String(),
				Limit: lim.String(), Level: d.Level, Cached: d.Usage.String(), usage: u.Value}
			if lim.IsPositive() {
				row.pct = u.Value.Mul(decimal.NewFromInt(100)).DivRound(lim, 2)
			}
			row.Percent = row.pct.String()
			row.Near, row.Over = row.pct.GreaterThanOrEqual(decimal.NewFromInt(80)), u.Value.GreaterThan(lim)
			v.Rows = append(v.Rows, row)
			// Projected = usage × period length / elapsed (exact decimals).
			elapsed, length := now.Sub(u.PeriodStart), u.PeriodEnd.Sub(u.PeriodStart)
			if elapsed > 0 && u.Value.Mul(decimal.NewFromInt(int64(length))).DivRound(decimal.NewFromInt(int64(elapsed)), 9).GreaterThanOrEqual(lim) {
				v.Suggest = append(v.Suggest, row)
			}
		}
		sortRows(v.Rows, v.Sort)
		if v.Billing, err = s.usage.LastBillingPass(r.Context()); err != nil {
			v.BillingErr = "billing_audit could not be read"
			s.log.Warn("read billing pass", zap.Error(err))
		}
		if v.Changes, err = s.usage.RecentPlanChanges(r.Context(), 20); err != nil {
			s.log.Warn("read plan changes", zap.Error(err))
		}
		if v.Grants, err = s.usage.RecentGrants(r.Context(), 20); err != nil {
			s.log.Warn("read quota grants", zap.Error(err))
		}
	}
	if s.alerts != nil {
		v.Alerts = alertRows(s.alerts.Latest())
	} else {
		v.AlertsOff = true
	}
	if s.ops != nil {
		octx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		var err error
		if v.Lags, err = s.ops.Lag(octx); err != nil {
			v.OpsErr = "lag could not be read"
			s.log.Warn("read lag", zap.Error(err))
		}
		if d, err := s.ops.DLQCounts(octx); err != nil {
			v.OpsErr = "lag or DLQ counts could not be read"
			s.log.Warn("read DLQ counts", zap.Error(err))
		} else {
			v.DLQ = &d
		}
		cancel()
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Security-Policy", "default-src 'self'; style-src 'unsafe-inline'")
	if err := pageTmpl.ExecuteTemplate(w, "admin", v); err != nil {
		s.log.Warn("render admin page", zap.Error(err))
	}
	s.answers.WithLabelValues(route, "200").Inc()
}

// sortRows orders by percent (default, highest first), tenant or usage.
func sortRows(rows []adminRow, by string) {
	slices.SortStableFunc(rows, func(a, b adminRow) int {
		switch by {
		case "tenant":
			return strings.Compare(a.Tenant+"\x00"+a.Meter, b.Tenant+"\x00"+b.Meter)
		case "usage":
			return b.usage.Cmp(a.usage)
		}
		if c := b.pct.Cmp(a.pct); c != 0 {
			return c
		}
		return strings.Compare(a.Tenant, b.Tenant)
	})
}

// adminPost checks what every admin form post needs: the admin key, our
// own origin, and the publisher and audit configured. what names the
// action in errors.
func (s *Server) adminPost(w http.ResponseWriter, r *http.Request, route, what string) (principal, bool) {
	p, ok := s.pageAuth(w, r, route)
	if !ok {
		return p, false
	}
	if p.tenant != "" {
		s.fail(w, route, &apiError{status: http.StatusForbidden, Code: codeForbidden, Error: what + " need the admin key"})
		return p, false
	}
	// A cookie is sent by the browser whatever page posts: only our own
	// origin may (SameSite=Strict already stops other sites' posts).
	if o := r.Header.Get("Origin"); o != "" && r.Header.Get("Authorization") == "" {
		if u, err := url.Parse(o); err != nil || u.Host != r.Host {
			s.fail(w, route, &apiError{status: http.StatusForbidden, Code: codeForbidden, Error: "cross-origin form post refused"})
			return p, false
		}
	}
	if s.assign == nil || s.usage == nil {
		s.fail(w, route, &apiError{status: http.StatusServiceUnavailable, Code: codeUsageUnavailable,
			Error: what + " need clickhouse.addr (the audit) on this instance"})
		return p, false
	}
	return p, true
}

// changePlan answers POST /admin/plan (form: tenant, plan, reason): a
// versioned assignment record on usage.plan-assignments, audited in
// plan_changes, then back to the page once this instance's cache has read
// it. The version is the Unix second, the clock planhook's Stripe event
// times use, so a later Stripe change still supersedes it.
func (s *Server) changePlan(w http.ResponseWriter, r *http.Request) {
	const route = "admin_plan"
	p, ok := s.adminPost(w, r, route, "plan changes")
	if !ok {
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 4096)
	tenant, plan, reason := r.PostFormValue("tenant"), r.PostFormValue("plan"), r.PostFormValue("reason")
	if e := s.validTenant(tenant, time.Now()); e != nil {
		e.Field = "tenant"
		s.fail(w, route, e)
		return
	}
	if _, ok := s.plans.Plans[plan]; !ok {
		s.fail(w, route, badField(codeInvalidField, "plan", "plan %q is not in the plans file", plan))
		return
	}
	if len(reason) > 500 || !utf8Printable(reason) {
		s.fail(w, route, badField(codeInvalidField, "reason", "reason must be at most 500 printable characters"))
		return
	}
	previous, _ := s.cache.Meters(tenant)
	_, _, current := s.plans.QuotaFor(tenant, "")
	a := plans.Assignment{Plan: plan, AnchorDay: current.AnchorDay, Anchor: current.Anchor, Version: time.Now().Unix()}
	// The record replaces the tenant's: it carries the open grants on.
	if open := s.cache.Assignment(tenant).Grants.Open(time.Now()); len(open) > 0 {
		a.Grants = &plans.Grants{List: open}
	}
	key, value := plans.AssignmentRecord(tenant, &a)
	ctx, cancel := context.WithTimeout(r.Context(), PublishTimeout)
	defer cancel()
	pos, err := s.assign.publish(ctx, tenant, key, value)
	if err != nil {
		s.log.Warn("plan change not published", zap.String("tenant", tenant), zap.Error(err))
		s.fail(w, route, &apiError{status: http.StatusServiceUnavailable, Code: codeUsageFailed, Error: "the plan assignment could not be published; nothing changed"})
		return
	}
	actor := "admin:" + hex.EncodeToString(p.hash[:4]) // which admin key, never the key
	change := usageread.PlanChange{Tenant: tenant, Plan: plan, PreviousPlan: previous, AnchorDay: a.AnchorDay, Version: a.Version,
		Actor: actor, Reason: reason, Topic: pos.Topic, Partition: int(pos.Partition), Offset: pos.Offset, At: time.Now()}
	if err := s.usage.RecordPlanChange(ctx, change); err != nil {
		s.auditFailed.Inc()
		s.log.Error("plan change applied but not audited", zap.String("tenant", tenant), zap.String("plan", plan),
			zap.Int64("offset", pos.Offset), zap.Error(err))
	}
	s.log.Info("plan assigned on the admin page", zap.String("tenant", tenant), zap.String("plan", plan), zap.String("actor", actor),
		zap.Int64("version", a.Version), zap.Int64("offset", pos.Offset))
	wctx, wcancel := context.WithTimeout(r.Context(), time.Second)
	defer wcancel()
	msg := fmt.Sprintf("%s is now on %s (offset %d)", tenant, plan, pos.Offset)
	if err := s.cache.WaitFor(wctx, pos); err != nil {
		msg += "; this instance's cache has not read it yet"
	}
	http.Redirect(w, r, "/admin?msg="+url.QueryEscape(msg), http.StatusSeeOther)
	s.answers.WithLabelValues(route, "303").Inc()
}

func utf8Printable(s string) bool {
	for _, r := range s {
		if r < 0x20 || r == 0x7f || r == 0xfffd {
			return false
		}
	}
	return true
}

// grantQuota answers POST /admin/grant (form: tenant, meter, amount,
// reason): amount more of meter for the tenant's current period only, as a
// grant on a new versioned assignment record (same plan and anchor, the
// open grants carried on), audited in quota_grants, then back to the page
// once this instance's cache has read it.
func (s *Server) grantQuota(w http.ResponseWriter, r *http.Request) {
	const route = "admin_grant"
	p, ok := s.adminPost(w, r, route, "quota grants")
	if !ok {
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 4096)
	tenant, meter, amount, reason := r.PostFormValue("tenant"), r.PostFormValue("meter"), r.PostFormValue("amount"), r.PostFormValue("reason")
	now := time.Now()
	if e := s.validTenant(tenant, now); e != nil {
		e.Field = "tenant"
		s.fail(w, route, e)
		return
	}
	if _, known := s.cache.Aggregation(meter); !known {
		s.fail(w, route, badField(codeInvalidField, "meter", "meter %q is not in the plans file", meter))
		return
	}
	cur := s.cache.Assignment(tenant)
	q, limited := s.plans.Plans[cur.Plan].Meters[meter]
	if !limited || q.Limit.Equal(plans.Unlimited) {
		s.fail(w, route, badField(codeInvalidField, "meter", "%s is unlimited on plan %s: nothing to grant", meter, cur.Plan))
		return
	}
	amt, err := decimal.NewFromString(amount)
	if err != nil {
		s.fail(w, route, badField(codeInvalidField, "amount", "%q is not a decimal number", amount))
		return
	}
	period := cur.PeriodFor(q, now)
	g := plans.Grant{Meter: meter, Period: period.ID, Amount: amt}
	if err := g.Validate("grant"); err != nil {
		s.fail(w, route, badField(codeInvalidField, "amount", "%s", strings.TrimPrefix(err.Error(), "grant.amount: ")))
		return
	}
	if len(reason) > 500 || !utf8Printable(reason) {
		s.fail(w, route, badField(codeInvalidField, "reason", "reason must be at most 500 printable characters"))
		return
	}
	grants := append(cur.Grants.Open(now), g)
	if len(grants) > plans.MaxGrants {
		s.fail(w, route, badField(codeInvalidField, "tenant", "%s already has %d open grants, at most %d", tenant, len(grants)-1, plans.MaxGrants))
		return
	}
	// Never older than the record it builds on (a Stripe event time may be
	// ahead of this clock), so Assign cannot ignore it as stale.
	a := plans.Assignment{Plan: cur.Plan, AnchorDay: cur.AnchorDay, Anchor: cur.Anchor, Version: max(now.Unix(), cur.Version), Grants: &plans.Grants{List: grants}}
	key, value := plans.AssignmentRecord(tenant, &a)
	ctx, cancel := context.WithTimeout(r.Context(), PublishTimeout)
	defer cancel()
	pos, err := s.assign.publish(ctx, tenant, key, value)
	if err != nil {
		s.log.Warn("quota grant not published", zap.String("tenant", tenant), zap.Error(err))
		s.fail(w, route, &apiError{status: http.StatusServiceUnavailable, Code: codeUsageFailed, Error: "the grant could not be published; nothing changed"})
		return
	}
	actor := "admin:" + hex.EncodeToString(p.hash[:4])
	audit := usageread.QuotaGrant{Tenant: tenant, Meter: meter, PeriodID: period.ID, Amount: amt, Plan: cur.Plan, Version: a.Version,
		Actor: actor, Reason: reason, Topic: pos.Topic, Partition: int(pos.Partition), Offset: pos.Offset, At: now}
	if err := s.usage.RecordGrant(ctx, audit); err != nil {
		s.auditFailed.Inc()
		s.log.Error("quota grant applied but not audited", zap.String("tenant", tenant), zap.String("meter", meter),
			zap.Int64("offset", pos.Offset), zap.Error(err))
	}
	s.log.Info("quota granted on the admin page", zap.String("tenant", tenant), zap.String("meter", meter), zap.String("amount", amt.String()),
		zap.String("period", period.ID), zap.String("actor", actor), zap.Int64("offset", pos.Offset))
	wctx, wcancel := context.WithTimeout(r.Context(), time.Second)
	defer wcancel()
	msg := fmt.Sprintf("%s gets %s more %s in %s (offset %d)", tenant, amt, meter, period.ID, pos.Offset)
	if err := s.cache.WaitFor(wctx, pos); err != nil {
		msg += "; this instance's cache has not read it yet"
	}
	http.Redirect(w, r, "/admin?msg="+url.QueryEscape(msg), http.StatusSeeOther)
	s.answers.WithLabelValues(route, "303").Inc()
}
