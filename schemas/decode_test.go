package schemas

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/shopspring/decimal"
)

// fuzzNow keeps the future-skew check stable between the two decoders.
var fuzzNow = time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)

// base is a valid event; tricky seeds add one member to it.
const base = `"id":"e1","tenant_id":"acme","feature_type":"api_calls","quantity":"1","timestamp":"2026-11-20T10:00:00Z"`

// trickyInputs are seeds for FuzzDecodeMatchesReference beyond the vectors:
// the edge cases of encoding/json that the scanner must reproduce.
var trickyInputs = []string{
	// strings: escapes, surrogates, invalid UTF-8, control characters
	`{` + base + `,"user_id":"a\u0062\"\\\/\b\f\n\r\t"}`,
	`{` + base + `,"user_id":"\ud83d\ude00 \uD83D\uDE00"}`,
	`{` + base + `,"user_id":"\ud800"}`,
	`{` + base + `,"user_id":"\ud800\u0041"}`,
	`{` + base + `,"user_id":"\udc00\ud800"}`,
	`{` + base + `,"user_id":"\ud800\ud800\udc00"}`,
	`{` + base + `,"user_id":"\ud800\u12"}`,
	`{` + base + `,"user_id":"\u12G4"}`,
	`{` + base + `,"user_id":"\x"}`,
	`{` + base + `,"user_id":"\'"}`,
	`{` + base + `,"user_id":"\u0000"}`,
	`{` + base + `,"user_id":"` + "a\tb" + `"}`,
	`{` + base + `,"user_id":"` + "\xff\xfe" + `"}`,
	`{` + base + `,"user_id":"` + "\xed\xa0\x80" + `"}`,
	`{` + base + `,"user_id":"` + "caf\xc3\xa9 \xef\xbf\xbd" + `"}`,
	`{` + base + `,"metadata":{"k":"` + "\xff" + `"}}`,
	`{` + base + `,"metadata":{"` + "\xff" + `":"v"}}`,
	`{` + base + `,"` + "\xff" + `":1}`,
	`{` + base + `,"m":` + "\xff" + `}`,
	"\xef\xbb\xbf{" + base + `}`,
	// keys: case folding, escapes, odd unknown names
	`{"ID":"e1","Tenant_ID":"acme","FEATURE_TYPE":"api_calls","Quantity":"1","timeStamp":"2026-11-20T10:00:00Z"}`,
	`{` + base + `,"ſchema_verſion":1}`,
	`{` + base + `,"\u0069d":"e2"}`,
	`{` + base + `,"a\"b":1}`,
	`{` + base + `,"":1}`,
	`{` + base + `,"\n\u2028":1}`,
	`{` + base + `,"tenantId":"x","id":5}`,
	`{"id":5,` + base + `,"tenantId":"x"}`,
	// duplicate keys and null
	`{` + base + `,"id":"e2"}`,
	`{` + base + `,"id":null}`,
	`{` + base + `,"quantity":null}`,
	`{` + base + `,"schema_version":2,"schema_version":null}`,
	`{` + base + `,"metadata":{"a":"1"},"metadata":{"b":"2","a":"3"}}`,
	`{` + base + `,"metadata":{"a":"1"},"metadata":null}`,
	`{` + base + `,"metadata":null,"metadata":{}}`,
	`{` + base + `,"metadata":{"a":null,"a":"x","b":null}}`,
	`{` + base + `,"billing_period":null,"user_id":null}`,
	`null`,
	` null `,
	`{}`,
	// values of the wrong type, nested values
	`{` + base + `,"metadata":{"a":{"b":[1,{"c":null}]}}}`,
	`{` + base + `,"metadata":{"a":[]}}`,
	`{` + base + `,"metadata":{"a":true}}`,
	`{` + base + `,"metadata":"a"}`,
	`{` + base + `,"metadata":[{"a":"b"}]}`,
	`{` + base + `,"user_id":{"a":1}}`,
	`{` + base + `,"user_id":[1,2]}`,
	`{` + base + `,"user_id":false}`,
	`{` + base + `,"timestamp":1.5e3}`,
	`{` + base + `,"quantity":{"a":1}}`,
	`{` + base + `,"quantity":[1]}`,
	`{` + base + `,"quantity":false}`,
	`{"quantity":true}`,
	`{` + base + `,"schema_version":"1"}`,
	`{` + base + `,"schema_version":true}`,
	`{` + base + `,"schema_version":{}}`,
	`{` + base + `,"schema_version":[]}`,
	`{` + base + `,"user_id":1,"metadata":{"a":2}}`,
	`{` + base + `,"user_id":1,"x":2}`,
	`{` + base + `,"user_id":1,"x":2,}`,
	`{` + base + `,"x":{"y":[1,2,{"z":"\u00e9"}]},"id":1}`,
	// numbers
	`{` + base + `,"quantity":1e3}`,
	`{` + base + `,"quantity":1E+3}`,
	`{` + base + `,"quantity":12.5e-1}`,
	`{` + base + `,"quantity":1e-9}`,
	`{` + base + `,"quantity":1e-10}`,
	`{` + base + `,"quantity":1e1000}`,
	`{` + base + `,"quantity":-0}`,
	`{` + base + `,"quantity":"-0"}`,
	`{` + base + `,"quantity":"-0.0"}`,
	`{` + base + `,"quantity":0.0}`,
	`{` + base + `,"quantity":"007.50"}`,
	`{` + base + `,"quantity":"1.0000000000"}`,
	`{` + base + `,"quantity":1.0000000000}`,
	`{` + base + `,"quantity":"123456789012345678"}`,
	`{` + base + `,"quantity":"1234567890123456789"}`,
	`{` + base + `,"quantity":"12345678901234567.8"}`,
	`{` + base + `,"quantity":"999999999999999999.999999999"}`,
	`{` + base + `,"quantity":999999999999999999.999999999}`,
	`{` + base + `,"quantity":"1000000000000000000"}`,
	`{` + base + `,"quantity":1000000000000000000}`,
	`{` + base + `,"quantity":"9999999999999999999"}`,
	`{` + base + `,"quantity":1e18}`,
	`{` + base + `,"quantity":1e17}`,
	`{` + base + `,"quantity":"99999999999999999999999999999.999999999"}`,
	`{` + base + `,"quantity":"100000000000000000000000000000"}`,
	`{` + base + `,"quantity":"\u0031\u002e5"}`,
	`{` + base + `,"quantity":" 1"}`,
	`{` + base + `,"quantity":"1."}`,
	`{` + base + `,"quantity":".5"}`,
	`{` + base + `,"quantity":01}`,
	`{` + base + `,"quantity":1.}`,
	`{` + base + `,"quantity":-}`,
	`{` + base + `,"quantity":+1}`,
	`{` + base + `,"quantity":1e}`,
	`{` + base + `,"quantity":1.5.5}`,
	`{` + base + `,"schema_version":1.0}`,
	`{` + base + `,"schema_version":1e0}`,
	`{` + base + `,"schema_version":-0}`,
	`{` + base + `,"schema_version":0}`,
	`{` + base + `,"schema_version":-1}`,
	`{` + base + `,"schema_version":9223372036854775807}`,
	`{` + base + `,"schema_version":9223372036854775808}`,
	`{` + base + `,"x":-01}`,
	// literals and whitespace
	`{` + base + `,"user_id":nul}`,
	`{` + base + `,"user_id":nullx}`,
	`{` + base + `,"x":tru}`,
	`{` + base + `,"x":truex}`,
	`{` + base + `,"x":NaN}`,
	" \t\r\n{ \"id\" :\t\"e1\" ,\n\"tenant_id\"\r:\"acme\",\"feature_type\" : \"api_calls\" , \"quantity\" : 1 , \"timestamp\":\"2026-11-20T10:00:00Z\" , \"metadata\" : { \"a\" : \"b\" , \"c\" : null } } \n",
	"{" + base + ",\"x\":[ 1 , { } , [ ] ,\"\" ] }",
	"{" + base + "}\x00",
	"{" + base + "}\f",
	// top level and trailing data
	``, ` `, `{`, `}`, `[]`, `[{` + base + `}]`, `"s"`, `1`, `-1`, `true`, `nul`, `null x`, `{}x`, `{} {}`,
	`{` + base + `}   `, `{` + base + `} x`, `{` + base + `}{}`, `{` + base + `}}`, `{` + base + `} ]`, `null]`,
	`{"id":1} x`,
	// truncated
	`{"id"`, `{"id":`, `{"id":"e1`, `{"id":"e1",`, `{"id":"\`, `{"id":"\u12`, `{"x":[1,`, `{"x":{"a":`,
	`{` + base + `,"metadata":{"a":"b"`,
	// timestamps and periods
	`{` + base + `,"timestamp":"2026-11-20T10:00:00.123456789+05:30"}`,
	`{` + base + `,"timestamp":"2026-11-20t10:00:00z"}`,
	`{` + base + `,"timestamp":"1970-01-01T00:00:00+01:00"}`,
	`{` + base + `,"timestamp":"2026-11-28T12:05:00.000000001Z"}`,
	`{` + base + `,"billing_period":"2026-00"}`,
}

// deepInputs nest arrays and objects around encoding/json's depth limit.
func deepInputs() []string {
	var out []string
	for _, n := range []int{maxNestingDepth - 2, maxNestingDepth - 1, maxNestingDepth} {
		arr := strings.Repeat("[", n) + strings.Repeat("]", n)
		out = append(out, `{`+base+`,"x":`+arr+`}`, `{`+base+`,"metadata":{"a":`+arr+`}}`, `{"id":`+arr+`}`)
		obj := strings.Repeat(`{"a":`, n) + "1" + strings.Repeat("}", n)
		out = append(out, `{`+base+`,"x":`+obj+`}`)
	}
	return out
}

func decodeSeeds(tb testing.TB) [][]byte {
	vs, err := TestVectors()
	if err != nil {
		tb.Fatal(err)
	}
	var seeds [][]byte
	for _, vec := range vs {
		seeds = append(seeds, vec.Bytes())
	}
	for _, s := range trickyInputs {
		seeds = append(seeds, []byte(s))
	}
	full := []byte(`{"id":"e1","tenant_id":"acme","user_id":"\u00e9","feature_type":"api_calls","quantity":12.5,"timestamp":"2026-11-20T10:00:00Z","metadata":{"a":"b"},"billing_period":"2026-11","schema_version":1}`)
	for i := range full {
		seeds = append(seeds, full[:i])
	}
	return seeds
}

func FuzzDecodeMatchesReference(f *testing.F) {
	for _, s := range decodeSeeds(f) {
		f.Add(s)
	}
	v := NewValidator(WithClock(func() time.Time { return fuzzNow }))
	f.Fuzz(func(t *testing.T, data []byte) {
		got, gerr := v.Decode(data)
		if foldedKey(data) {
			// Deliberate difference: encoding/json matched keys without
			// case; Decode, like the JSON Schema, refuses them.
			if gerr == nil {
				t.Fatalf("accepted a key in the wrong case: %q", data)
			}
			return
		}
		if badEncoding(data) {
			// Deliberate difference: encoding/json replaced invalid UTF-8
			// and unpaired surrogates with U+FFFD; Decode refuses them.
			if tagOf(gerr) != string(CodeMalformedJSON) {
				t.Fatalf("got %s for invalid UTF-8 or an unpaired surrogate, want malformed_json: %q", errString(gerr), data)
			}
			return
		}
		want, werr := decodeReference(v, data)
		if tagOf(werr) != string(CodeMalformedJSON) && hasDuplicateNames(data) {
			// Deliberate difference: encoding/json let the last duplicate
			// win; Decode refuses the ambiguous event.
			if gerr == nil {
				t.Fatalf("accepted duplicate member names: %q", data)
			}
			return
		}
		if tag, ok := trailingCloserTag(data); ok {
			// Deliberate difference: encoding/json's Decoder.More let a
			// trailing ']' or '}' through; Decode refuses it.
			want, werr = UsageEvent{}, invalid(Code(tag), "", "trailing data")
		}
		if msg := compareDecodes(got, gerr, want, werr); msg != "" {
			t.Fatalf("%s\ninput: %q", msg, data)
		}
	})
}

// foldedKey reports whether a top-level key of data names a field only
// when compared without case.
func foldedKey(data []byte) bool {
	var obj map[string]json.RawMessage
	if json.NewDecoder(bytes.NewReader(data)).Decode(&obj) != nil { // the first value only
		return false
	}
	fields := []string{"id", "tenant_id", "user_id", "feature_type", "quantity", "timestamp", "metadata", "billing_period", "schema_version"}
	for k := range obj {
		for _, f := range fields {
			if k != f && strings.EqualFold(k, f) {
				return true
			}
		}
	}
	return false
}

// trailingCloserTag reports whether the reference gets past the Decoder
// although data has a ']' or '}' after its first value, and then the tag
// Decode must give instead: the Decoder's own error, or malformed_json.
func trailingCloserTag(data []byte) (string, bool) {
	dec := json.NewDecoder(bytes.NewReader(data))
	var raw json.RawMessage
	if dec.Decode(&raw) != nil {
		return "", false
	}
	rest := bytes.TrimLeft(data[dec.InputOffset():], " \t\r\n")
	if len(rest) == 0 || (rest[0] != ']' && rest[0] != '}') {
		return "", false
	}
	dec = json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&jsonWireEvent{}); err != nil {
		var ve *ValidationError
		errors.As(decodeErrorReference(err), &ve)
		return ve.Tag(), true
	}
	return string(CodeMalformedJSON), true
}

// compareDecodes describes how two Decode results differ, or returns "".
func compareDecodes(got UsageEvent, gerr error, want UsageEvent, werr error) string {
	if gerr != nil || werr != nil {
		var g, w *ValidationError
		if !errors.As(gerr, &g) || !errors.As(werr, &w) {
			return "got " + errString(gerr) + ", want " + errString(werr)
		}
		if g.Reason == "" || (g.Tag() != w.Tag() && !(latePostCheck(g) || latePostCheck(w))) {
			return "got " + gerr.Error() + ", want " + werr.Error()
		}
		return ""
	}
	switch {
	case got.ID != want.ID, got.TenantID != want.TenantID, got.UserID != want.UserID, got.FeatureType != want.FeatureType:
		return "identity differs"
	case !got.Quantity.Equal(want.Quantity) || got.Quantity.Exponent() != want.Quantity.Exponent():
		return "quantity: got " + got.Quantity.String() + ", want " + want.Quantity.String()
	case !got.Timestamp.Equal(want.Timestamp) || got.Timestamp.Location() != want.Timestamp.Location():
		return "timestamp differs"
	case !reflect.DeepEqual(got.Metadata, want.Metadata): // also tells nil from empty
		return "metadata differs"
	case got.BillingPeriod != want.BillingPeriod || got.SchemaVersion != want.SchemaVersion:
		return "billing period or schema version differs"
	}
	return ""
}

// latePostCheck reports errors that the scanner finds while reading (in
// document order) but the reference only after decoding: with another
// error in the event, the two may report different ones. Both must still
// refuse.
func latePostCheck(e *ValidationError) bool {
	switch e.Tag() {
	case "invalid_type:metadata", "invalid_type:schema_version", "unsupported_schema_version":
		return true
	}
	return false
}

func tagOf(err error) string {
	var ve *ValidationError
	if errors.As(err, &ve) {
		return ve.Tag()
	}
	return errString(err)
}

// hasDuplicateNames reports whether an object anywhere in data (the first
// JSON value) repeats a member name after unescaping. It walks
// encoding/json's tokens, independently of the scanner.
func hasDuplicateNames(data []byte) bool {
	dec := json.NewDecoder(bytes.NewReader(data))
	type frame struct {
		object    bool
		names     map[string]bool
		expectKey bool
	}
	var stack []frame
	for {
		tok, err := dec.Token()
		if err != nil {
			return false
		}
		top := len(stack) - 1
		isKey := top >= 0 && stack[top].object && stack[top].expectKey
		switch tok := tok.(type) {
		case json.Delim:
			switch tok {
			case '{', '[':
				if top >= 0 && stack[top].object {
					stack[top].expectKey = true
				}
				stack = append(stack, frame{object: tok == '{', names: map[string]bool{}, expectKey: true})
			default:
				stack = stack[:top]
				if len(stack) == 0 {
					return false
				}
			}
			continue
		case string:
			if isKey {
				if stack[top].names[tok] {
					return true
				}
				stack[top].names[tok] = true
				stack[top].expectKey = false
				continue
			}
		}
		if top < 0 {
			return false
		}
		if stack[top].object {
			stack[top].expectKey = true
		}
	}
}

// badEncoding reports invalid UTF-8 anywhere in data, or a \u escape of
// an unpaired UTF-16 surrogate inside a string.
func badEncoding(data []byte) bool {
	if !utf8.Valid(data) {
		return true
	}
	inString := false
	for i := 0; i < len(data); i++ {
		switch c := data[i]; {
		case c == '"':
			inString = !inString
		case c == '\\' && inString && i+1 < len(data):
			if data[i+1] != 'u' {
				i++
				continue
			}
			r, ok := hexRune(data, i)
			if !ok {
				return false // a syntax error before any decision
			}
			switch {
			case r >= 0xDC00 && r <= 0xDFFF:
				return true
			case r >= 0xD800 && r <= 0xDBFF:
				if lo, ok := hexRune(data, i+6); !ok || lo < 0xDC00 || lo > 0xDFFF {
					return true
				}
				i += 6
			}
			i += 5
		}
	}
	return false
}

// hexRune reads the \uXXXX escape at data[i].
func hexRune(data []byte, i int) (rune, bool) {
	if i+6 > len(data) || data[i] != '\\' || data[i+1] != 'u' {
		return 0, false
	}
	n, err := strconv.ParseUint(string(data[i+2:i+6]), 16, 32)
	return rune(n), err == nil
}

func errString(err error) string {
	if err == nil {
		return "ok"
	}
	return err.Error()
}

// Deep inputs are tested here rather than seeded: 10 KB seeds slow the
// fuzzer down.
func TestDecodeDeepNestingMatchesReference(t *testing.T) {
	v := NewValidator()
	for _, in := range deepInputs() {
		got, gerr := v.Decode([]byte(in))
		want, werr := decodeReference(v, []byte(in))
		if msg := compareDecodes(got, gerr, want, werr); msg != "" {
			t.Errorf("%s\ninput: %.80s", msg, in)
		}
	}
}

// TestDecodeEdgeCases pins behaviours of encoding/json that Decode keeps,
// and the ones it deliberately changes.
func TestDecodeEdgeCases(t *testing.T) {
	v := NewValidator(WithClock(func() time.Time { return fuzzNow }))
	for _, c := range []struct{ in, want string }{
		{`{` + base + `,"metadata":{"a":"1"},"metadata":{"b":"2"}}`, "duplicate_field:metadata"},
		{`{` + base + `,"id":null}`, "duplicate_field:id"},
		{`{"id":null,` + base + `}`, "duplicate_field:id"},
		{`{` + base + `,"metadata":{"a":"1","\u0061":"2"}}`, "duplicate_field:metadata"},
		{`{` + base + `,"metadata":{"a":null}}`, "invalid_type:metadata"},
		{`{` + base + `,"user_id":"\ud800"}`, "malformed_json"},
		{`{` + base + `,"user_id":"\udc00\ud800"}`, "malformed_json"},
		{`{` + base + `,"user_id":"\ud83d\ude00"}`, "ok"},
		{`{` + base + `,"user_id":"` + "\xff" + `"}`, "malformed_json"},
		{`{` + base + `,"user_id":""}`, "invalid_field:user_id"},
		{`{` + base + `,"user_id":null,"billing_period":null,"metadata":null,"schema_version":null}`, "ok"},
		{`{` + base + `,"billing_period":""}`, "invalid_billing_period"},
		{`{"quantity":null,"id":"e1","tenant_id":"acme","feature_type":"api_calls","timestamp":"2026-11-20T10:00:00Z"}`, "missing_field:quantity"},
		{`{` + base + `,"ID":"e 2"}`, "unknown_field:ID"}, // keys are case-sensitive, as in the JSON Schema
		{`{` + base + `,"a\"b":1}`, `unknown_field:a\"b`},
		{`{"x":1,"id":2}`, "unknown_field:x"},
		{`{"id":2,"x":1}`, "invalid_type:id"},
		{`{"id":2,"x":1,}`, "malformed_json"},
		{`{` + base + `,"schema_version":1.0}`, "ok"},
		{`{` + base + `,"schema_version":10e-1}`, "ok"},
		{`{` + base + `,"schema_version":1.5}`, "invalid_type:schema_version"},
		{`{` + base + `,"schema_version":1e400}`, "unsupported_schema_version"},
		{`{` + base + `,"metadata":{"a":{}}}`, "invalid_type:metadata"},
		{`null`, "missing_field:id"},
		{`{` + base + `}}`, "malformed_json"}, // encoding/json's Decoder.More accepted this
	} {
		_, err := v.Decode([]byte(c.in))
		got := "ok"
		var ve *ValidationError
		if errors.As(err, &ve) {
			got = ve.Tag()
		}
		if got != c.want {
			t.Errorf("%s: got %s (%v), want %s", c.in, got, err, c.want)
		}
	}
}

func TestPeriodOf(t *testing.T) {
	for _, ts := range []time.Time{
		time.Date(0, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(999, 12, 31, 23, 0, 0, 0, time.UTC),
		time.Date(2026, 11, 30, 23, 30, 0, 0, time.FixedZone("x", -3600)), time.Date(9999, 9, 1, 0, 0, 0, 0, time.UTC),
		time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC),
	} {
		if got, want := PeriodOf(ts), ts.UTC().Format("2006-01"); got != want {
			t.Errorf("PeriodOf(%s) = %q, want %q", ts, got, want)
		}
	}
}

func TestSmallDecimalMatchesNewFromString(t *testing.T) {
	for _, s := range []string{"0", "1", "007.50", "0.000000001", "1.000000000", "123456789012345678",
		"123456789.901234567", "999999999999999999", "0.0", "10"} {
		d, ok := smallDecimal(s)
		want := decimal.RequireFromString(s)
		if !ok || !d.Equal(want) || d.Exponent() != want.Exponent() || d.Coefficient().Cmp(want.Coefficient()) != 0 {
			t.Errorf("smallDecimal(%q) = %s, %v; want %s", s, d, ok, want)
		}
	}
	for _, s := range []string{"-1", "-0", "1e3", "1234567890123456789", "0.0000000001"} {
		if _, ok := smallDecimal(s); ok {
			t.Errorf("smallDecimal(%q) took the fast path", s)
		}
	}
}

// BenchmarkDecodeReference measures the former encoding/json Decode, for
// comparison with BenchmarkDecode.
func BenchmarkDecodeReference(b *testing.B) {
	raw := []byte(`{"id":"018f3a5e-7c1d-7b3e-9a2f-0c4b5d6e7f80","tenant_id":"acme","user_id":"user-42","feature_type":"api_calls","quantity":"1","timestamp":"2026-11-20T10:00:00.123456789Z","metadata":{"endpoint":"/v1/items","method":"GET"}}`)
	v := NewValidator()
	b.ReportAllocs()
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		if _, err := decodeReference(v, raw); err != nil {
			b.Fatal(err)
		}
	}
}

// eventTimeByParse is what Decode did before its fast path: time.Parse,
// then the schema's shape.
func eventTimeByParse(s string) (time.Time, bool) {
	ts, err := time.Parse(time.RFC3339Nano, s)
	if err != nil || !isRFC3339Text(s) {
		return time.Time{}, false
	}
	return ts.UTC(), true
}

// checkEventTime fails when eventTime disagrees with time.Parse on s: the
// verdict, the instant, or the period (when eventTime derives one).
func checkEventTime(t *testing.T, s string) {
	t.Helper()
	got, period, ok := eventTime(s)
	want, wok := eventTimeByParse(s)
	if ok != wok || !got.Equal(want) || got.Location() != want.Location() {
		t.Fatalf("%q: eventTime %v %v, time.Parse %v %v", s, got, ok, want, wok)
	}
	if period != "" && period != PeriodOf(want) {
		t.Fatalf("%q: period %q, want %q", s, period, PeriodOf(want))
	}
}

// The fast path of eventTime agrees with time.Parse on every edge of the
// usual form: month lengths and leap years, hour/minute/second limits,
// fraction lengths, and shapes it leaves to time.Parse.
func TestEventTimeMatchesTimeParse(t *testing.T) {
	for _, y := range []string{"0000", "1900", "1970", "2000", "2024", "2026", "2100", "2105", "9999"} {
		for m := 0; m <= 13; m++ {
			for _, d := range []int{0, 1, 28, 29, 30, 31, 32} {
				checkEventTime(t, fmt.Sprintf("%s-%02d-%02dT10:00:00Z", y, m, d))
			}
		}
	}
	for _, hms := range []string{"00:00:00", "23:59:59", "24:00:00", "23:60:00", "23:59:60", "99:99:99"} {
		checkEventTime(t, "2026-11-20T"+hms+"Z")
	}
	for _, frac := range []string{"", ".", ".1", ".12", ".123456", ".123456789", ".1234567890", ".000000001", ".5x", "..5"} {
		for _, zone := range []string{"Z", "z", "+00:00", "+01:30", "-23:59", "+24:00", ""} {
			checkEventTime(t, "2026-11-20T10:00:00"+frac+zone)
		}
	}
	for _, s := range []string{"", "Z", "2026-11-20t10:00:00Z", "2026-11-20 10:00:00Z", "2026-11-20T10:00:00,5Z",
		"+2026-11-20T10:00:00Z", "2026-1-20T10:00:00Z", "2026-11-20T10:00:0Z", "2026-11-20T10:00:00ZZ", "2026-11-20T1a:00:00Z"} {
		checkEventTime(t, s)
	}
}

func FuzzEventTime(f *testing.F) {
	for _, s := range []string{"2026-11-20T10:00:00Z", "2024-02-29T23:59:59.999999999Z", "2026-11-20T10:00:00+01:00", "2100-02-29T00:00:00Z"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) { checkEventTime(t, s) })
}
