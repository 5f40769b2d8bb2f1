package main

import (
	"os"
	"path/filepath"
	"testing"
)

func TestBadConfigFailsAtStart(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "plans.yaml")
	if err := os.WriteFile(bad, []byte("plans: {P: {meters: {api_calls: {limit: -5}}}}\ndefault_plan: P\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code := run([]string{"--plans", bad}); code != 2 {
		t.Fatalf("invalid plans file: exit %d, want 2", code)
	}
	t.Setenv("USAGE_AGGREGATOR_DEDUP_HORIZON", "0")
	if code := run([]string{"--plans", "../../../schemas/plans/plans.example.yaml", "config"}); code != 2 {
		t.Fatalf("dedup_horizon 0: exit %d, want 2", code)
	}
	t.Setenv("USAGE_AGGREGATOR_DEDUP_HORIZON", "10")
	if code := run([]string{"--plans", "../../../schemas/plans/plans.example.yaml", "frobnicate"}); code != 2 {
		t.Fatalf("unknown command: exit %d, want 2", code)
	}
}
