package schemas

import (
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf16"
	"unicode/utf8"
	"unsafe"
)

// Decode runs once per consumed message, so it does not use encoding/json:
// reflection costs several times more (BenchmarkDecodeReference). The scanner below
// reads the event in one pass. It started as an exact copy of what
// encoding/json did (a json.Decoder with DisallowUnknownFields, decoding
// into a struct), kept in reference_test.go and compared by
// FuzzDecodeMatchesReference. The encoding/json rules it keeps:
//   - a syntax error anywhere in the object wins over every other error,
//     because encoding/json checks the whole value before decoding it;
//   - otherwise the first unknown field, duplicate or type error in
//     document order wins;
//   - null in an optional field (user_id, metadata, billing_period,
//     schema_version) means absent; in a required field, missing;
//   - objects and arrays nest at most 10000 deep.
//
// Where the contract is stricter than encoding/json, so that the JSON
// Schema (and every other language) reads the bytes the same way:
//   - a member name twice in one object is duplicate_field:<name> (inside
//     metadata: duplicate_field:metadata), not "last wins": parsers
//     disagree on which value counts;
//   - invalid UTF-8 and unpaired surrogate escapes are malformed_json, not
//     silently replaced by U+FFFD (RFC 8259 requires UTF-8);
//   - a null metadata value is invalid_type:metadata, not "";
//   - any byte other than white space after the object is refused
//     (Decoder.More let a trailing ']' or '}' through), and keys must match
//     exactly: encoding/json also took "Tenant_ID" for tenant_id.

// maxNestingDepth is encoding/json's limit; deeper input is a syntax error.
const maxNestingDepth = 10000

// wireEvent is the event as read from the wire, before validation.
type wireEvent struct {
	UsageEvent // strings, metadata and schema version
	quantity   wireQuantity
	timestamp  string
	// userIDSet and periodSet report a string value, even "", which the
	// contract refuses: "" is neither absent nor a valid value.
	userIDSet, periodSet bool
	// metaErr is the first metadata entry, in document order, that breaks
	// the entry limits (checkRest reports it in its turn): the scanner sees
	// every entry anyway, so Decode does not walk the map again.
	metaErr *ValidationError
	// flat is DecodeView's mode: metadata goes to entries, in document
	// order, not to a map, and the quantity to fixed, not to a decimal.
	flat    bool
	entries []MetadataEntry
	fixed   Fixed9
	// alias reads data in place instead of a string copy (WithAliasedInput).
	alias bool
}

// wireQuantity is the quantity value as found in the JSON.
type wireQuantity struct {
	kind quantityKind
	text string // the string's value or the number's text
}

type quantityKind uint8

const (
	quantityAbsent quantityKind = iota // missing or null
	quantityString
	quantityNumber
	quantityOther // true, false, an object or an array
)

// decoder scans one message. It reads a string copy of the message so that
// decoded strings without escapes are substrings of it: one allocation for
// every field of the event, which keeps the copy (about its own size) alive.
type decoder struct {
	s      string
	i      int              // read position
	first  *ValidationError // first unknown field, duplicate or type error
	syntax bool             // a syntax error was found at offset bad
	bad    int
	// encoding tells why the syntax error is one: invalid UTF-8 or an
	// unpaired surrogate, "" for the JSON grammar.
	encoding string
}

// scanEvent parses data into a wireEvent. Its errors are malformed_json,
// unknown_field:<key> and invalid_type:<field>.
func scanEvent(data []byte) (wireEvent, error) {
	w := wireEvent{UsageEvent: UsageEvent{SchemaVersion: CurrentSchemaVersion}}
	if err := scanInto(data, &w); err != nil {
		return wireEvent{}, err
	}
	return w, nil
}

// scanInto is scanEvent into w, which holds the defaults (and, in flat
// mode, the entries slice to reuse).
func scanInto(data []byte, w *wireEvent) error {
	d := decoder{}
	if w.alias {
		d.s = unsafe.String(unsafe.SliceData(data), len(data))
	} else {
		d.s = string(data)
	}
	d.skipSpace()
	switch d.peek() {
	case '{':
		d.event(w)
	case 'n':
		// encoding/json decodes a top-level null into nothing at all; the
		// empty event then fails validation.
		d.literal("null")
	default:
		return invalid(CodeMalformedJSON, "", "the event must be a JSON object")
	}
	switch {
	case d.syntax:
		return d.syntaxError()
	case d.first != nil:
		return d.first
	}
	if d.skipSpace(); d.i < len(d.s) {
		return invalid(CodeMalformedJSON, "", "trailing data after the JSON object at offset %d", d.i)
	}
	return nil
}

// event reads the top-level object. seen has one bit per known field, so
// that a repeated member is found without allocating.
func (d *decoder) event(w *wireEvent) {
	var seen uint16
	for more := d.open('}'); more; more = d.next('}') {
		key := d.key()
		if bit := fieldBit(key); bit != 0 {
			if seen&bit != 0 {
				d.duplicate(key, key)
				d.skipValue(2)
				continue
			}
			seen |= bit
		}
		d.field(w, key)
	}
}

// fieldBit returns the bit of a known top-level field, 0 for other keys.
func fieldBit(key string) uint16 {
	switch key {
	case "id":
		return 1 << 0
	case "tenant_id":
		return 1 << 1
	case "user_id":
		return 1 << 2
	case "feature_type":
		return 1 << 3
	case "quantity":
		return 1 << 4
	case "timestamp":
		return 1 << 5
	case "metadata":
		return 1 << 6
	case "billing_period":
		return 1 << 7
	case "schema_version":
		return 1 << 8
	}
	return 0
}

// duplicate records duplicate_field:<field> for a repeated member name.
func (d *decoder) duplicate(field, name string) {
	if d.first == nil {
		d.first = invalid(CodeDuplicateField, field, "member %q appears more than once (ambiguous: parsers disagree on which value counts)",
			strings.Trim(strconv.Quote(name), `"`))
	}
}

// field reads the value of the member named key.
func (d *decoder) field(w *wireEvent, key string) {
	switch key {
	case "id":
		d.stringField(&w.ID, key)
	case "tenant_id":
		d.stringField(&w.TenantID, key)
	case "user_id":
		w.userIDSet = d.stringField(&w.UserID, key)
	case "feature_type":
		d.stringField(&w.FeatureType, key)
	case "quantity":
		d.quantity(&w.quantity)
	case "timestamp":
		d.stringField(&w.timestamp, key)
	case "metadata":
		if w.flat {
			d.flatMetadata(w)
		} else {
			d.metadata(&w.Metadata, &w.metaErr)
		}
	case "billing_period":
		w.periodSet = d.stringField(&w.BillingPeriod, key)
	case "schema_version":
		d.schemaVersion(&w.SchemaVersion)
	default:
		if d.first == nil {
			d.first = unknownField(key)
		}
		d.skipValue(2)
	}
}

// unknownField builds the error encoding/json gave: its message quoted the
// key with %q, and the tag used that text without the surrounding quotes.
func unknownField(key string) *ValidationError {
	name := strings.Trim(strconv.Quote(key), `"`)
	return invalid(CodeUnknownField, name, "field %q is not part of schema version %d", name, CurrentSchemaVersion)
}

// stringField reads a string or null (absent) and reports whether it was a
// string.
func (d *decoder) stringField(dst *string, field string) bool {
	switch d.peek() {
	case '"':
		*dst = d.str()
		return true
	case 'n':
		d.literal("null") // absent; a duplicate cannot have set *dst before
	default:
		d.wrongType(field, 2)
	}
	return false
}

// quantity keeps the value's text; parseQuantity reports its errors later,
// in field order.
func (d *decoder) quantity(q *wireQuantity) {
	switch c := d.peek(); {
	case c == '"':
		*q = wireQuantity{kind: quantityString, text: d.str()}
	case c == 'n':
		d.literal("null")
		*q = wireQuantity{}
	case c == '-' || isDigit(c):
		*q = wireQuantity{kind: quantityNumber, text: d.number()}
	default:
		d.skipValue(2)
		*q = wireQuantity{kind: quantityOther}
	}
}

// schemaVersion accepts an integer as JSON Schema defines one: a number
// with no fractional value, however written (1, 1.0, 10e-1), or null (the
// default version). An integer beyond int64 is kept as math.MaxInt, so
// that it is refused as unsupported like any other too-high version.
func (d *decoder) schemaVersion(dst *int) {
	switch c := d.peek(); {
	case c == 'n':
		d.literal("null")
		*dst = CurrentSchemaVersion
	case c == '-' || isDigit(c):
		text := d.number()
		if text == "" {
			return // syntax error, already recorded
		}
		n, isInt, inRange := jsonInt64(text)
		switch {
		case !isInt:
			d.typeError("schema_version", "number "+text+" (not an integer)")
		case !inRange && text[0] == '-':
			*dst = math.MinInt
		case !inRange:
			*dst = math.MaxInt
		default:
			*dst = int(n)
		}
	default:
		d.wrongType("schema_version", 2)
	}
}

// metadata reads an object of strings (null: absent). A null value is a
// type error: it is not "" and not absent, and the JSON Schema refuses it.
// The first entry beyond the entry limits goes to bad.
func (d *decoder) metadata(dst *map[string]string, bad **ValidationError) {
	switch d.peek() {
	case 'n':
		d.literal("null")
		*dst, *bad = nil, nil
	case '{':
		m := make(map[string]string)
		*dst, *bad = m, nil
		for more := d.open('}'); more; more = d.next('}') {
			key := d.key()
			if _, dup := m[key]; dup {
				d.duplicate("metadata", "metadata."+key)
				d.skipValue(3)
				continue
			}
			switch d.peek() {
			case '"':
				val := d.str()
				m[key] = val
				if *bad == nil && !d.syntax {
					*bad = checkMetadataEntry(key, val, true)
				}
			default:
				d.wrongType("metadata", 3)
			}
		}
	default:
		d.wrongType("metadata", 2)
	}
}

// flatMetadata is metadata for DecodeView: the entries go to w.entries in
// document order, with the same verdicts (duplicates, null, types, limits).
// Duplicates are found by a linear scan while an object is small (the
// usual case: no map) and by a set beyond 16 entries, so that a hostile
// object of thousands of entries stays linear.
func (d *decoder) flatMetadata(w *wireEvent) {
	w.entries, w.metaErr = w.entries[:0], nil
	switch d.peek() {
	case 'n':
		d.literal("null")
	case '{':
		var set map[string]struct{}
		for more := d.open('}'); more; more = d.next('}') {
			key := d.key()
			if hasKey(w.entries, &set, key) {
				d.duplicate("metadata", "metadata."+key)
				d.skipValue(3)
				continue
			}
			switch d.peek() {
			case '"':
				val := d.str()
				w.entries = append(w.entries, MetadataEntry{Key: key, Value: val})
				if set != nil {
					set[key] = struct{}{}
				}
				if w.metaErr == nil && !d.syntax {
					w.metaErr = checkMetadataEntry(key, val, true)
				}
			default:
				d.wrongType("metadata", 3)
			}
		}
	default:
		d.wrongType("metadata", 2)
	}
}

// hasKey reports whether entries has key. Past 16 entries it builds *set
// once; the caller adds later keys to it.
func hasKey(entries []MetadataEntry, set *map[string]struct{}, key string) bool {
	if *set == nil {
		if len(entries) < 16 {
			for i := range entries {
				if entries[i].Key == key {
					return true
				}
			}
			return false
		}
		*set = make(map[string]struct{}, 2*len(entries))
		for i := range entries {
			(*set)[entries[i].Key] = struct{}{}
		}
	}
	_, ok := (*set)[key]
	return ok
}

// wrongType records a type error for field and skips the value, which sits
// at nesting depth depth.
func (d *decoder) wrongType(field string, depth int) {
	kind := "value"
	switch d.peek() {
	case '"':
		kind = "string"
	case '{':
		kind = "object"
	case '[':
		kind = "array"
	case 't', 'f':
		kind = "bool"
	case 'n':
		kind = "null"
	case '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
		kind = "number"
	}
	d.typeError(field, kind)
	d.skipValue(depth)
}

func (d *decoder) typeError(field, kind string) {
	if d.first == nil {
		d.first = invalid(CodeInvalidType, field, "%s must not be a JSON %s", field, kind)
	}
}

// skipValue checks the syntax of a value that is not kept. depth is the
// nesting depth the value has if it is an object or an array.
func (d *decoder) skipValue(depth int) {
	switch c := d.peek(); {
	case c == '{':
		if depth > maxNestingDepth {
			d.fail()
			return
		}
		for more := d.open('}'); more; more = d.next('}') {
			d.key()
			d.skipValue(depth + 1)
		}
	case c == '[':
		if depth > maxNestingDepth {
			d.fail()
			return
		}
		for more := d.open(']'); more; more = d.next(']') {
			d.skipValue(depth + 1)
		}
	case c == '"':
		d.str()
	case c == 't':
		d.literal("true")
	case c == 'f':
		d.literal("false")
	case c == 'n':
		d.literal("null")
	case c == '-' || isDigit(c):
		d.number()
	default:
		d.fail()
	}
}

// fail records a syntax error at the read position. Moving to the end of
// the input makes every later read fail too, so callers need not check.
func (d *decoder) fail() {
	if !d.syntax {
		d.syntax, d.bad = true, d.i
	}
	d.i = len(d.s)
}

// failEncoding records a syntax error for text that is not valid UTF-8 or
// an unpaired surrogate escape, at offset i.
func (d *decoder) failEncoding(i int, why string) {
	if !d.syntax {
		d.syntax, d.bad, d.encoding = true, i, why
	}
	d.i = len(d.s)
}

func (d *decoder) syntaxError() *ValidationError {
	if d.encoding != "" {
		return invalid(CodeMalformedJSON, "", "%s at offset %d", d.encoding, d.bad)
	}
	if d.bad >= len(d.s) {
		return invalid(CodeMalformedJSON, "", "unexpected end of JSON input")
	}
	return invalid(CodeMalformedJSON, "", "invalid character %q at offset %d", d.s[d.bad], d.bad)
}

// peek returns the byte at the read position, 0 at the end of the input.
func (d *decoder) peek() byte {
	if d.i < len(d.s) {
		return d.s[d.i]
	}
	return 0
}

func (d *decoder) skipSpace() {
	for d.i < len(d.s) {
		switch d.s[d.i] {
		case ' ', '\t', '\n', '\r':
			d.i++
		default:
			return
		}
	}
}

// open consumes the '{' or '[' at the read position and reports whether a
// member follows (false for an empty object or array).
func (d *decoder) open(closer byte) bool {
	d.i++
	d.skipSpace()
	if d.peek() == closer {
		d.i++
		return false
	}
	return true
}

// next consumes what follows a member: ',' (it reports true) or the closer.
func (d *decoder) next(closer byte) bool {
	d.skipSpace()
	switch d.peek() {
	case ',':
		d.i++
		d.skipSpace()
		return true
	case closer:
		d.i++
		return false
	}
	d.fail()
	return false
}

// key reads an object key and the ':' after it.
func (d *decoder) key() string {
	k := d.str()
	d.skipSpace()
	if d.peek() != ':' {
		d.fail()
		return ""
	}
	d.i++
	d.skipSpace()
	return k
}

func (d *decoder) literal(word string) {
	if !strings.HasPrefix(d.s[d.i:], word) {
		d.fail()
		return
	}
	d.i += len(word)
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

func (d *decoder) digits(i int) int {
	for i < len(d.s) && isDigit(d.s[i]) {
		i++
	}
	return i
}

// number reads a number in JSON's grammar and returns its text.
func (d *decoder) number() string {
	start, i := d.i, d.i
	if i < len(d.s) && d.s[i] == '-' {
		i++
	}
	switch {
	case i < len(d.s) && d.s[i] == '0':
		i++ // no leading zeros: "01" ends after the 0, and the 1 is then an error
	case i < len(d.s) && isDigit(d.s[i]):
		i = d.digits(i)
	default:
		d.i = i
		d.fail()
		return ""
	}
	if i < len(d.s) && d.s[i] == '.' {
		i++
		if j := d.digits(i); j > i {
			i = j
		} else {
			d.i = i
			d.fail()
			return ""
		}
	}
	if i < len(d.s) && (d.s[i] == 'e' || d.s[i] == 'E') {
		i++
		if i < len(d.s) && (d.s[i] == '+' || d.s[i] == '-') {
			i++
		}
		if j := d.digits(i); j > i {
			i = j
		} else {
			d.i = i
			d.fail()
			return ""
		}
	}
	d.i = i
	return d.s[start:i]
}

// str reads a string at the read position and returns its value. Plain
// ASCII strings, the common case, are substrings of the input.
func (d *decoder) str() string {
	if d.peek() != '"' {
		d.fail()
		return ""
	}
	start := d.i + 1
	i := start
	for i < len(d.s) && plainASCII[d.s[i]] {
		i++
	}
	if i < len(d.s) && d.s[i] == '"' {
		d.i = i + 1
		return d.s[start:i]
	}
	return d.strSlow(start, i)
}

// plainASCII marks the bytes that stand for themselves in a JSON string
// and are valid UTF-8 on their own.
var plainASCII = func() (t [256]bool) {
	for c := ' '; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// strSlow continues str from s[i]: the value is still a substring if it
// only adds valid UTF-8, else it is rebuilt by unescape. Invalid UTF-8 is
// a syntax error.
func (d *decoder) strSlow(start, i int) string {
	for i < len(d.s) {
		switch c := d.s[i]; {
		case c == '"':
			d.i = i + 1
			return d.s[start:i]
		case c == '\\':
			return d.unescape(start, i)
		case c < ' ':
			d.i = i
			d.fail()
			return ""
		case c < utf8.RuneSelf:
			i++
		default:
			r, size := utf8.DecodeRuneInString(d.s[i:])
			if r == utf8.RuneError && size == 1 {
				d.failEncoding(i, "invalid UTF-8")
				return ""
			}
			i += size
		}
	}
	d.i = i
	d.fail()
	return ""
}

// unescape builds the value of the string that starts at s[start], from
// s[i] on: escapes are decoded; invalid UTF-8 is a syntax error.
func (d *decoder) unescape(start, i int) string {
	b := make([]byte, 0, i-start+16)
	b = append(b, d.s[start:i]...)
	for i < len(d.s) {
		switch c := d.s[i]; {
		case c == '"':
			d.i = i + 1
			return string(b)
		case c == '\\':
			var ok bool
			if b, i, ok = d.escape(b, i); !ok {
				if !d.syntax { // escape reports unpaired surrogates itself
					d.i = i
					d.fail()
				}
				return ""
			}
		case c < ' ':
			d.i = i
			d.fail()
			return ""
		case c < utf8.RuneSelf:
			b = append(b, c)
			i++
		default:
			r, size := utf8.DecodeRuneInString(d.s[i:])
			if r == utf8.RuneError && size == 1 {
				d.failEncoding(i, "invalid UTF-8")
				return ""
			}
			b = append(b, d.s[i:i+size]...)
			i += size
		}
	}
	d.i = i
	d.fail()
	return ""
}

// escape appends the value of the escape at s[i] (a backslash) to b and
// returns the position after it, or false at a syntax error.
func (d *decoder) escape(b []byte, i int) ([]byte, int, bool) {
	if i+1 >= len(d.s) {
		return b, i + 1, false
	}
	switch c := d.s[i+1]; c {
	case '"', '\\', '/':
		return append(b, c), i + 2, true
	case 'b':
		return append(b, '\b'), i + 2, true
	case 'f':
		return append(b, '\f'), i + 2, true
	case 'n':
		return append(b, '\n'), i + 2, true
	case 'r':
		return append(b, '\r'), i + 2, true
	case 't':
		return append(b, '\t'), i + 2, true
	case 'u':
		r := d.hex4(i)
		if r < 0 {
			return b, i + 2, false
		}
		i += 6
		if utf16.IsSurrogate(r) {
			// A valid pair is one rune. An unpaired half has no UTF-8 form:
			// encoding/json turned it into U+FFFD, which changed the value.
			if pair := utf16.DecodeRune(r, d.hex4(i)); pair != utf8.RuneError {
				return utf8.AppendRune(b, pair), i + 6, true
			}
			d.failEncoding(i-6, "unpaired UTF-16 surrogate escape")
			return b, i, false
		}
		return utf8.AppendRune(b, r), i, true
	}
	return b, i + 1, false
}

// hex4 returns the rune of the \uXXXX escape at s[i], or -1.
func (d *decoder) hex4(i int) rune {
	if i+6 > len(d.s) || d.s[i] != '\\' || d.s[i+1] != 'u' {
		return -1
	}
	var r rune
	for _, c := range []byte(d.s[i+2 : i+6]) {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			c = c - 'A' + 10
		default:
			return -1
		}
		r = r*16 + rune(c)
	}
	return r
}

// firstDuplicate reports the first object member name, in document order,
// that repeats an earlier name of the same object anywhere in data, a
// syntactically valid JSON value. It returns the top-level member under
// which the repetition is (the name itself at the top level). Decoders
// built on encoding/json (DecodeQuotaState) use it, since encoding/json
// silently keeps the last value.
func firstDuplicate(data []byte) (string, bool) {
	d := decoder{s: string(data)}
	d.skipSpace()
	if d.peek() != '{' {
		return "", false
	}
	return d.dupObject(1, "")
}

// dupObject walks the object at the read position; top names the
// top-level member it belongs to ("" for the top-level object itself).
func (d *decoder) dupObject(depth int, top string) (string, bool) {
	var names []string
	var set map[string]bool // once names grows, to keep big objects linear
	for more := d.open('}'); more && !d.syntax; more = d.next('}') {
		k := d.key()
		owner := top
		if owner == "" {
			owner = k
		}
		switch {
		case set != nil && set[k], set == nil && slices.Contains(names, k):
			return owner, true
		case set != nil:
			set[k] = true
		case len(names) == 16:
			set = make(map[string]bool, 32)
			for _, n := range names {
				set[n] = true
			}
			set[k] = true
		default:
			names = append(names, k)
		}
		if name, ok := d.dupValue(depth+1, owner); ok {
			return name, true
		}
	}
	return "", false
}

func (d *decoder) dupValue(depth int, top string) (string, bool) {
	switch d.peek() {
	case '{':
		if depth > maxNestingDepth {
			d.fail()
			return "", false
		}
		return d.dupObject(depth, top)
	case '[':
		if depth > maxNestingDepth {
			d.fail()
			return "", false
		}
		for more := d.open(']'); more && !d.syntax; more = d.next(']') {
			if name, ok := d.dupValue(depth+1, top); ok {
				return name, true
			}
		}
		return "", false
	}
	d.skipValue(depth)
	return "", false
}

// eventTime reads the timestamp text as Decode accepts it: RFC 3339 as the
// JSON Schema's date-time pattern and time.Parse agree on it. It also
// returns the derived billing period when it is a substring of s (UTC
// times), "" otherwise. The usual form, YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z, is
// read here with time.Parse's range checks (month, day of that month,
// hour, minute, second < 60); any other text takes time.Parse itself.
func eventTime(s string) (t time.Time, period string, ok bool) {
	if t, ok := utcTime(s); ok {
		return t, s[:7], true
	}
	ts, err := time.Parse(time.RFC3339Nano, s)
	// time.Parse also takes a comma before the fraction, more than 9
	// fractional digits and offsets up to +24:59; the contract does not.
	if err != nil || !isRFC3339Text(s) {
		return time.Time{}, "", false
	}
	return ts.UTC(), "", true
}

// utcTime is eventTime's fast path. It reports false for any text it does
// not read (which time.Parse may still accept or refuse).
func utcTime(s string) (time.Time, bool) {
	const layout = "dddd-dd-ddTdd:dd:dd"
	n := len(s)
	if n < len(layout)+1 || n > len(layout)+11 || s[n-1] != 'Z' {
		return time.Time{}, false
	}
	var v [6]int // year, month, day, hour, minute, second
	field := 0
	for i := 0; i < len(layout); i++ {
		c := s[i]
		if layout[i] != 'd' {
			if c != layout[i] {
				return time.Time{}, false
			}
			field++
			continue
		}
		if !isDigit(c) {
			return time.Time{}, false
		}
		v[field] = v[field]*10 + int(c-'0')
	}
	ns := 0
	if frac := s[len(layout) : n-1]; frac != "" {
		if len(frac) < 2 || frac[0] != '.' {
			return time.Time{}, false
		}
		for i := 1; i < len(frac); i++ {
			if !isDigit(frac[i]) {
				return time.Time{}, false
			}
			ns = ns*10 + int(frac[i]-'0')
		}
		for i := len(frac) - 1; i < 9; i++ {
			ns *= 10
		}
	}
	year, month, day := v[0], v[1], v[2]
	if month < 1 || month > 12 || day < 1 || day > daysIn(month, year) || v[3] > 23 || v[4] > 59 || v[5] > 59 {
		return time.Time{}, false
	}
	return time.Date(year, time.Month(month), day, v[3], v[4], v[5], ns, time.UTC), true
}

// daysIn is the number of days of month (1-12) in year, as time.Parse
// checks it.
func daysIn(month, year int) int {
	switch month {
	case 2:
		if year%4 == 0 && (year%100 != 0 || year%400 == 0) {
			return 29
		}
		return 28
	case 4, 6, 9, 11:
		return 30
	}
	return 31
}

// checkMetadataEntry checks one metadata entry against the contract's
// limits. decoded says the strings came from the scanner, which already
// refused invalid UTF-8.
func checkMetadataEntry(k, val string, decoded bool) *ValidationError {
	// A text of at most limit bytes has at most limit characters.
	if k == "" || !isPrintable(k) || len(k) > MaxMetadataKeyLen && utf8.RuneCountInString(k) > MaxMetadataKeyLen {
		return invalid(CodeInvalidField, "metadata", "metadata key %q must be 1-%d printable characters (code points)", k, MaxMetadataKeyLen)
	}
	if !decoded && !utf8.ValidString(val) || len(val) > MaxMetadataValueLen && utf8.RuneCountInString(val) > MaxMetadataValueLen {
		return invalid(CodeInvalidField, "metadata", "metadata[%q] must be at most %d characters (code points) of UTF-8", k, MaxMetadataValueLen)
	}
	return nil
}
