// Package deploycheck tests what operators deploy beside the services:
// the Prometheus rules (promtool check and unit tests) and the Grafana
// dashboard (well-formed, every query names a metric a service exports).
package deploycheck

import (
	"encoding/json"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/usagemeter/usagemeter/testenv"
)

func promtool(t *testing.T, args ...string) string {
	t.Helper()
	if testing.Short() {
		t.Skip("runs promtool")
	}
	bin, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool not found: scripts/deps.sh prometheus installs it (Debian's prometheus package)")
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = testenv.RepoRoot(t)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestRulesPassPromtool(t *testing.T) {
	out := promtool(t, "check", "rules", "deploy/prometheus/rules.yml")
	if !strings.Contains(out, "SUCCESS") {
		t.Fatalf("promtool check rules:\n%s", out)
	}
	out = promtool(t, "test", "rules", "deploy/prometheus/rules_test.yml")
	if !strings.Contains(out, "SUCCESS") {
		t.Fatalf("promtool test rules:\n%s", out)
	}
}

// Metric names of this project: the services' prefixes, and the rules'
// own recordings.
var (
	metricName = regexp.MustCompile(`\b(?:usage_(?:consumer|aggregator|api|ops)|billing)_[a-z0-9_]+\b`)
	recording  = regexp.MustCompile(`\busagemeter:[a-z0-9_:]+\b`)
	recordDef  = regexp.MustCompile(`(?m)^\s*- record: (\S+)\n\s*expr: (.+)$`)
	alertDef   = regexp.MustCompile(`(?m)^\s*- alert: (\S+)`)
)

// exported returns every quoted metric-like name in the services' Go
// code (tests excluded): what they register.
func exported(t *testing.T) map[string]bool {
	t.Helper()
	root := testenv.RepoRoot(t)
	out := map[string]bool{}
	for _, dir := range []string{"consumer", "aggregator", "api", "billing-sync", "ops", "svckit"} {
		err := filepath.WalkDir(filepath.Join(root, dir), func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return err
			}
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			for _, m := range regexp.MustCompile(`"((?:usage_(?:consumer|aggregator|api|ops)|billing)_[a-z0-9_]+)"`).FindAllStringSubmatch(string(b), -1) {
				out[m[1]] = true
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func read(t *testing.T, rel string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testenv.RepoRoot(t), rel))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func uniq(ss []string) []string {
	sort.Strings(ss)
	return slices.Compact(ss)
}

// Every metric the rules and the dashboard query is exported by a service
// (a renamed metric would leave an alert that can never fire), every
// recording they use is defined, and the dashboard shows every metric the
// alerts watch.
func TestRulesAndDashboardNameExportedMetrics(t *testing.T) {
	have := exported(t)
	rules := read(t, "deploy/prometheus/rules.yml")
	recorded := map[string]string{} // name -> expr
	for _, m := range recordDef.FindAllStringSubmatch(rules, -1) {
		recorded[m[1]] = m[2]
	}
	// The annotations and comments are prose; only the expressions query.
	var exprs []string
	for _, line := range strings.Split(rules, "\n") {
		if s, ok := strings.CutPrefix(strings.TrimSpace(line), "expr: "); ok {
			exprs = append(exprs, s)
		}
	}
	ruleMetrics := uniq(metricName.FindAllString(strings.Join(exprs, "\n"), -1))
	if len(ruleMetrics) < 15 || len(alertDef.FindAllString(rules, -1)) < 15 {
		t.Fatalf("rules name %d metrics in %d alerts: the parse is wrong", len(ruleMetrics), len(alertDef.FindAllString(rules, -1)))
	}

	var dash struct {
		UID, Title string
		Panels     []struct {
			ID      int
			Title   string
			Type    string
			Targets []struct {
				RefID string `json:"refId"`
				Expr  string `json:"expr"`
			}
		}
	}
	if err := json.Unmarshal([]byte(read(t, "deploy/grafana/usagemeter-ops.json")), &dash); err != nil {
		t.Fatalf("deploy/grafana/usagemeter-ops.json: %v", err)
	}
	if dash.UID == "" || dash.Title == "" || len(dash.Panels) == 0 {
		t.Fatalf("dashboard: uid %q, title %q, %d panels", dash.UID, dash.Title, len(dash.Panels))
	}
	ids := map[int]bool{}
	var dashExprs []string
	for _, p := range dash.Panels {
		if ids[p.ID] || p.Title == "" || p.Type == "" || len(p.Targets) == 0 {
			t.Errorf("panel %d %q: needs a unique id, a title, a type and a query", p.ID, p.Title)
		}
		ids[p.ID] = true
		for _, q := range p.Targets {
			if q.Expr == "" || q.RefID == "" {
				t.Errorf("panel %q: a target without expr or refId", p.Title)
			}
			dashExprs = append(dashExprs, q.Expr)
		}
	}
	dashText := strings.Join(dashExprs, "\n")
	dashMetrics := uniq(metricName.FindAllString(dashText, -1))

	for _, m := range uniq(append(slices.Clone(ruleMetrics), dashMetrics...)) {
		if !have[m] {
			t.Errorf("metric %s is queried but no service exports it", m)
		}
	}
	for _, r := range uniq(append(recording.FindAllString(strings.Join(exprs, "\n"), -1), recording.FindAllString(dashText, -1)...)) {
		if recorded[r] == "" {
			t.Errorf("recording %s is used but not defined in rules.yml", r)
		}
	}
	// A recording on the dashboard shows the metrics it is made of.
	shown := dashText
	for r, expr := range recorded {
		if strings.Contains(dashText, r) {
			shown += "\n" + expr
		}
	}
	for _, m := range ruleMetrics {
		if !strings.Contains(shown, m) {
			t.Errorf("metric %s has alerts but no dashboard panel", m)
		}
	}
	for r := range recorded {
		if !strings.Contains(dashText, r) && !strings.Contains(strings.Join(exprs, "\n"), r+" ") {
			t.Errorf("recording %s is neither shown nor alerted on", r)
		}
	}
}
