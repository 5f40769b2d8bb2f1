package plans

import (
	"errors"
	"testing"
)

func TestAssignmentRecordRoundTrip(t *testing.T) {
	k, v := AssignmentRecord("acme", &Assignment{Plan: "PRO", AnchorDay: 15, Version: 7})
	tenant, a, err := ParseAssignmentRecord(k, v)
	if err != nil || tenant != "acme" || a == nil || *a != (Assignment{Plan: "PRO", AnchorDay: 15, Version: 7}) {
		t.Fatalf("round trip: %q %+v %v", tenant, a, err)
	}
	if _, a, err := ParseAssignmentRecord(AssignmentRecord("acme", nil)); err != nil || a != nil {
		t.Fatalf("tombstone: %+v %v", a, err)
	}
	for name, bad := range map[string][2]string{
		"no key":        {"", `{"plan":"PRO"}`},
		"unknown field": {"acme", `{"plan":"PRO","anchorDay":3}`},
		"no plan":       {"acme", `{"anchor_day":3}`},
		"not json":      {"acme", `PRO`},
	} {
		if _, _, err := ParseAssignmentRecord([]byte(bad[0]), []byte(bad[1])); err == nil {
			t.Errorf("%s: accepted %q", name, bad[1])
		}
	}
}

func TestAssignIgnoresOlderVersions(t *testing.T) {
	c, err := Load("plans.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Assign("t1", &Assignment{Plan: "PRO", Version: 20}); err != nil {
		t.Fatal(err)
	}
	if err := c.Assign("t1", &Assignment{Plan: "FREE", Version: 10}); !errors.Is(err, ErrStaleAssignment) {
		t.Fatalf("older version: err %v, want ErrStaleAssignment", err)
	}
	if plan, _, _ := c.QuotaFor("t1", "ai_generation"); plan != "PRO" {
		t.Fatalf("plan after a stale record: %s, want PRO", plan)
	}
	if err := c.Assign("t1", &Assignment{Plan: "ENTERPRISE", Version: 30}); err != nil {
		t.Fatal(err)
	}
	if plan, _, _ := c.QuotaFor("t1", "ai_generation"); plan != "ENTERPRISE" {
		t.Fatalf("plan after a newer record: %s, want ENTERPRISE", plan)
	}
}
