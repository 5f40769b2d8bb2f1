package plans

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
)

// The compacted topic usage.plan-assignments carries one record per tenant:
// key = tenant_id, value = {"plan": "PRO", "anchor_day": 15, "version": 1732780800}
// (anchor_day and version optional). An empty value (a tombstone) reverts
// the tenant to the config file or the default plan. Every reader (the
// aggregator, quota caches, usage-api) and writer (operators, billing-sync)
// uses these two functions, so they cannot disagree on the format.

// assignmentJSON is the record's value.
type assignmentJSON struct {
	Plan      string `json:"plan"`
	AnchorDay int    `json:"anchor_day,omitempty"`
	Version   int64  `json:"version,omitempty"`
}

// ParseAssignmentRecord decodes one record. A nil Assignment is a
// tombstone. Unknown fields are refused, so a typo never silently means
// "default plan".
func ParseAssignmentRecord(key, value []byte) (tenant string, a *Assignment, err error) {
	tenant = string(key)
	if tenant == "" {
		return "", nil, errors.New("plan assignment has no key (tenant_id)")
	}
	if len(value) == 0 {
		return tenant, nil, nil
	}
	var v assignmentJSON
	dec := json.NewDecoder(bytes.NewReader(value))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		return tenant, nil, fmt.Errorf("plan assignment for %s: %w", tenant, err)
	}
	if v.Plan == "" {
		return tenant, nil, fmt.Errorf("plan assignment for %s: plan is required", tenant)
	}
	return tenant, &Assignment{Plan: v.Plan, AnchorDay: v.AnchorDay, Version: v.Version}, nil
}

// AssignmentRecord encodes one record; a nil a is a tombstone.
func AssignmentRecord(tenant string, a *Assignment) (key, value []byte) {
	if a == nil {
		return []byte(tenant), nil
	}
	value, _ = json.Marshal(assignmentJSON{Plan: a.Plan, AnchorDay: a.AnchorDay, Version: a.Version})
	return []byte(tenant), value
}
