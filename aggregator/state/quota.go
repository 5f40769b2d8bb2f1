package state

import (
	"time"

	"github.com/shopspring/decimal"

	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/schemas/plans"
)

// QuotaKey identifies a quota total.
type QuotaKey struct {
	Tenant, Meter, PeriodID string
}

// Quota is a tenant's usage of one meter in one period, over all subjects.
type Quota struct {
	QuotaKey
	PeriodStart time.Time
	PeriodEnd   time.Time
	Aggregation plans.Aggregation
	Usage       decimal.Decimal
	LatestNs    int64
	Events      uint64
	Partition   int32
	Offset      int64 // highest source offset reflected
	Final       bool  // the period is closed

	dirty     bool
	queued    bool // in State.dueQuotas (dirty implies queued)
	published time.Time
	// acc is Usage in fixed units for sum, count and unique_count totals;
	// Usage is brought up to date (sync) when the quota is handed out.
	acc   schemas.Fixed9
	stale bool
}

// sync brings Usage up to date with acc.
func (q *Quota) sync() {
	if q.stale {
		q.Usage, q.stale = q.acc.Decimal(), false
	}
}

// fold updates the quota total from a period row that changed from
// (oldAcc, oldEvents) to its current value (oldAcc: its fixed value before,
// for sum and count rows).
func (s *State) fold(r *Row, oldAcc schemas.Fixed9, oldEvents uint64) {
	q := r.quota
	if q == nil {
		k := QuotaKey{r.Tenant, r.Meter, r.PeriodID}
		var ok bool
		if q, ok = s.quotas[k]; !ok {
			q = &Quota{QuotaKey: k, PeriodStart: time.Unix(r.Start, 0).UTC(), PeriodEnd: time.Unix(r.PeriodEnd, 0).UTC(),
				Aggregation: r.Aggregation, Offset: -1}
			s.quotas[k] = q
		}
		r.quota = q
	}
	switch r.Aggregation {
	case plans.Sum, plans.Count:
		// The row only grows, and overflows checked the quota's sum.
		d, _ := r.acc.Sub(oldAcc)
		q.acc, _ = q.acc.Add(d)
		q.stale = true
	case plans.Max:
		if q.Events == 0 || r.Value.GreaterThan(q.Usage) {
			q.Usage = r.Value
		}
	case plans.Latest:
		if q.Events == 0 || r.LatestNs >= q.LatestNs {
			q.Usage, q.LatestNs = r.Value, r.LatestNs
		}
	case plans.UniqueCount:
		if oldEvents == 0 && r.Events > 0 {
			q.acc, _ = q.acc.Add(fixedOne)
			q.stale = true
		}
	}
	q.Events += r.Events - oldEvents
	if r.Offset > q.Offset {
		q.Partition, q.Offset = r.Partition, r.Offset
	}
	s.touch(q)
}

// touch marks a quota changed and queues it for DueQuotas.
func (s *State) touch(q *Quota) {
	q.dirty = true
	if !q.queued {
		q.queued = true
		s.dueQuotas = append(s.dueQuotas, q)
	}
}

// DueQuotas returns the changed quotas not published within coalesce, and
// marks them published at now. Final quotas are returned once and then
// forgotten. It visits the queue of changed quotas only; the ones held back
// by coalesce stay queued.
func (s *State) DueQuotas(now time.Time, coalesce time.Duration) []Quota {
	var out []Quota
	kept := s.dueQuotas[:0]
	for _, q := range s.dueQuotas {
		if !q.dirty || s.quotas[q.QuotaKey] != q {
			q.queued = false
			continue
		}
		if now.Sub(q.published) < coalesce {
			kept = append(kept, q)
			continue
		}
		q.dirty, q.queued, q.published = false, false, now
		q.sync()
		out = append(out, *q)
		if q.Final {
			delete(s.quotas, q.QuotaKey)
		}
	}
	clear(s.dueQuotas[len(kept):])
	s.dueQuotas = kept
	return out
}

// Requeue marks quotas dirty again after their publication failed.
func (s *State) Requeue(qs []Quota) {
	for _, q := range qs {
		if cur, ok := s.quotas[q.QuotaKey]; ok {
			cur.published = time.Time{}
			s.touch(cur)
		} else if q.Final {
			if q.Aggregation != plans.Max && q.Aggregation != plans.Latest {
				q.acc, _ = schemas.Fixed9FromDecimal(q.Usage) // a copy handed out holds the same total
			}
			cp := q
			cp.queued = false
			s.quotas[q.QuotaKey] = &cp
			s.touch(&cp)
		}
	}
}

// QuotaOf returns the current total of a quota, for tests and tools.
func (s *State) QuotaOf(k QuotaKey) (Quota, bool) {
	q, ok := s.quotas[k]
	if !ok {
		return Quota{}, false
	}
	q.sync()
	return *q, true
}

// TouchTenant marks every quota of a tenant changed, so that it is published
// again at once (its plan changed: limits and levels may differ).
func (s *State) TouchTenant(tenant string) {
	for k, q := range s.quotas {
		if k.Tenant == tenant {
			q.published = time.Time{}
			s.touch(q)
		}
	}
	// Its quotas' grace may have changed, so may its rows' ends; its
	// periods may have moved, so the series' cached period rows go too.
	s.evictDirty = true
	clear(s.series)
}
