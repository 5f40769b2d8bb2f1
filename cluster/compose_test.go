package cluster

import (
	"fmt"
	"net/url"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/usagemeter/usagemeter/testenv"
)

// composeFile is what the test reads of `docker-compose config` (anchors,
// merges and ${VAR:-default} resolved by the compose tool itself).
type composeFile struct {
	Services map[string]struct {
		Image string `yaml:"image"`
		Build struct {
			Args map[string]string `yaml:"args"`
		} `yaml:"build"`
		Command     []string          `yaml:"command"`
		Environment map[string]string `yaml:"environment"`
		Restart     string            `yaml:"restart"`
		Healthcheck struct {
			Test []string `yaml:"test"`
		} `yaml:"healthcheck"`
	} `yaml:"services"`
}

// configCommand says, per binary, whether it has a `config` command that
// prints its effective settings, and the subcommand it would run instead.
var configCommand = map[string]bool{
	"usage-consumer": true, "usage-aggregator": true, "usage-billing-sync": true, "usage-api": true, "usage-alerts": true,
}

// TestComposeFile validates docker-compose.yml with docker-compose (the
// compose spec reader Debian ships; scripts/deps.sh compose installs it)
// and checks every service built from the Dockerfile against its real
// binary: each USAGE_* variable is one of the config keys the binary
// prints with `config`, with the value set; each flag is one the binary
// accepts (it runs the service's own command line with `config`, or reads
// -h where there is no config command); each has a restart policy and a
// health check on the address it serves.
func TestComposeFile(t *testing.T) {
	e := need(t)
	if _, err := exec.LookPath("docker-compose"); err != nil {
		if out, err := exec.Command(filepath.Join(e.root, "scripts", "deps.sh"), "compose").CombinedOutput(); err != nil {
			t.Fatalf("scripts/deps.sh compose: %v\n%s", err, out)
		}
	}
	cmd := exec.Command("docker-compose", "-f", filepath.Join(e.root, "docker-compose.yml"), "config")
	cmd.Env = serviceEnv() // no USAGE_* of the caller's: the file's defaults
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("docker-compose config: %v\n%s", err, exitStderr(err))
	}
	var cf composeFile
	if err := yaml.Unmarshal(out, &cf); err != nil {
		t.Fatalf("parse docker-compose config output: %v", err)
	}
	if _, ok := cf.Services["kafka"]; !ok {
		t.Fatal("no kafka service")
	}
	if _, ok := cf.Services["clickhouse"]; !ok {
		t.Fatal("no clickhouse service")
	}
	// Every command of the workspace that is a long-running service.
	wantBuilt := []string{"./consumer/cmd/usage-consumer", "./aggregator/cmd/usage-aggregator", "./billing-sync/cmd/usage-billing-sync",
		"./billing-sync/cmd/usage-stripe-fake", "./api/cmd/usage-api", "./api/cmd/usage-demo-app", "./alerts/cmd/usage-alerts"}
	byCmd := map[string]string{}
	for name, s := range cf.Services {
		if c := s.Build.Args["CMD"]; c != "" {
			byCmd[c] = name
		}
	}
	var pkgs []string
	for _, c := range wantBuilt {
		if byCmd[c] == "" {
			t.Errorf("no service built from %s", c)
			continue
		}
		pkgs = append(pkgs, c)
	}
	bins, err := testenv.BuildCommands(t.TempDir(), pkgs...)
	if err != nil {
		t.Fatal(err)
	}
	for i, pkg := range pkgs {
		name := byCmd[pkg]
		s := cf.Services[name]
		bin := bins[i]
		t.Run(name, func(t *testing.T) {
			if s.Restart == "" {
				t.Error("no restart policy")
			}
			if len(s.Healthcheck.Test) < 3 || s.Healthcheck.Test[1] != "/usr/local/bin/usage-healthcheck" {
				t.Fatalf("health check %q: want [CMD /usr/local/bin/usage-healthcheck URL]", s.Healthcheck.Test)
			}
			u, err := url.Parse(s.Healthcheck.Test[2])
			if err != nil {
				t.Fatal(err)
			}
			// The health check must probe the port the service listens on.
			if !strings.Contains(strings.Join(s.Command, " ")+" "+fmt.Sprint(s.Environment), ":"+u.Port()) {
				t.Errorf("health check probes port %s, which neither the command nor the environment sets", u.Port())
			}
			base := filepath.Base(pkg)
			if configCommand[base] {
				if problems := checkConfig(e.root, bin, s.Command, s.Environment); len(problems) > 0 {
					t.Errorf("%s", strings.Join(problems, "\n"))
				}
				return
			}
			if problems := checkFlags(bin, s.Command); len(problems) > 0 {
				t.Errorf("%s", strings.Join(problems, "\n"))
			}
		})
	}
	// The checker itself catches what it is for: a misspelt key and a flag
	// the binary does not have.
	consumer := bins[0]
	if p := checkConfig(e.root, consumer, []string{"run"}, map[string]string{"USAGE_KAFKA_BROKER": "kafka:9092"}); len(p) != 1 || !strings.Contains(p[0], "USAGE_KAFKA_BROKER") {
		t.Errorf("a misspelt variable was not reported: %q", p)
	}
	if p := checkConfig(e.root, consumer, []string{"--brokerz", "x", "run"}, nil); len(p) != 1 {
		t.Errorf("an unknown flag was not reported: %q", p)
	}
}

// checkConfig runs the service's own command line with its subcommand
// replaced by `config` and the compose environment, and checks that every
// USAGE_* variable names a key the binary printed, with that value.
func checkConfig(root, bin string, command []string, env map[string]string) []string {
	args := append([]string(nil), command...)
	if n := len(args); n > 0 && args[n-1] == "run" {
		args[n-1] = "config"
	} else {
		args = append(args, "config")
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = root // the image's WORKDIR holds the same relative paths
	var kv []string
	for k, v := range env {
		kv = append(kv, k+"="+v)
	}
	cmd.Env = serviceEnv(kv...)
	out, err := cmd.Output()
	if err != nil {
		return []string{fmt.Sprintf("%s %s: %v\n%s", filepath.Base(bin), strings.Join(args, " "), err, exitStderr(err))}
	}
	var settings map[string]any
	if err := yaml.Unmarshal(out, &settings); err != nil {
		return []string{fmt.Sprintf("config output is not YAML: %v", err)}
	}
	keys := map[string]string{}
	flatten("", settings, keys)
	var problems []string
	for k, v := range env {
		if !strings.HasPrefix(k, "USAGE_") {
			continue
		}
		got, ok := keys[k]
		switch {
		case !ok:
			problems = append(problems, fmt.Sprintf("%s is no config key of %s", k, filepath.Base(bin)))
		case got != v && got != "<redacted>":
			problems = append(problems, fmt.Sprintf("%s=%s, but %s runs with %s", k, v, filepath.Base(bin), got))
		}
	}
	sort.Strings(problems)
	return problems
}

// flatten maps nested settings to their USAGE_ variable names; lists are
// comma-joined, as the environment gives them.
func flatten(prefix string, m map[string]any, out map[string]string) {
	for k, v := range m {
		name := prefix + strings.ToUpper(k)
		switch x := v.(type) {
		case map[string]any:
			flatten(name+"_", x, out)
		case []any:
			parts := make([]string, len(x))
			for i, p := range x {
				parts[i] = fmt.Sprint(p)
			}
			out["USAGE_"+name] = strings.Join(parts, ",")
		default:
			out["USAGE_"+name] = fmt.Sprint(v)
		}
	}
}

var flagName = regexp.MustCompile(`^\s+--?([a-z][a-z0-9-]*)`)

// checkFlags checks every flag of command against the binary's -h.
func checkFlags(bin string, command []string) []string {
	out, _ := exec.Command(bin, "-h").CombinedOutput() // -h exits 0 or 2 by flag package
	known := map[string]bool{}
	for _, line := range strings.Split(string(out), "\n") {
		if m := flagName.FindStringSubmatch(line); m != nil {
			known[m[1]] = true
		}
	}
	if len(known) == 0 {
		return []string{fmt.Sprintf("%s -h lists no flags:\n%s", filepath.Base(bin), out)}
	}
	var problems []string
	for _, a := range command {
		if !strings.HasPrefix(a, "-") {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !known[name] {
			problems = append(problems, fmt.Sprintf("%s has no flag %s", filepath.Base(bin), a))
		}
	}
	return problems
}

func exitStderr(err error) string {
	if ee, ok := err.(*exec.ExitError); ok {
		return string(ee.Stderr)
	}
	return ""
}
