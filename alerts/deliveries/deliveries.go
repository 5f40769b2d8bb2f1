// Package deliveries records webhook attempts in the ClickHouse table
// alert_deliveries (migration 0012) and answers whether an alert was
// delivered. Every query is a struct whose toSQL returns its text and
// bound arguments.
package deliveries

import (
	"context"
	"fmt"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// Outcomes of an attempt.
const (
	OK     = "ok"
	Failed = "failed"
	GaveUp = "gave_up" // the last attempt failed and max_attempts was reached
)

// Attempt is one row of alert_deliveries.
type Attempt struct {
	AlertID, Endpoint, TenantID, FeatureType, Period, Kind, Threshold string
	Attempt                                                           uint32
	Outcome                                                           string
	HTTPStatus                                                        uint16
	Detail                                                            string
	AttemptedAt                                                       time.Time
	Duration                                                          time.Duration
}

// Store reads and writes alert_deliveries.
type Store struct{ conn driver.Conn }

// New returns a store on conn (migrations applied).
func New(conn driver.Conn) *Store { return &Store{conn: conn} }

type deliveredQuery struct{ AlertID, Endpoint string }

func (q deliveredQuery) toSQL() (string, []any) {
	return `SELECT count() FROM alert_deliveries WHERE alert_id = ? AND endpoint = ? AND outcome = ?`,
		[]any{q.AlertID, q.Endpoint, OK}
}

// Delivered reports whether the alert has an ok attempt for endpoint.
func (s *Store) Delivered(ctx context.Context, alertID, endpoint string) (bool, error) {
	sql, args := deliveredQuery{alertID, endpoint}.toSQL()
	var n uint64
	if err := s.conn.QueryRow(ctx, sql, args...).Scan(&n); err != nil {
		return false, fmt.Errorf("read alert_deliveries: %w", err)
	}
	return n > 0, nil
}

type insertQuery struct{}

// toSQL names every column: ClickHouse 18.16 refuses a batch without them.
func (insertQuery) toSQL() (string, []any) {
	return `INSERT INTO alert_deliveries (alert_id, endpoint, tenant_id, feature_type, period, kind, threshold, attempt,
 outcome, http_status, detail, attempted_at, duration_ms)`, nil
}

// Record appends one attempt.
func (s *Store) Record(ctx context.Context, a Attempt) error {
	sql, _ := insertQuery{}.toSQL()
	b, err := s.conn.PrepareBatch(ctx, sql)
	if err != nil {
		return fmt.Errorf("record delivery: %w", err)
	}
	ms := a.Duration.Milliseconds()
	if err := b.Append(a.AlertID, a.Endpoint, a.TenantID, a.FeatureType, a.Period, a.Kind, a.Threshold, a.Attempt,
		a.Outcome, a.HTTPStatus, a.Detail, a.AttemptedAt.UTC(), uint32(max(ms, 0))); err != nil {
		_ = b.Abort()
		return fmt.Errorf("record delivery: %w", err)
	}
	if err := b.Send(); err != nil {
		return fmt.Errorf("record delivery: %w", err)
	}
	return nil
}
