package examples

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/testenv"
)

// example is one publisher under examples/, run as its users run it.
type example struct {
	name string // python, node, java
	tag  string // prefix of the ids the counting test gives its events
	dir  string // working directory
	argv []string
}

// examples returns the three publishers with the interpreters and libraries
// scripts/deps.sh installs, failing the test with the command to run when
// one is missing.
func examples(t *testing.T) []example {
	t.Helper()
	if testing.Short() {
		t.Skip("runs the example publishers: skipped in -short mode")
	}
	root := testenv.RepoRoot(t)
	cache := filepath.Join(root, ".cache")
	if d := os.Getenv("USAGE_CACHE_DIR"); d != "" {
		cache = d
	}
	exs := []example{
		{name: "python", tag: "py", dir: filepath.Join(root, "examples", "python"),
			argv: []string{filepath.Join(cache, "venv", "bin", "python"), "publish.py"}},
		{name: "node", tag: "js", dir: filepath.Join(root, "examples", "node"),
			argv: []string{"node", "publish.js"}},
		// One JVM per command: the single source file runs without a build step.
		{name: "java", tag: "jv", dir: filepath.Join(root, "examples", "java"),
			argv: []string{"java", "-Xmx256m", "-XX:TieredStopAtLevel=1", "-cp", filepath.Join(cache, "examples-java", "libs", "*"), "Publish.java"}},
	}
	missing := []string{
		filepath.Join(cache, "venv", "lib"),
		filepath.Join(root, "examples", "node", "node_modules", "kafkajs"),
		filepath.Join(cache, "examples-java", ".complete"),
	}
	for i, p := range missing {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s example not installed (%s missing): run scripts/deps.sh examples", exs[i].name, p)
		}
	}
	return exs
}

// run runs the example with args and returns its stdout; stderr goes to the
// test log when it fails.
func (e example) run(t *testing.T, env []string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(e.argv[0], append(e.argv[1:], args...)...)
	cmd.Dir = e.dir
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	t.Logf("%s %s: %.1fs", e.name, strings.Join(args, " "), time.Since(start).Seconds())
	if err != nil {
		err = fmt.Errorf("%s %v: %w\nstderr:\n%s", e.name, args, err, stderr.String())
	}
	return stdout.String(), err
}

// verdicts parses the "NAME\tok" / "NAME\trefused: why" lines the examples
// print for each message they judge.
func verdicts(out string) map[string]string {
	v := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if name, verdict, ok := strings.Cut(sc.Text(), "\t"); ok {
			v[name] = verdict
		}
	}
	return v
}

// TestValidatorsAgreeWithGo is the contract test across languages: the
// Python, Node.js and Java validators of the examples and the Go decoder
// the consumer runs (schemas.Validator.Decode) accept and refuse the same
// shared vectors, every one, those marked cannot_express (rules outside
// JSON Schema, which each example checks in code) included.
func TestValidatorsAgreeWithGo(t *testing.T) {
	exs := examples(t)
	vecs, _ := vectorLines(t)
	dec := schemas.NewValidator()
	goErr := map[string]error{}
	for _, v := range vecs {
		_, err := dec.Decode(v.Bytes())
		goErr[v.Name] = err
		if (err == nil) != v.Valid() { // the vectors are right about Go
			t.Errorf("Go decoder on %s: %v, the vector expects %s", v.Name, err, v.Expect)
		}
	}
	// The vectors, and a few number and encoding forms beyond them where a
	// language's own types could mislead its validator (doubles in
	// JavaScript, Decimal contexts in Python, BOMs in Java readers).
	for i, data := range extraCases() {
		name := fmt.Sprintf("extra_%02d", i)
		vecs = append(vecs, schemas.Vector{Name: name, Raw: &data})
		_, goErr[name] = dec.Decode([]byte(data))
	}
	vectorsPath := filepath.Join(t.TempDir(), "vectors.jsonl")
	var lines []line
	for _, v := range vecs {
		lines = append(lines, line{Name: v.Name, B64: base64.StdEncoding.EncodeToString(v.Bytes())})
	}
	if err := os.WriteFile(vectorsPath, encodeLines(lines), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, ex := range exs {
		t.Run(ex.name, func(t *testing.T) {
			t.Parallel()
			out, err := ex.run(t, nil, "check", vectorsPath)
			if err != nil {
				t.Fatal(err)
			}
			got := verdicts(out)
			if len(got) != len(vecs) {
				t.Errorf("%d verdicts for %d vectors", len(got), len(vecs))
			}
			agree := 0
			for _, v := range vecs {
				verdict, ok := got[v.Name]
				switch {
				case !ok:
					t.Errorf("%s: no verdict", v.Name)
				case (verdict == "ok") != (goErr[v.Name] == nil):
					t.Errorf("%s (%s%s): %s says %q, Go says %v", v.Name, v.Expect, marked(v), ex.name, verdict, goErr[v.Name])
				default:
					agree++
				}
			}
			t.Logf("%s agrees with the Go decoder on %d of %d vectors", ex.name, agree, len(vecs))
		})
	}
}

func extraCases() []string {
	ev := func(quantity, extra string) string {
		return `{"id":"x1","tenant_id":"t","feature_type":"api_calls","quantity":` + quantity +
			`,"timestamp":"2026-11-20T10:00:00Z"` + extra + `}`
	}
	return []string{
		ev(`"1"`, `,"schema_version":1.0000000000000000001`),
		ev(`"1"`, `,"schema_version":10e-1`),
		ev(`"1"`, `,"schema_version":1e400`),
		ev("-1e-400", ""),
		ev("1e-400", ""),
		ev("1."+strings.Repeat("0", 40), ""),
		ev("0.000000001000000000000000000000001", ""),
		ev("99999999999999999.9999999999999999999", ""),
		ev("1e17", `,"billing_period":"2026-11"`),
		"\ufeff" + ev(`"1"`, ""),
		ev(`"1"`, `,"metadata":{"__proto__":"x"}`),
		ev(`"1"`, `,"user_id":"\udbff\udfff"`),
		ev(`"1"`, `,"user_id":"\udfff\udbff"`),
	}
}

func marked(v schemas.Vector) string {
	if v.JSONSchema != "" {
		return ", " + v.JSONSchema
	}
	return ""
}

// parallelExamples runs f for each example at once and waits.
func parallelExamples(exs []example, f func(example)) {
	var wg sync.WaitGroup
	for _, ex := range exs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f(ex)
		}()
	}
	wg.Wait()
}

func decodeJSON(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	return dec.Decode(v)
}
