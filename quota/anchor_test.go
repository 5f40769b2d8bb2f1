package quota

import (
	"context"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/shopspring/decimal"

	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/schemas/plans"
)

// Issue 12 item 1 (quotas and billing agree): a tenant whose Stripe
// subscription is anchored on the 15th at 14:32:10 (the plan hook's record
// carries the anchor to the second). At 14:32:09 on 15 Feb the cache
// checks against the period that began 15 Jan 14:32:10 (its state: 50 of
// 50, blocked); at 14:32:10 against the next one (a fresh quota), as
// billing-sync bills those seconds.
func TestAnchorSecondPeriods(t *testing.T) {
	p, err := plans.Parse([]byte(anchoredPlans))
	if err != nil {
		t.Fatal(err)
	}
	anc := time.Date(2027, 1, 15, 14, 32, 10, 0, time.UTC)
	boundary := anc.AddDate(0, 1, 0)
	clk := &clock{}
	clk.set(boundary.Add(-time.Second))
	c, err := New(DefaultConfig(), p, nil, WithClock(clk.now))
	if err != nil {
		t.Fatal(err)
	}
	c.markSynced()
	ctx := context.Background()
	k, v := plans.AssignmentRecord("t15", &plans.Assignment{Plan: "TEAM", AnchorDay: 15, Anchor: anc, Version: 1})
	c.applyAssignment(kafka.Message{Key: k, Value: v, Offset: 1, HighWaterMark: 2})
	s := schemas.QuotaState{TenantID: "t15", FeatureType: "ai_generation", Period: "2027-01-15", Plan: "TEAM",
		Usage: decimal.NewFromInt(50), Limit: decimal.NewFromInt(50), Remaining: decimal.Zero,
		OverageUsed: decimal.Zero, Percentage: decimal.NewFromInt(100), Level: "at_limit", PeriodStart: anc, PeriodEnd: boundary,
		SourceOffsets: map[int32]int64{0: 60}, UpdatedAt: anc.Add(time.Hour)}
	c.applyState(kafka.Message{Partition: 1, Offset: offsetSeq.Add(1), Value: s.AppendJSON(nil)})
	if d := c.Check(ctx, "t15", "ai_generation", Units(1)); d.Allowed || d.Period != "2027-01-15" || d.Usage.Cmp(Units(50)) != 0 {
		t.Fatalf("at 14:32:09: %+v, want period 2027-01-15 at 50 of 50, refused", d)
	}
	clk.set(boundary)
	if d := c.Check(ctx, "t15", "ai_generation", Units(1)); !d.Allowed || d.Period != "2027-02-15" {
		t.Fatalf("at 14:32:10: %+v, want the next period 2027-02-15, allowed", d)
	}
}
