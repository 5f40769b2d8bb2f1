package syncer

import (
	"testing"
	"time"

	"github.com/usagemeter/usagemeter/billing-sync/stripeapi"
)

// An active subscription scheduled to cancel at period end: Stripe sets
// canceled_at to the time of the request, ended_at stays empty.
func TestCancelAtPeriodEndStillBilled(t *testing.T) {
	start := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	end := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	sub := stripeapi.Subscription{ID: "sub_1", Customer: "cus_1", Status: "active", Anchor: start, Created: start.AddDate(0, -2, 0),
		PeriodStart: start, PeriodEnd: end, CanceledAt: time.Date(2026, 11, 10, 0, 0, 0, 0, time.UTC),
		Items: []stripeapi.SubscriptionItem{{ID: "si_1", PriceID: "price_1"}}}
	cov := coverageOf([]stripeapi.Subscription{sub}, Meter{Price: "price_1"})
	usageAt := time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC) // still active, invoiced at Dec 1
	if _, ok := cov.at(usageAt); !ok {
		t.Fatalf("usage at %s of an active subscription (cancel at period end requested %s) is not covered: it is never billed", usageAt, sub.CanceledAt)
	}
}

// Once it ended, usage from ended_at on is not covered; a canceled
// subscription without ended_at ends at canceled_at.
func TestCanceledSubscriptionEndsAtEndedAt(t *testing.T) {
	start := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	end := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	req := time.Date(2026, 11, 10, 0, 0, 0, 0, time.UTC)
	sub := stripeapi.Subscription{ID: "sub_1", Customer: "cus_1", Status: "canceled", Anchor: start, Created: start.AddDate(0, -2, 0),
		PeriodStart: start, PeriodEnd: end, CanceledAt: req, EndedAt: end,
		Items: []stripeapi.SubscriptionItem{{ID: "si_1", PriceID: "price_1"}}}
	cov := coverageOf([]stripeapi.Subscription{sub}, Meter{Price: "price_1"})
	if p, ok := cov.at(end.Add(-time.Second)); !ok || !p.end.Equal(end) {
		t.Fatalf("last second before ended_at: covered %v, period end %s; want covered up to %s", ok, p.end, end)
	}
	if _, ok := cov.at(end); ok {
		t.Fatalf("usage at ended_at %s is covered, but the subscription had ended", end)
	}
	sub.EndedAt = time.Time{}
	cov = coverageOf([]stripeapi.Subscription{sub}, Meter{Price: "price_1"})
	if _, ok := cov.at(req); ok {
		t.Fatalf("canceled without ended_at: usage at canceled_at %s is covered", req)
	}
	if p, ok := cov.at(req.Add(-time.Second)); !ok || !p.end.Equal(req) {
		t.Fatalf("canceled without ended_at: period end %s (covered %v), want %s", p.end, ok, req)
	}
}
