package schemas

import (
	"time"

	"github.com/shopspring/decimal"
)

// CurrentSchemaVersion is the UsageEvent schema version this package writes
// and the highest it accepts.
const CurrentSchemaVersion = 1

// Well-known meters (feature types). Any name matching the feature_type
// pattern is accepted; these are the ones the seed plans use.
const (
	MeterAPICalls     = "api_calls"
	MeterAIGeneration = "ai_generation"
	MeterStorage      = "storage"
	MeterUsers        = "users"
	MeterProjects     = "projects"
)

// UsageEvent is one unit of consumption reported by an application.
type UsageEvent struct {
	// ID is the idempotency key: the same ID published twice for the same
	// tenant is counted once. The Go SDK fills a UUIDv7 when it is empty.
	ID       string `json:"id"`
	TenantID string `json:"tenant_id"`
	// UserID is optional: some meters (storage, seats) belong to the tenant.
	UserID string `json:"user_id,omitempty"`
	// FeatureType names the meter, e.g. "api_calls" or "ai_generation".
	FeatureType string `json:"feature_type"`
	// Quantity is exact; it must be >= 0 with at most 9 fractional digits.
	Quantity decimal.Decimal `json:"quantity"`
	// Timestamp is the event time (when the usage happened), in UTC.
	Timestamp time.Time `json:"timestamp"`
	// Metadata holds dimensions such as endpoint, method, model or tokens.
	Metadata map[string]string `json:"metadata,omitempty"`
	// BillingPeriod is "YYYY-MM"; derived from Timestamp when empty.
	BillingPeriod string `json:"billing_period,omitempty"`
	SchemaVersion int    `json:"schema_version,omitempty"`
}

// PeriodOf returns the calendar-month billing period ("YYYY-MM", UTC) that
// contains t.
func PeriodOf(t time.Time) string {
	y, m, _ := t.UTC().Date()
	if y < 0 || y > 9999 {
		return t.UTC().Format("2006-01")
	}
	// Same text as Format("2006-01"), which is slow: Decode calls this for
	// most events.
	p := [7]byte{byte('0' + y/1000), byte('0' + y/100%10), byte('0' + y/10%10), byte('0' + y%10),
		'-', byte('0' + m/10), byte('0' + m%10)}
	return string(p[:])
}
