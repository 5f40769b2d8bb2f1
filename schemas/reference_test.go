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
// scanner in decode.go replaced. FuzzDecodeMatchesReference checks that
// both agree. It relies on encoding/json v1 (not GOEXPERIMENT=jsonv2).

// jsonWireEvent mirrors the JSON object. Quantity stays raw so that numbers
// are read from their text (never through float64) and strings are accepted too.
type jsonWireEvent struct {
	ID            string            `json:"id"`
	TenantID      string            `json:"tenant_id"`
	UserID        string            `json:"user_id"`
	FeatureType   string            `json:"feature_type"`
	Quantity      json.RawMessage   `json:"quantity"`
	Timestamp     string            `json:"timestamp"`
	Metadata      map[string]string `json:"metadata"`
	BillingPeriod string            `json:"billing_period"`
	SchemaVersion *int              `json:"schema_version"`
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
		UserID:        w.UserID,
		FeatureType:   w.FeatureType,
		Metadata:      w.Metadata,
		BillingPeriod: w.BillingPeriod,
		SchemaVersion: CurrentSchemaVersion,
	}
	// Field order here is the order in which errors are reported.
	if err := checkIdentity(&e); err != nil {
		return UsageEvent{}, err
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
	if perr != nil {
		return UsageEvent{}, invalid(CodeInvalidTimestamp, "timestamp", "%q is not an RFC 3339 date-time", w.Timestamp)
	}
	e.Timestamp = ts.UTC()
	if w.SchemaVersion != nil {
		e.SchemaVersion = *w.SchemaVersion
	}
	if err := v.checkRest(&e); err != nil {
		return UsageEvent{}, err
	}
	return e, nil
}

func parseQuantityReference(raw json.RawMessage) (decimal.Decimal, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return decimal.Decimal{}, invalid(CodeMissingField, "quantity", "quantity is required")
	}
	text := string(raw)
	switch raw[0] {
	case '"':
		// Strings use plain notation only: "12.5", never "1.25e1".
		var s string
		if err := json.Unmarshal(raw, &s); err != nil || !isDecimalText(s, false) {
			return decimal.Decimal{}, invalid(CodeInvalidQuantity, "quantity", "%s is not a plain decimal string such as \"12.5\"", raw)
		}
		text = s
	case '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
	default:
		return decimal.Decimal{}, invalid(CodeInvalidType, "quantity", "quantity must be a decimal number or a string holding one")
	}
	if !isDecimalText(text, true) {
		return decimal.Decimal{}, invalid(CodeInvalidQuantity, "quantity", "%q is not a decimal number", text)
	}
	d, err := decimal.NewFromString(text)
	if err != nil {
		return decimal.Decimal{}, invalid(CodeInvalidQuantity, "quantity", "%q is not a decimal number", text)
	}
	return d, checkQuantity(d)
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
