package chstore

import (
	"context"
	"fmt"
	"time"

	"github.com/shopspring/decimal"
)

// TotalsQuery sums the deduplicated raw events per tenant and meter since a
// point in time. Like every query here it renders to SQL text plus bound
// arguments (toSQL), so the text is unit-tested and the server runs it in
// integration tests.
type TotalsQuery struct {
	Since    time.Time
	TenantID string // optional: one tenant only
	Limit    int
}

func (q TotalsQuery) toSQL() (string, []any) {
	sql := `SELECT tenant_id, feature_type, toString(sum(quantity)) AS total, count() AS events, max(event_time) AS last_event
FROM usage_events_dedup
WHERE event_time >= ?`
	args := []any{q.Since.UTC()}
	if q.TenantID != "" {
		sql += ` AND tenant_id = ?`
		args = append(args, q.TenantID)
	}
	sql += `
GROUP BY tenant_id, feature_type
ORDER BY tenant_id, feature_type
LIMIT ?`
	limit := q.Limit
	if limit <= 0 {
		limit = 1000
	}
	return sql, append(args, limit)
}

// Total is one row of TotalsQuery.
type Total struct {
	TenantID    string    `json:"tenant_id"`
	FeatureType string    `json:"feature_type"`
	Quantity    string    `json:"quantity"` // exact decimal text
	Events      uint64    `json:"events"`
	LastEvent   time.Time `json:"last_event"`
}

// Totals runs q.
func (s *Store) Totals(ctx context.Context, q TotalsQuery) ([]Total, error) {
	sql, args := q.toSQL()
	rows, err := s.conn.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("query usage totals: %w", err)
	}
	defer rows.Close()
	var out []Total
	for rows.Next() {
		var t Total
		if err := rows.Scan(&t.TenantID, &t.FeatureType, &t.Quantity, &t.Events, &t.LastEvent); err != nil {
			return nil, fmt.Errorf("scan usage totals: %w", err)
		}
		// "1219.000000000" -> "1219": same value, without the column's scale.
		if d, err := decimal.NewFromString(t.Quantity); err == nil {
			t.Quantity = d.String()
		}
		out = append(out, t)
	}
	return out, rows.Err()
}
