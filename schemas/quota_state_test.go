package schemas

import (
	"bytes"
	"encoding/json"
	"errors"
	"maps"
	"math/rand/v2"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/shopspring/decimal"
)

func loadQuotaStateVectors(t testing.TB) []Vector {
	t.Helper()
	vs, err := QuotaStateTestVectors()
	if err != nil {
		t.Fatal(err)
	}
	if len(vs) < 40 {
		t.Fatalf("only %d quota state vectors", len(vs))
	}
	return vs
}

func TestQuotaStateVectorsGo(t *testing.T) {
	for _, vec := range loadQuotaStateVectors(t) {
		t.Run(vec.Name, func(t *testing.T) {
			s, err := DecodeQuotaState(vec.Bytes())
			if vec.Valid() {
				if err != nil {
					t.Fatalf("want ok, got %v", err)
				}
				checkQuotaStateNormalized(t, s, vec.Normalized)
				return
			}
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("want %s, got %v", vec.Expect, err)
			}
			if ve.Tag() != vec.Expect {
				t.Fatalf("want %s, got %s (%v)", vec.Expect, ve.Tag(), err)
			}
			if ve.Reason == "" || !strings.Contains(err.Error(), vec.Expect) {
				t.Fatalf("error %q does not explain itself", err)
			}
		})
	}
}

func checkQuotaStateNormalized(t *testing.T, s QuotaState, want map[string]string) {
	t.Helper()
	got := map[string]string{
		"usage":          s.Usage.String(),
		"limit":          s.Limit.String(),
		"remaining":      s.Remaining.String(),
		"overage_used":   s.OverageUsed.String(),
		"percentage":     s.Percentage.String(),
		"period_start":   s.PeriodStart.Format(time.RFC3339Nano),
		"period_end":     s.PeriodEnd.Format(time.RFC3339Nano),
		"updated_at":     s.UpdatedAt.Format(time.RFC3339Nano),
		"final":          strconv.FormatBool(s.Final),
		"unlimited":      strconv.FormatBool(s.Unlimited()),
		"source_offsets": "{" + string(appendOffsets(nil, s.SourceOffsets)) + "}",
		"key":            s.Key(),
	}
	for k, w := range want {
		g, ok := got[k]
		if !ok {
			t.Errorf("normalized field %q is not known to the test", k)
		} else if g != w {
			t.Errorf("%s: got %q, want %q", k, g, w)
		}
	}
	for _, ts := range []time.Time{s.PeriodStart, s.PeriodEnd, s.UpdatedAt} {
		if ts.Location() != time.UTC {
			t.Errorf("time not in UTC: %v", ts)
		}
	}
	if s.SchemaVersion != QuotaStateSchemaVersion {
		t.Errorf("schema version %d", s.SchemaVersion)
	}
	if err := s.Validate(); err != nil {
		t.Errorf("decoded state does not validate: %v", err)
	}
}

func compileQuotaStateSchema(t testing.TB) *jsonschema.Schema {
	t.Helper()
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(QuotaStateJSONSchema()))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.AddResource("quota_state.schema.json", doc); err != nil {
		t.Fatal(err)
	}
	sch, err := c.Compile("quota_state.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	return sch
}

// The JSON Schema and DecodeQuotaState must agree on every vector the
// schema can express: caches in other languages rely on the file.
func TestQuotaStateVectorsJSONSchema(t *testing.T) {
	sch := compileQuotaStateSchema(t)
	for _, vec := range loadQuotaStateVectors(t) {
		if vec.JSONSchema == "cannot_express" {
			continue
		}
		t.Run(vec.Name, func(t *testing.T) {
			inst, perr := jsonschema.UnmarshalJSON(bytes.NewReader(vec.Bytes()))
			if perr != nil || !json.Valid(vec.Bytes()) {
				if vec.Valid() {
					t.Fatalf("valid vector does not parse: %v", perr)
				}
				return // malformed JSON: no schema can accept it
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

// The schema's members must be the Go type's JSON names, all required.
func TestQuotaStateSchemaMatchesType(t *testing.T) {
	var doc struct {
		Required   []string                   `json:"required"`
		Properties map[string]json.RawMessage `json:"properties"`
	}
	if err := json.Unmarshal(QuotaStateJSONSchema(), &doc); err != nil {
		t.Fatal(err)
	}
	var tags []string
	typ := reflect.TypeFor[QuotaState]()
	for i := range typ.NumField() {
		tags = append(tags, typ.Field(i).Tag.Get("json"))
	}
	if !slices.Equal(tags, quotaStateFields) {
		t.Errorf("json tags %v\nwire order %v", tags, quotaStateFields)
	}
	if !slices.Equal(doc.Required, quotaStateFields) {
		t.Errorf("schema required %v\nwant %v", doc.Required, quotaStateFields)
	}
	if props := slices.Sorted(maps.Keys(doc.Properties)); !slices.Equal(props, slices.Sorted(slices.Values(quotaStateFields))) {
		t.Errorf("schema properties %v", props)
	}
}

func sampleQuotaState() QuotaState {
	return QuotaState{
		TenantID: "org:acme@eu", FeatureType: "ai_generation", Period: "2026-11-15", Plan: "Pro \"EU\" \\ é\u2028",
		Usage: decimal.RequireFromString("37.000000001"), Limit: decimal.NewFromInt(50),
		Remaining: decimal.RequireFromString("12.999999999"), OverageUsed: decimal.Zero,
		Percentage: decimal.RequireFromString("74"), Level: "warning_50",
		PeriodStart:   time.Date(2026, 11, 15, 0, 0, 0, 0, time.UTC),
		PeriodEnd:     time.Date(2026, 12, 15, 0, 0, 0, 0, time.UTC),
		SourceOffsets: map[int32]int64{11: 1 << 40, 2: 1042, 0: 0},
		UpdatedAt:     time.Date(2026, 11, 20, 11, 0, 1, 123456789, time.FixedZone("CET", 3600)),
		SchemaVersion: 1,
	}
}

func quotaStatesEqual(a, b QuotaState) bool {
	return a.TenantID == b.TenantID && a.FeatureType == b.FeatureType && a.Period == b.Period && a.Plan == b.Plan &&
		a.Usage.Equal(b.Usage) && a.Limit.Equal(b.Limit) && a.Remaining.Equal(b.Remaining) &&
		a.OverageUsed.Equal(b.OverageUsed) && a.Percentage.Equal(b.Percentage) && a.Level == b.Level &&
		a.PeriodStart.Equal(b.PeriodStart) && a.PeriodEnd.Equal(b.PeriodEnd) && a.Final == b.Final &&
		maps.Equal(a.SourceOffsets, b.SourceOffsets) && a.UpdatedAt.Equal(b.UpdatedAt) &&
		max(a.SchemaVersion, 1) == max(b.SchemaVersion, 1)
}

// AppendJSON output must decode to the same state, pass the JSON Schema,
// and re-encode to the same bytes.
func TestQuotaStateRoundTrip(t *testing.T) {
	sch := compileQuotaStateSchema(t)
	unlimited := sampleQuotaState()
	unlimited.Limit, unlimited.Remaining, unlimited.Percentage, unlimited.Level = quotaUnlimited, quotaUnlimited, decimal.Zero, "ok"
	unlimited.SourceOffsets, unlimited.Final, unlimited.SchemaVersion = nil, true, 0
	unlimited.Usage = decimal.RequireFromString("99999999999999999999999999999.999999999")
	for _, s := range []QuotaState{sampleQuotaState(), unlimited} {
		if err := s.Validate(); err != nil {
			t.Fatal(err)
		}
		raw := s.AppendJSON(nil)
		got, err := DecodeQuotaState(raw)
		if err != nil {
			t.Fatalf("%v\n%s", err, raw)
		}
		if !quotaStatesEqual(s, got) {
			t.Fatalf("round trip changed the state:\n%+v\n%+v\n%s", s, got, raw)
		}
		if again := got.AppendJSON(nil); !bytes.Equal(raw, again) {
			t.Fatalf("re-encoding differs:\n%s\n%s", raw, again)
		}
		inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(raw))
		if err != nil {
			t.Fatal(err)
		}
		if err := sch.Validate(inst); err != nil {
			t.Fatalf("schema rejects AppendJSON output: %v\n%s", err, raw)
		}
		// encoding/json reads the same value through the struct tags.
		var viaJSON QuotaState
		if err := json.Unmarshal(raw, &viaJSON); err != nil || !quotaStatesEqual(s, viaJSON) {
			t.Fatalf("encoding/json disagrees: %v\n%+v", err, viaJSON)
		}
	}
	want := `"source_offsets":{"0":0,"2":1042,"11":1099511627776}`
	if s := sampleQuotaState(); !bytes.Contains(s.AppendJSON(nil), []byte(want)) {
		t.Fatalf("source_offsets not in partition order:\n%s", s.AppendJSON(nil))
	}
}

// Every accepted vector survives AppendJSON and decodes to the same state.
func TestQuotaStateVectorsRoundTrip(t *testing.T) {
	for _, vec := range loadQuotaStateVectors(t) {
		if !vec.Valid() {
			continue
		}
		s, err := DecodeQuotaState(vec.Bytes())
		if err != nil {
			t.Fatalf("%s: %v", vec.Name, err)
		}
		got, err := DecodeQuotaState(s.AppendJSON(nil))
		if err != nil || !quotaStatesEqual(s, got) {
			t.Fatalf("%s: round trip: %v\n%+v\n%+v", vec.Name, err, s, got)
		}
	}
}

func TestQuotaStateValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*QuotaState)
		tag  string
	}{
		{"ok", func(*QuotaState) {}, ""},
		{"no tenant", func(s *QuotaState) { s.TenantID = "" }, "missing_field:tenant_id"},
		{"tenant with slash", func(s *QuotaState) { s.TenantID = "a/b" }, "invalid_field:tenant_id"},
		{"no period start", func(s *QuotaState) { s.PeriodStart = time.Time{} }, "missing_field:period_start"},
		{"usage negative", func(s *QuotaState) { s.Usage = decimal.NewFromInt(-1) }, "invalid_field:usage"},
		{"usage ten decimals", func(s *QuotaState) { s.Usage = decimal.New(1, -10) }, "invalid_field:usage"},
		{"usage too large", func(s *QuotaState) { s.Usage = decimal.New(1, 29) }, "invalid_field:usage"},
		{"limit -2", func(s *QuotaState) { s.Limit = decimal.NewFromInt(-2) }, "invalid_field:limit"},
		{"percentage three decimals", func(s *QuotaState) { s.Percentage = decimal.RequireFromString("1.005") }, "invalid_field:percentage"},
		{"level", func(s *QuotaState) { s.Level = "warning_100" }, "invalid_field:level"},
		{"partition", func(s *QuotaState) { s.SourceOffsets = map[int32]int64{-1: 5} }, "invalid_field:source_offsets"},
		{"offset", func(s *QuotaState) { s.SourceOffsets = map[int32]int64{1: -5} }, "invalid_field:source_offsets"},
		{"version", func(s *QuotaState) { s.SchemaVersion = 2 }, "unsupported_schema_version"},
		{"remaining unlimited", func(s *QuotaState) { s.Remaining = quotaUnlimited }, "invalid_field:remaining"},
		{"end before start", func(s *QuotaState) { s.PeriodEnd = s.PeriodStart }, "invalid_field:period_end"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := sampleQuotaState()
			tc.edit(&s)
			err := s.Validate()
			var ve *ValidationError
			switch {
			case tc.tag == "" && err != nil:
				t.Fatalf("want ok, got %v", err)
			case tc.tag != "" && (!errors.As(err, &ve) || ve.Tag() != tc.tag):
				t.Fatalf("want %s, got %v", tc.tag, err)
			}
		})
	}
}

func TestQuotaStateKey(t *testing.T) {
	if k := QuotaStateKey("org:acme@eu", "ai_generation", "2026-11-15"); k != "org:acme@eu/ai_generation/2026-11-15" {
		t.Fatalf("key %q", k)
	}
	for _, p := range [][3]string{{"acme", "api_calls", "2026-11"}, {"org:acme@eu", "gpu.seconds-v2", "2028-02-29"}} {
		tenant, meter, period, err := ParseQuotaStateKey(QuotaStateKey(p[0], p[1], p[2]))
		if err != nil || [3]string{tenant, meter, period} != p {
			t.Fatalf("%v: got %q %q %q %v", p, tenant, meter, period, err)
		}
	}
	for key, tag := range map[string]string{
		"":                          "invalid_field:key",
		"acme":                      "invalid_field:key",
		"acme/api_calls":            "invalid_field:key",
		"acme/api_calls/2026-11/x":  "invalid_field:key",
		"/api_calls/2026-11":        "missing_field:tenant_id",
		"acme eu/api_calls/2026-11": "invalid_field:tenant_id",
		"acme//2026-11":             "missing_field:feature_type",
		"acme/API/2026-11":          "invalid_field:feature_type",
		"acme/api_calls/":           "missing_field:period",
		"acme/api_calls/2026-13":    "invalid_field:period",
		"acme/api_calls/2026-02-30": "invalid_field:period",
	} {
		tenant, meter, period, err := ParseQuotaStateKey(key)
		var ve *ValidationError
		if !errors.As(err, &ve) || ve.Tag() != tag || tenant != "" || meter != "" || period != "" {
			t.Errorf("%q: want %s, got %q %q %q %v", key, tag, tenant, meter, period, err)
		}
	}
	s := sampleQuotaState()
	if tenant, meter, period, err := ParseQuotaStateKey(s.Key()); err != nil ||
		tenant != s.TenantID || meter != s.FeatureType || period != s.Period {
		t.Fatalf("Key/ParseQuotaStateKey: %q %v", s.Key(), err)
	}
}

func TestAppendDecimalMatchesString(t *testing.T) {
	cases := []decimal.Decimal{decimal.Decimal{}, decimal.Zero, quotaUnlimited, decimal.New(0, -5), decimal.New(0, 7),
		decimal.New(1, 29), decimal.New(-1500, -3), decimal.New(123, 5), decimal.New(123, -9), decimal.New(123, -20),
		decimal.New(999999999999999, -3), decimal.New(1000000000000000, -2), decimal.New(1<<62, -9),
		decimal.RequireFromString("99999999999999999999999999999.999999999"), decimal.RequireFromString("0.000000001"),
		decimal.RequireFromString("-0.50"), decimal.RequireFromString("1e-18"), decimal.RequireFromString("120e18")}
	r := rand.New(rand.NewPCG(1, 2))
	for range 20000 {
		c := r.Int64N(1 << r.IntN(63))
		if r.IntN(4) == 0 {
			c = -c
		}
		cases = append(cases, decimal.New(c, int32(r.IntN(41)-20)))
	}
	for _, d := range cases {
		if got := string(appendDecimal(nil, d)); got != d.String() {
			t.Fatalf("appendDecimal(%s) = %q (coefficient %d, exponent %d)", d.String(), got, d.CoefficientInt64(), d.Exponent())
		}
	}
}

func TestJSONInt64(t *testing.T) {
	type want struct {
		n              int64
		isInt, inRange bool
	}
	for text, w := range map[string]want{
		"0": {0, true, true}, "-0": {0, true, true}, "0.0e-5": {0, true, true}, "0e99999999999999999999": {0, true, true},
		"42": {42, true, true}, "42.0": {42, true, true}, "4.2e1": {42, true, true}, "4200e-2": {42, true, true},
		"-7": {-7, true, true}, "1E+3": {1000, true, true}, "4.25e1": {0, false, false}, "1e-1": {0, false, false},
		"1e-99999999999999999999": {0, false, false}, "9223372036854775807": {1<<63 - 1, true, true},
		"9223372036854775808": {0, true, false}, "-9223372036854775808": {-1 << 63, true, true},
		"1e19": {0, true, false}, "1e18": {1e18, true, true}, "1e99999999999999999999": {0, true, false},
	} {
		n, isInt, inRange := jsonInt64(text)
		if isInt != w.isInt || inRange != w.inRange || (inRange && n != w.n) {
			t.Errorf("jsonInt64(%s) = %d %v %v, want %v", text, n, isInt, inRange, w)
		}
	}
}

func FuzzDecodeQuotaState(f *testing.F) {
	for _, vec := range loadQuotaStateVectors(f) {
		f.Add(vec.Bytes())
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := DecodeQuotaState(data)
		if err != nil {
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("not a ValidationError: %v", err)
			}
			return
		}
		// Anything accepted must validate and survive a re-encode unchanged.
		if err := s.Validate(); err != nil {
			t.Fatalf("accepted state does not validate: %v", err)
		}
		again, err := DecodeQuotaState(s.AppendJSON(nil))
		if err != nil || !quotaStatesEqual(s, again) {
			t.Fatalf("re-encode of accepted state failed: %v", err)
		}
	})
}

func BenchmarkQuotaStateAppendJSON(b *testing.B) {
	s := sampleQuotaState()
	s.SourceOffsets = map[int32]int64{3: 1042}
	buf := make([]byte, 0, 1024)
	b.ReportAllocs()
	for b.Loop() {
		buf = s.AppendJSON(buf[:0])
	}
	b.SetBytes(int64(len(buf)))
}

func BenchmarkDecodeQuotaState(b *testing.B) {
	s := sampleQuotaState()
	raw := s.AppendJSON(nil)
	b.ReportAllocs()
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		if _, err := DecodeQuotaState(raw); err != nil {
			b.Fatal(err)
		}
	}
}
