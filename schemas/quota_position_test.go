package schemas

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

func TestQuotaPositionVectors(t *testing.T) {
	vs, err := QuotaPositionTestVectors()
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vs {
		got, err := DecodeQuotaPosition(v.Message)
		if v.Error != "" {
			var ve *ValidationError
			if !errors.As(err, &ve) || ve.Tag() != v.Error {
				t.Errorf("%s: got %v, want error %s", v.Name, err, v.Error)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", v.Name, err)
			continue
		}
		w := *v.Want
		if got.Topic != w.Topic || got.Partition != w.Partition || got.AppliedThrough != w.AppliedThrough ||
			!got.PublishedAt.Equal(w.PublishedAt) || got.SchemaVersion != w.SchemaVersion {
			t.Errorf("%s: got %+v, want %+v", v.Name, got, w)
		}
		// What AppendJSON writes decodes to the same position.
		again, err := DecodeQuotaPosition(got.AppendJSON(nil))
		if err != nil || again != got {
			t.Errorf("%s: round trip %+v, %v", v.Name, again, err)
		}
	}
}

func TestQuotaPositionDuplicateAndMalformed(t *testing.T) {
	for msg, tag := range map[string]string{
		`{"topic":"a","topic":"b","partition":0,"applied_through":1,"published_at":"2026-11-30T00:00:00Z","schema_version":1}`: "duplicate_field:topic",
		`{"topic":"a",`: "malformed_json",
		``:              "malformed_json",
	} {
		_, err := DecodeQuotaPosition([]byte(msg))
		var ve *ValidationError
		if !errors.As(err, &ve) || ve.Tag() != tag {
			t.Errorf("%q: got %v, want %s", msg, err, tag)
		}
	}
	p := QuotaPosition{Topic: "usage.events", Partition: 2, AppliedThrough: 9, PublishedAt: time.Now(), SchemaVersion: 1}
	if p.Key() != "usage.events/2" {
		t.Errorf("key %q", p.Key())
	}
}

// The JSON Schema agrees with DecodeQuotaPosition on every vector:
// readers in other languages rely on the file.
func TestQuotaPositionVectorsJSONSchema(t *testing.T) {
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(QuotaPositionJSONSchema()))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.AddResource("quota_position.schema.json", doc); err != nil {
		t.Fatal(err)
	}
	sch, err := c.Compile("quota_position.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	vs, err := QuotaPositionTestVectors()
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vs {
		inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(v.Message))
		if err != nil {
			t.Fatalf("%s: %v", v.Name, err)
		}
		err = sch.Validate(inst)
		if v.Error == "" && err != nil {
			t.Errorf("%s: the schema rejects a valid vector: %v", v.Name, err)
		}
		if v.Error != "" && err == nil {
			t.Errorf("%s: the schema accepts what DecodeQuotaPosition refuses (%s)", v.Name, v.Error)
		}
	}
}
