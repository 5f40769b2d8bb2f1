package service

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"github.com/usagemeter/usagemeter/aggregator/state"
	"github.com/usagemeter/usagemeter/schemas/plans"
)

// A grant of +10 for November raises the limit the published state carries
// (and its level and remaining) in November only.
func TestQuotaStateHonoursGrants(t *testing.T) {
	p, err := plans.Load(filepath.Join("..", "..", "schemas", "plans", "plans.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	g := &plans.Grants{List: []plans.Grant{{Meter: "ai_generation", Period: "2026-11", Amount: decimal.NewFromInt(10)}}}
	if err := p.Assign("t1", &plans.Assignment{Plan: "FREE", Version: 1, Grants: g}); err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC)
	q := state.Quota{QuotaKey: state.QuotaKey{Tenant: "t1", Meter: "ai_generation", PeriodID: "2026-11"},
		Usage: decimal.NewFromInt(55), Offset: -1}
	s := QuotaState(p, q, now)
	if !s.Limit.Equal(decimal.NewFromInt(60)) || !s.Remaining.Equal(decimal.NewFromInt(5)) || s.Level != plans.WarningLevel(90) {
		t.Fatalf("November with +10: limit %s remaining %s level %s, want 60, 5, warning_90", s.Limit, s.Remaining, s.Level)
	}
	q.PeriodID = "2026-12"
	if s := QuotaState(p, q, now); !s.Limit.Equal(decimal.NewFromInt(50)) || s.Level != plans.LevelBlocked {
		t.Fatalf("December: limit %s level %s, want 50, blocked", s.Limit, s.Level)
	}
}
