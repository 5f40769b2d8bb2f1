package schemas

import "fmt"

// Code is a stable, machine-readable reason why an event was refused. Codes
// are part of the contract: they appear in DLQ headers and metrics and are
// never renamed.
type Code string

const (
	CodeMalformedJSON   Code = "malformed_json"
	CodePayloadTooLarge Code = "payload_too_large"
	CodeMissingField    Code = "missing_field"
	CodeInvalidType     Code = "invalid_type"
	CodeInvalidField    Code = "invalid_field"
	CodeUnknownField    Code = "unknown_field"
	// CodeDuplicateField: a member name appears twice in one object, so
	// the event is ambiguous (parsers disagree on which value wins).
	CodeDuplicateField           Code = "duplicate_field"
	CodeInvalidQuantity          Code = "invalid_quantity"
	CodeInvalidTimestamp         Code = "invalid_timestamp"
	CodeTimestampTooFarInFuture  Code = "timestamp_too_far_in_future"
	CodeInvalidBillingPeriod     Code = "invalid_billing_period"
	CodeUnsupportedSchemaVersion Code = "unsupported_schema_version"
	// CodeRerouteTooLarge: a valid event on the wrong partition or key
	// whose re-routed copy (the original plus a key and two headers) the
	// broker refuses as too large; republish it keyed by its tenant_id.
	CodeRerouteTooLarge Code = "reroute_too_large"
)

// withField reports whether the field name is part of the code's tag: for
// these codes the code alone does not say which field is wrong.
func (c Code) withField() bool {
	switch c {
	case CodeMissingField, CodeInvalidType, CodeInvalidField, CodeUnknownField, CodeDuplicateField:
		return true
	}
	return false
}

// ValidationError explains why an event does not satisfy the contract.
type ValidationError struct {
	Code   Code
	Field  string // the offending field, e.g. "tenant_id" (empty for malformed_json)
	Reason string // human-readable detail
}

// Tag is the stable code, with the field appended where the code needs it:
// "missing_field:tenant_id", "invalid_quantity".
func (e *ValidationError) Tag() string {
	if e.Code.withField() && e.Field != "" {
		return string(e.Code) + ":" + e.Field
	}
	return string(e.Code)
}

// MetricTag is Tag with a bounded set of values, for metric labels: the
// field is kept only when it is a field of a contract (UsageEvent,
// QuotaState, or "key"); otherwise, as for any unknown_field, the code
// alone ("unknown_field", "duplicate_field"). Raw input never becomes a
// label value, so a publisher cannot create unbounded label cardinality.
// DLQ headers keep the full Tag.
func (e *ValidationError) MetricTag() string {
	if e.Code.withField() && e.Field != "" && e.Code != CodeUnknownField && contractField(e.Field) {
		return string(e.Code) + ":" + e.Field
	}
	return string(e.Code)
}

// contractField reports whether name is a member of a contract's wire form.
func contractField(name string) bool {
	switch name {
	case "id", "tenant_id", "user_id", "feature_type", "quantity", "timestamp", "metadata", "billing_period",
		"schema_version", "key":
		return true
	}
	for _, f := range quotaStateFields {
		if f == name {
			return true
		}
	}
	return false
}

func (e *ValidationError) Error() string {
	return fmt.Sprintf("invalid message: %s: %s", e.Tag(), e.Reason)
}

func invalid(code Code, field, format string, args ...any) *ValidationError {
	return &ValidationError{Code: code, Field: field, Reason: fmt.Sprintf(format, args...)}
}
