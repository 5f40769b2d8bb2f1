package schemas

import (
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/shopspring/decimal"
)

// Limits of the contract. They match usage_event.schema.json. Lengths of
// text count Unicode code points (characters), as JSON Schema's maxLength
// does; identifiers are ASCII, so for them bytes and characters agree.
const (
	DefaultMaxEventBytes = 32 << 10 // one event, as JSON
	DefaultMaxFutureSkew = 5 * time.Minute
	MaxIDLen             = 128
	MaxTenantIDLen       = 128
	MaxUserIDLen         = 256
	MaxFeatureTypeLen    = 64
	MaxMetadataEntries   = 64
	MaxMetadataKeyLen    = 128
	MaxMetadataValueLen  = 1024
	QuantityScale        = 9 // fractional digits, as in Decimal(38, 9)
	// QuantityIntDigits bounds the quantity of one event: < 10^18, an
	// exabyte of storage per event, far beyond any real meter. Aggregates
	// and quota totals are ClickHouse Decimal(38, 9), 29 integer digits
	// (ClickHouse 18.16 has no wider decimal, and a sum() past 10^29 wraps
	// silently): with 29-digit events two events of one tenant could
	// overflow a row. With 18, a row or a sum() over the raw table can only
	// overflow after 10^11 maximal events of one tenant, meter and period,
	// and the aggregator also refuses (aggregate_overflow) any event that
	// would take a total past the maximum.
	QuantityIntDigits = 18
	// AmountIntDigits bounds totals: QuotaState usage, limit, remaining
	// and overage_used are sums, so they keep the full 38 - 9 digits.
	AmountIntDigits = 29
)

var (
	// maxQuantity is the first quantity one event may not have (10^18).
	maxQuantity = decimal.New(1, QuantityIntDigits)
	// maxAmount is the first total that no longer fits in Decimal(38, 9).
	maxAmount = decimal.New(1, AmountIntDigits)
)

// Validator checks events against the contract. The zero value is not
// usable; build one with NewValidator. A Validator is safe for concurrent use.
type Validator struct {
	maxBytes int
	maxSkew  time.Duration
	now      func() time.Time
	alias    bool // DecodeView reads data in place (WithAliasedInput)
}

// Option configures a Validator.
type Option func(*Validator)

// WithMaxEventBytes sets the largest accepted encoded event.
func WithMaxEventBytes(n int) Option { return func(v *Validator) { v.maxBytes = n } }

// WithMaxFutureSkew sets how far in the future (relative to now) an event
// time may be, to tolerate clock skew between producers and the pipeline.
func WithMaxFutureSkew(d time.Duration) Option { return func(v *Validator) { v.maxSkew = d } }

// WithAliasedInput makes DecodeView's strings substrings of data itself
// instead of a copy of it: no allocation per event. The caller promises
// never to modify data while any of those strings is in use (a Kafka
// client's message value that nothing writes to again is such data).
// Decode always copies.
func WithAliasedInput() Option { return func(v *Validator) { v.alias = true } }

// WithClock replaces time.Now, for tests.
func WithClock(now func() time.Time) Option { return func(v *Validator) { v.now = now } }

// NewValidator returns a Validator with the default limits, changed by opts.
func NewValidator(opts ...Option) *Validator {
	v := &Validator{maxBytes: DefaultMaxEventBytes, maxSkew: DefaultMaxFutureSkew, now: time.Now}
	for _, o := range opts {
		o(v)
	}
	return v
}

// Decode parses one JSON-encoded event and validates it. On success the
// event is normalised: Timestamp in UTC, BillingPeriod and SchemaVersion
// filled. Any failure is a *ValidationError.
func (v *Validator) Decode(data []byte) (UsageEvent, error) {
	w := wireEvent{UsageEvent: UsageEvent{SchemaVersion: CurrentSchemaVersion}}
	if err := v.decodeWire(data, &w); err != nil {
		return UsageEvent{}, err
	}
	return w.UsageEvent, nil
}

// decodeWire is Decode and DecodeView: it scans data into w and validates
// it, leaving the normalised event in w (the quantity in w.Quantity, or in
// w.fixed in flat mode).
func (v *Validator) decodeWire(data []byte, w *wireEvent) error {
	if len(data) > v.maxBytes {
		return invalid(CodePayloadTooLarge, "", "event is %d bytes, the limit is %d", len(data), v.maxBytes)
	}
	if err := scanInto(data, w); err != nil {
		return err
	}

	e := &w.UsageEvent
	// Field order here is the order in which errors are reported.
	if err := checkIdentity(e); err != nil {
		return err
	}
	if w.userIDSet && e.UserID == "" {
		// "" would count as a user of its own in unique_count meters.
		return invalid(CodeInvalidField, "user_id", `user_id "" is not a user: omit it (or send null) when there is none`)
	}
	if w.flat {
		q, err := parseQuantityFixed(w.quantity)
		if err != nil {
			return err
		}
		w.fixed = q
	} else {
		q, err := parseQuantity(w.quantity)
		if err != nil {
			return err
		}
		e.Quantity = q
	}
	if w.timestamp == "" {
		return invalid(CodeMissingField, "timestamp", "timestamp is required (RFC 3339)")
	}
	ts, derived, ok := eventTime(w.timestamp)
	if !ok {
		return invalid(CodeInvalidTimestamp, "timestamp",
			"%q is not an RFC 3339 date-time (YYYY-MM-DDTHH:MM:SS, at most 9 fractional digits, Z or ±HH:MM)", w.timestamp)
	}
	e.Timestamp = ts
	if w.periodSet && e.BillingPeriod == "" {
		return invalid(CodeInvalidBillingPeriod, "billing_period", `billing_period "" is not YYYY-MM (omit it to derive it from timestamp)`)
	}
	return v.checkRest(e, derived, w)
}

// Validate checks an event built in Go and normalises it like Decode. ID
// and Timestamp must already be set. In Go an empty UserID or
// BillingPeriod means absent (AppendJSON omits it). Validate does not know
// the encoded size: AppendEvent, which the SDK uses, checks that too.
func (v *Validator) Validate(e *UsageEvent) error {
	if err := checkIdentity(e); err != nil {
		return err
	}
	if err := checkQuantity(e.Quantity); err != nil {
		return err
	}
	if e.Timestamp.IsZero() {
		return invalid(CodeMissingField, "timestamp", "timestamp is required")
	}
	e.Timestamp = e.Timestamp.UTC()
	if e.SchemaVersion == 0 {
		e.SchemaVersion = CurrentSchemaVersion
	}
	return v.checkRest(e, "", nil)
}

func checkIdentity(e *UsageEvent) error {
	switch {
	case e.ID == "":
		return invalid(CodeMissingField, "id", "id is required (the idempotency key; the Go SDK fills a UUIDv7)")
	case len(e.ID) > MaxIDLen || !isToken(e.ID, false):
		return invalid(CodeInvalidField, "id", "id must be 1-%d characters of A-Z a-z 0-9 . _ : -", MaxIDLen)
	case e.TenantID == "":
		return invalid(CodeMissingField, "tenant_id", "tenant_id is required")
	case len(e.TenantID) > MaxTenantIDLen || !isToken(e.TenantID, true):
		return invalid(CodeInvalidField, "tenant_id", "tenant_id must be 1-%d characters of A-Z a-z 0-9 . _ : @ -", MaxTenantIDLen)
	case !isPrintable(e.UserID) || utf8.RuneCountInString(e.UserID) > MaxUserIDLen:
		return invalid(CodeInvalidField, "user_id", "user_id must be at most %d printable UTF-8 characters (code points)", MaxUserIDLen)
	case e.FeatureType == "":
		return invalid(CodeMissingField, "feature_type", "feature_type is required (the meter, e.g. api_calls)")
	case len(e.FeatureType) > MaxFeatureTypeLen || !isMeterName(e.FeatureType):
		return invalid(CodeInvalidField, "feature_type", "feature_type must match ^[a-z][a-z0-9_.-]{0,63}$")
	}
	return nil
}

// checkRest checks what follows the timestamp. derived is the period of
// e.Timestamp when the caller has it ("": computed here); scanned is the
// wire event Decode read (nil for Validate), whose metadata entries the
// scanner already checked.
func (v *Validator) checkRest(e *UsageEvent, derived string, scanned *wireEvent) error {
	if limit := v.now().Add(v.maxSkew); e.Timestamp.After(limit) {
		return invalid(CodeTimestampTooFarInFuture, "timestamp", "%s is more than %s ahead of now", e.Timestamp.Format(time.RFC3339), v.maxSkew)
	}
	if e.Timestamp.Year() < 1970 || e.Timestamp.Year() > 2105 {
		// ClickHouse DateTime covers 1970-2105.
		return invalid(CodeInvalidTimestamp, "timestamp", "year %d is outside 1970-2105", e.Timestamp.Year())
	}
	if derived == "" {
		derived = PeriodOf(e.Timestamp)
	}
	switch {
	case e.BillingPeriod == "":
		e.BillingPeriod = derived
	case !isPeriod(e.BillingPeriod):
		return invalid(CodeInvalidBillingPeriod, "billing_period", "%q is not YYYY-MM", e.BillingPeriod)
	case e.BillingPeriod != derived:
		// The aggregator derives periods from timestamp (and the plan's
		// anchor); a different client value would make raw rows disagree
		// with the aggregates.
		return invalid(CodeInvalidBillingPeriod, "billing_period", "billing_period %s is not the UTC month of timestamp (%s)", e.BillingPeriod, derived)
	}
	entries := len(e.Metadata)
	if scanned != nil && scanned.flat {
		entries = len(scanned.entries)
	}
	if entries > MaxMetadataEntries {
		return invalid(CodeInvalidField, "metadata", "metadata has %d entries, the limit is %d", entries, MaxMetadataEntries)
	}
	if scanned != nil {
		if scanned.metaErr != nil {
			return scanned.metaErr
		}
	} else {
		for k, val := range e.Metadata {
			if err := checkMetadataEntry(k, val, false); err != nil {
				return err
			}
		}
	}
	if e.SchemaVersion < 1 || e.SchemaVersion > CurrentSchemaVersion {
		return invalid(CodeUnsupportedSchemaVersion, "schema_version", "schema_version %d is not supported (1..%d)", e.SchemaVersion, CurrentSchemaVersion)
	}
	return nil
}

func parseQuantity(q wireQuantity) (decimal.Decimal, error) {
	text := q.text
	switch q.kind {
	case quantityAbsent:
		return decimal.Decimal{}, invalid(CodeMissingField, "quantity", "quantity is required")
	case quantityString:
		// Strings are read as written, as the JSON Schema's pattern reads
		// them: no sign, no exponent, at most 18 integer and 9 fractional
		// digits even when they are zeros ("-0" and "0.1234567890" too).
		if !isPlainDecimal(text, QuantityIntDigits, QuantityScale) {
			return decimal.Decimal{}, invalid(CodeInvalidQuantity, "quantity",
				"%q is not a plain decimal string of at most %d integer and %d fractional digits, such as \"12.5\"", text, QuantityIntDigits, QuantityScale)
		}
		if d, ok := smallDecimal(text); ok {
			return d, nil
		}
		return decimal.RequireFromString(text), nil // at most 27 plain digits: cannot fail
	case quantityNumber:
		return parseQuantityNumber(text)
	}
	return decimal.Decimal{}, invalid(CodeInvalidType, "quantity", "quantity must be a decimal number or a string holding one")
}

// parseQuantityNumber reads a JSON number (valid JSON grammar) by its
// value, as JSON Schema does: -0, 2500.0 and 25e2 are fine, whatever the
// exponent's size; 1e-10 (10 fractional digits) is refused by value.
func parseQuantityNumber(text string) (decimal.Decimal, error) {
	neg, zero, frac, intDigits := numberShape(text)
	switch {
	case zero:
		return decimal.Zero, nil
	case neg:
		return decimal.Decimal{}, invalid(CodeInvalidQuantity, "quantity", "quantity %s is negative", text)
	case frac > QuantityScale:
		return decimal.Decimal{}, invalid(CodeInvalidQuantity, "quantity", "quantity %s has more than %d decimal places", text, QuantityScale)
	case intDigits > QuantityIntDigits:
		return decimal.Decimal{}, invalid(CodeInvalidQuantity, "quantity", "quantity %s has more than %d integer digits", text, QuantityIntDigits)
	}
	if d, ok := smallDecimal(text); ok {
		return d, nil
	}
	d, err := decimal.NewFromString(text) // the exponent is bounded by the checks above
	if err != nil {
		return decimal.Decimal{}, invalid(CodeInvalidQuantity, "quantity", "%q is not a decimal number: %v", text, err)
	}
	return d, nil
}

// numberShape describes the value of a JSON number text without building
// it: its sign, whether it is zero, and how many fractional and integer
// digits its shortest plain form has. Exponents beyond ±10^9 are clamped,
// which cannot change whether a value fits 18+9 (or 29+9) digits.
func numberShape(text string) (neg, zero bool, frac, intDigits int) {
	mant, exp := text, 0
	if i := strings.IndexAny(text, "eE"); i >= 0 {
		mant = text[:i]
		es := text[i+1:]
		sign := 1
		if es != "" && (es[0] == '+' || es[0] == '-') {
			if es[0] == '-' {
				sign = -1
			}
			es = es[1:]
		}
		for j := 0; j < len(es) && exp < 1e9; j++ {
			exp = exp*10 + int(es[j]-'0')
		}
		exp *= sign
	}
	if strings.HasPrefix(mant, "-") {
		neg, mant = true, mant[1:]
	}
	if ip, fp, ok := strings.Cut(mant, "."); ok {
		mant = ip + fp
		exp -= len(fp)
	}
	mant = strings.TrimLeft(mant, "0")
	for len(mant) > 0 && mant[len(mant)-1] == '0' {
		mant = mant[:len(mant)-1]
		exp++
	}
	if mant == "" {
		return neg, true, 0, 0
	}
	return neg, false, max(0, -exp), max(0, len(mant)+exp)
}

// smallDecimal is a fast path for the usual quantity: text (a valid JSON
// number or plain decimal string) without exponent, of at most 18 digits, non-negative and
// with at most QuantityScale decimals, so valid for checkQuantity. It
// returns what decimal.NewFromString would, without parsing a string twice
// or comparing big integers.
func smallDecimal(text string) (decimal.Decimal, bool) {
	var unscaled int64
	digits, scale, point := 0, 0, false
	for i := 0; i < len(text); i++ {
		switch c := text[i]; {
		case c == '.':
			point = true
		case c < '0' || c > '9': // '-' or an exponent
			return decimal.Decimal{}, false
		default:
			if digits++; digits > 18 {
				return decimal.Decimal{}, false
			}
			unscaled = unscaled*10 + int64(c-'0')
			if point {
				scale++
			}
		}
	}
	if scale > QuantityScale {
		return decimal.Decimal{}, false
	}
	return decimal.New(unscaled, int32(-scale)), true
}

func checkQuantity(d decimal.Decimal) error {
	switch {
	case d.Sign() < 0:
		return invalid(CodeInvalidQuantity, "quantity", "quantity %s is negative", d)
	case !d.Equal(d.Truncate(QuantityScale)):
		return invalid(CodeInvalidQuantity, "quantity", "quantity %s has more than %d decimal places", d, QuantityScale)
	case d.GreaterThanOrEqual(maxQuantity):
		return invalid(CodeInvalidQuantity, "quantity", "quantity %s has more than %d integer digits", d, QuantityIntDigits)
	}
	return nil
}

// isToken reports whether s uses only the identifier alphabet. "/" is
// excluded on purpose: quota-state keys are tenant/meter/period.
func isToken(s string, allowAt bool) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9',
			c == '.', c == '_', c == ':', c == '-':
		case c == '@' && allowAt:
		default:
			return false
		}
	}
	return true
}

func isMeterName(s string) bool {
	if s == "" || s[0] < 'a' || s[0] > 'z' {
		return false
	}
	for i := 1; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-') {
			return false
		}
	}
	return true
}

func isPrintable(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= utf8.RuneSelf {
			return isPrintableUTF8(s[i:]) // rare: keep the ASCII loop short
		} else if c < 0x20 || c == 0x7f {
			return false
		}
	}
	return true
}

func isPrintableUTF8(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}

func isPeriod(s string) bool {
	if len(s) != 7 || s[4] != '-' {
		return false
	}
	for i, c := range []byte(s) {
		if i != 4 && (c < '0' || c > '9') {
			return false
		}
	}
	m := (s[5]-'0')*10 + s[6] - '0'
	return m >= 1 && m <= 12
}

// AppendEvent validates e (normalising it like Validate), appends its wire
// form to dst and checks the encoded size with the limit Decode applies, so
// that what it returns, Decode accepts, and what it refuses, Decode refuses
// with the same tag (payload_too_large first, as Decode checks size first).
// On error dst is returned unchanged. The Go SDK publishes with it. One
// difference is deliberate: a Go string that is not UTF-8 has no JSON
// form (AppendJSON would write U+FFFD), so it is refused here, while the
// consumer never sees such text.
func (v *Validator) AppendEvent(dst []byte, e *UsageEvent) ([]byte, error) {
	start := len(dst)
	verr := v.Validate(e)
	dst = e.AppendJSON(dst)
	if n := len(dst) - start; n > v.maxBytes {
		return dst[:start], invalid(CodePayloadTooLarge, "", "event is %d bytes encoded, the limit is %d", n, v.maxBytes)
	}
	if verr != nil {
		return dst[:start], verr
	}
	return dst, nil
}

// NewID returns a new event id: a UUIDv7, time-ordered, so that ids of one
// tenant stay close together in ClickHouse's (tenant_id, id) order. Set it
// on an event before the first publish attempt and keep it for retries.
func NewID() string {
	// NewV7 only fails when crypto/rand does, which since Go 1.24 never
	// returns an error.
	return uuid.Must(uuid.NewV7()).String()
}
