package syncer

import (
	"crypto/sha256"
	"encoding/hex"
	"sort"
	"strconv"
	"time"

	"github.com/shopspring/decimal"

	"github.com/usagemeter/usagemeter/billing-sync/audit"
	"github.com/usagemeter/usagemeter/billing-sync/usage"
	"github.com/usagemeter/usagemeter/schemas/plans"
)

// window is what we bill for one tenant, meter and window: an hour
// (meter_events) or a billing period (usage_records).
type window struct {
	key        audit.WindowKey
	start, end time.Time
	quantity   decimal.Decimal // the window's value in the meter's unit
	units      int64           // billing units (after scale and carry)
}

// hourWindows turns hourly values into billed hours. Within each billing
// period the running total is scaled and floored, and each hour bills the
// increase of that floor: remainders carry to the next hour and the
// period's units are exactly floor(total x scale).
func hourWindows(hours []usage.Hour, m Meter, p *plans.Config) []window {
	var out []window
	var (
		tenant, periodID string
		cum              decimal.Decimal
		billed           int64
	)
	for _, h := range hours { // ordered by tenant, hour
		pid := periodOf(p, h.Tenant, h.Meter, h.Start).ID
		if h.Tenant != tenant || pid != periodID {
			tenant, periodID, cum, billed = h.Tenant, pid, decimal.Zero, 0
		}
		cum = cum.Add(h.Value)
		floor := cum.Mul(m.scale).Floor().IntPart()
		out = append(out, window{
			key:   audit.WindowKey{Tenant: h.Tenant, Meter: h.Meter, Start: h.Start.Unix()},
			start: h.Start, end: h.Start.Add(time.Hour), quantity: h.Value, units: floor - billed,
		})
		billed = floor
	}
	return out
}

// periodWindows folds hourly values into billing periods under the meter's
// aggregation (the hours of a unique_count meter carry their subjects).
func periodWindows(hours []usage.Hour, agg plans.Aggregation, m Meter, p *plans.Config) []window {
	type acc struct {
		w        window
		latestNs int64
		subjects map[string]bool
	}
	byKey := map[audit.WindowKey]*acc{}
	var order []audit.WindowKey
	for _, h := range hours {
		per := periodOf(p, h.Tenant, h.Meter, h.Start)
		k := audit.WindowKey{Tenant: h.Tenant, Meter: h.Meter, Start: per.Start.Unix()}
		a := byKey[k]
		if a == nil {
			a = &acc{w: window{key: k, start: per.Start, end: per.End}, subjects: map[string]bool{}}
			byKey[k] = a
			order = append(order, k)
		}
		switch agg {
		case plans.Max:
			if h.Value.GreaterThan(a.w.quantity) {
				a.w.quantity = h.Value
			}
		case plans.Latest:
			if h.LatestNs >= a.latestNs {
				a.w.quantity, a.latestNs = h.Value, h.LatestNs
			}
		case plans.UniqueCount:
			for _, s := range h.Subjects {
				a.subjects[s] = true
			}
			a.w.quantity = decimal.NewFromInt(int64(len(a.subjects)))
		default:
			a.w.quantity = a.w.quantity.Add(h.Value)
		}
	}
	out := make([]window, 0, len(order))
	for _, k := range order {
		w := byKey[k].w
		w.units = w.quantity.Mul(m.scale).Floor().IntPart()
		out = append(out, w)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].key.Tenant != out[j].key.Tenant {
			return out[i].key.Tenant < out[j].key.Tenant
		}
		return out[i].start.Before(out[j].start)
	})
	return out
}

func periodOf(p *plans.Config, tenant, meter string, t time.Time) plans.Period {
	if p == nil {
		return plans.PeriodOf(plans.Quota{Period: plans.CalendarMonth}, 0, t)
	}
	_, q, a := p.QuotaFor(tenant, meter)
	return plans.PeriodOf(q, a.AnchorDay, t)
}

// IntentID is the identifier of the seq-th write to a window: the meter
// event identifier and the idempotency key. Derived only from (tenant,
// meter, window, seq), so a retry, a restarted process and a second pass
// all use the same one; the ledger fixes the parameters that go with it.
// Hashed to stay within Stripe's 100 characters whatever the tenant id.
func IntentID(mode string, k audit.WindowKey, seq uint32) string {
	h := sha256.New()
	for _, part := range []string{mode, k.Tenant, k.Meter, strconv.FormatInt(k.Start, 10), strconv.FormatUint(uint64(seq), 10)} {
		h.Write([]byte(part))
		h.Write([]byte{0})
	}
	return "bs1-" + hex.EncodeToString(h.Sum(nil))[:48]
}

func unitsOf(v string, m Meter) int64 {
	d, err := decimal.NewFromString(v)
	if err != nil {
		return 0
	}
	return d.Mul(m.scale).Floor().IntPart()
}

func (s *Syncer) plansMeter(name string) plans.Meter {
	if s.plans == nil {
		return plans.Meter{Aggregation: plans.Sum}
	}
	m, _ := s.plans.MeterFor(name)
	return m
}
