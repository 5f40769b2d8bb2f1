package schemas

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/shopspring/decimal"
)

func vectors(t *testing.T) []Vector {
	t.Helper()
	vs, err := TestVectors()
	if err != nil {
		t.Fatal(err)
	}
	if len(vs) < 40 {
		t.Fatalf("only %d vectors", len(vs))
	}
	return vs
}

func TestVectorsGoValidator(t *testing.T) {
	v := NewValidator()
	for _, vec := range vectors(t) {
		t.Run(vec.Name, func(t *testing.T) {
			e, err := v.Decode(vec.Bytes())
			if vec.Valid() {
				if err != nil {
					t.Fatalf("want ok, got %v", err)
				}
				checkNormalized(t, e, vec.Normalized)
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

func checkNormalized(t *testing.T, e UsageEvent, want map[string]string) {
	t.Helper()
	got := map[string]string{
		"quantity":       e.Quantity.String(),
		"billing_period": e.BillingPeriod,
		"timestamp":      e.Timestamp.Format(time.RFC3339Nano),
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%s: got %q, want %q", k, got[k], w)
		}
	}
	if e.SchemaVersion != CurrentSchemaVersion || e.Timestamp.Location() != time.UTC {
		t.Errorf("not normalised: %+v", e)
	}
}

// The JSON Schema and the Go validator must agree on every vector the schema
// can express, so that producers in other languages can trust the file.
func TestVectorsJSONSchema(t *testing.T) {
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(UsageEventJSONSchema()))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.AddResource("usage_event.schema.json", doc); err != nil {
		t.Fatal(err)
	}
	sch, err := c.Compile("usage_event.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	for _, vec := range vectors(t) {
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
				t.Fatalf("schema accepts a vector the Go validator rejects with %s", vec.Expect)
			}
		})
	}
}

func TestValidateFillsDefaults(t *testing.T) {
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	v := NewValidator(WithClock(func() time.Time { return now }))
	e := UsageEvent{ID: "a", TenantID: "t", FeatureType: "api_calls", Quantity: decimal.RequireFromString("2.5"),
		Timestamp: now.In(time.FixedZone("x", 3600))}
	if err := v.Validate(&e); err != nil {
		t.Fatal(err)
	}
	if e.BillingPeriod != "2026-11" || e.SchemaVersion != 1 || e.Timestamp.Location() != time.UTC {
		t.Fatalf("defaults not filled: %+v", e)
	}
	e.Timestamp = now.Add(6 * time.Minute)
	var ve *ValidationError
	if err := v.Validate(&e); !errors.As(err, &ve) || ve.Code != CodeTimestampTooFarInFuture || ve.Field != "timestamp" {
		t.Fatalf("got %v", err)
	}
}

// AppendJSON output must decode to the same event, for any content.
func TestAppendJSONRoundTrip(t *testing.T) {
	v := NewValidator()
	e := UsageEvent{
		ID: "018f3a5e-7c1d-7b3e-9a2f-0c4b5d6e7f80", TenantID: "acme", UserID: "u\"s\\e r\u00e9\u2028",
		FeatureType: "ai_generation", Quantity: decimal.RequireFromString("123456789.000000001"),
		Timestamp: time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC),
		Metadata:  map[string]string{"b": "\x01tab\t", "a": "<script>&"},
	}
	raw := e.AppendJSON(nil)
	if !json.Valid(raw) {
		t.Fatalf("invalid JSON: %s", raw)
	}
	got, err := v.Decode(raw)
	if err != nil {
		t.Fatalf("%v\n%s", err, raw)
	}
	if got.UserID != e.UserID || !got.Quantity.Equal(e.Quantity) || !got.Timestamp.Equal(e.Timestamp) ||
		got.Metadata["a"] != e.Metadata["a"] || got.Metadata["b"] != e.Metadata["b"] || got.BillingPeriod != "2026-01" {
		t.Fatalf("round trip changed the event:\n%+v\n%+v", e, got)
	}
}

func FuzzDecode(f *testing.F) {
	vs, err := TestVectors()
	if err != nil {
		f.Fatal(err)
	}
	for _, vec := range vs {
		f.Add(vec.Bytes())
	}
	v := NewValidator()
	// The re-encoding adds billing_period and schema_version: near the size
	// limit it may be larger than the input, which is not what this tests.
	roomy := NewValidator(WithMaxEventBytes(1 << 20))
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := v.Decode(data)
		if err != nil {
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("not a ValidationError: %v", err)
			}
			return
		}
		// Anything accepted must survive a re-encode unchanged.
		again, err := roomy.Decode(e.AppendJSON(nil))
		if err != nil || !again.Quantity.Equal(e.Quantity) || again.ID != e.ID || !again.Timestamp.Equal(e.Timestamp) {
			t.Fatalf("re-encode of accepted event failed: %v", err)
		}
	})
}

func BenchmarkDecode(b *testing.B) {
	raw := []byte(`{"id":"018f3a5e-7c1d-7b3e-9a2f-0c4b5d6e7f80","tenant_id":"acme","user_id":"user-42","feature_type":"api_calls","quantity":"1","timestamp":"2026-11-20T10:00:00.123456789Z","metadata":{"endpoint":"/v1/items","method":"GET"}}`)
	v := NewValidator()
	b.ReportAllocs()
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		if _, err := v.Decode(raw); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAppendJSON(b *testing.B) {
	e := UsageEvent{ID: "018f3a5e-7c1d-7b3e-9a2f-0c4b5d6e7f80", TenantID: "acme", UserID: "user-42", FeatureType: "api_calls",
		Quantity: decimal.NewFromInt(1), Timestamp: time.Now(), Metadata: map[string]string{"endpoint": "/v1/items", "method": "GET"}}
	buf := make([]byte, 0, 512)
	b.ReportAllocs()
	for b.Loop() {
		buf = e.AppendJSON(buf[:0])
	}
}
