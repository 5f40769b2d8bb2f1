package schemas

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// The differential tests hold the Go validators and independent JSON Schema
// validators (santhosh-tekuri/jsonschema in Go, Python's jsonschema through
// scripts/check_schema_py.py) to the same verdict on many mutated inputs.
// The only allowed differences are the rules a JSON Schema cannot express,
// listed in the schemas' descriptions; inexpressible finds them on its own,
// from the input, without asking the validator under test.

// diffNow is the validators' clock in these tests.
var diffNow = time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)

// member is one top-level member of a generated object, as JSON text.
type member struct{ name, value string }

type object []member

func (o object) bytes() []byte {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, m := range o {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(jsonString(m.name))
		b.WriteByte(':')
		b.WriteString(m.value)
	}
	b.WriteByte('}')
	return b.Bytes()
}

// with returns o with name set to value (appended when absent); value ""
// deletes the member.
func (o object) with(name, value string) object {
	out := slices.Clone(o)
	for i, m := range out {
		if m.name == name {
			if value == "" {
				return slices.Delete(out, i, i+1)
			}
			out[i].value = value
			return out
		}
	}
	if value == "" {
		return out
	}
	return append(out, member{name, value})
}

func jsonString(s string) string {
	b, _ := json.Marshal(s) // cannot fail for a string
	// json.Marshal escapes <, > and & and U+2028/9; a raw form is wanted
	// too, so sometimes keep what Marshal wrote and sometimes not: both are
	// valid JSON for the same string.
	return string(b)
}

func jstr(s string) string { return jsonString(s) }

func metadataJSON(n int, key func(int) string, val func(int) string) string {
	var parts []string
	for i := range n {
		parts = append(parts, jstr(key(i))+":"+jstr(val(i)))
	}
	return "{" + strings.Join(parts, ",") + "}"
}

// eventValues are the values tried for each member of a UsageEvent: JSON
// types, boundaries, multi-byte text, number and time forms, nulls.
func eventValues() map[string][]string {
	types := []string{"null", "true", "false", "0", "1", "1.5", "-1", `{}`, `[]`, `[1]`, `{"a":"b"}`, `""`, `"a"`}
	ids := []string{jstr(strings.Repeat("a", 128)), jstr(strings.Repeat("a", 129)), jstr("é"), jstr("a b"), jstr("a/b"),
		jstr("abc\n"), jstr("\nabc"), jstr("a\x00"), jstr("A-Z.a_z:0-9"), jstr("org:acme@eu"), `"\u0061bc"`, jstr("abc\t")}
	text := func(r string, n int) string { return jstr(strings.Repeat(r, n)) }
	return map[string][]string{
		"id":        append(slices.Clone(types), ids...),
		"tenant_id": append(slices.Clone(types), ids...),
		"user_id": append(slices.Clone(types), text("é", 256), text("é", 257), text("😀", 256), text("😀", 257),
			text("a", 256), text("a", 257), text("例", 256), text("例", 257), jstr("bob\n"), jstr("bob\t"), jstr("\x7f"),
			jstr("\u0080"), jstr("\u2028"), `"\ud83d\ude00"`, jstr("josé"), `"\u00e9"`),
		"feature_type": append(slices.Clone(types), jstr("api_calls"), text("a", 64), text("a", 65), jstr("A"), jstr("1a"),
			jstr("a-b.c_d"), jstr("api calls"), jstr("api_calls\n"), jstr("é"), jstr("ai_generation")),
		"quantity": append(slices.Clone(types), jstr("0"), jstr("1"), jstr("-0"), jstr("-1"), jstr("+1"), jstr("0.1234567890"),
			jstr("0.123456789"), jstr("1."), jstr("."), jstr(".5"), jstr("007.50"), jstr(strings.Repeat("0", 18)+"1"),
			jstr(strings.Repeat("9", 18)), jstr(strings.Repeat("9", 19)), jstr(strings.Repeat("9", 18)+".999999999"),
			jstr(strings.Repeat("9", 19)+".999999999"), jstr("1"+strings.Repeat("0", 18)), jstr(strings.Repeat("9", 29)),
			jstr("1e3"), jstr(" 1"), jstr("1\n"), jstr("１"), "-0", "0", "-0.0", "0.1234567890", "1e-9", "1e-10", "1.5e-9", "1E+2",
			"25E0001", "0e999999999", "1e29", "1e28", "1e18", "1e17", "1E+18", "0.1e19", "0.1e18", "10e17", "100000000000000000e1",
			"1"+strings.Repeat("0", 18), strings.Repeat("9", 19), strings.Repeat("9", 18)+".999999999",
			strings.Repeat("9", 18)+".9999999999", strings.Repeat("9", 27)+"e-9", strings.Repeat("9", 18)+".9999999990",
			strings.Repeat("9", 29)+".999999999",
			"1e400", "1e-400", "2500.0", "12.5", "-1e-400"),
		"timestamp": append(slices.Clone(types), jstr("2026-11-20T10:00:00Z"), jstr("2026-11-20T10:00:00.1234567890Z"),
			jstr("2026-11-20T10:00:00.123456789Z"), jstr("2026-11-20T10:00:00,5Z"), jstr("2016-12-31T23:59:60Z"),
			jstr("2026-11-20T10:00:00+24:00"), jstr("2026-11-20T10:00:00+23:59"), jstr("2026-11-20T10:00:00-00:00"),
			jstr("2026-11-20t10:00:00z"), jstr("2026-11-20T10:00:00Z\n"), jstr("2026-02-29T10:00:00Z"),
			jstr("2028-02-29T10:00:00Z"), jstr("1969-12-31T23:59:59Z"), jstr("1970-01-01T00:30:00+01:00"),
			jstr("1970-01-01T00:00:00Z"), jstr("2026-11-20T10:00:00"), jstr("2026-11-20 10:00:00Z"), jstr("2099-01-01T00:00:00Z"),
			jstr("2026-11-28T12:04:59Z"), jstr("2026-11-28T12:05:01Z"), jstr("0000-01-01T00:00:00Z"), jstr("2026-11-20T10:00:00.Z"),
			jstr("2026-11-20T10:00Z"), jstr("+2026-11-20T10:00:00Z"), jstr("2026-13-01T00:00:00Z"), jstr("2026-11-20T10:00:00+0100")),
		"metadata": append(slices.Clone(types[:len(types)-2]), `""`, `"x"`, `{"a":null}`, `{"a":1}`, `{"a":{}}`, `{"":"v"}`,
			`{"a":"1","a":"2"}`, `{"a":"1","\u0061":"2"}`, `{"k":"line\nbreak"}`, `{"a\n":"v"}`, `{"\u0000":"v"}`, `{"k":""}`,
			metadataJSON(1, func(int) string { return strings.Repeat("é", 128) }, func(int) string { return "v" }),
			metadataJSON(1, func(int) string { return strings.Repeat("é", 129) }, func(int) string { return "v" }),
			metadataJSON(1, func(int) string { return "k" }, func(int) string { return strings.Repeat("é", 1024) }),
			metadataJSON(1, func(int) string { return "k" }, func(int) string { return strings.Repeat("é", 1025) }),
			metadataJSON(1, func(int) string { return "k" }, func(int) string { return strings.Repeat("😀", 1024) }),
			metadataJSON(1, func(int) string { return "k" }, func(int) string { return strings.Repeat("é", 600) }),
			metadataJSON(64, func(i int) string { return fmt.Sprint("k", i) }, func(int) string { return "v" }),
			metadataJSON(65, func(i int) string { return fmt.Sprint("k", i) }, func(int) string { return "v" }),
			metadataJSON(32, func(i int) string { return fmt.Sprint("k", i) }, func(int) string { return strings.Repeat("x", 1024) })),
		"billing_period": append(slices.Clone(types), jstr("2026-11"), jstr("2026-12"), jstr("2026-13"), jstr("2026-1"),
			jstr("11-2026"), jstr("2026-11\n"), jstr("2026-00"), "202611"),
		"schema_version": append(slices.Clone(types), "1.0", "10e-1", "1e0", "-0", "0", "2", "2.0", `"1"`, "1e400", "0.5e1"),
	}
}

var eventFields = []string{"id", "tenant_id", "user_id", "feature_type", "quantity", "timestamp", "metadata", "billing_period", "schema_version"}

func eventBases() []object {
	minimal := object{{"id", `"e1"`}, {"tenant_id", `"acme"`}, {"feature_type", `"api_calls"`}, {"quantity", `"1"`},
		{"timestamp", `"2026-11-20T10:00:00Z"`}}
	full := object{{"id", `"018f3a5e-7c1d-7b3e-9a2f-0c4b5d6e7f80"`}, {"tenant_id", `"org:acme@eu"`}, {"user_id", `"josé"`},
		{"feature_type", `"ai_generation"`}, {"quantity", `12.5`}, {"timestamp", `"2026-11-20T10:00:00.5+01:00"`},
		{"metadata", `{"model":"gpt-x","tokens":"1532"}`}, {"billing_period", `"2026-11"`}, {"schema_version", `1`}}
	nulls := object{{"schema_version", "null"}, {"user_id", "null"}, {"metadata", "null"}, {"billing_period", "null"},
		{"timestamp", `"2026-11-01T00:00:00Z"`}, {"quantity", `"0.000000001"`}, {"feature_type", `"storage"`},
		{"tenant_id", `"t"`}, {"id", `"x"`}}
	return []object{minimal, full, nulls}
}

// eventCorpus generates the mutated events: every value of every member on
// every base, deletions, unknown and duplicate members, document-level
// damage, and random combinations of two or three changes.
func eventCorpus() [][]byte {
	values := eventValues()
	var out [][]byte
	add := func(o object) { out = append(out, o.bytes()) }
	for _, b := range eventBases() {
		add(b)
		for _, f := range eventFields {
			add(b.with(f, ""))
			for _, v := range values[f] {
				add(b.with(f, v))
			}
			if i := slices.IndexFunc(b, func(m member) bool { return m.name == f }); i >= 0 {
				add(append(slices.Clone(b), b[i]))                               // the same value twice
				add(append(slices.Clone(b), member{f, values[f][len(types())]})) // another value
				add(append(object{{f, "null"}}, b...))
			}
		}
		for _, extra := range []member{{"tenantId", `"x"`}, {"", "1"}, {"Tenant_ID", `"x"`}, {"x", "null"}, {"é", "{}"},
			{"metadata ", "{}"}} {
			add(append(slices.Clone(b), extra))
		}
		raw := b.bytes()
		out = append(out, append(slices.Clone(raw), " {}"...), append(slices.Clone(raw), '}'), append(slices.Clone(raw), " \n"...),
			append([]byte("\xef\xbb\xbf"), raw...), raw[:len(raw)-1], append(slices.Clone(raw[:len(raw)-1]), ",}"...),
			[]byte(strings.Replace(string(raw), `"acme"`, "\"ac\xffme\"", 1)),
			[]byte(strings.Replace(string(raw), `"e1"`, `"e\ud800"`, 1)),
			[]byte(strings.Replace(string(raw), `"acme"`, `"ac\udc00\ud800me"`, 1)))
	}
	out = append(out, []byte("null"), []byte("[]"), []byte(`"s"`), []byte("{}"), []byte(""), []byte("1"), []byte(`{"id":NaN}`))
	r := rand.New(rand.NewPCG(9, 6))
	bases := eventBases()
	for range 1500 {
		o := bases[r.IntN(len(bases))]
		for range 2 + r.IntN(2) {
			f := eventFields[r.IntN(len(eventFields))]
			vs := values[f]
			if r.IntN(8) == 0 {
				o = o.with(f, "")
			} else {
				o = o.with(f, vs[r.IntN(len(vs))])
			}
		}
		add(o)
	}
	return out
}

func types() []string {
	return []string{"null", "true", "false", "0", "1", "1.5", "-1", `{}`, `[]`, `[1]`, `{"a":"b"}`, `""`, `"a"`}
}

// inexpressible names the rule of the UsageEvent contract, outside what
// usage_event.schema.json can express, that data breaks, or "". It reads
// the input with encoding/json and math/big, independently of Decode.
func inexpressible(data []byte, now time.Time) string {
	switch {
	case len(data) > DefaultMaxEventBytes:
		return "size over 32768 bytes"
	case badEncoding(data):
		return "not UTF-8, or an unpaired surrogate"
	case hasDuplicateNames(data):
		return "duplicate member names"
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var obj map[string]any
	if dec.Decode(&obj) != nil {
		return ""
	}
	rule := ""
	var ts time.Time
	if s, ok := obj["timestamp"].(string); ok && timestampPattern.MatchString(s) {
		if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
			ts = t.UTC()
			switch {
			case ts.After(now.Add(DefaultMaxFutureSkew)):
				rule = "timestamp more than 5 minutes in the future"
			case ts.Year() < 1970 || ts.Year() > 2105:
				rule = "timestamp outside 1970-2105 UTC"
			}
		}
	}
	if n, ok := obj["quantity"].(json.Number); ok {
		if q, ok := new(big.Rat).SetString(string(n)); ok {
			scaled := new(big.Rat).Mul(q, new(big.Rat).SetInt(new(big.Int).Exp(big.NewInt(10), big.NewInt(9), nil)))
			if !scaled.IsInt() {
				rule = "JSON-number quantity with more than 9 fractional digits"
			}
		}
	}
	if p, ok := obj["billing_period"].(string); ok && isPeriod(p) && !ts.IsZero() && p != ts.Format("2006-01") {
		rule = "billing_period is not the timestamp's UTC month"
	}
	return rule
}

var timestampPattern = regexp.MustCompile(`^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-5][0-9](\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})$`)

func compileSchema(tb testing.TB, name string, doc []byte) *jsonschema.Schema {
	tb.Helper()
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	d, err := jsonschema.UnmarshalJSON(bytes.NewReader(doc))
	if err != nil {
		tb.Fatal(err)
	}
	if err := c.AddResource(name, d); err != nil {
		tb.Fatal(err)
	}
	sch, err := c.Compile(name)
	if err != nil {
		tb.Fatal(err)
	}
	return sch
}

// schemaVerdict is nil when the schema accepts data as a JSON document.
func schemaVerdict(sch *jsonschema.Schema, data []byte) error {
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("not JSON: %w", err)
	}
	return sch.Validate(inst)
}

func decodeVerdict(v *Validator) func([]byte) error {
	return func(data []byte) error { _, err := v.Decode(data); return err }
}

func quotaVerdict(data []byte) error { _, err := DecodeQuotaState(data); return err }

// agree checks one input; it returns a description of a disagreement.
func agree(data []byte, goErr, otherErr error, rule, other string) string {
	if rule != "" {
		if goErr == nil {
			return fmt.Sprintf("Go accepts an input that breaks %q", rule)
		}
		return ""
	}
	if (goErr == nil) != (otherErr == nil) {
		return fmt.Sprintf("Go: %s; %s: %s", errString(goErr), other, errString(otherErr))
	}
	var ve *ValidationError
	if goErr != nil && !errors.As(goErr, &ve) {
		return "Go error is not a *ValidationError: " + goErr.Error()
	}
	return ""
}

func TestUsageEventDifferential(t *testing.T) {
	sch := compileSchema(t, "usage_event.schema.json", UsageEventJSONSchema())
	v := NewValidator(WithClock(func() time.Time { return diffNow }))
	corpus := append(eventCorpus(), vectorBytes(t)...)
	if len(corpus) < 2000 {
		t.Fatalf("only %d generated inputs", len(corpus))
	}
	var accepted, refused, skipped int
	for _, data := range corpus {
		goErr := decodeVerdict(v)(data)
		rule := inexpressible(data, diffNow)
		if msg := agree(data, goErr, schemaVerdict(sch, data), rule, "JSON Schema"); msg != "" {
			t.Errorf("%s\ninput: %.300q", msg, data)
		}
		switch {
		case rule != "":
			skipped++
		case goErr == nil:
			accepted++
		default:
			refused++
		}
	}
	t.Logf("%d inputs: %d accepted and %d refused by both, %d break an inexpressible rule", len(corpus), accepted, refused, skipped)
	if accepted < 200 || refused < 500 || skipped < 50 {
		t.Errorf("the corpus does not exercise both sides: %d accepted, %d refused, %d inexpressible", accepted, refused, skipped)
	}
	checkWithPython(t, "usage_event.schema.json", corpus, func(data []byte) (error, string) {
		return decodeVerdict(v)(data), inexpressible(data, diffNow)
	})
}

func vectorBytes(t *testing.T) [][]byte {
	var out [][]byte
	for _, vec := range vectors(t) {
		out = append(out, vec.Bytes())
	}
	return out
}

// FuzzUsageEventDifferential runs the same agreement on arbitrary input:
// go test -fuzz FuzzUsageEventDifferential ./schemas/
func FuzzUsageEventDifferential(f *testing.F) {
	for _, data := range eventCorpus()[:400] {
		f.Add(data)
	}
	sch := compileSchema(f, "usage_event.schema.json", UsageEventJSONSchema())
	v := NewValidator(WithClock(func() time.Time { return diffNow }))
	f.Fuzz(func(t *testing.T, data []byte) {
		goErr := decodeVerdict(v)(data)
		if msg := agree(data, goErr, schemaVerdict(sch, data), inexpressible(data, diffNow), "JSON Schema"); msg != "" {
			t.Fatalf("%s\ninput: %q", msg, data)
		}
	})
}

// quotaCorpus mutates the valid quota state vectors member by member.
func quotaCorpus(t testing.TB) [][]byte {
	var bases []object
	for _, vec := range loadQuotaStateVectors(t) {
		if !vec.Valid() || vec.Event == nil || len(bases) == 4 {
			continue
		}
		dec := json.NewDecoder(bytes.NewReader(vec.Event))
		var raw map[string]json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			t.Fatal(err)
		}
		var o object
		for _, f := range quotaStateFields {
			if val, ok := raw[f]; ok {
				var compact bytes.Buffer
				_ = json.Compact(&compact, val)
				o = append(o, member{f, compact.String()})
			}
		}
		bases = append(bases, o)
	}
	amounts := []string{jstr("0"), jstr("-1"), jstr("-0"), jstr("1.5"), jstr("1.1234567890"), jstr(strings.Repeat("9", 29)),
		jstr(strings.Repeat("9", 30)), jstr("1\n"), jstr("1e3"), "5", jstr("")}
	times := []string{jstr("2026-11-01T00:00:00Z"), jstr("2026-12-01T00:00:00Z"), jstr("2026-11-01T00:00:00+01:00"),
		jstr("2016-12-31T23:59:60Z"), jstr("2026-11-01T00:00:00.1234567890Z"), jstr("2026-11-01T00:00:00Z\n"),
		jstr("2026-02-30T00:00:00Z"), jstr("2027-01-01T00:00:00Z"), jstr("2026-10-01T00:00:00Z"), jstr("9999-12-31T23:59:59Z")}
	values := map[string][]string{
		"tenant_id":    {jstr("a/b"), jstr("acme\n"), jstr(strings.Repeat("a", 129)), jstr("é")},
		"feature_type": {jstr("API"), jstr("api_calls\n"), jstr(strings.Repeat("a", 65))},
		"period":       {jstr("2026-12"), jstr("2026-13"), jstr("2026-11-15"), jstr("2026-02-30"), jstr("2026-11\n"), jstr("2026-11-15\n")},
		"plan":         {jstr("FREE\n"), jstr(strings.Repeat("é", 128)), jstr(strings.Repeat("é", 129)), jstr("a\x7f"), jstr("PRO")},
		"usage":        amounts, "limit": amounts, "remaining": amounts, "overage_used": amounts,
		"percentage":   {jstr("0"), jstr("0.00"), jstr("1.005"), jstr("100"), jstr("-1"), jstr("1\n"), jstr(strings.Repeat("9", 41))},
		"level":        {jstr("ok"), jstr("warning_1"), jstr("warning_99"), jstr("warning_100"), jstr("warning_0"), jstr("blocked\n"), jstr("BLOCKED")},
		"period_start": times,
		"period_end":   times,
		"final":        {"true", "false", `"true"`, "1"},
		"source_offsets": {`{}`, `{"0":0}`, `{"01":1}`, `{"1":-1}`, `{"1":1.0}`, `{"1":1.5}`, `{"1":9223372036854775807}`,
			`{"1":9223372036854775808}`, `{"1\n":1}`, `{"1000000000":1}`, `{"1":1,"1":2}`, `{"1":"1"}`},
		"updated_at":     times,
		"schema_version": {"1", "1.0", "2", "0", `"1"`, "1.5", "1e400"},
	}
	for f, vs := range values {
		values[f] = append(vs, types()...)
	}
	var out [][]byte
	for _, b := range bases {
		out = append(out, b.bytes())
		for _, f := range quotaStateFields {
			out = append(out, b.with(f, "").bytes(), append(slices.Clone(b), b[slices.IndexFunc(b, func(m member) bool { return m.name == f })]).bytes())
			for _, v := range values[f] {
				out = append(out, b.with(f, v).bytes())
			}
		}
		out = append(out, append(slices.Clone(b), member{"x", "1"}).bytes(),
			[]byte(strings.Replace(string(b.bytes()), `"acme"`, `"ac\ud800me"`, 1)))
	}
	r := rand.New(rand.NewPCG(3, 4))
	for range 800 {
		o := bases[r.IntN(len(bases))]
		for range 2 + r.IntN(2) {
			f := quotaStateFields[r.IntN(len(quotaStateFields))]
			o = o.with(f, values[f][r.IntN(len(values[f]))])
		}
		out = append(out, o.bytes())
	}
	return out
}

// quotaInexpressible names the QuotaState rule outside the schema that
// data breaks, or "".
func quotaInexpressible(data []byte) string {
	switch {
	case badEncoding(data):
		return "not UTF-8, or an unpaired surrogate"
	case hasDuplicateNames(data):
		return "duplicate member names"
	}
	var obj map[string]any
	if json.Unmarshal(data, &obj) != nil {
		return ""
	}
	start, ok1 := obj["period_start"].(string)
	end, ok2 := obj["period_end"].(string)
	if ok1 && ok2 {
		s, err1 := time.Parse(time.RFC3339Nano, start)
		e, err2 := time.Parse(time.RFC3339Nano, end)
		if err1 == nil && err2 == nil && !e.After(s) {
			return "period_end not after period_start"
		}
	}
	return ""
}

func TestQuotaStateDifferential(t *testing.T) {
	sch := compileQuotaStateSchema(t)
	corpus := quotaCorpus(t)
	for _, vec := range loadQuotaStateVectors(t) {
		corpus = append(corpus, vec.Bytes())
	}
	var accepted, refused int
	for _, data := range corpus {
		goErr := quotaVerdict(data)
		if msg := agree(data, goErr, schemaVerdict(sch, data), quotaInexpressible(data), "JSON Schema"); msg != "" {
			t.Errorf("%s\ninput: %.400q", msg, data)
		}
		if goErr == nil {
			accepted++
		} else {
			refused++
		}
	}
	if accepted < 50 || refused < 300 {
		t.Errorf("the corpus does not exercise both sides: %d accepted, %d refused", accepted, refused)
	}
	checkWithPython(t, "quota_state.schema.json", corpus, func(data []byte) (error, string) {
		return quotaVerdict(data), quotaInexpressible(data)
	})
}

func FuzzQuotaStateDifferential(f *testing.F) {
	for _, data := range quotaCorpus(f)[:300] {
		f.Add(data)
	}
	sch := compileQuotaStateSchema(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		if msg := agree(data, quotaVerdict(data), schemaVerdict(sch, data), quotaInexpressible(data), "JSON Schema"); msg != "" {
			t.Fatalf("%s\ninput: %q", msg, data)
		}
	})
}

// checkWithPython runs scripts/check_schema_py.py (Python jsonschema, draft
// 2020-12, format checking) over corpus and requires the same verdicts.
// Without the venv that scripts/deps.sh makes it skips, unless
// USAGE_REQUIRE_PYTHON_SCHEMA_CHECK=1 (scripts/test.sh sets it).
func checkWithPython(t *testing.T, schemaFile string, corpus [][]byte, goVerdict func([]byte) (error, string)) {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	py := os.Getenv("USAGE_PYTHON")
	if py == "" {
		py = filepath.Join(root, ".cache", "venv", "bin", "python")
	}
	script := filepath.Join(root, "scripts", "check_schema_py.py")
	if _, err := os.Stat(py); err != nil {
		if os.Getenv("USAGE_REQUIRE_PYTHON_SCHEMA_CHECK") == "1" {
			t.Fatalf("Python check required but %s is missing: run scripts/deps.sh", py)
		}
		t.Skipf("Python check skipped: no %s (scripts/deps.sh makes it; make test runs this check)", py)
	}
	var in bytes.Buffer
	for _, data := range corpus {
		fmt.Fprintf(&in, "{\"b64\":%q}\n", base64.StdEncoding.EncodeToString(data))
	}
	corpusFile := filepath.Join(t.TempDir(), "corpus.jsonl")
	if err := os.WriteFile(corpusFile, in.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd := exec.Command(py, script, schemaFile, corpusFile)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v\n%s", script, err, stderr.String())
	}
	var verdicts []string
	for sc := bufio.NewScanner(bytes.NewReader(out)); sc.Scan(); {
		verdicts = append(verdicts, sc.Text())
	}
	if len(verdicts) != len(corpus) {
		t.Fatalf("Python gave %d verdicts for %d inputs", len(verdicts), len(corpus))
	}
	disagreements := 0
	for i, data := range corpus {
		goErr, rule := goVerdict(data)
		var pyErr error
		if verdicts[i] != "ok" {
			pyErr = errors.New(verdicts[i])
		}
		if msg := agree(data, goErr, pyErr, rule, "Python jsonschema"); msg != "" {
			if disagreements++; disagreements <= 20 {
				t.Errorf("%s\ninput: %.300q", msg, data)
			}
		}
	}
	if disagreements > 0 {
		t.Errorf("Python jsonschema disagrees on %d of %d inputs", disagreements, len(corpus))
	}
	t.Logf("Python jsonschema agrees on all %d inputs", len(corpus))
}
