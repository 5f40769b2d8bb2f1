package syncer

import (
	"context"
	"fmt"
	"time"

	"github.com/usagemeter/usagemeter/billing-sync/stripeapi"
)

// billingStatus says which subscription statuses invoice their periods:
// incomplete (never started), incomplete_expired and paused (Stripe
// creates no invoices while paused) do not; a canceled one did until it
// was canceled.
var billingStatus = map[string]bool{"active": true, "trialing": true, "past_due": true, "unpaid": true, "canceled": true}

// period is a Stripe billing period of a subscription and the item that
// invoices the meter in it.
type period struct {
	start, end time.Time
	sub, item  string
}

// coverage is where one tenant's meter is invoiced: the subscriptions
// with an item on the meter's price.
type coverage struct {
	subs  []stripeapi.Subscription
	items []string // per subscription
}

// itemFor is the subscription's item on the meter: its price is the
// meter's price, or (no price configured) a price on the meter's id.
func itemFor(sub stripeapi.Subscription, m Meter) string {
	for _, it := range sub.Items {
		if m.Price != "" && it.PriceID == m.Price || m.Price == "" && m.MeterID != "" && it.MeterID == m.MeterID {
			return it.ID
		}
	}
	return ""
}

func coverageOf(subs []stripeapi.Subscription, m Meter) coverage {
	var c coverage
	for _, sub := range subs {
		if !billingStatus[sub.Status] {
			continue
		}
		if item := itemFor(sub, m); item != "" {
			c.subs = append(c.subs, sub)
			c.items = append(c.items, item)
		}
	}
	return c
}

func (c coverage) empty() bool { return len(c.subs) == 0 }

// at returns the period containing t; false when no subscription with an
// item on the meter covered t (usage that no invoice charges). When two
// cover t (an upgrade by a new subscription before the old one ends),
// the newer one wins.
func (c coverage) at(t time.Time) (period, bool) {
	best, ok := period{}, false
	var bestCreated time.Time
	for i, sub := range c.subs {
		s, e, in := subPeriod(sub, t)
		if in && (!ok || sub.Created.After(bestCreated)) {
			best, ok, bestCreated = period{start: s, end: e, sub: sub.ID, item: c.items[i]}, true, sub.Created
		}
	}
	return best, ok
}

// subPeriod is the subscription's period containing t: its current period
// as Stripe says, else a monthly step from its billing_cycle_anchor
// (Stripe's rule: the anchor's day and second, clamped to the month's
// last day); the first period runs from the start to the anchor; an
// ended subscription's last period ends when it ended (see subEnd).
func subPeriod(sub stripeapi.Subscription, t time.Time) (time.Time, time.Time, bool) {
	end := subEnd(sub)
	if t.Before(sub.Created) || !end.IsZero() && !t.Before(end) {
		return time.Time{}, time.Time{}, false
	}
	var s, e time.Time
	switch {
	case !t.Before(sub.PeriodStart) && t.Before(sub.PeriodEnd):
		s, e = sub.PeriodStart, sub.PeriodEnd
	case t.Before(sub.Anchor):
		s, e = sub.Created, sub.Anchor
	default:
		a := sub.Anchor
		k := (t.Year()-a.Year())*12 + int(t.Month()) - int(a.Month())
		for k > 0 && addMonths(a, k).After(t) {
			k--
		}
		for !addMonths(a, k+1).After(t) {
			k++
		}
		s, e = addMonths(a, k), addMonths(a, k+1)
	}
	if !end.IsZero() && end.Before(e) {
		e = end
	}
	return s, e, true
}

// subEnd is when a subscription stopped being billed: ended_at. Not
// canceled_at, which is the time of the cancel request: with
// cancel_at_period_end the subscription stays active, and Stripe invoices
// its usage, until the period ends. canceled_at stands in only for a
// canceled subscription without ended_at. Zero: still running.
func subEnd(sub stripeapi.Subscription) time.Time {
	if !sub.EndedAt.IsZero() {
		return sub.EndedAt
	}
	if sub.Status == "canceled" {
		return sub.CanceledAt
	}
	return time.Time{}
}

// addMonths steps k months from an anchor, Stripe's way (see subPeriod).
func addMonths(anchor time.Time, k int) time.Time {
	a := anchor.UTC()
	y, m := a.Year(), int(a.Month())-1+k
	y += m / 12
	m %= 12
	if m < 0 {
		m += 12
		y--
	}
	first := time.Date(y, time.Month(m+1), 1, a.Hour(), a.Minute(), a.Second(), 0, time.UTC)
	last := first.AddDate(0, 1, -1).Day()
	return first.AddDate(0, 0, min(a.Day(), last)-1)
}

// subscriptionsOf returns a customer's subscriptions from the cache, which
// one listing of the whole account fills (100 per call) and which is
// re-read after SubscriptionTTL. The caller holds s.mu.
func (s *Syncer) subscriptionsOf(ctx context.Context, customer string) ([]stripeapi.Subscription, error) {
	_, known := s.subs[customer]
	// A customer with none listed (a new sign-up) re-lists at most once
	// per pass, as customers do.
	if s.subsErr != nil {
		return nil, s.subsErr // failed once this pass: not again for every tenant
	}
	if s.subs == nil || s.now().Sub(s.subsAt) >= s.cfg.SubscriptionTTL || !known && !s.subsLooked {
		all, err := s.stripe.AllSubscriptions(ctx)
		if err != nil {
			s.subsErr = fmt.Errorf("list subscriptions: %w", err)
			return nil, s.subsErr
		}
		s.subs, s.subsAt, s.subsLooked = all, s.now(), true
	}
	return s.subs[customer], nil
}

// periodFloor is the earliest start of a Stripe period open at t of any
// subscription with an item on the meter (from the cached listing): what
// a read must reach back to for a period total at t. It lists only when
// the cache is empty or past subscription_ttl (a subscription created
// since began after t, the TTL being shorter than the grace). A failed
// listing falls back to 32 days (the longest period); none open means t.
func (s *Syncer) periodFloor(ctx context.Context, m Meter, t time.Time) time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.subsDropped { // Stripe may not list the change yet: the next pass re-lists
		return t.Add(-32 * 24 * time.Hour).Truncate(time.Hour)
	}
	if s.subsErr != nil || s.subs == nil || s.now().Sub(s.subsAt) >= s.cfg.SubscriptionTTL {
		if _, err := s.subscriptionsOf(ctx, ""); err != nil {
			return t.Add(-32 * 24 * time.Hour).Truncate(time.Hour)
		}
	}
	floor := t
	for _, subs := range s.subs {
		cov := coverageOf(subs, m)
		for _, sub := range cov.subs {
			if st, _, in := subPeriod(sub, t); in && st.Before(floor) {
				floor = st
			}
		}
	}
	return floor.Truncate(time.Hour)
}
