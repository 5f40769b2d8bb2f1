package schemas

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"time"

	"github.com/shopspring/decimal"
)

// This file keeps the encoding/json implementation of Decode that the
// scanner in decode.go replaced, updated for the rules encoding/json can
// see after decoding (null metadata values, "" user_id and billing_period,
// integer-valued schema_version). FuzzDecodeMatchesReference checks that
// both agree; the rules encoding/json cannot see (duplicate names, invalid
// UTF-8, unpaired surrogates) are checked there with their own helpers. It
// relies on encoding/json v1 (not GOEXPERIMENT=jsonv2).

// jsonWireEvent mirrors the JSON object. Quantity stays raw so that numbers
// are read from their text (never through float64) and strings are accepted too.
type jsonWireEvent struct {
	ID            string             `json:"id"`
	TenantID      string             `json:"tenant_id"`
	UserID        *string            `json:"user_id"`
	FeatureType   string             `json:"feature_type"`
	Quantity      json.RawMessage    `json:"quantity"`
	Timestamp     string             `json:"timestamp"`
	Metadata      map[string]*string `json:"metadata"`
	BillingPeriod *string            `json:"billing_period"`
	SchemaVersion json.RawMessage    `json:"schema_version"`
}

// decodeReference is the former (*Validator).Decode.
func decodeReference(v *Validator, data []byte) (UsageEvent, error) {
	if len(data) > v.maxBytes {
		return UsageEvent{}, invalid(CodePayloadTooLarge, "", "event is %d bytes, the limit is %d", len(data), v.maxBytes)
	}
	var w jsonWireEvent
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&w); err != nil {
		return UsageEvent{}, decodeErrorReference(err)
	}
	if dec.More() {
		return UsageEvent{}, invalid(CodeMalformedJSON, "", "trailing data after the JSON object")
	}

	e := UsageEvent{
		ID:            w.ID,
		TenantID:      w.TenantID,
		FeatureType:   w.FeatureType,
		SchemaVersion: CurrentSchemaVersion,
	}
	if w.UserID != nil {
		e.UserID = *w.UserID
	}
	if w.BillingPeriod != nil {
		e.BillingPeriod = *w.BillingPeriod
	}
	if w.Metadata != nil {
		e.Metadata = make(map[string]string, len(w.Metadata))
		for k, val := range w.Metadata {
			if val == nil {
				return UsageEvent{}, invalid(CodeInvalidType, "metadata", "metadata must not be a JSON null")
			}
			e.Metadata[k] = *val
		}
	}
	if raw := w.SchemaVersion; len(raw) > 0 && string(raw) != "null" {
		n, isInt, inRange := jsonInt64(string(raw))
		switch {
		case raw[0] != '-' && (raw[0] < '0' || raw[0] > '9') || !isInt:
			return UsageEvent{}, invalid(CodeInvalidType, "schema_version", "schema_version must not be %s", raw)
		case !inRange:
			e.SchemaVersion = -1
		default:
			e.SchemaVersion = int(n)
		}
	}
	// Field order here is the order in which errors are reported.
	if err := checkIdentity(&e); err != nil {
		return UsageEvent{}, err
	}
	if w.UserID != nil && *w.UserID == "" {
		return UsageEvent{}, invalid(CodeInvalidField, "user_id", "user_id must not be empty")
	}
	q, err := parseQuantityReference(w.Quantity)
	if err != nil {
		return UsageEvent{}, err
	}
	e.Quantity = q
	if w.Timestamp == "" {
		return UsageEvent{}, invalid(CodeMissingField, "timestamp", "timestamp is required (RFC 3339)")
	}
	ts, perr := time.Parse(time.RFC3339Nano, w.Timestamp)
	if perr != nil || !isRFC3339Text(w.Timestamp) {
		return UsageEvent{}, invalid(CodeInvalidTimestamp, "timestamp", "%q is not an RFC 3339 date-time", w.Timestamp)
	}
	e.Timestamp = ts.UTC()
	if w.BillingPeriod != nil && *w.BillingPeriod == "" {
		return UsageEvent{}, invalid(CodeInvalidBillingPeriod, "billing_period", "billing_period must not be empty")
	}
	if err := v.checkRest(&e, "", nil); err != nil {
		return UsageEvent{}, err
	}
	return e, nil
}

func parseQuantityReference(raw json.RawMessage) (decimal.Decimal, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return decimal.Decimal{}, invalid(CodeMissingField, "quantity", "quantity is required")
	}
	switch raw[0] {
	case '"':
		var s string
		if err := json.Unmarshal(raw, &s); err != nil || !isPlainDecimal(s, QuantityIntDigits, QuantityScale) {
			return decimal.Decimal{}, invalid(CodeInvalidQuantity, "quantity", "%s is not a plain decimal string such as \"12.5\"", raw)
		}
		return decimal.RequireFromString(s), nil
	case '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
		return parseQuantityNumber(string(raw))
	}
	return decimal.Decimal{}, invalid(CodeInvalidType, "quantity", "quantity must be a decimal number or a string holding one")
}

// decodeErrorReference turns an encoding/json error into the contract's codes.
func decodeErrorReference(err error) error {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		field, _, _ := strings.Cut(te.Field, ".")
		if field == "" {
			return invalid(CodeMalformedJSON, "", "the event must be a JSON object, got %s", te.Value)
		}
		return invalid(CodeInvalidType, field, "%s must not be a JSON %s", field, te.Value)
	}
	if name, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		name = strings.Trim(name, `"`)
		return invalid(CodeUnknownField, name, "field %q is not part of schema version %d", name, CurrentSchemaVersion)
	}
	return invalid(CodeMalformedJSON, "", "%v", err)
}
