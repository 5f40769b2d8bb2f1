package schemas

import (
	"bytes"
	"encoding/json"
	"errors"
	"maps"
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
