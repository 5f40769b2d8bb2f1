package schemas

import (
	"embed"
	"encoding/base64"
	"encoding/json"
	"fmt"
)

//go:embed testdata/vectors.json
var vectorsFS embed.FS

// Vector is one shared test case from testdata/vectors.json.
type Vector struct {
	Name       string            `json:"name"`
	Event      json.RawMessage   `json:"event"`
	Raw        *string           `json:"raw"`
	RawBase64  string            `json:"raw_base64"` // message bytes that are not UTF-8
	Expect     string            `json:"expect"`     // "ok" or an error tag
	Normalized map[string]string `json:"normalized"`
	JSONSchema string            `json:"json_schema"` // "cannot_express" or empty
}

// Bytes is the Kafka message value of the vector.
func (v Vector) Bytes() []byte {
	if v.RawBase64 != "" {
		b, err := base64.StdEncoding.DecodeString(v.RawBase64)
		if err != nil {
			// TestVectors refuses such a file, so this is never reached.
			panic(fmt.Sprintf("vector %s: raw_base64: %v", v.Name, err))
		}
		return b
	}
	if v.Raw != nil {
		return []byte(*v.Raw)
	}
	return v.Event
}

// Valid reports whether a conforming validator accepts the vector.
func (v Vector) Valid() bool { return v.Expect == "ok" }

// TestVectors returns the shared test vectors. Integration tests in other
// modules publish them to a real broker.
func TestVectors() ([]Vector, error) {
	data, err := vectorsFS.ReadFile("testdata/vectors.json")
	if err != nil {
		return nil, fmt.Errorf("read test vectors: %w", err)
	}
	var doc struct {
		Vectors []Vector `json:"vectors"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("parse test vectors: %w", err)
	}
	for _, v := range doc.Vectors {
		if _, err := base64.StdEncoding.DecodeString(v.RawBase64); err != nil {
			return nil, fmt.Errorf("test vector %s: raw_base64: %w", v.Name, err)
		}
	}
	return doc.Vectors, nil
}

// parseVectors reads a vectors file of the shape of testdata/vectors.json
// (what names it in errors).
func parseVectors(data []byte, what string) ([]Vector, error) {
	var doc struct {
		Vectors []Vector `json:"vectors"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("parse %s test vectors: %w", what, err)
	}
	return doc.Vectors, nil
}
