package schemas

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"errors"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/shopspring/decimal"
)

// QuotaState is the second contract of the pipeline: the aggregator's
// current answer for one tenant, meter and billing period. It is published
// as one JSON object per Kafka message on the compacted topic
// QuotaStateTopic, keyed by QuotaStateKey, so the latest message per key is
// the state; quota caches in every application read it. The JSON Schema in
// quota_state.schema.json (draft 2020-12) is the contract for readers in
// other languages, and testdata/quota_state_vectors.json pins it down.
//
// An empty message value (a compaction tombstone) is not a QuotaState:
// DecodeQuotaState refuses it as malformed_json.

//go:embed quota_state.schema.json
var quotaStateSchema string

//go:embed testdata/quota_state_vectors.json
var quotaStateVectors []byte

// QuotaStateJSONSchema returns quota_state.schema.json (draft 2020-12), the
// contract for quota caches in other languages.
func QuotaStateJSONSchema() []byte { return []byte(quotaStateSchema) }

// QuotaStateTestVectors returns the shared QuotaState test vectors, in the
// same shape as TestVectors: Vector.Event holds the quota state.
func QuotaStateTestVectors() ([]Vector, error) {
	return parseVectors(quotaStateVectors, "quota state")
}

// QuotaStateTopic is the compacted topic the aggregator publishes to.
const QuotaStateTopic = "usage.quota-state"

// QuotaStateSchemaVersion is the QuotaState version this package writes and
// the only one it reads.
const QuotaStateSchemaVersion = 1

// Quota levels. Between ok and at_limit a state is warning_<N>, N in 1..99:
// the highest warning threshold (percent of the limit) reached.
const (
	QuotaLevelOK      = "ok"
	QuotaLevelAtLimit = "at_limit"
	QuotaLevelOverage = "overage"
	QuotaLevelBlocked = "blocked"
)

// Limits of the QuotaState contract. They match quota_state.schema.json.
const (
	MaxPlanLen           = 128 // characters
	QuotaPercentageScale = 2   // fractional digits of percentage
	// quotaPercentageIntDigits bounds percentage: usage < 1e29 and the
	// smallest non-zero limit is 1e-9, so usage*100/limit < 1e40.
	quotaPercentageIntDigits = 40
)

var (
	quotaUnlimited     = decimal.NewFromInt(-1)
	maxQuotaPercentage = decimal.New(1, quotaPercentageIntDigits)
)

// QuotaState is the quota of one tenant for one meter in one billing period.
type QuotaState struct {
	TenantID    string `json:"tenant_id"`
	FeatureType string `json:"feature_type"` // the meter
	// Period is "2026-11" for a calendar month (UTC) or "2026-11-15" for a
	// period anchored on the tenant's anchor day.
	Period string `json:"period"`
	Plan   string `json:"plan"`
	// Decimals are exact and written as JSON strings. Usage and OverageUsed
	// are >= 0; Limit and Remaining are -1 when the meter is unlimited.
	// All have at most 29 integer and 9 fractional digits (AmountIntDigits:
	// totals, unlike one event's quantity, use all of Decimal(38, 9)).
	Usage       decimal.Decimal `json:"usage"`
	Limit       decimal.Decimal `json:"limit"`
	Remaining   decimal.Decimal `json:"remaining"`
	OverageUsed decimal.Decimal `json:"overage_used"`
	// Percentage is usage / limit * 100 with at most 2 decimals; 0 when
	// unlimited.
	Percentage decimal.Decimal `json:"percentage"`
	Level      string          `json:"level"` // ok, warning_<N>, at_limit, overage or blocked
	// The period is [PeriodStart, PeriodEnd), written in UTC.
	PeriodStart time.Time `json:"period_start"`
	PeriodEnd   time.Time `json:"period_end"`
	// Final reports that the period is closed: the state will not change.
	Final bool `json:"final"`
	// SourceOffsets maps a partition of usage.events to the highest offset
	// whose event this state reflects.
	SourceOffsets map[int32]int64 `json:"source_offsets"`
	UpdatedAt     time.Time       `json:"updated_at"` // when the aggregator produced the state
	// SchemaVersion is 1; 0 in a value built in Go means the current one.
	SchemaVersion int `json:"schema_version"`
}

// QuotaStateKey is the Kafka key of a quota state: tenant/meter/period.
// Tenant ids and meter names cannot contain '/', so the key is unambiguous.
func QuotaStateKey(tenant, meter, period string) string {
	return tenant + "/" + meter + "/" + period
}

// Key returns QuotaStateKey(s.TenantID, s.FeatureType, s.Period).
func (s *QuotaState) Key() string { return QuotaStateKey(s.TenantID, s.FeatureType, s.Period) }

// Unlimited reports whether the meter has no limit (Limit is -1).
func (s *QuotaState) Unlimited() bool { return s.Limit.Equal(quotaUnlimited) }

// ParseQuotaStateKey splits a key made by QuotaStateKey and validates its
// parts like DecodeQuotaState does. Errors are *ValidationError:
// invalid_field:key for the shape, else the tag of the part at fault.
func ParseQuotaStateKey(key string) (tenant, meter, period string, err error) {
	tenant, rest, ok1 := strings.Cut(key, "/")
	meter, period, ok2 := strings.Cut(rest, "/")
	if !ok1 || !ok2 || strings.Contains(period, "/") {
		return "", "", "", invalid(CodeInvalidField, "key", "quota state key %q is not tenant_id/feature_type/period", key)
	}
	if err := firstError(checkStateTenant(tenant), checkStateMeter(meter), checkStatePeriod(period)); err != nil {
		return "", "", "", err
	}
	return tenant, meter, period, nil
}

// AppendJSON appends the state's wire form to dst: decimals as JSON
// strings, times in RFC 3339 UTC, source_offsets sorted by partition and
// schema_version 1. It does not validate; call Validate first for a state
// that did not come from DecodeQuotaState.
func (s *QuotaState) AppendJSON(dst []byte) []byte {
	dst = append(dst, `{"tenant_id":`...)
	dst = appendString(dst, s.TenantID)
	dst = append(dst, `,"feature_type":`...)
	dst = appendString(dst, s.FeatureType)
	dst = append(dst, `,"period":`...)
	dst = appendString(dst, s.Period)
	dst = append(dst, `,"plan":`...)
	dst = appendString(dst, s.Plan)
	dst = append(dst, `,"usage":"`...)
	dst = appendDecimal(dst, s.Usage)
	dst = append(dst, `","limit":"`...)
	dst = appendDecimal(dst, s.Limit)
	dst = append(dst, `","remaining":"`...)
	dst = appendDecimal(dst, s.Remaining)
	dst = append(dst, `","overage_used":"`...)
	dst = appendDecimal(dst, s.OverageUsed)
	dst = append(dst, `","percentage":"`...)
	dst = appendDecimal(dst, s.Percentage)
	dst = append(dst, `","level":`...)
	dst = appendString(dst, s.Level)
	dst = append(dst, `,"period_start":"`...)
	dst = s.PeriodStart.UTC().AppendFormat(dst, time.RFC3339Nano)
	dst = append(dst, `","period_end":"`...)
	dst = s.PeriodEnd.UTC().AppendFormat(dst, time.RFC3339Nano)
	dst = append(dst, `","final":`...)
	dst = strconv.AppendBool(dst, s.Final)
	dst = append(dst, `,"source_offsets":{`...)
	dst = appendOffsets(dst, s.SourceOffsets)
	dst = append(dst, `},"updated_at":"`...)
	dst = s.UpdatedAt.UTC().AppendFormat(dst, time.RFC3339Nano)
	dst = append(dst, `","schema_version":`...)
	dst = strconv.AppendInt(dst, QuotaStateSchemaVersion, 10)
	return append(dst, '}')
}

// appendOffsets writes the members of source_offsets in partition order.
func appendOffsets(dst []byte, offsets map[int32]int64) []byte {
	var stack [32]int32 // no allocation for the usual partition counts
	parts := stack[:0]
	for p := range offsets {
		parts = append(parts, p)
	}
	slices.Sort(parts)
	for i, p := range parts {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, '"')
		dst = strconv.AppendInt(dst, int64(p), 10)
		dst = append(dst, `":`...)
		dst = strconv.AppendInt(dst, offsets[p], 10)
	}
	return dst
}

// appendDecimal appends d.String(). Coefficients of up to 15 digits, the
// usual case, are written without allocating.
func appendDecimal(dst []byte, d decimal.Decimal) []byte {
	exp := int(d.Exponent())
	if exp < -18 || exp > 18 || d.NumDigits() > 15 {
		return append(dst, d.String()...)
	}
	c := d.CoefficientInt64()
	if c < 0 {
		dst = append(dst, '-')
		c = -c
	}
	var buf [20]byte
	digits := strconv.AppendInt(buf[:0], c, 10)
	if c == 0 {
		return append(dst, '0')
	}
	if exp >= 0 {
		dst = append(dst, digits...)
		for range exp {
			dst = append(dst, '0')
		}
		return dst
	}
	frac := -exp // digits of the coefficient after the point, trailing zeros dropped
	for frac > 0 && digits[len(digits)-1] == '0' {
		digits = digits[:len(digits)-1]
		frac--
	}
	switch point := len(digits) - frac; {
	case frac == 0:
		dst = append(dst, digits...)
	case point > 0:
		dst = append(dst, digits[:point]...)
		dst = append(dst, '.')
		dst = append(dst, digits[point:]...)
	default: // 0.00ddd
		dst = append(dst, '0', '.')
		for range -point {
			dst = append(dst, '0')
		}
		dst = append(dst, digits...)
	}
	return dst
}

// Validate checks a state built in Go against the contract, with the rules
// and error tags of DecodeQuotaState. A state that passes encodes, with
// AppendJSON, to a message that DecodeQuotaState accepts.
func (s *QuotaState) Validate() error {
	return firstError(
		checkStateTenant(s.TenantID),
		checkStateMeter(s.FeatureType),
		checkStatePeriod(s.Period),
		checkStatePlan(s.Plan),
		checkAmount("usage", s.Usage, false),
		checkAmount("limit", s.Limit, true),
		checkAmount("remaining", s.Remaining, true),
		checkAmount("overage_used", s.OverageUsed, false),
		checkPercentage(s.Percentage),
		checkStateLevel(s.Level),
		checkStateTime("period_start", s.PeriodStart),
		checkStateTime("period_end", s.PeriodEnd),
		checkOffsets(s.SourceOffsets),
		checkStateTime("updated_at", s.UpdatedAt),
		checkStateVersion(s.SchemaVersion),
		s.checkConsistency(),
	)
}

// DecodeQuotaState parses and validates one message value of
// QuotaStateTopic. Times are returned in UTC. Any failure is a
// *ValidationError, reported in this order:
//   - malformed_json: not a single JSON object, or not UTF-8 (invalid bytes
//     or an unpaired surrogate escape);
//   - duplicate_field:<f>: a member name repeated in an object, anywhere
//     (<f> is the top-level member it is in): the state would be ambiguous;
//   - unsupported_schema_version: schema_version is an integer other than 1
//     (checked first, since a newer version may have other fields);
//   - unknown_field:<f>: the first unknown member in byte order of the name;
//   - then field by field, in the order of the wire form: missing_field:<f>
//     (absent, null or ""), invalid_type:<f> (wrong JSON type; decimals must
//     be strings), invalid_field:<f> (a value outside the contract);
//   - last, rules across fields: remaining and percentage when limit is -1,
//     period_end after period_start (invalid_field:<f> too).
func DecodeQuotaState(data []byte) (QuotaState, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return QuotaState{}, invalid(CodeMalformedJSON, "", "empty message (a compaction tombstone is not a quota state)")
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(data, &m); err != nil {
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return QuotaState{}, invalid(CodeMalformedJSON, "", "%v (offset %d)", err, se.Offset)
		}
		return QuotaState{}, invalid(CodeMalformedJSON, "", "a quota state must be a JSON object")
	}
	if m == nil { // the literal null
		return QuotaState{}, invalid(CodeMalformedJSON, "", "a quota state must be a JSON object, not null")
	}
	if err := checkStrictJSON(data); err != nil {
		return QuotaState{}, err
	}
	if raw, ok := m["schema_version"]; ok && jsonKind(raw) == 'n' {
		if n, isInt, inRange := jsonInt64(string(raw)); isInt && (!inRange || n != QuotaStateSchemaVersion) {
			return QuotaState{}, invalid(CodeUnsupportedSchemaVersion, "schema_version",
				"quota state schema_version %s is not supported (%d)", raw, QuotaStateSchemaVersion)
		}
	}
	var unknown []string
	for k := range m {
		if !slices.Contains(quotaStateFields, k) {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		name := strings.Trim(strconv.Quote(slices.Min(unknown)), `"`)
		return QuotaState{}, invalid(CodeUnknownField, name, "field %q is not part of quota state schema version %d", name, QuotaStateSchemaVersion)
	}

	r := stateReader{m: m}
	s := QuotaState{
		TenantID:      r.str("tenant_id", checkStateTenant),
		FeatureType:   r.str("feature_type", checkStateMeter),
		Period:        r.str("period", checkStatePeriod),
		Plan:          r.str("plan", checkStatePlan),
		Usage:         r.amount("usage", false),
		Limit:         r.amount("limit", true),
		Remaining:     r.amount("remaining", true),
		OverageUsed:   r.amount("overage_used", false),
		Percentage:    r.percentage(),
		Level:         r.str("level", checkStateLevel),
		PeriodStart:   r.time("period_start", true),
		PeriodEnd:     r.time("period_end", true),
		Final:         r.boolean("final"),
		SourceOffsets: r.offsets(),
		UpdatedAt:     r.time("updated_at", false),
		SchemaVersion: r.version(),
	}
	if r.err == nil {
		r.fail(s.checkConsistency())
	}
	if r.err != nil {
		return QuotaState{}, r.err
	}
	return s, nil
}

// checkStrictJSON refuses what encoding/json reads leniently: invalid UTF-8
// and unpaired surrogates (it substitutes U+FFFD) and repeated member
// names (it keeps the last). data is a valid JSON object.
func checkStrictJSON(data []byte) error {
	if !utf8.Valid(data) {
		return invalid(CodeMalformedJSON, "", "the message is not valid UTF-8")
	}
	d := decoder{s: string(data)}
	d.skipSpace()
	d.skipValue(1) // reads every string: finds unpaired surrogate escapes
	if d.syntax {
		return d.syntaxError()
	}
	if name, dup := firstDuplicate(data); dup {
		name = strings.Trim(strconv.Quote(name), `"`)
		return invalid(CodeDuplicateField, name, "a member name appears more than once in %q (ambiguous: parsers disagree on which value counts)", name)
	}
	return nil
}

// quotaStateFields are the members of the wire form, in its order.
var quotaStateFields = []string{"tenant_id", "feature_type", "period", "plan", "usage", "limit", "remaining",
	"overage_used", "percentage", "level", "period_start", "period_end", "final", "source_offsets", "updated_at",
	"schema_version"}

// stateReader reads the fields of a decoded object and keeps the first
// error; after one, it returns zero values.
type stateReader struct {
	m   map[string]json.RawMessage
	err error
}

func (r *stateReader) fail(err error) {
	if r.err == nil && err != nil {
		r.err = err
	}
}

// value returns the raw member field, recording missing_field when it is
// absent or null and invalid_type when its JSON kind is not want.
func (r *stateReader) value(field string, want byte) (json.RawMessage, bool) {
	if r.err != nil {
		return nil, false
	}
	raw, ok := r.m[field]
	kind := jsonKind(raw)
	switch {
	case !ok || kind == 0:
		r.fail(invalid(CodeMissingField, field, "%s is required", field))
	case kind != want:
		r.fail(invalid(CodeInvalidType, field, "%s must not be a JSON %s", field, kindName(kind)))
	default:
		return raw, true
	}
	return nil, false
}

// text returns a string member; "" counts as missing.
func (r *stateReader) text(field string) (string, bool) {
	raw, ok := r.value(field, '"')
	if !ok {
		return "", false
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil { // cannot happen: raw is a valid string
		r.fail(invalid(CodeInvalidType, field, "%s: %v", field, err))
		return "", false
	}
	if s == "" {
		r.fail(invalid(CodeMissingField, field, "%s is required", field))
		return "", false
	}
	return s, true
}

func (r *stateReader) str(field string, check func(string) error) string {
	s, ok := r.text(field)
	if ok {
		r.fail(check(s))
	}
	return s
}

// amount reads a decimal string of at most 29 integer and 9 fractional
// digits, or "-1" when unlimited is allowed.
func (r *stateReader) amount(field string, unlimited bool) decimal.Decimal {
	s, ok := r.text(field)
	if !ok {
		return decimal.Decimal{}
	}
	if !(unlimited && s == "-1") && !isPlainDecimal(s, AmountIntDigits, QuantityScale) {
		or := ""
		if unlimited {
			or = `, or "-1" (unlimited)`
		}
		r.fail(invalid(CodeInvalidField, field, "%s %q is not a decimal string of at most %d integer and %d fractional digits%s",
			field, s, AmountIntDigits, QuantityScale, or))
		return decimal.Decimal{}
	}
	return decimal.RequireFromString(s)
}

func (r *stateReader) percentage() decimal.Decimal {
	s, ok := r.text("percentage")
	if !ok {
		return decimal.Decimal{}
	}
	if !isPlainDecimal(s, quotaPercentageIntDigits, QuotaPercentageScale) {
		r.fail(invalid(CodeInvalidField, "percentage", "percentage %q is not a non-negative decimal string with at most %d decimals",
			s, QuotaPercentageScale))
		return decimal.Decimal{}
	}
	return decimal.RequireFromString(s)
}

// time reads an RFC 3339 date-time; with utc, only the "Z" zone.
func (r *stateReader) time(field string, utc bool) time.Time {
	s, ok := r.text(field)
	if !ok {
		return time.Time{}
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil || !isRFC3339Text(s) || (utc && s[len(s)-1] != 'Z') {
		zone := "a zone offset"
		if utc {
			zone = "Z (UTC)"
		}
		r.fail(invalid(CodeInvalidField, field, "%s %q is not an RFC 3339 date-time with %s", field, s, zone))
		return time.Time{}
	}
	return t.UTC()
}

func (r *stateReader) boolean(field string) bool {
	raw, ok := r.value(field, 't')
	return ok && raw[0] == 't'
}

func (r *stateReader) offsets() map[int32]int64 {
	const field = "source_offsets"
	raw, ok := r.value(field, '{')
	if !ok {
		return nil
	}
	var wire map[string]json.RawMessage
	if err := json.Unmarshal(raw, &wire); err != nil { // cannot happen: raw is a valid object
		r.fail(invalid(CodeInvalidType, field, "%s: %v", field, err))
		return nil
	}
	parts := make([]string, 0, len(wire))
	for k := range wire {
		parts = append(parts, k)
	}
	slices.Sort(parts) // report the same error every time
	offsets := make(map[int32]int64, len(wire))
	for _, k := range parts {
		if !isPartition(k) {
			r.fail(invalid(CodeInvalidField, field, "source_offsets key %q is not a partition number (0-999999999, no leading zeros)", k))
			return nil
		}
		v := wire[k]
		if kind := jsonKind(v); kind != 'n' {
			r.fail(invalid(CodeInvalidType, field, "source_offsets[%q] must be an integer, not a JSON %s", k, kindName(kind)))
			return nil
		}
		n, isInt, inRange := jsonInt64(string(v))
		switch {
		case !isInt:
			r.fail(invalid(CodeInvalidType, field, "source_offsets[%q] must be an integer, not %s", k, v))
			return nil
		case !inRange || n < 0:
			r.fail(invalid(CodeInvalidField, field, "source_offsets[%q] = %s is not an offset (0-%d)", k, v, int64(1<<63-1)))
			return nil
		}
		p, _ := strconv.ParseInt(k, 10, 32)
		offsets[int32(p)] = n
	}
	return offsets
}

func (r *stateReader) version() int {
	const field = "schema_version"
	raw, ok := r.value(field, 'n')
	if !ok {
		return 0
	}
	if _, isInt, _ := jsonInt64(string(raw)); !isInt {
		r.fail(invalid(CodeInvalidType, field, "schema_version must be an integer, not %s", raw))
		return 0
	}
	return QuotaStateSchemaVersion // other integers were refused first
}

// jsonKind classifies a raw JSON value by its first byte: '"', 'n' for a
// number, 't' for a boolean, '{', '[', or 0 for null and nothing.
func jsonKind(raw json.RawMessage) byte {
	if len(raw) == 0 {
		return 0
	}
	switch c := raw[0]; c {
	case '"', '{', '[':
		return c
	case 't', 'f':
		return 't'
	case 'n':
		return 0
	}
	return 'n'
}

func kindName(kind byte) string {
	switch kind {
	case '"':
		return "string"
	case 'n':
		return "number"
	case 't':
		return "bool"
	case '{':
		return "object"
	case '[':
		return "array"
	}
	return "null"
}

// jsonInt64 reads a JSON number as JSON Schema does: it is an integer when
// it has no fractional value, however written (5, 5.0, 5e2, 500e-2).
// inRange reports whether that integer fits in an int64. It never builds
// numbers larger than an int64, whatever the exponent.
func jsonInt64(text string) (n int64, isInt, inRange bool) {
	mant, exp := text, 0
	if i := strings.IndexAny(text, "eE"); i >= 0 {
		mant = text[:i]
		e, err := strconv.Atoi(strings.TrimPrefix(text[i+1:], "+"))
		if err != nil { // an exponent beyond ±2^63
			e = 1 << 62
			if strings.HasPrefix(text[i+1:], "-") {
				e = -e
			}
		}
		exp = e
	}
	neg := strings.HasPrefix(mant, "-")
	mant = strings.TrimPrefix(mant, "-")
	if ip, fp, ok := strings.Cut(mant, "."); ok {
		mant = ip + fp
		exp -= len(fp)
	}
	mant = strings.TrimLeft(mant, "0")
	for len(mant) > 0 && mant[len(mant)-1] == '0' {
		mant = mant[:len(mant)-1]
		exp++
	}
	switch {
	case mant == "":
		return 0, true, true
	case exp < 0:
		return 0, false, false
	case len(mant)+exp > 19:
		return 0, true, false
	}
	digits := mant + strings.Repeat("0", exp)
	if neg {
		digits = "-" + digits
	}
	n, err := strconv.ParseInt(digits, 10, 64)
	return n, true, err == nil
}

func firstError(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func checkStateTenant(s string) error {
	switch {
	case s == "":
		return invalid(CodeMissingField, "tenant_id", "tenant_id is required")
	case len(s) > MaxTenantIDLen || !isToken(s, true):
		return invalid(CodeInvalidField, "tenant_id", "tenant_id must be 1-%d characters of A-Z a-z 0-9 . _ : @ -", MaxTenantIDLen)
	}
	return nil
}

func checkStateMeter(s string) error {
	switch {
	case s == "":
		return invalid(CodeMissingField, "feature_type", "feature_type is required (the meter, e.g. api_calls)")
	case len(s) > MaxFeatureTypeLen || !isMeterName(s):
		return invalid(CodeInvalidField, "feature_type", "feature_type must match ^[a-z][a-z0-9_.-]{0,63}$")
	}
	return nil
}

// checkStatePeriod accepts YYYY-MM (calendar month) and YYYY-MM-DD (an
// anchored period, named after its first day).
func checkStatePeriod(s string) error {
	if s == "" {
		return invalid(CodeMissingField, "period", "period is required")
	}
	if isPeriod(s) {
		return nil
	}
	if len(s) == 10 && s[4] == '-' && s[7] == '-' && isPeriod(s[:7]) && isDigit(s[8]) && isDigit(s[9]) {
		if _, err := time.Parse(time.DateOnly, s); err == nil {
			return nil
		}
	}
	return invalid(CodeInvalidField, "period", "period %q is not YYYY-MM or a date YYYY-MM-DD", s)
}

func checkStatePlan(s string) error {
	switch {
	case s == "":
		return invalid(CodeMissingField, "plan", "plan is required")
	case utf8.RuneCountInString(s) > MaxPlanLen || !isPrintable(s):
		return invalid(CodeInvalidField, "plan", "plan must be 1-%d printable UTF-8 characters", MaxPlanLen)
	}
	return nil
}

func checkStateLevel(s string) error {
	switch s {
	case "":
		return invalid(CodeMissingField, "level", "level is required")
	case QuotaLevelOK, QuotaLevelAtLimit, QuotaLevelOverage, QuotaLevelBlocked:
		return nil
	}
	if n, ok := strings.CutPrefix(s, "warning_"); ok && len(n) >= 1 && len(n) <= 2 && n[0] >= '1' && n[0] <= '9' &&
		(len(n) == 1 || isDigit(n[1])) {
		return nil
	}
	return invalid(CodeInvalidField, "level", "level %q is not ok, warning_<1-99>, at_limit, overage or blocked", s)
}

// checkAmount checks a decimal field by value, as Validate sees it.
func checkAmount(field string, d decimal.Decimal, unlimited bool) error {
	switch {
	case unlimited && d.Equal(quotaUnlimited):
		return nil
	case d.Sign() < 0:
		if unlimited {
			return invalid(CodeInvalidField, field, "%s %s is negative and not -1 (unlimited)", field, d)
		}
		return invalid(CodeInvalidField, field, "%s %s is negative", field, d)
	case !d.Equal(d.Truncate(QuantityScale)):
		return invalid(CodeInvalidField, field, "%s %s has more than %d decimal places", field, d, QuantityScale)
	case d.GreaterThanOrEqual(maxAmount):
		return invalid(CodeInvalidField, field, "%s %s has more than %d integer digits", field, d, AmountIntDigits)
	}
	return nil
}

func checkPercentage(d decimal.Decimal) error {
	if d.Sign() < 0 || !d.Equal(d.Truncate(QuotaPercentageScale)) || d.GreaterThanOrEqual(maxQuotaPercentage) {
		return invalid(CodeInvalidField, "percentage", "percentage %s is not a non-negative decimal with at most %d decimals", d, QuotaPercentageScale)
	}
	return nil
}

func checkStateTime(field string, t time.Time) error {
	switch y := t.UTC().Year(); {
	case t.IsZero():
		return invalid(CodeMissingField, field, "%s is required", field)
	case y < 0 || y > 9999:
		return invalid(CodeInvalidField, field, "%s year %d is outside 0000-9999", field, y)
	}
	return nil
}

func checkOffsets(offsets map[int32]int64) error {
	for p, o := range offsets {
		if p < 0 || p > 999_999_999 || o < 0 {
			return invalid(CodeInvalidField, "source_offsets", "source_offsets[%d] = %d: partitions are 0-999999999, offsets >= 0", p, o)
		}
	}
	return nil
}

func checkStateVersion(v int) error {
	if v != 0 && v != QuotaStateSchemaVersion {
		return invalid(CodeUnsupportedSchemaVersion, "schema_version", "quota state schema_version %d is not supported (%d)", v, QuotaStateSchemaVersion)
	}
	return nil
}

// checkConsistency holds the rules across fields.
func (s *QuotaState) checkConsistency() error {
	switch {
	case s.Unlimited() != s.Remaining.Equal(quotaUnlimited):
		return invalid(CodeInvalidField, "remaining", "remaining is -1 exactly when limit is -1 (unlimited); limit %s, remaining %s", s.Limit, s.Remaining)
	case s.Unlimited() && !s.Percentage.IsZero():
		return invalid(CodeInvalidField, "percentage", "percentage must be 0 when the limit is -1 (unlimited), not %s", s.Percentage)
	case !s.PeriodEnd.After(s.PeriodStart):
		return invalid(CodeInvalidField, "period_end", "period_end %s is not after period_start %s",
			s.PeriodEnd.UTC().Format(time.RFC3339Nano), s.PeriodStart.UTC().Format(time.RFC3339Nano))
	}
	return nil
}

// isPlainDecimal reports whether s matches ^[0-9]{1,intDigits}(\.[0-9]{1,frac})?$.
func isPlainDecimal(s string, intDigits, frac int) bool {
	i := 0
	for i < len(s) && isDigit(s[i]) {
		i++
	}
	if i == 0 || i > intDigits {
		return false
	}
	if i == len(s) {
		return true
	}
	if s[i] != '.' {
		return false
	}
	f := len(s) - i - 1
	if f < 1 || f > frac {
		return false
	}
	for _, c := range []byte(s[i+1:]) {
		if !isDigit(c) {
			return false
		}
	}
	return true
}

// isRFC3339Text reports whether s matches the date-time pattern of the JSON
// Schema: YYYY-MM-DDTHH:MM:SS, up to 9 fractional digits, then Z or ±HH:MM.
// time.Parse checks the other ranges; it is more lenient about the shape.
// Seconds stop at 59 in both the schema and time.Parse (no leap second).
func isRFC3339Text(s string) bool {
	const layout = "dddd-dd-ddTdd:dd:dd"
	if len(s) < len(layout)+1 {
		return false
	}
	for i := 0; i < len(layout); i++ {
		if layout[i] == 'd' && !isDigit(s[i]) || layout[i] != 'd' && s[i] != layout[i] {
			return false
		}
	}
	rest := s[len(layout):]
	if rest[0] == '.' {
		n := 1
		for n < len(rest) && isDigit(rest[n]) {
			n++
		}
		if n == 1 || n > 10 {
			return false
		}
		rest = rest[n:]
	}
	if rest == "Z" {
		return true
	}
	// time.Parse takes offsets up to +24:59; date-time stops at +23:59.
	return len(rest) == 6 && (rest[0] == '+' || rest[0] == '-') && isDigit(rest[1]) && isDigit(rest[2]) &&
		rest[3] == ':' && isDigit(rest[4]) && isDigit(rest[5]) && rest[1:3] <= "23" && rest[4] <= '5'
}

// isPartition reports whether s matches ^(0|[1-9][0-9]{0,8})$.
func isPartition(s string) bool {
	if s == "0" {
		return true
	}
	if len(s) == 0 || len(s) > 9 || s[0] == '0' {
		return false
	}
	for _, c := range []byte(s) {
		if !isDigit(c) {
			return false
		}
	}
	return true
}
