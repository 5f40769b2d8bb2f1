package schemas

import (
	"bytes"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/shopspring/decimal"
)

// UsageAlert is the third contract of the pipeline: one threshold crossing
// of one tenant's meter in one billing period, published by usage-alerts
// as one JSON object per Kafka message on the compacted topic AlertTopic,
// keyed by AlertID. A crossing has one id whatever the process, restart or
// replay that finds it, so the topic holds each crossing once per
// (tenant, meter, period, kind, threshold) after compaction, and a reader
// that keeps the ids it has handled never acts twice. usage_alert.schema.json
// (draft 2020-12) is the contract for other languages;
// testdata/usage_alert_vectors.json pins it down.
type UsageAlert struct {
	// AlertID is AlertID(TenantID, FeatureType, Period, Kind, Threshold).
	AlertID     string `json:"alert_id"`
	TenantID    string `json:"tenant_id"`
	FeatureType string `json:"feature_type"`
	Period      string `json:"period"`
	Plan        string `json:"plan"`
	// Kind is percent (Threshold is a percentage of the limit, above 100
	// allowed), absolute (Threshold is a usage amount) or overage (usage
	// went past the limit with overage allowed; Threshold is 0).
	Kind      string          `json:"kind"`
	Threshold decimal.Decimal `json:"threshold"`
	// Usage, Limit (-1 unlimited), Percentage and Level are those of the
	// quota state in which the crossing was first seen.
	Usage       decimal.Decimal `json:"usage"`
	Limit       decimal.Decimal `json:"limit"`
	Percentage  decimal.Decimal `json:"percentage"`
	Level       string          `json:"level"`
	PeriodStart time.Time       `json:"period_start"`
	PeriodEnd   time.Time       `json:"period_end"`
	// SourceOffsets are the state's: the usage.events offsets it reflects.
	SourceOffsets map[int32]int64 `json:"source_offsets"`
	DetectedAt    time.Time       `json:"detected_at"`
	// SchemaVersion is 1; 0 in a value built in Go means the current one.
	SchemaVersion int `json:"schema_version"`
}

//go:embed usage_alert.schema.json
var usageAlertSchema string

//go:embed testdata/usage_alert_vectors.json
var usageAlertVectors []byte

// UsageAlertJSONSchema returns usage_alert.schema.json (draft 2020-12).
func UsageAlertJSONSchema() []byte { return []byte(usageAlertSchema) }

// UsageAlertTestVectors returns the shared UsageAlert vectors, in the shape
// of TestVectors: Vector.Event holds the alert.
func UsageAlertTestVectors() ([]Vector, error) {
	return parseVectors(usageAlertVectors, "usage alert")
}

// AlertTopic is the compacted topic usage-alerts publishes to.
const AlertTopic = "usage.alerts"

// UsageAlertSchemaVersion is the UsageAlert version this package writes and
// the only one it reads.
const UsageAlertSchemaVersion = 1

// Alert kinds.
const (
	AlertKindPercent  = "percent"
	AlertKindAbsolute = "absolute"
	AlertKindOverage  = "overage"
)

// MaxAlertPercent bounds a percent threshold (1000 times the limit).
const MaxAlertPercent = 100_000

// AlertID is the deterministic id of a crossing: the first 16 bytes of
// SHA-256 over "tenant/meter/period/kind/threshold" (threshold in its
// canonical decimal form), in lower-case hex. Tenant ids and meter names
// cannot contain '/', so distinct crossings never share the input.
func AlertID(tenant, meter, period, kind string, threshold decimal.Decimal) string {
	sum := sha256.Sum256([]byte(tenant + "/" + meter + "/" + period + "/" + kind + "/" + threshold.String()))
	return hex.EncodeToString(sum[:16])
}

// AppendJSON appends the alert's wire form (decimals as strings, times in
// RFC 3339 UTC, source_offsets in partition order). It does not validate.
func (a *UsageAlert) AppendJSON(dst []byte) []byte {
	dst = append(dst, `{"alert_id":`...)
	dst = appendString(dst, a.AlertID)
	dst = append(dst, `,"tenant_id":`...)
	dst = appendString(dst, a.TenantID)
	dst = append(dst, `,"feature_type":`...)
	dst = appendString(dst, a.FeatureType)
	dst = append(dst, `,"period":`...)
	dst = appendString(dst, a.Period)
	dst = append(dst, `,"plan":`...)
	dst = appendString(dst, a.Plan)
	dst = append(dst, `,"kind":`...)
	dst = appendString(dst, a.Kind)
	dst = append(dst, `,"threshold":"`...)
	dst = appendDecimal(dst, a.Threshold)
	dst = append(dst, `","usage":"`...)
	dst = appendDecimal(dst, a.Usage)
	dst = append(dst, `","limit":"`...)
	dst = appendDecimal(dst, a.Limit)
	dst = append(dst, `","percentage":"`...)
	dst = appendDecimal(dst, a.Percentage)
	dst = append(dst, `","level":`...)
	dst = appendString(dst, a.Level)
	dst = append(dst, `,"period_start":"`...)
	dst = a.PeriodStart.UTC().AppendFormat(dst, time.RFC3339Nano)
	dst = append(dst, `","period_end":"`...)
	dst = a.PeriodEnd.UTC().AppendFormat(dst, time.RFC3339Nano)
	dst = append(dst, `","source_offsets":{`...)
	dst = appendOffsets(dst, a.SourceOffsets)
	dst = append(dst, `},"detected_at":"`...)
	dst = a.DetectedAt.UTC().AppendFormat(dst, time.RFC3339Nano)
	dst = append(dst, `","schema_version":`...)
	dst = strconv.AppendInt(dst, UsageAlertSchemaVersion, 10)
	return append(dst, '}')
}

// Validate checks an alert built in Go with the rules and tags of
// DecodeUsageAlert.
func (a *UsageAlert) Validate() error {
	return firstError(
		checkAlertIDShape(a.AlertID),
		checkStateTenant(a.TenantID),
		checkStateMeter(a.FeatureType),
		checkStatePeriod(a.Period),
		checkStatePlan(a.Plan),
		checkAlertKind(a.Kind),
		checkAmount("threshold", a.Threshold, false),
		checkAmount("usage", a.Usage, false),
		checkAmount("limit", a.Limit, true),
		checkPercentage(a.Percentage),
		checkStateLevel(a.Level),
		checkStateTime("period_start", a.PeriodStart),
		checkStateTime("period_end", a.PeriodEnd),
		checkOffsets(a.SourceOffsets),
		checkStateTime("detected_at", a.DetectedAt),
		checkAlertVersion(a.SchemaVersion),
		a.checkConsistency(),
	)
}

// usageAlertFields are the members of the wire form, in its order.
var usageAlertFields = []string{"alert_id", "tenant_id", "feature_type", "period", "plan", "kind", "threshold",
	"usage", "limit", "percentage", "level", "period_start", "period_end", "source_offsets", "detected_at",
	"schema_version"}

// DecodeUsageAlert parses and validates one message value of AlertTopic.
// Failures are *ValidationError, in the order of DecodeQuotaState:
// malformed_json, duplicate_field:<f>, unsupported_schema_version,
// unknown_field:<f>, then field by field (missing_field, invalid_type,
// invalid_field), then the rules across fields: the threshold of each kind,
// a percent alert needs a limit, period_end after period_start, and
// alert_id equal to AlertID of the other fields (invalid_field:alert_id).
func DecodeUsageAlert(data []byte) (UsageAlert, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return UsageAlert{}, invalid(CodeMalformedJSON, "", "empty message (a compaction tombstone is not an alert)")
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(data, &m); err != nil {
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return UsageAlert{}, invalid(CodeMalformedJSON, "", "%v (offset %d)", err, se.Offset)
		}
		return UsageAlert{}, invalid(CodeMalformedJSON, "", "an alert must be a JSON object")
	}
	if m == nil {
		return UsageAlert{}, invalid(CodeMalformedJSON, "", "an alert must be a JSON object, not null")
	}
	if err := checkStrictJSON(data); err != nil {
		return UsageAlert{}, err
	}
	if raw, ok := m["schema_version"]; ok && jsonKind(raw) == 'n' {
		if n, isInt, inRange := jsonInt64(string(raw)); isInt && (!inRange || n != UsageAlertSchemaVersion) {
			return UsageAlert{}, invalid(CodeUnsupportedSchemaVersion, "schema_version",
				"usage alert schema_version %s is not supported (%d)", raw, UsageAlertSchemaVersion)
		}
	}
	var unknown []string
	for k := range m {
		if !slices.Contains(usageAlertFields, k) {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		name := strings.Trim(strconv.Quote(slices.Min(unknown)), `"`)
		return UsageAlert{}, invalid(CodeUnknownField, name, "field %q is not part of usage alert schema version %d", name, UsageAlertSchemaVersion)
	}
	r := stateReader{m: m}
	a := UsageAlert{
		AlertID:       r.str("alert_id", checkAlertIDShape),
		TenantID:      r.str("tenant_id", checkStateTenant),
		FeatureType:   r.str("feature_type", checkStateMeter),
		Period:        r.str("period", checkStatePeriod),
		Plan:          r.str("plan", checkStatePlan),
		Kind:          r.str("kind", checkAlertKind),
		Threshold:     r.amount("threshold", false),
		Usage:         r.amount("usage", false),
		Limit:         r.amount("limit", true),
		Percentage:    r.percentage(),
		Level:         r.str("level", checkStateLevel),
		PeriodStart:   r.time("period_start", true),
		PeriodEnd:     r.time("period_end", true),
		SourceOffsets: r.offsets(),
		DetectedAt:    r.time("detected_at", false),
		SchemaVersion: r.version(),
	}
	if r.err == nil {
		r.fail(a.checkConsistency())
	}
	if r.err != nil {
		return UsageAlert{}, r.err
	}
	return a, nil
}

func checkAlertIDShape(s string) error {
	if s == "" {
		return invalid(CodeMissingField, "alert_id", "alert_id is required")
	}
	if len(s) != 32 || strings.Trim(s, "0123456789abcdef") != "" {
		return invalid(CodeInvalidField, "alert_id", "alert_id %q is not 32 lower-case hex digits", s)
	}
	return nil
}

func checkAlertKind(s string) error {
	switch s {
	case "":
		return invalid(CodeMissingField, "kind", "kind is required")
	case AlertKindPercent, AlertKindAbsolute, AlertKindOverage:
		return nil
	}
	return invalid(CodeInvalidField, "kind", "kind %q is not percent, absolute or overage", s)
}

func checkAlertVersion(v int) error {
	if v != 0 && v != UsageAlertSchemaVersion {
		return invalid(CodeUnsupportedSchemaVersion, "schema_version", "usage alert schema_version %d is not supported (%d)", v, UsageAlertSchemaVersion)
	}
	return nil
}

// checkConsistency holds the rules across fields.
func (a *UsageAlert) checkConsistency() error {
	unlimited := a.Limit.Equal(quotaUnlimited)
	switch {
	case a.Kind == AlertKindPercent && (!a.Threshold.IsInteger() || a.Threshold.Sign() <= 0 || a.Threshold.GreaterThan(decimal.NewFromInt(MaxAlertPercent))):
		return invalid(CodeInvalidField, "threshold", "a percent threshold is an integer in 1..%d, not %s", MaxAlertPercent, a.Threshold)
	case a.Kind == AlertKindAbsolute && a.Threshold.Sign() <= 0:
		return invalid(CodeInvalidField, "threshold", "an absolute threshold is a usage amount > 0, not %s", a.Threshold)
	case a.Kind == AlertKindOverage && !a.Threshold.IsZero():
		return invalid(CodeInvalidField, "threshold", "an overage alert has threshold 0, not %s", a.Threshold)
	case a.Kind != AlertKindAbsolute && unlimited:
		return invalid(CodeInvalidField, "limit", "a %s alert needs a limit; -1 (unlimited) has none", a.Kind)
	case unlimited && !a.Percentage.IsZero():
		return invalid(CodeInvalidField, "percentage", "percentage must be 0 when the limit is -1 (unlimited), not %s", a.Percentage)
	case !a.PeriodEnd.After(a.PeriodStart):
		return invalid(CodeInvalidField, "period_end", "period_end %s is not after period_start %s",
			a.PeriodEnd.UTC().Format(time.RFC3339Nano), a.PeriodStart.UTC().Format(time.RFC3339Nano))
	}
	if want := AlertID(a.TenantID, a.FeatureType, a.Period, a.Kind, a.Threshold); a.AlertID != want {
		return invalid(CodeInvalidField, "alert_id", "alert_id %s is not AlertID of tenant_id, feature_type, period, kind and threshold (%s)", a.AlertID, want)
	}
	return nil
}
