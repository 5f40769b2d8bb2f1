package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/usagemeter/usagemeter/quota"
	"github.com/usagemeter/usagemeter/schemas"
)

// Error codes of 4xx answers; field names the request member at fault.
const (
	codeMalformed    = "MALFORMED_JSON"
	codeUnknownField = "UNKNOWN_FIELD"
	codeMissingField = "MISSING_FIELD"
	codeInvalidField = "INVALID_FIELD"
	codeTooLarge     = "BODY_TOO_LARGE"
	codeUnauthorized = "UNAUTHORIZED"
	codeForbidden    = "FORBIDDEN"
	codeNotCaughtUp  = "NOT_CAUGHT_UP"
	codeTrackFailed  = "TRACK_FAILED"
)

// apiError is an answer other than 2xx.
type apiError struct {
	status int
	Error  string `json:"error"`
	Code   string `json:"code"`
	Field  string `json:"field,omitempty"`
}

func badField(code, field, format string, args ...any) *apiError {
	return &apiError{status: http.StatusBadRequest, Code: code, Field: field, Error: fmt.Sprintf(format, args...)}
}

// decode reads one JSON object into dst: at most limit bytes, no unknown
// members, nothing after it. Errors name the problem and the field.
func decode(w http.ResponseWriter, r *http.Request, limit int64, dst any) *apiError {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, limit))
	dec.DisallowUnknownFields()
	err := dec.Decode(dst)
	if err == nil {
		if _, terr := dec.Token(); !errors.Is(terr, io.EOF) {
			var mbe *http.MaxBytesError
			if errors.As(terr, &mbe) {
				err = terr
			} else {
				return badField(codeMalformed, "", "unexpected data after the JSON object")
			}
		}
	}
	if err == nil {
		return nil
	}
	var (
		mbe *http.MaxBytesError
		se  *json.SyntaxError
		te  *json.UnmarshalTypeError
	)
	switch {
	case errors.As(err, &mbe):
		return &apiError{status: http.StatusRequestEntityTooLarge, Code: codeTooLarge,
			Error: fmt.Sprintf("request body is larger than %d bytes", mbe.Limit)}
	case errors.As(err, &se):
		return badField(codeMalformed, "", "malformed JSON at byte %d: %v", se.Offset, se)
	case errors.Is(err, io.EOF):
		return badField(codeMalformed, "", "empty body: a JSON object is required")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return badField(codeMalformed, "", "truncated JSON")
	case errors.As(err, &te):
		if te.Field == "" {
			return badField(codeMalformed, "", "the body must be a JSON object, not %s", te.Value)
		}
		return badField(codeInvalidField, te.Field, "%s must be %s, not %s", te.Field, jsonType(te.Type.Kind().String()), te.Value)
	}
	if name, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		name = strings.Trim(name, `"`)
		return badField(codeUnknownField, name, "unknown field %q", name)
	}
	return badField(codeMalformed, "", "malformed JSON: %v", err)
}

func jsonType(kind string) string {
	switch kind {
	case "string":
		return "a string"
	case "map", "struct":
		return "an object"
	case "slice":
		return "an array"
	case "bool":
		return "a boolean"
	}
	return "a number"
}

// position is a record's place, for read-your-writes.
type position struct {
	Topic     string `json:"topic"`
	Partition *int32 `json:"partition"`
	Offset    *int64 `json:"offset"`
}

// request is the body of /v1/check and /v1/track (track-only fields are
// refused by check).
type request struct {
	ID          string            `json:"id,omitempty"`
	TenantID    string            `json:"tenant_id"`
	FeatureType string            `json:"feature_type"`
	Quantity    json.RawMessage   `json:"quantity"`
	UserID      string            `json:"user_id,omitempty"`
	Timestamp   string            `json:"timestamp,omitempty"`
	Metadata    map[string]string `json:"metadata,omitempty"`
	MinPosition *position         `json:"min_position"`
	WaitMS      int64             `json:"wait_ms"`
}

// checkRequest is /v1/check's body: no event fields.
type checkRequest struct {
	TenantID    string          `json:"tenant_id"`
	FeatureType string          `json:"feature_type"`
	Quantity    json.RawMessage `json:"quantity"`
	MinPosition *position       `json:"min_position"`
	WaitMS      int64           `json:"wait_ms"`
}

// validate checks the common fields and returns the quantity.
func (q *request) validate(maxWaitMS int64) (quota.Amount, *apiError) {
	switch {
	case q.TenantID == "":
		return quota.Amount{}, badField(codeMissingField, "tenant_id", "tenant_id is required")
	case q.FeatureType == "":
		return quota.Amount{}, badField(codeMissingField, "feature_type", "feature_type is required")
	}
	// The quota-state key rules are the contract's rules for both names.
	if _, _, _, err := schemas.ParseQuotaStateKey(schemas.QuotaStateKey(q.TenantID, q.FeatureType, "2000-01")); err != nil {
		var ve *schemas.ValidationError
		field := "tenant_id"
		if errors.As(err, &ve) && ve.Field == "feature_type" {
			field = "feature_type"
		}
		msg := err.Error()
		if errors.As(err, &ve) {
			msg = ve.Reason
		}
		return quota.Amount{}, badField(codeInvalidField, field, "%s", msg)
	}
	qty := quota.Units(1)
	if len(q.Quantity) > 0 {
		s := string(q.Quantity)
		if s[0] == '"' {
			if err := json.Unmarshal(q.Quantity, &s); err != nil {
				return quota.Amount{}, badField(codeInvalidField, "quantity", "quantity: %v", err)
			}
		} else if s == "null" || s[0] == '{' || s[0] == '[' || s[0] == 't' || s[0] == 'f' {
			return quota.Amount{}, badField(codeInvalidField, "quantity", "quantity must be a decimal string such as \"1.5\" or a number")
		}
		a, err := quota.ParseAmount(s)
		if err != nil {
			return quota.Amount{}, badField(codeInvalidField, "quantity", "quantity %v", err)
		}
		qty = a
	}
	if q.WaitMS < 0 || q.WaitMS > maxWaitMS {
		return quota.Amount{}, badField(codeInvalidField, "wait_ms", "wait_ms must be 0-%d", maxWaitMS)
	}
	if p := q.MinPosition; p != nil {
		switch {
		case p.Topic == "":
			return quota.Amount{}, badField(codeMissingField, "min_position.topic", "min_position.topic is required")
		case p.Partition == nil || *p.Partition < 0:
			return quota.Amount{}, badField(codeInvalidField, "min_position.partition", "min_position.partition must be an integer >= 0")
		case p.Offset == nil || *p.Offset < 0:
			return quota.Amount{}, badField(codeInvalidField, "min_position.offset", "min_position.offset must be an integer >= 0")
		}
	}
	return qty, nil
}
