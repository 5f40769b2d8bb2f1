package firsthour

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/testenv"
)

// fencedBlocks returns the fenced code blocks of a Markdown file whose info
// string is lang, in order.
func fencedBlocks(t *testing.T, path, lang string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	var cur []string
	in := false
	for _, line := range strings.Split(string(b), "\n") {
		switch {
		case !in && strings.TrimSpace(line) == "```"+lang:
			in, cur = true, nil
		case in && strings.TrimSpace(line) == "```":
			in = false
			out = append(out, strings.Join(cur, "\n"))
		case in:
			cur = append(cur, line)
		}
	}
	return out
}

// readmeBlock returns the one block of the root README in lang that
// contains marker.
func readmeBlock(t *testing.T, lang, marker string) string {
	t.Helper()
	var found []string
	for _, b := range fencedBlocks(t, filepath.Join(testenv.RepoRoot(t), "README.md"), lang) {
		if strings.Contains(b, marker) {
			found = append(found, b)
		}
	}
	if len(found) != 1 {
		t.Fatalf("README.md: %d ```%s blocks contain %q, want 1", len(found), lang, marker)
	}
	return found[0]
}

// The README's kcat one-liner, run as written (twice) against a private
// topic: each run publishes one valid event with a fresh id and the
// current time (so it is not late and not a duplicate of the first), keyed
// by its tenant, on the tenant's Murmur2 partition.
func TestReadmeKcatExample(t *testing.T) {
	broker := testenv.Kafka(t)
	if _, err := exec.LookPath("kcat"); err != nil {
		t.Fatal("kcat is not installed (scripts/deps.sh installs it)")
	}
	block := readmeBlock(t, "sh", "kcat -P")
	const readmeBroker, readmeTopic = "127.0.0.1:19092", "-t usage.events "
	if !strings.Contains(block, readmeBroker) || !strings.Contains(block, readmeTopic) {
		t.Fatalf("the README's kcat example no longer names %s and %q:\n%s", readmeBroker, readmeTopic, block)
	}
	topic := testenv.Name("firsthour_kcat")
	const partitions = 4
	testenv.CreateTopic(t, broker, topic, partitions)
	script := strings.ReplaceAll(strings.ReplaceAll(block, readmeBroker, broker), readmeTopic, "-t "+topic+" ")
	start := time.Now()
	for i := 0; i < 2; i++ {
		if i == 1 {
			time.Sleep(1100 * time.Millisecond) // a second later: a new timestamp too
		}
		out, err := exec.Command("bash", "-euo", "pipefail", "-c", script).CombinedOutput()
		if err != nil {
			t.Fatalf("the README's kcat example failed: %v\n%s\nscript:\n%s", err, out, script)
		}
	}
	msgs := testenv.ReadN(t, broker, topic, 2)
	v := schemas.NewValidator()
	ids := map[string]bool{}
	for _, m := range msgs {
		ev, err := v.Decode(m.Value)
		if err != nil {
			t.Fatalf("the README's kcat example publishes an invalid event: %v\n%s", err, m.Value)
		}
		if err := schemas.CheckRouting(m.Key, ev.TenantID, m.Partition, partitions); err != nil {
			t.Errorf("event on partition %d with key %q: %v", m.Partition, m.Key, err)
		}
		if m.Partition != schemas.PartitionFor(ev.TenantID, partitions) {
			t.Errorf("partition %d, want Murmur2's %d", m.Partition, schemas.PartitionFor(ev.TenantID, partitions))
		}
		// Not late: the aggregator's allowed lateness is 10 minutes.
		if ts := ev.Timestamp; ts.Before(start.Add(-2*time.Second)) || ts.After(time.Now().Add(time.Second)) {
			t.Errorf("timestamp %s is not the time it was published (%s)", ts, start.UTC())
		}
		ids[ev.ID] = true
	}
	if len(ids) != 2 {
		t.Errorf("two runs published ids %v: a second try must not be a duplicate", ids)
	}
}

// The README's Go snippet is producer/example_readme_test.go's quoted
// region, which compiles inside the repository; and a module outside the
// repository that follows the README (its `go mod edit -replace` lines and
// go mod tidy) builds a program from the snippet as shown.
func TestReadmeGoSnippet(t *testing.T) {
	root := testenv.RepoRoot(t)
	ex, err := os.ReadFile(filepath.Join(root, "producer", "example_readme_test.go"))
	if err != nil {
		t.Fatal(err)
	}
	_, after, ok1 := strings.Cut(string(ex), "// readme:begin\n")
	region, _, ok2 := strings.Cut(after, "// readme:end")
	if !ok1 || !ok2 {
		t.Fatal("producer/example_readme_test.go: readme:begin/readme:end markers not found")
	}
	region = strings.TrimSpace(region)
	snippet := readmeBlock(t, "go", "producer.NewEvent(")
	if strings.TrimSpace(snippet) != region {
		t.Fatalf("README.md's Go snippet differs from producer/example_readme_test.go between the readme markers.\nREADME:\n%s\n\nexample:\n%s", snippet, region)
	}
	if testing.Short() {
		t.Skip("the build outside the repository is skipped in -short mode")
	}
	replace := readmeBlock(t, "sh", "go mod edit -replace")
	// The README's layout: the clone in ./usagemeter beside the user's module.
	dir := t.TempDir()
	if err := os.Symlink(root, filepath.Join(dir, "usagemeter")); err != nil {
		t.Fatal(err)
	}
	app := filepath.Join(dir, "app")
	if err := os.Mkdir(app, 0o755); err != nil {
		t.Fatal(err)
	}
	main := "package main\n\n" + snippet + "\n\nfunc main() {\n\tif err := publish(context.Background()); err != nil {\n\t\tpanic(err)\n\t}\n}\n"
	if err := os.WriteFile(filepath.Join(app, "main.go"), []byte(main), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	run := func(name string, args ...string) {
		t.Helper()
		cmd := exec.CommandContext(ctx, name, args...)
		cmd.Dir = app
		cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
	}
	run("go", "mod", "init", "example.com/app")
	run("bash", "-euo", "pipefail", "-c", replace)
	run("go", "build", "-o", filepath.Join(dir, "app.bin"), ".")
}
