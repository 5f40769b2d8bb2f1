package schemas

import (
	"strconv"
	"time"

	"github.com/shopspring/decimal"
)

// BatchEncoder validates and encodes events exactly as Validator.AppendEvent
// does (the same bytes, the same normalisation of the event, the same
// errors), for the events of one batch: the Go SDK makes one per Publish
// call. It reads the validator's clock once, when made, for the
// future-skew check, and reuses the text of the last timestamp's second and
// its period, so the usual event costs one pass over its fields instead of
// a validation walk, an encoding walk, a clock read, a big.Int quantity
// text and a sorted copy of its metadata keys. An event it has no fast
// path for (text that is not plain printable ASCII, a quantity beyond
// int64, any invalid field, ...) goes through AppendEvent itself, whose
// verdict is then the answer. Not safe for concurrent use.
type BatchEncoder struct {
	v       *Validator
	limit   time.Time // a timestamp after it is too far in the future
	sec     int64     // the Unix second whose text is in secText, when secOK
	secOK   bool
	secText [19]byte // "2006-01-02T15:04:05" of sec
	period  string   // PeriodOf sec
}

// BatchEncoder returns an encoder for events encoded now.
func (v *Validator) BatchEncoder() BatchEncoder {
	return BatchEncoder{v: v, limit: v.now().Add(v.maxSkew)}
}

// Append is v.AppendEvent(dst, e).
func (b *BatchEncoder) Append(dst []byte, e *UsageEvent) ([]byte, error) {
	if out, ok := b.appendUsual(dst, e); ok {
		return out, nil
	}
	return b.v.AppendEvent(dst, e)
}

// fastMetadata bounds the metadata entries the fast path sorts on the stack.
const fastMetadata = 16

// appendUsual encodes a valid event whose text needs no JSON escaping and
// normalises it as Validate does, or reports false having changed neither
// e nor dst's contents up to len(dst).
func (b *BatchEncoder) appendUsual(dst []byte, e *UsageEvent) ([]byte, bool) {
	start := len(dst)
	if !idText(e.ID, MaxIDLen, false) || !idText(e.TenantID, MaxTenantIDLen, true) ||
		len(e.UserID) > MaxUserIDLen || !plainText(e.UserID) ||
		e.FeatureType == "" || len(e.FeatureType) > MaxFeatureTypeLen || !isMeterName(e.FeatureType) ||
		(e.SchemaVersion != 0 && e.SchemaVersion != CurrentSchemaVersion) ||
		len(e.Metadata) > fastMetadata || e.Timestamp.IsZero() {
		return dst, false
	}
	ts := e.Timestamp.UTC()
	if ts.After(b.limit) || !b.second(ts) {
		return dst, false
	}
	if e.BillingPeriod != "" && e.BillingPeriod != b.period {
		return dst, false
	}

	dst = append(dst, `{"id":"`...)
	dst = append(dst, e.ID...)
	dst = append(dst, `","tenant_id":"`...)
	dst = append(dst, e.TenantID...)
	if e.UserID != "" {
		dst = append(dst, `","user_id":"`...)
		dst = append(dst, e.UserID...)
	}
	dst = append(dst, `","feature_type":"`...)
	dst = append(dst, e.FeatureType...)
	dst = append(dst, `","quantity":"`...)
	var ok bool
	if dst, ok = appendQuantity(dst, e.Quantity); !ok {
		return dst[:start], false
	}
	dst = append(dst, `","timestamp":"`...)
	dst = append(dst, b.secText[:]...)
	if ns := ts.Nanosecond(); ns != 0 {
		dst = appendFraction(dst, ns)
	}
	dst = append(dst, `Z"`...)
	if len(e.Metadata) > 0 {
		if dst, ok = appendMetadata(dst, e.Metadata); !ok {
			return dst[:start], false
		}
	}
	dst = append(dst, `,"billing_period":"`...)
	dst = append(dst, b.period...)
	dst = append(dst, `","schema_version":`...)
	dst = strconv.AppendInt(dst, CurrentSchemaVersion, 10)
	dst = append(dst, '}')
	if len(dst)-start > b.v.maxBytes {
		return dst[:start], false
	}
	// What Validate changes in a valid event.
	e.Timestamp = ts
	e.SchemaVersion = CurrentSchemaVersion
	e.BillingPeriod = b.period
	return dst, true
}

// second makes secText and period those of ts's second, and reports whether
// its year is one the contract accepts (1970-2105).
func (b *BatchEncoder) second(ts time.Time) bool {
	sec := ts.Unix()
	if b.secOK && sec == b.sec {
		return true
	}
	if y := ts.Year(); y < 1970 || y > 2105 {
		return false
	}
	ts.AppendFormat(b.secText[:0], "2006-01-02T15:04:05") // 19 bytes for these years
	if string(b.secText[:7]) != b.period {
		b.period = string(b.secText[:7])
	}
	b.sec, b.secOK = sec, true
	return true
}

// idText reports whether s is 1..max characters of the identifier
// alphabet (isToken's), none of which JSON escapes.
func idText(s string, max int, allowAt bool) bool {
	if s == "" || len(s) > max {
		return false
	}
	// The alphabet as bit sets of the bytes 0-63 and 64-127: one test per
	// byte instead of isToken's comparisons.
	const (
		lo = 1<<'-' | 1<<'.' | 1<<':' | 0x3ff<<'0'
		hi = 0x3ffffff<<('A'-64) | 1<<('_'-64) | 0x3ffffff<<('a'-64)
	)
	var at uint64
	if allowAt {
		at = 1 << ('@' - 64)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c < 64:
			if lo>>c&1 == 0 {
				return false
			}
		case c < 128:
			if (hi|at)>>(c-64)&1 == 0 {
				return false
			}
		default:
			return false
		}
	}
	return true
}

// plainText reports whether s is printable ASCII that JSON writes as is
// (no '"' or '\\'): valid wherever the contract wants printable text or
// UTF-8, with as many characters as bytes.
func plainText(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

// appendMetadata appends the metadata object as AppendJSON does (keys
// sorted) for entries Validate accepts whose text is plain, or reports false.
func appendMetadata(dst []byte, m map[string]string) ([]byte, bool) {
	var entries [fastMetadata]struct{ k, v string }
	n := 0
	for k, v := range m {
		if k == "" || len(k) > MaxMetadataKeyLen || len(v) > MaxMetadataValueLen || !plainText(k) || !plainText(v) {
			return dst, false
		}
		// Insertion sort: a handful of keys.
		i := n
		for i > 0 && entries[i-1].k > k {
			entries[i] = entries[i-1]
			i--
		}
		entries[i].k, entries[i].v = k, v
		n++
	}
	dst = append(dst, `,"metadata":{`...)
	for i, kv := range entries[:n] {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, '"')
		dst = append(dst, kv.k...)
		dst = append(dst, `":"`...)
		dst = append(dst, kv.v...)
		dst = append(dst, '"')
	}
	return append(dst, '}'), true
}

// pow10 holds 10^0 .. 10^18.
var pow10 = [...]uint64{1, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18}

// appendQuantity appends d.String() for a quantity checkQuantity accepts
// whose coefficient fits 18 digits, or reports false. The text is
// decimal's own (shortest plain form) only with its default package
// settings; other settings take the slow path.
func appendQuantity(dst []byte, d decimal.Decimal) ([]byte, bool) {
	if !decimal.TrimTrailingZeros || decimal.UseScientificNotation || d.Sign() < 0 || d.NumDigits() > 18 {
		return dst, false
	}
	c, exp := uint64(d.CoefficientInt64()), d.Exponent()
	if c == 0 {
		return append(dst, '0'), true
	}
	if exp >= 0 {
		for ; exp > 0; exp-- {
			if c *= 10; c >= pow10[QuantityIntDigits] {
				return dst, false
			}
		}
		return strconv.AppendUint(dst, c, 10), true
	}
	scale := -int(exp)
	if k := scale - QuantityScale; k > 0 {
		// Digits below 10^-9 must all be zero (d.Truncate(9) == d).
		if k >= len(pow10) || c%pow10[k] != 0 {
			return dst, false
		}
	}
	// The coefficient < 10^18, so the value is below 10^18 too.
	var buf [20]byte
	digits := strconv.AppendUint(buf[:0], c, 10)
	var intPart, frac []byte
	lead := 0
	if len(digits) > scale {
		intPart, frac = digits[:len(digits)-scale], digits[len(digits)-scale:]
	} else {
		intPart, frac, lead = []byte{'0'}, digits, scale-len(digits)
	}
	for len(frac) > 0 && frac[len(frac)-1] == '0' {
		frac = frac[:len(frac)-1]
	}
	dst = append(dst, intPart...)
	if len(frac) > 0 {
		dst = append(dst, '.')
		for range lead {
			dst = append(dst, '0')
		}
		dst = append(dst, frac...)
	}
	return dst, true
}

// appendFraction appends ".nnnnnnnnn" without trailing zeros, as
// time.RFC3339Nano does for a non-zero nanosecond.
func appendFraction(dst []byte, ns int) []byte {
	var buf [10]byte
	buf[0] = '.'
	for i := 9; i >= 1; i-- {
		buf[i] = byte('0' + ns%10)
		ns /= 10
	}
	n := 10
	for buf[n-1] == '0' {
		n--
	}
	return append(dst, buf[:n]...)
}
