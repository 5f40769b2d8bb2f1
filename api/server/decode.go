package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"time"

	"github.com/usagemeter/usagemeter/quota"
	"github.com/usagemeter/usagemeter/schemas"
)

// Error codes of 4xx and 5xx answers; field names the request member at
// fault and tag, for a refused event field, is the contract's tag
// (schemas.ValidationError.Tag), the same the consumer writes to the DLQ.
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
	codePendingFull  = "PENDING_FULL"
)

// tagUnknownMeter is the tag the aggregator gives an event of a meter its
// plans file does not define (with unknown_meters: reject).
const tagUnknownMeter = "unknown_meter"

// maxQuantity is the largest quantity one request may carry: the quota
// cache holds a tenant's pending usage in 64-bit nano-units (quota.Check
// refuses more with quota_too_large), about 18.4 billion units, below the
// contract's 10^18 for one event.
var maxQuantity = quota.Nanos(math.MaxUint64)

// apiError is an answer other than 2xx.
type apiError struct {
	status int
	Error  string `json:"error"`
	Code   string `json:"code"`
	Field  string `json:"field,omitempty"`
	Tag    string `json:"tag,omitempty"`
}

func badField(code, field, format string, args ...any) *apiError {
	return &apiError{status: http.StatusBadRequest, Code: code, Field: field, Error: fmt.Sprintf(format, args...)}
}

// contractError turns the contract's refusal of an event field into a 400
// that names the field and carries the contract's tag.
func contractError(err error) *apiError {
	var ve *schemas.ValidationError
	if !errors.As(err, &ve) {
		return badField(codeInvalidField, "", "%v", err)
	}
	code := codeInvalidField
	switch ve.Code {
	case schemas.CodeMalformedJSON:
		code = codeMalformed
	case schemas.CodeMissingField:
		code = codeMissingField
	case schemas.CodeUnknownField:
		code = codeUnknownField
	case schemas.CodePayloadTooLarge:
		return &apiError{status: http.StatusRequestEntityTooLarge, Code: codeTooLarge, Error: ve.Reason, Tag: ve.Tag()}
	}
	e := badField(code, ve.Field, "%s", ve.Reason)
	e.Tag = ve.Tag()
	return e
}

// maxMembers bounds the members of one request body.
const maxMembers = 16

// member is one top-level member of a request body: its key (unescaped)
// and its value as sent, both slices of the body (an escaped key, rare, is
// a copy).
type member struct {
	key []byte
	raw []byte
}

// reqBuf is what parsing one request needs, pooled (Server.reqBufs): the
// body, its members and the event text handed to the contract's decoder.
// Nothing parse returns points into it: the decoder copies its input.
type reqBuf struct {
	body    []byte
	ev      []byte
	members [maxMembers]member
	items   [maxMembers]member // of one /v1/check/batch item
	batch   []request          // /v1/check/batch's checks
}

// readBody appends r's body, at most limit bytes, to dst. A body of a
// known length within the limit (what a client sends) is read straight
// into dst, so a pooled buffer makes the read allocation-free; one of an
// unknown or too large length goes through http.MaxBytesReader, which also
// makes net/http close the connection after the 413 instead of reading
// the rest.
func readBody(dst []byte, w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	src := io.Reader(r.Body)
	if r.ContentLength < 0 || r.ContentLength > limit {
		src = http.MaxBytesReader(w, r.Body, limit)
	} else {
		dst = slices.Grow(dst, int(r.ContentLength)+1) // +1: room for the read that says EOF
	}
	for {
		if len(dst) == cap(dst) {
			dst = append(dst, 0)[:len(dst)]
		}
		n, err := src.Read(dst[len(dst):cap(dst)])
		dst = dst[:len(dst)+n]
		switch {
		case int64(len(dst)) > limit: // only if the body outgrew its Content-Length
			return dst, &http.MaxBytesError{Limit: limit}
		case err == io.EOF:
			return dst, nil
		case err != nil:
			return dst, err
		}
	}
}

// readObject reads one JSON object of at most limit bytes, nothing after
// it, into rb and returns its members in order (a slice of rb.members).
// Values are kept as sent so that the event members reach the contract's
// decoder byte for byte (a null metadata value, a duplicate inside
// metadata, invalid UTF-8). The body is checked with json.Valid and then
// split by hand: encoding/json's Token API cost 30 allocations per
// /v1/check.
func readObject(w http.ResponseWriter, r *http.Request, limit int64, rb *reqBuf) ([]member, *apiError) {
	body, err := readBody(rb.body[:0], w, r, limit)
	rb.body = body
	if err != nil {
		if mbe := (*http.MaxBytesError)(nil); errors.As(err, &mbe) {
			return nil, jsonError(err)
		}
		return nil, badField(codeMalformed, "", "the body could not be read: %v", err) // the client went away, or read_timeout passed
	}
	return splitObject(body, &rb.members)
}

// splitObject returns the members of the JSON object body, in order, in
// ms: without allocating unless a key holds an escape.
func splitObject(body []byte, ms *[maxMembers]member) ([]member, *apiError) {
	if len(bytes.TrimSpace(body)) == 0 {
		return nil, jsonError(io.EOF)
	}
	if !json.Valid(body) {
		var v any
		return nil, jsonError(json.Unmarshal(body, &v)) // the syntax error, with its offset
	}
	i := skipSpace(body, 0)
	if body[i] != '{' {
		return nil, badField(codeMalformed, "", "the body must be a JSON object")
	}
	members := ms[:0]
	for i = skipSpace(body, i+1); body[i] != '}'; i = skipSpace(body, i+1) {
		if body[i] == ',' {
			i = skipSpace(body, i+1)
		}
		end := skipValue(body, i) // the key: a string, as the body is valid JSON
		key := body[i+1 : end-1]
		if bytes.IndexByte(key, '\\') >= 0 {
			var k string
			_ = json.Unmarshal(body[i:end], &k) // valid: cannot fail
			key = []byte(k)
		}
		if len(members) == maxMembers {
			// A request has at most 9 members; this bounds the work a
			// body of junk members can cause.
			return nil, badField(codeMalformed, "", "the body has more than %d members", maxMembers)
		}
		for _, m := range members {
			if bytes.Equal(m.key, key) {
				// As the contract: parsers disagree on which value counts.
				e := badField(codeInvalidField, string(key), "member %q appears more than once", key)
				e.Tag = string(schemas.CodeDuplicateField) + ":" + string(key)
				return nil, e
			}
		}
		i = skipSpace(body, skipSpace(body, end)+1) // past the colon
		end = skipValue(body, i)
		members = append(members, member{key: key, raw: body[i:end]})
		i = skipSpace(body, end) - 1 // the loop steps onto ',' or '}'
	}
	return members, nil
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// skipValue returns the end of the value starting at b[i]; b is valid JSON.
func skipValue(b []byte, i int) int {
	switch b[i] {
	case '"':
		for i++; b[i] != '"'; i++ {
			if b[i] == '\\' {
				i++
			}
		}
		return i + 1
	case '{', '[':
		depth := 0
		for ; ; i++ {
			switch b[i] {
			case '"':
				i = skipValue(b, i) - 1
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return i + 1
				}
			}
		}
	}
	for i < len(b) && b[i] != ',' && b[i] != '}' && b[i] != ']' && b[i] != ' ' && b[i] != '\t' && b[i] != '\n' && b[i] != '\r' {
		i++
	}
	return i
}

func jsonError(err error) *apiError {
	var (
		mbe *http.MaxBytesError
		se  *json.SyntaxError
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
	}
	return badField(codeMalformed, "", "malformed JSON: %v", err)
}

// position is a record's place, for read-your-writes.
type position struct {
	Topic     string `json:"topic"`
	Partition *int32 `json:"partition"`
	Offset    *int64 `json:"offset"`
}

// request is a validated /v1/check or /v1/track body.
type request struct {
	// event is the usage as the contract reads it (schemas.Validator),
	// normalised; ID and Timestamp are the api's own when not sent.
	event       schemas.UsageEvent
	qty         quota.Amount
	minPosition *position
	waitMS      int64
}

// Members each route takes. The event members of /v1/track are the
// contract's fields; billing_period and schema_version are derived.
var (
	checkMembers = map[string]bool{"tenant_id": true, "feature_type": true, "quantity": true}
	trackMembers = map[string]bool{"tenant_id": true, "feature_type": true, "quantity": true,
		"id": true, "user_id": true, "timestamp": true, "metadata": true}
)

// parse reads and validates a request. The event members go through the
// contract's own decoder, the one the consumer applies, so whatever the
// pipeline would refuse is a 400 here naming the same field.
func (s *Server) parse(w http.ResponseWriter, r *http.Request, eventMembers map[string]bool, now time.Time) (request, *apiError) {
	rb := s.getReqBuf()
	defer s.reqBufs.Put(rb)
	members, e := readObject(w, r, s.cfg.MaxBodyBytes, rb)
	if e != nil {
		return request{}, e
	}
	return s.parseMembers(members, eventMembers, true, now, rb)
}

func (s *Server) getReqBuf() *reqBuf {
	if rb, _ := s.reqBufs.Get().(*reqBuf); rb != nil {
		return rb
	}
	return new(reqBuf)
}

// parseMembers validates a request's members (the event members through
// the contract's decoder, with rb.ev as scratch); positional: min_position
// and wait_ms are taken too.
func (s *Server) parseMembers(members []member, eventMembers map[string]bool, positional bool, now time.Time, rb *reqBuf) (request, *apiError) {
	var e *apiError
	var req request
	ev := append(rb.ev[:0], '{')
	var hasID, hasTimestamp, hasQuantity bool
	for _, m := range members {
		isNull := bytes.Equal(m.raw, []byte("null"))
		// string(m.key) in a comparison or a map index does not allocate;
		// only the error paths make the key a string.
		switch {
		case !positional && (string(m.key) == "min_position" || string(m.key) == "wait_ms"):
			key := string(m.key)
			return request{}, badField(codeUnknownField, key, "unknown field %q", key)
		case string(m.key) == "min_position":
			if req.minPosition, e = decodePosition(m.raw); e != nil {
				return request{}, e
			}
			continue
		case string(m.key) == "wait_ms":
			var ms int64 // not &req.waitMS: req would move to the heap
			if err := json.Unmarshal(m.raw, &ms); err != nil || isNull || ms < 0 || ms > s.cfg.MaxWait.Milliseconds() {
				return request{}, badField(codeInvalidField, "wait_ms", "wait_ms must be an integer 0-%d", s.cfg.MaxWait.Milliseconds())
			}
			req.waitMS = ms
			continue
		case !eventMembers[string(m.key)]:
			key := string(m.key)
			return request{}, badField(codeUnknownField, key, "unknown field %q", key)
		case isNull && string(m.key) != "tenant_id" && string(m.key) != "feature_type":
			// openapi.yaml types them without null; omit an optional member.
			key := string(m.key)
			e := badField(codeInvalidField, key, "%s must not be null: omit it instead", key)
			e.Tag = string(schemas.CodeInvalidType) + ":" + key
			return request{}, e
		case string(m.key) == "id":
			hasID = true
		case string(m.key) == "timestamp":
			hasTimestamp = true
		case string(m.key) == "quantity":
			hasQuantity = true
		}
		ev = appendString(ev, m.key)
		ev = append(append(append(ev, ':'), m.raw...), ',')
	}
	if !hasID {
		id := "check" // /v1/check publishes nothing; any valid id will do
		if eventMembers["id"] {
			id = schemas.NewID()
		}
		ev = append(appendString(append(ev, `"id":`...), id), ',')
	}
	if !hasQuantity {
		ev = append(ev, `"quantity":"1",`...)
	}
	if !hasTimestamp {
		ev = append(ev, `"timestamp":"`...)
		ev = append(now.UTC().AppendFormat(ev, time.RFC3339Nano), `",`...)
	}
	ev[len(ev)-1] = '}'
	rb.ev = ev // keeps what it grew to
	var err error
	if req.event, err = s.validator.Decode(ev); err != nil {
		return request{}, contractError(err)
	}
	if e := s.validKey(req.event.TenantID, req.event.FeatureType); e != nil {
		return request{}, e
	}
	// The contract bounds a quantity to 18 integer and 9 fractional digits,
	// which AmountOf always takes.
	if req.qty, err = quota.AmountOf(req.event.Quantity); err != nil || req.qty.Cmp(maxQuantity) > 0 {
		e := badField(codeInvalidField, "quantity", "quantity %s is more than one request can count (%s: the quota cache holds pending usage in 64-bit nano-units); meter in a larger unit, or publish it with the producer SDK",
			req.event.Quantity, maxQuantity)
		e.Tag = string(schemas.CodeInvalidQuantity)
		return request{}, e
	}
	return req, nil
}

func decodePosition(raw json.RawMessage) (*position, *apiError) {
	if bytes.Equal(raw, []byte("null")) {
		return nil, badField(codeInvalidField, "min_position", "min_position must not be null: omit it instead")
	}
	var p position
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return nil, badField(codeInvalidField, "min_position", "min_position must be {topic, partition, offset}: %v", err)
	}
	switch {
	case p.Topic == "":
		return nil, badField(codeMissingField, "min_position.topic", "min_position.topic is required")
	case p.Partition == nil || *p.Partition < 0:
		return nil, badField(codeInvalidField, "min_position.partition", "min_position.partition must be an integer >= 0")
	case p.Offset == nil || *p.Offset < 0:
		return nil, badField(codeInvalidField, "min_position.offset", "min_position.offset must be an integer >= 0")
	}
	return &p, nil
}

// validKey answers what quota.Check would refuse for the tenant and meter
// whatever the quantity (the cache's own rule, so the two cannot differ):
// a meter the plans file does not know (a typo must never be "allowed,
// unlimited") and a limit Check cannot enforce (a gauge or unique count).
func (s *Server) validKey(tenant, meter string) *apiError {
	err := s.cache.ValidateKey(tenant, meter)
	var e *apiError
	switch {
	case err == nil:
		return nil
	case errors.Is(err, quota.ErrUnknownMeter):
		e = badField(codeInvalidField, "feature_type", "feature_type %q is not a meter of the plans file (%s)", meter, s.meterList)
		e.Tag = tagUnknownMeter
	case errors.Is(err, quota.ErrUnsupportedAggregation):
		e = badField(codeInvalidField, "feature_type", "%v", err)
		e.Tag = quota.ReasonUnsupported
	default:
		e = contractError(err)
	}
	return e
}

// validTenant applies the contract's tenant_id rules to a tenant named
// outside an event (the path of /v1/quotas/{tenant}).
func (s *Server) validTenant(tenant string, now time.Time) *apiError {
	probe := schemas.UsageEvent{ID: "quotas", TenantID: tenant, FeatureType: "probe", Timestamp: now}
	var ve *schemas.ValidationError
	if err := s.validator.Validate(&probe); errors.As(err, &ve) && ve.Field == "tenant_id" {
		return &apiError{status: http.StatusBadRequest, Code: codeInvalidField, Field: "tenant", Error: ve.Reason, Tag: ve.Tag()}
	}
	return nil
}
