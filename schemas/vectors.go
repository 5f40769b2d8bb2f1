package schemas

import (
	"embed"
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
	Expect     string            `json:"expect"` // "ok" or an error tag
	Normalized map[string]string `json:"normalized"`
	JSONSchema string            `json:"json_schema"` // "cannot_express" or empty
}

// Bytes is the Kafka message value of the vector.
func (v Vector) Bytes() []byte {
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
	return doc.Vectors, nil
}
