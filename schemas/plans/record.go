package plans

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/shopspring/decimal"
)

// The compacted topic usage.plan-assignments carries one record per tenant:
// key = tenant_id, value = {"plan": "PRO", "anchor_day": 15, "version": 1732780800,
// "grants": [{"meter": "ai_generation", "period": "2026-11", "amount": "10"}]}
// (anchor_day, version and grants optional; a grant's amount is a decimal
// string, exact). "anchor": "2027-01-15T14:32:10Z" (optional, RFC 3339,
// UTC; billing-sync's plan hook writes the subscription's
// billing_cycle_anchor) starts anchored periods at that second; its day
// must equal anchor_day when both are present. A reader older than it
// refuses such a record (unknown field): upgrade readers first. A record without grants reads and writes as before, so
// older readers and writers agree on it; a reader older than grants
// refuses a record with them (unknown field) rather than misread it. An empty value (a tombstone) reverts
// the tenant to the config file or the default plan. Every reader (the
// aggregator, quota caches, usage-api) and writer (operators, billing-sync)
// uses these two functions, so they cannot disagree on the format.

// assignmentJSON is the record's value.
type assignmentJSON struct {
	Plan      string      `json:"plan"`
	AnchorDay int         `json:"anchor_day,omitempty"`
	Anchor    string      `json:"anchor,omitempty"`
	Version   int64       `json:"version,omitempty"`
	Grants    []grantJSON `json:"grants,omitempty"`
}

type grantJSON struct {
	Meter  string          `json:"meter"`
	Period string          `json:"period"`
	Amount decimal.Decimal `json:"amount"`
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
	a = &Assignment{Plan: v.Plan, AnchorDay: v.AnchorDay, Version: v.Version}
	if v.Anchor != "" {
		at, err := time.Parse(time.RFC3339, v.Anchor)
		if err != nil {
			return tenant, nil, fmt.Errorf("plan assignment for %s: anchor %q is not an RFC 3339 time: %w", tenant, v.Anchor, err)
		}
		a.Anchor = at.UTC()
		if a.AnchorDay == 0 {
			a.AnchorDay = a.Anchor.Day()
		} else if a.AnchorDay != a.Anchor.Day() {
			return tenant, nil, fmt.Errorf("plan assignment for %s: anchor_day %d is not the day of anchor %s", tenant, a.AnchorDay, v.Anchor)
		}
	}
	if len(v.Grants) > MaxGrants {
		return tenant, nil, fmt.Errorf("plan assignment for %s: grants: %d grants, at most %d", tenant, len(v.Grants), MaxGrants)
	}
	if len(v.Grants) > 0 {
		a.Grants = &Grants{List: make([]Grant, len(v.Grants))}
		for i, g := range v.Grants {
			a.Grants.List[i] = Grant(g)
			if err := a.Grants.List[i].Validate(fmt.Sprintf("grants[%d]", i)); err != nil {
				return tenant, nil, fmt.Errorf("plan assignment for %s: %w", tenant, err)
			}
		}
	}
	return tenant, a, nil
}

// AssignmentRecord encodes one record; a nil a is a tombstone.
func AssignmentRecord(tenant string, a *Assignment) (key, value []byte) {
	if a == nil {
		return []byte(tenant), nil
	}
	v := assignmentJSON{Plan: a.Plan, AnchorDay: a.AnchorDay, Version: a.Version}
	if !a.Anchor.IsZero() {
		v.Anchor = a.Anchor.UTC().Format(time.RFC3339)
	}
	if a.Grants != nil {
		for _, g := range a.Grants.List {
			v.Grants = append(v.Grants, grantJSON(g))
		}
	}
	value, _ = json.Marshal(v)
	return []byte(tenant), value
}
