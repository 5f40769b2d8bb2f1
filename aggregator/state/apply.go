package state

import (
	"fmt"
	"strings"
	"time"

	"github.com/shopspring/decimal"

	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/schemas/plans"
)

// Config tunes the state.
type Config struct {
	Plans *plans.Config
	// AllowedLateness: an event older than its partition's watermark minus
	// this is late; the streaming path does not apply it.
	AllowedLateness time.Duration
	// DedupHorizon is how many recent event ids per partition are kept to
	// drop duplicates.
	DedupHorizon int
}

// Outcome says what Apply did with an event.
type Outcome uint8

const (
	Applied      Outcome = iota // folded into at least one row
	Replayed                    // every row already had it (a re-read after a crash)
	Duplicate                   // same tenant and id seen within the horizon
	Late                        // older than the watermark minus the allowed lateness
	UnknownMeter                // feature_type not configured and unknown_meters: reject
	Overflow                    // a sum would pass what its ClickHouse column holds
	NoSubject                   // a unique_count meter's event without the subject it counts

	// NumOutcomes counts the outcomes above (for tables indexed by them).
	NumOutcomes = iota
)

func (o Outcome) String() string {
	return [...]string{"applied", "replayed", "duplicate", "late", "unknown_meter", "aggregate_overflow", "no_subject"}[o]
}

// MaxValue is the largest value an aggregate row or a quota total may hold:
// the largest Decimal(38, 9), the widest decimal ClickHouse 18.16 stores
// (and a sum() over more would wrap silently). An event that would take a
// sum past it is not applied anywhere (Overflow): the service diverts it,
// so one tenant can never make a write fail, for itself or for others.
const MaxValue = "99999999999999999999999999999.999999999"

// Fetcher reads one row from storage, for keys older than what was loaded
// at start-up; nil when the row does not exist.
type Fetcher func(Key) (*Row, error)

// State is the aggregator's memory. It is not safe for concurrent use: the
// service calls it from one goroutine.
type State struct {
	cfg  Config
	rows map[Key]*Row
	// series caches, per tenant, meter and subject, the rows its last
	// event touched; it only ever points at rows that are in rows (Load
	// and Evict, which replace or drop rows, clear it).
	series map[seriesKey]*series
	quotas map[QuotaKey]*Quota
	// parts holds each partition's dedup set, watermark and last offset:
	// one look-up per event instead of four.
	parts      map[int32]*part
	ids        *idHasher
	loadedFrom time.Time // every row of a window starting at or after this is in rows
	fetch      Fetcher
	// dirtyRows and dueQuotas queue rows and quota totals when they first
	// change, so a flush and a quota tick cost what changed, not what is
	// in memory (with 100,000 tenants the walks took most of the CPU).
	dirtyRows []*Row
	dueQuotas []*Quota
	// Each partition's evictFloor (part) is a time at or before the
	// earliest end (grace included) of its rows in memory: Evict scans
	// only once a partition's watermark minus the lateness passes it.
	// evictDirty: the floors are unknown, scan at the next Evict.
	evictDirty bool
	// meters caches the last meters looked up (MeterFor); next is the
	// entry the next miss replaces.
	meters    [4]meterEntry
	nextMeter int
}

// meterEntry is one cached plans.Config.MeterFor answer.
type meterEntry struct {
	set   bool
	name  string
	meter plans.Meter
	known bool
}

// MeterFor is plans.Config.MeterFor through a cache of the last four
// meters looked up: an event's meter is one of a handful, and a hit (a
// string comparison) costs a fraction of the map look-up, which took ~60
// ns per event in BenchmarkApplyView. Meters are fixed when the plans are
// loaded (assignments change plans, not meters), so entries never go
// stale.
func (s *State) MeterFor(featureType string) (plans.Meter, bool) {
	for i := range s.meters {
		if c := &s.meters[i]; c.set && c.name == featureType {
			return c.meter, c.known
		}
	}
	m, known := s.cfg.Plans.MeterFor(featureType)
	// A clone: the name may be a substring of a message read in place.
	s.meters[s.nextMeter] = meterEntry{set: true, name: strings.Clone(featureType), meter: m, known: known}
	s.nextMeter = (s.nextMeter + 1) % len(s.meters)
	return m, known
}

// New returns an empty State. Rows of windows that start before loadedFrom
// are read through fetch when an event needs them.
func New(cfg Config, loadedFrom time.Time, fetch Fetcher) *State {
	return &State{
		cfg:        cfg,
		rows:       make(map[Key]*Row),
		series:     make(map[seriesKey]*series),
		quotas:     make(map[QuotaKey]*Quota),
		parts:      make(map[int32]*part),
		ids:        newIDHasher(),
		evictDirty: true,
		loadedFrom: loadedFrom,
		fetch:      fetch,
	}
}

// part is one partition's state.
type part struct {
	dedup     *dedup
	watermark time.Time
	processed int64
	// hasProcessed: processed is set (a replayed event moves the
	// watermark only).
	hasProcessed bool
	// evictFloor: a time at or before the earliest end (grace included)
	// of the partition's rows in memory (see State.evictDirty).
	evictFloor time.Time
	hasFloor   bool
}

// part returns partition p's state, creating it.
func (s *State) part(p int32) *part {
	pt := s.parts[p]
	if pt == nil {
		pt = &part{}
		s.parts[p] = pt
	}
	return pt
}

// ApplyView folds one event read at (partition, offset) into every row it
// belongs to. It is the service's path: the quantity is already exact
// Fixed9 and the metadata a flat list (schemas.Validator.DecodeView), so
// nothing is allocated or looked up in a map per event for sum meters.
func (s *State) ApplyView(e *schemas.EventView, partition int32, offset int64) (Outcome, error) {
	return s.apply(e, nil, true, partition, offset)
}

// Apply is ApplyView for a decoded UsageEvent (reconcile, tests). A
// quantity that is no Decimal(38, 9) amount >= 0 (the contract refuses
// those upstream) overflows a sum meter, as ever; max and latest meters
// keep the decimal as it is.
func (s *State) Apply(e *schemas.UsageEvent, partition int32, offset int64) (Outcome, error) {
	qf, ok := schemas.Fixed9FromDecimal(e.Quantity)
	v := schemas.EventView{ID: e.ID, TenantID: e.TenantID, UserID: e.UserID, FeatureType: e.FeatureType, Quantity: qf,
		Timestamp: e.Timestamp, BillingPeriod: e.BillingPeriod, SchemaVersion: e.SchemaVersion}
	for k, val := range e.Metadata {
		v.Metadata = append(v.Metadata, schemas.MetadataEntry{Key: k, Value: val})
	}
	return s.apply(&v, &e.Quantity, ok, partition, offset)
}

// apply is ApplyView; dq, when not nil, is the quantity as a decimal (for
// max and latest meters), and fixedOK says whether e.Quantity holds it.
func (s *State) apply(e *schemas.EventView, dq *decimal.Decimal, fixedOK bool, partition int32, offset int64) (Outcome, error) {
	pt := s.part(partition)
	pt.processed, pt.hasProcessed = offset, true
	meter, known := s.MeterFor(e.FeatureType)
	if !known && s.cfg.Plans.UnknownMeters == "reject" {
		return UnknownMeter, nil
	}
	if !s.remember(pt, e) {
		return Duplicate, nil
	}
	if e.Timestamp.Before(pt.watermark.Add(-s.cfg.AllowedLateness)) {
		return Late, nil
	}
	if e.Timestamp.After(pt.watermark) {
		pt.watermark = e.Timestamp
	}
	subject := subjectOf(meter, e)
	if meter.Aggregation == plans.UniqueCount && subject == "" {
		// Nothing to count: an event without a user is not one more user.
		return NoSubject, nil
	}
	tsNs := e.Timestamp.UnixNano()
	sec := e.Timestamp.Unix()
	// One look-up for the series' current rows instead of one per grain:
	// most events land in the windows the previous event of the series did.
	ser := s.series[seriesKey{e.TenantID, e.FeatureType, subject}]
	if ser == nil {
		ser = &series{key: cloneSeriesKey(e.TenantID, e.FeatureType, subject)}
		s.series[ser.key] = ser
	}
	cur := &ser.rows
	// The period: the series' period row when the event falls in it
	// (periods are whole seconds, [Start, PeriodEnd)); only otherwise the
	// plan look-up and PeriodFor, which formats the period id. A plan
	// change, which can move period boundaries, clears the cache
	// (TouchTenant).
	var (
		period plans.Period
		plan   string
	)
	periodStart := int64(0)
	if pr := cur[Period]; pr != nil && sec >= pr.Start && sec < pr.PeriodEnd {
		periodStart = pr.Start
	} else {
		var quota plans.Quota
		var assignment plans.Assignment
		plan, quota, assignment = s.cfg.Plans.QuotaFor(e.TenantID, e.FeatureType)
		period = assignment.PeriodFor(quota, e.Timestamp)
		periodStart = period.Start.Unix()
	}
	var rows [len(Grains)]*Row
	for _, g := range Grains {
		var start int64
		if g == Period {
			start = periodStart
		} else {
			start = windowStart(g, sec)
		}
		r := cur[g]
		if r == nil || r.Start != start {
			k := Key{Tenant: ser.key.Tenant, Meter: ser.key.Meter, Subject: ser.key.Subject, Grain: g, Start: start}
			var err error
			if r, err = s.row(k, meter.Aggregation, period, plan, partition); err != nil {
				return 0, err
			}
			cur[g] = r
		}
		if r.badValue {
			return 0, fmt.Errorf("%s row %s/%s/%s@%d holds %s, not a Decimal(38, 9) amount >= 0", g, r.Tenant, r.Meter, r.Subject, r.Start, r.Value)
		}
		rows[g] = r
	}
	qf := e.Quantity
	if meter.Aggregation == plans.Sum && s.overflows(rows[Period], qf, fixedOK, partition, offset) {
		return Overflow, nil
	}
	// The gauges keep a decimal value; the other aggregations never read q.
	var q decimal.Decimal
	switch {
	case meter.Aggregation != plans.Max && meter.Aggregation != plans.Latest:
	case dq != nil:
		q = *dq
	default:
		q = qf.Decimal()
	}
	outcome := Replayed
	for _, g := range Grains {
		r := rows[g]
		if r.Offset >= offset && r.Partition == partition {
			continue // the row already reflects this event
		}
		oldAcc, oldEvents := r.acc, r.Events
		if !r.queued {
			r.queued = true
			s.dirtyRows = append(s.dirtyRows, r)
		}
		r.apply(q, qf, tsNs, partition, offset)
		if g == Period {
			s.fold(r, oldAcc, oldEvents)
		}
		outcome = Applied
	}
	return outcome, nil
}

// overflows reports whether adding qf to the period row (the largest of
// an event's rows) or to its quota total would pass MaxValue, or the
// quantity was no Decimal(38, 9) amount >= 0 (!fixedOK; the contract
// refuses those upstream). A replayed event that the row already reflects
// never overflows: it was checked the first time, in the same order.
//
// Sums fold in schemas.Fixed9, 128-bit units of 10^-9: MaxValue is
// 10^38 - 1 units, below 2^127, so adding one amount that fits to a total
// that fits never wraps, and comparing the would-be sum with MaxValue
// before any row changes catches every overflow (Add also reports a carry
// out of 128 bits).
func (s *State) overflows(period *Row, qf schemas.Fixed9, fixedOK bool, partition int32, offset int64) bool {
	if period.Offset >= offset && period.Partition == partition {
		return false
	}
	if !fixedOK {
		return true
	}
	maxFixed := schemas.MaxFixed9()
	if sum, ok := period.acc.Add(qf); !ok || sum.Cmp(maxFixed) > 0 {
		return true
	}
	total := period.quota
	if total == nil {
		var ok bool
		if total, ok = s.quotas[QuotaKey{period.Tenant, period.Meter, period.PeriodID}]; !ok {
			return false
		}
	}
	sum, ok := total.acc.Add(qf)
	return !ok || sum.Cmp(maxFixed) > 0
}

// Remember records an event that is already reflected in storage (read
// again before the checkpoint to warm the dedup set) without applying it.
func (s *State) Remember(e *schemas.EventView, partition int32) {
	pt := s.part(partition)
	s.remember(pt, e)
	if e.Timestamp.After(pt.watermark) {
		pt.watermark = e.Timestamp
	}
}

// A partition's watermark moves to the newest event time (Apply,
// Remember). How far one event can move it is bounded before it gets
// here: the intake rule (svckit.Intake.DecodeRecord) refuses, in both
// services alike, an event more than the contract's future skew (5
// minutes) ahead of the time the broker appended its record, so the
// watermark never runs more than that ahead of the broker's clock,
// whatever a publisher's clock says.

func (s *State) remember(pt *part, e *schemas.EventView) bool {
	if pt.dedup == nil {
		pt.dedup = newDedup(s.cfg.DedupHorizon)
	}
	return pt.dedup.add(s.ids.sum(e.TenantID, e.ID), s.cfg.DedupHorizon)
}

func subjectOf(m plans.Meter, e *schemas.EventView) string {
	if key, ok := strings.CutPrefix(m.UniqueBy, "metadata."); ok {
		v, _ := e.Meta(key)
		return v
	}
	return e.UserID
}

// row returns the row for k, loading or creating it.
func (s *State) row(k Key, agg plans.Aggregation, p plans.Period, plan string, partition int32) (*Row, error) {
	if r, ok := s.rows[k]; ok {
		return r, nil
	}
	var end time.Time
	if k.Grain == Period {
		end = p.End
	} else {
		end = time.Unix(k.Start, 0).Add(GrainLength(k.Grain))
	}
	if end.Before(s.loadedFrom) || end.Equal(s.loadedFrom) {
		r, err := s.fetch(k)
		if err != nil {
			return nil, fmt.Errorf("load %s row %s/%s/%s@%d: %w", k.Grain, k.Tenant, k.Meter, k.Subject, k.Start, err)
		}
		if r != nil {
			s.Load(r)
			return r, nil
		}
	}
	// The partition is set at once (not only by apply), so that Evict
	// judges even a row no event was folded into by its partition.
	r := &Row{Key: k, Aggregation: agg, Partition: partition, Offset: -1}
	if k.Grain == Period {
		r.PeriodID, r.PeriodEnd, r.Plan = p.ID, p.End.Unix(), plan
	}
	s.rows[k] = r
	s.lowerEvictFloor(partition, end)
	return r, nil
}

// Load puts a row read from storage into memory (at start-up, or through
// the Fetcher).
func (s *State) Load(r *Row) {
	clear(s.series)
	r.dirty, r.stale, r.queued = false, false, false // a copy of a queued row is not in the queue
	r.quota = nil                                    // fold finds the total
	if accumulates(r.Aggregation) {
		var ok bool
		r.acc, ok = schemas.Fixed9FromDecimal(r.Value)
		r.badValue = !ok
	}
	s.rows[r.Key] = r
	s.evictDirty = true // its end may be the earliest: scan at the next Evict
	if r.Grain == Period {
		s.fold(r, schemas.Fixed9{}, 0)
		s.quotas[QuotaKey{r.Tenant, r.Meter, r.PeriodID}].dirty = false
	}
}

// Restore sets a partition's checkpoint: the last offset reflected in
// storage and the watermark at that point.
func (s *State) Restore(partition int32, offset int64, watermark time.Time) {
	pt := s.part(partition)
	pt.processed, pt.hasProcessed, pt.watermark = offset, true, watermark
}

// Checkpoint is one partition's resume point.
type Checkpoint struct {
	Partition int32
	Offset    int64 // last offset processed; all its effects are in the rows
	Watermark time.Time
}

// Checkpoints returns the resume point of every partition seen.
func (s *State) Checkpoints() []Checkpoint {
	out := make([]Checkpoint, 0, len(s.parts))
	for p, pt := range s.parts {
		if pt.hasProcessed {
			out = append(out, Checkpoint{Partition: p, Offset: pt.processed, Watermark: pt.watermark})
		}
	}
	return out
}

// Dirty returns the rows changed since MarkClean, by grain. It visits the
// queue of changed rows only, dropping the ones cleaned since.
func (s *State) Dirty() [len(Grains)][]*Row {
	var out [len(Grains)][]*Row
	kept := s.dirtyRows[:0]
	for _, r := range s.dirtyRows {
		if !r.dirty || s.rows[r.Key] != r {
			r.queued = false
			continue
		}
		kept = append(kept, r)
		r.sync()
		out[r.Grain] = append(out[r.Grain], r)
	}
	clear(s.dirtyRows[len(kept):]) // let dropped rows be collected
	s.dirtyRows = kept
	return out
}

// MarkClean records that rows are durably written. A written sum or
// count row drops its decimal Value (a big.Int: two objects for the GC per
// row), which sync rebuilds from acc when the row is handed out again.
func (s *State) MarkClean(rows []*Row) {
	for _, r := range rows {
		r.dirty = false
		if accumulates(r.Aggregation) && !r.badValue {
			r.Value, r.stale = decimal.Decimal{}, true
		}
	}
}

// lowerEvictFloor notes a row of partition ending at end.
func (s *State) lowerEvictFloor(partition int32, end time.Time) {
	if s.evictDirty {
		return // a scan is due anyway
	}
	if pt := s.part(partition); !pt.hasFloor || end.Before(pt.evictFloor) {
		pt.evictFloor, pt.hasFloor = end, true
	}
}

// endOf is when no event can change the row any more, before lateness:
// its window's end, or its period's end plus the quota's grace.
func (s *State) endOf(r *Row) time.Time {
	if r.Grain == Period {
		_, q, _ := s.cfg.Plans.QuotaFor(r.Tenant, r.Meter)
		return time.Unix(r.PeriodEnd, 0).Add(q.GracePeriod)
	}
	return time.Unix(r.Start, 0).Add(GrainLength(r.Grain))
}

// evictDue reports whether some row may be evictable: a partition's
// watermark minus the lateness has passed the earliest end of its rows.
func (s *State) evictDue() bool {
	if s.evictDirty {
		return true
	}
	for _, pt := range s.parts {
		if pt.hasFloor && pt.evictFloor.Before(pt.watermark.Add(-s.cfg.AllowedLateness)) {
			return true
		}
	}
	return false
}

// Evict drops clean rows that no event can change any more (their window
// ended more than the allowed lateness before their partition's
// watermark), and marks quotas of such periods final. It returns how many
// rows it dropped. It walks the rows only when a watermark has passed the
// earliest end of its partition's rows (about once a minute, as minute
// windows close), not at every flush.
func (s *State) Evict() int {
	if !s.evictDue() {
		return 0
	}
	n := 0
	for _, pt := range s.parts {
		pt.hasFloor = false
	}
	for k, r := range s.rows {
		end := s.endOf(r)
		pt := s.part(r.Partition)
		if r.dirty || !end.Before(pt.watermark.Add(-s.cfg.AllowedLateness)) {
			// Kept (a dirty row too: it counts once written).
			if !pt.hasFloor || end.Before(pt.evictFloor) {
				pt.evictFloor, pt.hasFloor = end, true
			}
			continue
		}
		if k.Grain == Period {
			if qt := s.quotas[QuotaKey{k.Tenant, k.Meter, r.PeriodID}]; qt != nil && !qt.Final {
				qt.Final = true
				s.touch(qt)
			}
		}
		delete(s.rows, k)
		n++
	}
	s.evictDirty = false
	if n > 0 {
		clear(s.series)
	}
	return n
}

// Rows returns how many rows are in memory.
func (s *State) Rows() int { return len(s.rows) }

// Skip records that the event at offset was read but is not aggregated
// (invalid input: the raw consumer sends it to the DLQ).
func (s *State) Skip(partition int32, offset int64) {
	pt := s.part(partition)
	pt.processed, pt.hasProcessed = offset, true
}

// Watermark is a partition's watermark: the newest event time seen on it.
func (s *State) Watermark(partition int32) time.Time {
	if pt := s.parts[partition]; pt != nil {
		return pt.watermark
	}
	return time.Time{}
}
