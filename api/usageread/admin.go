package usageread

import (
	"context"
	"fmt"
	"time"

	"github.com/shopspring/decimal"
)

// PeriodUsage is one tenant's usage of one meter in its open period,
// combined across subjects by the meter's own aggregation.
type PeriodUsage struct {
	Tenant, Meter, Aggregation, Plan, PeriodID string
	PeriodStart, PeriodEnd                     time.Time
	Value                                      decimal.Decimal
}

// openPeriodsQuery reads every tenant's open periods (period_end after At)
// from usage_period, one row per tenant and meter, as windowQuery combines
// subjects. Limit bounds the admin page.
type openPeriodsQuery struct {
	At    time.Time
	Limit int
}

func (q openPeriodsQuery) toSQL() (string, []any) {
	return `SELECT tenant_id, feature_type, any(aggregation) AS agg, any(plan), period_id, period_start, any(period_end),
 multiIf(agg = 'max', toString(max(value)), agg = 'latest', toString(argMax(value, latest_ns)), toString(sum(value)))
 FROM usage_period FINAL WHERE period_end > ? AND period_start <= ?
 GROUP BY tenant_id, feature_type, period_id, period_start ORDER BY tenant_id, feature_type LIMIT ?`,
		[]any{q.At.UTC(), q.At.UTC(), q.Limit}
}

// OpenPeriods returns every tenant's usage in its open periods at at.
func (rd *Reader) OpenPeriods(ctx context.Context, at time.Time, limit int) ([]PeriodUsage, error) {
	sql, args := openPeriodsQuery{At: at, Limit: limit}.toSQL()
	rs, err := rd.conn.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("read open periods: %w", err)
	}
	defer rs.Close()
	var out []PeriodUsage
	for rs.Next() {
		var u PeriodUsage
		var v string
		if err := rs.Scan(&u.Tenant, &u.Meter, &u.Aggregation, &u.Plan, &u.PeriodID, &u.PeriodStart, &u.PeriodEnd, &v); err != nil {
			return nil, fmt.Errorf("scan open period: %w", err)
		}
		if u.Value, err = decimal.NewFromString(v); err != nil {
			return nil, fmt.Errorf("open period value %q: %w", v, err)
		}
		out = append(out, u)
	}
	return out, rs.Err()
}

// BillingPass sums up billing-sync's last pass from billing_audit.
type BillingPass struct {
	PassID  string
	At      time.Time
	Rows    uint64
	Errors  uint64 // rows with an error
	Drift   int64  // Σ |delta| (ours - Stripe) over the pass's rows
	Tenants uint64
	Found   bool
}

// lastPassQuery reads the newest pass_id and its totals.
type lastPassQuery struct{}

func (lastPassQuery) toSQL() (string, []any) {
	return `SELECT pass_id, max(at), count(), countIf(error != ''), toInt64(sum(abs(delta))), uniqExact(tenant_id)
 FROM billing_audit WHERE pass_id != '' GROUP BY pass_id ORDER BY max(at_ns) DESC LIMIT 1`, nil
}

// LastBillingPass returns billing-sync's last pass; Found is false before the first.
func (rd *Reader) LastBillingPass(ctx context.Context) (BillingPass, error) {
	sql, _ := lastPassQuery{}.toSQL()
	rs, err := rd.conn.Query(ctx, sql)
	if err != nil {
		return BillingPass{}, fmt.Errorf("read billing_audit: %w", err)
	}
	defer rs.Close()
	var p BillingPass
	if rs.Next() {
		if err := rs.Scan(&p.PassID, &p.At, &p.Rows, &p.Errors, &p.Drift, &p.Tenants); err != nil {
			return BillingPass{}, fmt.Errorf("scan billing pass: %w", err)
		}
		p.Found = true
	}
	return p, rs.Err()
}

// PlanChange is one audited plan assignment made on the admin page.
type PlanChange struct {
	Tenant, Plan, PreviousPlan string
	AnchorDay                  int
	Version                    int64
	Actor, Reason              string
	Topic                      string
	Partition                  int
	Offset                     int64
	At                         time.Time
}

// RecordPlanChange appends c to plan_changes (migration 0013).
func (rd *Reader) RecordPlanChange(ctx context.Context, c PlanChange) error {
	b, err := rd.conn.PrepareBatch(ctx, `INSERT INTO plan_changes (tenant_id, plan, previous_plan, anchor_day, version, actor, reason,
 topic, partition, offset, at)`)
	if err != nil {
		return fmt.Errorf("prepare plan_changes insert: %w", err)
	}
	defer func() { _ = b.Abort() }()
	if err := b.Append(c.Tenant, c.Plan, c.PreviousPlan, uint8(c.AnchorDay), c.Version, c.Actor, c.Reason, c.Topic,
		int32(c.Partition), c.Offset, c.At.UTC()); err != nil {
		return fmt.Errorf("append plan change: %w", err)
	}
	if err := b.Send(); err != nil {
		return fmt.Errorf("insert plan change: %w", err)
	}
	return nil
}

// recentChangesQuery reads the newest plan changes.
type recentChangesQuery struct{ Limit int }

func (q recentChangesQuery) toSQL() (string, []any) {
	return `SELECT tenant_id, plan, previous_plan, anchor_day, version, actor, reason, topic, partition, offset, at
 FROM plan_changes ORDER BY at DESC, version DESC LIMIT ?`, []any{q.Limit}
}

// RecentPlanChanges returns the newest limit plan changes.
func (rd *Reader) RecentPlanChanges(ctx context.Context, limit int) ([]PlanChange, error) {
	sql, args := recentChangesQuery{limit}.toSQL()
	rs, err := rd.conn.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("read plan_changes: %w", err)
	}
	defer rs.Close()
	var out []PlanChange
	for rs.Next() {
		var c PlanChange
		var anchor uint8
		var part int32
		if err := rs.Scan(&c.Tenant, &c.Plan, &c.PreviousPlan, &anchor, &c.Version, &c.Actor, &c.Reason, &c.Topic, &part, &c.Offset, &c.At); err != nil {
			return nil, fmt.Errorf("scan plan change: %w", err)
		}
		c.AnchorDay, c.Partition = int(anchor), int(part)
		out = append(out, c)
	}
	return out, rs.Err()
}

// QuotaGrant is one audited one-off quota increase made on the admin page.
type QuotaGrant struct {
	Tenant, Meter, PeriodID, Plan string
	Amount                        decimal.Decimal
	Version                       int64
	Actor, Reason                 string
	Topic                         string
	Partition                     int
	Offset                        int64
	At                            time.Time
}

// RecordGrant appends g to quota_grants (migration 0014).
func (rd *Reader) RecordGrant(ctx context.Context, g QuotaGrant) error {
	b, err := rd.conn.PrepareBatch(ctx, `INSERT INTO quota_grants (tenant_id, feature_type, period_id, amount, plan, version, actor, reason,
 topic, partition, offset, at)`)
	if err != nil {
		return fmt.Errorf("prepare quota_grants insert: %w", err)
	}
	defer func() { _ = b.Abort() }()
	if err := b.Append(g.Tenant, g.Meter, g.PeriodID, g.Amount, g.Plan, g.Version, g.Actor, g.Reason, g.Topic,
		int32(g.Partition), g.Offset, g.At.UTC()); err != nil {
		return fmt.Errorf("append quota grant: %w", err)
	}
	if err := b.Send(); err != nil {
		return fmt.Errorf("insert quota grant: %w", err)
	}
	return nil
}

// recentGrantsQuery reads the newest grants.
type recentGrantsQuery struct{ Limit int }

func (q recentGrantsQuery) toSQL() (string, []any) {
	return `SELECT tenant_id, feature_type, period_id, toString(amount), plan, version, actor, reason, topic, partition, offset, at
 FROM quota_grants ORDER BY at DESC, version DESC LIMIT ?`, []any{q.Limit}
}

// RecentGrants returns the newest limit grants.
func (rd *Reader) RecentGrants(ctx context.Context, limit int) ([]QuotaGrant, error) {
	sql, args := recentGrantsQuery{limit}.toSQL()
	rs, err := rd.conn.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("read quota_grants: %w", err)
	}
	defer rs.Close()
	var out []QuotaGrant
	for rs.Next() {
		var g QuotaGrant
		var amount string
		var part int32
		if err := rs.Scan(&g.Tenant, &g.Meter, &g.PeriodID, &amount, &g.Plan, &g.Version, &g.Actor, &g.Reason, &g.Topic, &part, &g.Offset, &g.At); err != nil {
			return nil, fmt.Errorf("scan quota grant: %w", err)
		}
		if g.Amount, err = decimal.NewFromString(amount); err != nil {
			return nil, fmt.Errorf("quota grant amount %q: %w", amount, err)
		}
		g.Partition = int(part)
		out = append(out, g)
	}
	return out, rs.Err()
}
