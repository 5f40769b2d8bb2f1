package schemas

import (
	"bytes"
	"encoding/json"
	"errors"
	"maps"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/shopspring/decimal"
)

func loadUsageAlertVectors(t testing.TB) []Vector {
	t.Helper()
	vs, err := UsageAlertTestVectors()
	if err != nil {
		t.Fatal(err)
	}
	if len(vs) < 25 {
		t.Fatalf("only %d usage alert vectors", len(vs))
	}
	return vs
}

func TestUsageAlertVectorsGo(t *testing.T) {
	for _, vec := range loadUsageAlertVectors(t) {
		t.Run(vec.Name, func(t *testing.T) {
			a, err := DecodeUsageAlert(vec.Bytes())
			if vec.Valid() {
				if err != nil {
					t.Fatalf("want ok, got %v", err)
				}
				got := map[string]string{"alert_id": a.AlertID, "threshold": a.Threshold.String(),
					"usage": a.Usage.String(), "detected_at": a.DetectedAt.Format(time.RFC3339Nano)}
				for k, want := range vec.Normalized {
					if got[k] != want {
						t.Errorf("%s = %q, want %q", k, got[k], want)
					}
				}
				return
			}
			var ve *ValidationError
			if !errors.As(err, &ve) || ve.Tag() != vec.Expect {
				t.Fatalf("want %s, got %v", vec.Expect, err)
			}
			if ve.Reason == "" || !strings.Contains(err.Error(), vec.Expect) {
				t.Fatalf("error %q does not explain itself", err)
			}
		})
	}
}

func compileUsageAlertSchema(t testing.TB) *jsonschema.Schema {
	t.Helper()
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(UsageAlertJSONSchema()))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.AddResource("usage_alert.schema.json", doc); err != nil {
		t.Fatal(err)
	}
	sch, err := c.Compile("usage_alert.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	return sch
}

// The JSON Schema and DecodeUsageAlert agree on every vector the schema can
// express: receivers in other languages rely on the file.
func TestUsageAlertVectorsJSONSchema(t *testing.T) {
	sch := compileUsageAlertSchema(t)
	for _, vec := range loadUsageAlertVectors(t) {
		if vec.JSONSchema == "cannot_express" {
			continue
		}
		t.Run(vec.Name, func(t *testing.T) {
			inst, perr := jsonschema.UnmarshalJSON(bytes.NewReader(vec.Bytes()))
			if perr != nil || !json.Valid(vec.Bytes()) {
				if vec.Valid() {
					t.Fatalf("valid vector does not parse: %v", perr)
				}
				return
			}
			err := sch.Validate(inst)
			if vec.Valid() && err != nil {
				t.Fatalf("schema rejects a valid vector: %v", err)
			}
			if !vec.Valid() && err == nil {
				t.Fatalf("schema accepts a vector the Go decoder rejects with %s", vec.Expect)
			}
		})
	}
}

func TestUsageAlertSchemaMatchesType(t *testing.T) {
	var doc struct {
		Required   []string                   `json:"required"`
		Properties map[string]json.RawMessage `json:"properties"`
	}
	if err := json.Unmarshal(UsageAlertJSONSchema(), &doc); err != nil {
		t.Fatal(err)
	}
	var tags []string
	typ := reflect.TypeFor[UsageAlert]()
	for i := range typ.NumField() {
		tags = append(tags, typ.Field(i).Tag.Get("json"))
	}
	if !slices.Equal(tags, usageAlertFields) || !slices.Equal(doc.Required, usageAlertFields) {
		t.Errorf("json tags %v\nschema required %v\nwire order %v", tags, doc.Required, usageAlertFields)
	}
	if props := slices.Sorted(maps.Keys(doc.Properties)); !slices.Equal(props, slices.Sorted(slices.Values(usageAlertFields))) {
		t.Errorf("schema properties %v", props)
	}
}

// AppendJSON output decodes to the same alert, passes the schema and
// re-encodes to the same bytes; Validate agrees with the decoder.
func TestUsageAlertRoundTrip(t *testing.T) {
	sch := compileUsageAlertSchema(t)
	a := UsageAlert{TenantID: "org:acme@eu", FeatureType: "api_calls", Period: "2026-11-15", Plan: "Pro \"EU\"",
		Kind: AlertKindPercent, Threshold: decimal.NewFromInt(150), Usage: decimal.RequireFromString("75.000000001"),
		Limit: decimal.NewFromInt(50), Percentage: decimal.RequireFromString("150"), Level: "overage",
		PeriodStart: time.Date(2026, 11, 15, 0, 0, 0, 0, time.UTC), PeriodEnd: time.Date(2026, 12, 15, 0, 0, 0, 0, time.UTC),
		SourceOffsets: map[int32]int64{3: 7, 0: 1}, DetectedAt: time.Date(2026, 11, 20, 1, 2, 3, 4, time.UTC)}
	a.AlertID = AlertID(a.TenantID, a.FeatureType, a.Period, a.Kind, a.Threshold)
	if err := a.Validate(); err != nil {
		t.Fatal(err)
	}
	raw := a.AppendJSON(nil)
	got, err := DecodeUsageAlert(raw)
	if err != nil {
		t.Fatalf("%v\n%s", err, raw)
	}
	if again := got.AppendJSON(nil); !bytes.Equal(raw, again) {
		t.Fatalf("re-encoding differs:\n%s\n%s", raw, again)
	}
	inst, _ := jsonschema.UnmarshalJSON(bytes.NewReader(raw))
	if err := sch.Validate(inst); err != nil {
		t.Fatalf("schema rejects AppendJSON output: %v\n%s", err, raw)
	}
	a.Threshold = decimal.NewFromInt(151) // the id no longer matches
	var ve *ValidationError
	if err := a.Validate(); !errors.As(err, &ve) || ve.Tag() != "invalid_field:alert_id" {
		t.Fatalf("Validate with a stale id: %v", err)
	}
}

// The id depends on every part of the crossing and on nothing else; the
// threshold counts by value (75 and 75.0 are one crossing).
func TestAlertID(t *testing.T) {
	base := AlertID("acme", "ai_generation", "2026-11", AlertKindPercent, decimal.NewFromInt(75))
	if base != AlertID("acme", "ai_generation", "2026-11", AlertKindPercent, decimal.RequireFromString("75.0")) {
		t.Fatal("75 and 75.0 give different ids")
	}
	others := []string{
		AlertID("acme2", "ai_generation", "2026-11", AlertKindPercent, decimal.NewFromInt(75)),
		AlertID("acme", "api_calls", "2026-11", AlertKindPercent, decimal.NewFromInt(75)),
		AlertID("acme", "ai_generation", "2026-12", AlertKindPercent, decimal.NewFromInt(75)),
		AlertID("acme", "ai_generation", "2026-11", AlertKindAbsolute, decimal.NewFromInt(75)),
		AlertID("acme", "ai_generation", "2026-11", AlertKindPercent, decimal.NewFromInt(90)),
	}
	for i, id := range others {
		if id == base || len(id) != 32 {
			t.Errorf("id %d: %s (base %s)", i, id, base)
		}
	}
}

// alertCorpus mutates the valid vectors field by field (and a few fields
// at once), re-deriving alert_id in a copy of each so that the other rules
// are reached too.
func alertCorpus(t testing.TB) [][]byte {
	var bases []object
	for _, vec := range loadUsageAlertVectors(t) {
		if !vec.Valid() || vec.Event == nil {
			continue
		}
		var raw map[string]json.RawMessage
		if err := json.Unmarshal(vec.Event, &raw); err != nil {
			t.Fatal(err)
		}
		var o object
		for _, f := range usageAlertFields {
			if val, ok := raw[f]; ok {
				var compact bytes.Buffer
				_ = json.Compact(&compact, val)
				o = append(o, member{f, compact.String()})
			}
		}
		bases = append(bases, o)
	}
	amounts := []string{jstr("0"), jstr("-1"), jstr("1.5"), jstr("1.1234567890"), jstr(strings.Repeat("9", 29)),
		jstr(strings.Repeat("9", 30)), jstr("1\n"), jstr("1e3"), "5", jstr("")}
	times := []string{jstr("2026-11-01T00:00:00Z"), jstr("2026-12-01T00:00:00Z"), jstr("2026-11-01T00:00:00+01:00"),
		jstr("2026-02-30T00:00:00Z"), jstr("2026-10-01T00:00:00Z"), jstr("2026-11-01T00:00:00Z\n")}
	values := map[string][]string{
		"alert_id":       {jstr(strings.Repeat("a", 32)), jstr(strings.Repeat("A", 32)), jstr("abc"), jstr(strings.Repeat("a", 32) + "\n")},
		"tenant_id":      {jstr("a/b"), jstr("acme\n"), jstr(strings.Repeat("a", 129)), jstr("globex")},
		"feature_type":   {jstr("API"), jstr("api_calls"), jstr(strings.Repeat("a", 65))},
		"period":         {jstr("2026-12"), jstr("2026-13"), jstr("2026-11-15"), jstr("2026-02-30")},
		"plan":           {jstr("FREE\n"), jstr("PRO"), jstr("a\x7f")},
		"kind":           {jstr("percent"), jstr("absolute"), jstr("overage"), jstr("warning"), jstr("percent\n")},
		"threshold":      {jstr("0"), jstr("1"), jstr("50"), jstr("100.5"), jstr("100000"), jstr("100001"), jstr("0.000000001"), "50", jstr("-5")},
		"usage":          amounts,
		"limit":          amounts,
		"percentage":     {jstr("0"), jstr("1.005"), jstr("100"), jstr("-1"), jstr("1\n")},
		"level":          {jstr("ok"), jstr("warning_99"), jstr("warning_100"), jstr("overage"), jstr("red")},
		"period_start":   times,
		"period_end":     times,
		"source_offsets": {`{}`, `{"0":0}`, `{"01":1}`, `{"1":-1}`, `{"1":1.5}`, `{"1":"1"}`},
		"detected_at":    times,
		"schema_version": {"1", "1.0", "2", `"1"`},
	}
	for f, vs := range values {
		values[f] = append(vs, types()...)
	}
	var out [][]byte
	add := func(o object) { out = append(out, o.bytes(), withDerivedID(o).bytes()) }
	for _, b := range bases {
		out = append(out, b.bytes())
		for _, f := range usageAlertFields {
			add(b.with(f, ""))
			for _, v := range values[f] {
				add(b.with(f, v))
			}
		}
		out = append(out, append(slices.Clone(b), member{"x", "1"}).bytes())
	}
	r := rand.New(rand.NewPCG(5, 6))
	for range 300 {
		o := bases[r.IntN(len(bases))]
		for range 2 + r.IntN(2) {
			f := usageAlertFields[r.IntN(len(usageAlertFields))]
			o = o.with(f, values[f][r.IntN(len(values[f]))])
		}
		add(o)
	}
	return out
}

// withDerivedID sets alert_id from the object's other members when they
// are strings.
func withDerivedID(o object) object {
	get := func(name string) (string, bool) {
		for _, m := range o {
			if m.name == name {
				var s string
				return s, json.Unmarshal([]byte(m.value), &s) == nil
			}
		}
		return "", false
	}
	var parts []string
	for _, f := range []string{"tenant_id", "feature_type", "period", "kind", "threshold"} {
		s, ok := get(f)
		if !ok {
			return o
		}
		parts = append(parts, s)
	}
	th, err := decimal.NewFromString(parts[4])
	if err != nil {
		return o
	}
	return o.with("alert_id", jstr(AlertID(parts[0], parts[1], parts[2], parts[3], th)))
}

// alertInexpressible names the UsageAlert rule outside the schema that data
// breaks, or "". It restates the rules independently of checkConsistency.
func alertInexpressible(data []byte) string {
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
	str := func(k string) string { s, _ := obj[k].(string); return s }
	kind, limit := str("kind"), str("limit")
	if th, err := decimal.NewFromString(str("threshold")); err == nil {
		switch {
		case kind == "percent" && (!th.IsInteger() || th.Sign() <= 0 || th.GreaterThan(decimal.NewFromInt(100000))):
			return "percent threshold not an integer in 1..100000"
		case kind == "absolute" && th.Sign() <= 0:
			return "absolute threshold not > 0"
		case kind == "overage" && !th.IsZero():
			return "overage threshold not 0"
		}
		if id := AlertID(str("tenant_id"), str("feature_type"), str("period"), kind, th); str("alert_id") != id {
			return "alert_id not derived from the crossing"
		}
	}
	if limit == "-1" && (kind == "percent" || kind == "overage") {
		return "percent or overage alert without a limit"
	}
	if p, err := decimal.NewFromString(str("percentage")); err == nil && limit == "-1" && !p.IsZero() {
		return "percentage not 0 when unlimited"
	}
	s, err1 := time.Parse(time.RFC3339Nano, str("period_start"))
	e, err2 := time.Parse(time.RFC3339Nano, str("period_end"))
	if err1 == nil && err2 == nil && !e.After(s) {
		return "period_end not after period_start"
	}
	return ""
}

// The Go decoder, the JSON Schema (Go and Python validators) agree on
// every generated alert, except where a rule the schema cannot express
// applies, and there Go refuses.
func TestUsageAlertDifferential(t *testing.T) {
	sch := compileUsageAlertSchema(t)
	corpus := alertCorpus(t)
	for _, vec := range loadUsageAlertVectors(t) {
		corpus = append(corpus, vec.Bytes())
	}
	verdict := func(data []byte) error { _, err := DecodeUsageAlert(data); return err }
	var accepted, refused int
	for _, data := range corpus {
		goErr := verdict(data)
		if msg := agree(data, goErr, schemaVerdict(sch, data), alertInexpressible(data), "JSON Schema"); msg != "" {
			t.Errorf("%s\ninput: %.400q", msg, data)
		}
		if goErr == nil {
			accepted++
		} else {
			refused++
		}
	}
	if accepted < 30 || refused < 300 {
		t.Errorf("the corpus does not exercise both sides: %d accepted, %d refused", accepted, refused)
	}
	checkWithPython(t, "usage_alert.schema.json", corpus, func(data []byte) (error, string) {
		return verdict(data), alertInexpressible(data)
	})
}
