package examples

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/usagemeter/usagemeter/schemas"
)

var update = flag.Bool("update", false, "rewrite testdata/vectors.jsonl from schemas/testdata/vectors.json")

// vectorsFile is the byte-exact export of the shared vectors the examples
// read: a vector's message is the exact bytes of its "event" in
// schemas/testdata/vectors.json, which Python's, JavaScript's and Java's
// JSON libraries cannot give back once parsed.
const vectorsFile = "testdata/vectors.jsonl"

// line is one message of a .jsonl file the examples read.
type line struct {
	Name   string `json:"name"`
	Expect string `json:"expect,omitempty"`
	B64    string `json:"b64"`
}

func encodeLines(lines []line) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	for _, l := range lines {
		_ = enc.Encode(l) // cannot fail for strings
	}
	return b.Bytes()
}

func vectorLines(t *testing.T) ([]schemas.Vector, []line) {
	t.Helper()
	vecs, err := schemas.TestVectors()
	if err != nil {
		t.Fatal(err)
	}
	lines := make([]line, len(vecs))
	for i, v := range vecs {
		lines[i] = line{Name: v.Name, Expect: v.Expect, B64: base64.StdEncoding.EncodeToString(v.Bytes())}
	}
	return vecs, lines
}

// TestVectorsExportCurrent fails when testdata/vectors.jsonl is not the
// export of the shared vectors (go test -run TestVectorsExportCurrent -update
// ./examples/ rewrites it).
func TestVectorsExportCurrent(t *testing.T) {
	_, lines := vectorLines(t)
	want := encodeLines(lines)
	if *update {
		if err := os.WriteFile(vectorsFile, want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(vectorsFile)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s is stale: run go test -run TestVectorsExportCurrent -update ./examples/", filepath.Join("examples", vectorsFile))
	}
}
