package faults

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/shopspring/decimal"

	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/schemas/plans"
)

// Cases of issue 13 item 4: the quota states on the topic come from the
// owner of each tenant's partition, under a current generation, and never
// go back to a lower usage.

// limitedPlan is the plan the plan-change case moves every tenant to
// (plansYAML): calendar months like METERED, so that the windows and
// periods of the independent count do not move.
const limitedPlan = "LIMITED"

// planChangeWithTwoMembers: two members run; one leaves (SIGTERM) and a
// new one joins, so that both start a generation with rows already in
// ClickHouse (a member that loaded every tenant's rows then holds stale
// copies of its peer's); then every tenant changes plan. Each member
// republishes the tenants it holds: only the owner may, or the topic gets
// a state with a lower usage after a higher one, and a cache that takes
// the newest state unblocks a blocked tenant.
func planChangeWithTwoMembers(t *testing.T, c *run) error {
	time.Sleep(midStream())
	from := time.Now()
	c.p.aggregators[1].stop(15 * time.Second)
	c.p.startAggregator()
	if err := c.recovered(from, sessionTimeout+catchUp, "member replaced (SIGTERM, new member)"); err != nil {
		return err
	}
	time.Sleep(2 * time.Second) // states of the settled generation: the high marks
	changed := time.Now()
	if err := assignAll(c.p.eng.broker, c.p.asg, limitedPlan); err != nil {
		return err
	}
	// Every key changes at once, then keeps changing with the traffic.
	time.Sleep(3 * time.Second)
	states := c.q.states()
	if bad := regressions(states, changed.Add(-2*time.Second), changed); len(bad) > 0 {
		return fmt.Errorf("plan change: %d quota states went back to fewer source events (a non-owner's copy), first: %s",
			len(bad), strings.Join(bad[:min(3, len(bad))], "; "))
	}
	if missing := withoutPlan(states, limitedPlan, changed); len(missing) > 0 {
		return fmt.Errorf("plan change: no state with plan %s for %s", limitedPlan, strings.Join(missing, ", "))
	}
	t.Logf("plan change: every key republished with plan %s, no state below an earlier one", limitedPlan)
	return c.recovered(changed, 30*time.Second, "plan change")
}

// frozenMemberPublishesNothingStale is case 9's fault (one of two members
// frozen past its session, the survivor takes over, then the frozen one
// resumes) with its quota states checked: after it resumes, no state may
// go below what the survivor already published.
func frozenMemberPublishesNothingStale(t *testing.T, c *run) error {
	time.Sleep(midStream())
	from := time.Now()
	zombie := c.p.aggregators[0]
	zombie.pause()
	err := c.recovered(from, sessionTimeout+catchUp, "one of two aggregators frozen")
	settled := time.Now()
	if wait := sessionTimeout + 5*time.Second - time.Since(from); wait > 0 {
		time.Sleep(wait) // surely expired, even if the survivor was quick
	}
	resumed := time.Now()
	zombie.resume()
	if err != nil {
		return err
	}
	if err := c.recovered(resumed, sessionTimeout+catchUp, "frozen aggregator resumed"); err != nil {
		return err
	}
	time.Sleep(2 * time.Second)
	if bad := regressions(c.q.states(), settled, resumed); len(bad) > 0 {
		return fmt.Errorf("resumed member: %d quota states went back to fewer source events, first: %s",
			len(bad), strings.Join(bad[:min(3, len(bad))], "; "))
	}
	t.Logf("frozen member resumed: no quota state below an earlier one")
	return nil
}

// assignAll publishes a plan assignment for every tenant of the traffic.
func assignAll(broker, topic, plan string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var msgs []kafka.Message
	for _, tenant := range allTenants() {
		k, v := plans.AssignmentRecord(tenant, &plans.Assignment{Plan: plan})
		msgs = append(msgs, kafka.Message{Key: k, Value: v})
	}
	return writeRaw(ctx, broker, topic, kafka.Murmur2Balancer{}, msgs)
}

// withoutPlan lists the keys that had a state before since and none with
// plan after it.
func withoutPlan(states map[string][]published, plan string, since time.Time) []string {
	var out []string
	for k, ps := range states {
		before, after := false, false
		for _, p := range ps {
			if p.at.Before(since) {
				before = true
			} else if p.Plan == plan {
				after = true
			}
		}
		if before && !after {
			out = append(out, k)
		}
	}
	return out
}

// TestQuotaStateChecks pins the checks the cases above rely on: a state is
// exact at its source offsets, per window totals, and a regression is a
// state published after one of the same key that reflected more.
func TestQuotaStateChecks(t *testing.T) {
	at := time.Date(2026, 11, 28, 10, 0, 30, 0, time.UTC)
	p := murmur2Partition("acme")
	var msgs []kafka.Message
	for i, q := range []string{"1.5", "2", "0.25"} {
		ev := schemas.UsageEvent{ID: fmt.Sprint("a", i), TenantID: "acme", FeatureType: "api_calls",
			Quantity: decimal.RequireFromString(q), Timestamp: at.Add(time.Duration(i) * time.Minute)}
		msgs = append(msgs, kafka.Message{Partition: p, Offset: int64(10 + i), Key: []byte("acme"), Value: ev.AppendJSON(nil)})
	}
	msgs = append(msgs, msgs[0]) // a retry of a0, later on the same partition
	msgs[3].Offset = 13
	e, err := expect(msgs)
	if err != nil {
		t.Fatal(err)
	}
	minute := e.windows["usage_1m"]
	if len(minute) != 3 || minute[key{"acme", "api_calls", fmt.Sprint("1m@", at.Truncate(time.Minute).Unix())}].sum.String() != "1.5" {
		t.Errorf("1m windows: %v", minute)
	}
	if hour := e.windows["usage_1h"]; len(hour) != 1 || hour[key{"acme", "api_calls", fmt.Sprint("1h@", at.Truncate(time.Hour).Unix())}].events != 3 {
		t.Errorf("1h windows: %v", hour)
	}
	// Per window, not only per tenant: the right total in the wrong minute
	// is a difference.
	shifted := map[key]tally{}
	for k, v := range minute {
		k.window = fmt.Sprint("1m@", at.Truncate(time.Minute).Unix())
		t := shifted[k]
		t.events += v.events
		t.sum = t.sum.Add(v.sum)
		shifted[k] = t
	}
	if g := gapOf(minute, shifted, true); g.zero() {
		t.Error("three minutes' events in one minute row passed the per-window check")
	}
	if g := gapOf(minute, minute, true); !g.zero() {
		t.Errorf("equal windows differ: %s", g.first)
	}
	period := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	state := func(off int64, usage string, when time.Time) published {
		return published{at: when, QuotaState: schemas.QuotaState{TenantID: "acme", FeatureType: "api_calls", Period: "2026-11",
			PeriodStart: period, PeriodEnd: period.AddDate(0, 1, 0), Usage: decimal.RequireFromString(usage),
			SourceOffsets: map[int32]int64{int32(p): off}}}
	}
	t0 := time.Date(2026, 11, 28, 11, 0, 0, 0, time.UTC)
	good := map[string][]published{"acme/api_calls/2026-11": {state(10, "1.5", t0), state(11, "3.5", t0.Add(time.Second)), state(13, "3.75", t0.Add(2*time.Second))}}
	if n, errs := e.checkStates(good); n != 3 || len(errs) != 0 {
		t.Errorf("exact states: %d checked, %v", n, errs)
	}
	if _, errs := e.checkStates(map[string][]published{"k": {state(11, "3.75", t0)}}); len(errs) != 1 {
		t.Errorf("a state ahead of its offsets passed: %v", errs)
	}
	if bad := regressions(good, t0, t0); len(bad) != 0 {
		t.Errorf("monotonic states: %v", bad)
	}
	stale := map[string][]published{"k": append(good["acme/api_calls/2026-11"], state(10, "1.5", t0.Add(3*time.Second)))}
	if bad := regressions(stale, t0, t0.Add(2500*time.Millisecond)); len(bad) != 1 {
		t.Errorf("a stale state after a newer one: %v", bad)
	}
	if bad := regressions(stale, t0, t0.Add(4*time.Second)); len(bad) != 0 {
		t.Errorf("before the window: %v", bad)
	}
}
