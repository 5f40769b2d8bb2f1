// Package state is the aggregator's in-memory model: aggregate rows per
// tenant, meter, subject and window (minute, hour, day, billing period),
// the per-partition dedup sets and watermarks, and the quota totals per
// tenant, meter and period. It does no I/O, so every rule of the exactly-once
// design is unit-tested here; package service feeds it from Kafka and
// persists it to ClickHouse.
//
// The rule that makes crashes harmless: every row stores the highest source
// offset folded into it, and an event is applied to a row only when its
// offset is above that. A tenant's events all come from one partition (the
// Kafka key is the tenant), in offset order, so that offset is a complete
// description of what the row contains.
package state

import (
	"strings"
	"time"

	"github.com/shopspring/decimal"

	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/schemas/plans"
)

// Grain is a row's window size.
type Grain uint8

const (
	Minute Grain = iota
	Hour
	Day
	Period
)

// Grains lists them in write order.
var Grains = [...]Grain{Minute, Hour, Day, Period}

func (g Grain) String() string { return [...]string{"1m", "1h", "1d", "period"}[g] }

// Table is the ClickHouse table holding the grain's rows.
func (g Grain) Table() string {
	return [...]string{"usage_1m", "usage_1h", "usage_1d", "usage_period"}[g]
}

// Key identifies a row.
type Key struct {
	Tenant  string
	Meter   string
	Subject string // user_id, or the metadata value a unique_count meter counts
	Grain   Grain
	Start   int64 // window or period start, unix seconds UTC
}

// seriesKey is a row's key without its window: one series of rows.
type seriesKey struct{ Tenant, Meter, Subject string }

// series is the cache entry of one series: the rows its last event
// touched, by grain, and its key in strings of its own.
type series struct {
	key  seriesKey
	rows [len(Grains)]*Row
}

// cloneSeriesKey copies the strings of a key into one allocation. The
// decoder's strings share one copy of the whole message, so a key made
// of them would keep every message that created a series, row or quota
// alive for as long as the row (hundreds of bytes per row).
func cloneSeriesKey(tenant, meter, subject string) seriesKey {
	all := strings.Clone(tenant + meter + subject)
	return seriesKey{all[:len(tenant)], all[len(tenant) : len(tenant)+len(meter)], all[len(tenant)+len(meter):]}
}

// Row is one aggregate: the full value of its window, never a delta.
type Row struct {
	Key
	Aggregation plans.Aggregation
	Value       decimal.Decimal
	Events      uint64
	LatestNs    int64 // event time of the newest event folded in
	Partition   int32

	// The flags sit beside Partition, in its padding: a row is 208 bytes,
	// not 224 (a smaller allocation class, one per open row).
	dirty bool
	// queued: the row is in State.dirtyRows (dirty implies queued), so a
	// flush visits what changed, not every row in memory.
	queued bool
	stale  bool // Value is behind acc
	// badValue: a row read from storage whose value is not a Decimal(38, 9)
	// amount >= 0; events of it fail loudly instead of folding into a
	// value that could not be represented.
	badValue bool

	Offset int64 // highest source offset folded in; -1 for none
	// Version is the ReplacingMergeTree version the row has in ClickHouse
	// (0: never written). Versions follow the data, not clocks: see
	// aggstore.WriteRows.
	Version uint64
	// Period rows only.
	PeriodID  string
	PeriodEnd int64
	Plan      string

	// acc is the value of a sum or count row in fixed units; Value is
	// brought up to date from it (sync) when the row is handed out, so the
	// fold itself never allocates.
	acc schemas.Fixed9
	// quota is the period row's quota total once fold found it (nil for
	// other grains), sparing the look-up per event. A total leaves
	// State.quotas only once final, when its rows were evicted; Load
	// clears it.
	quota *Quota
}

// accumulates reports whether a row of this aggregation folds in acc.
func accumulates(a plans.Aggregation) bool { return a == plans.Sum || a == plans.Count }

// sync brings Value up to date with acc.
func (r *Row) sync() {
	if r.stale {
		r.Value, r.stale = r.acc.Decimal(), false
	}
}

var one = decimal.NewFromInt(1)

// fixedOne is 1 in Fixed9 units (10^9 of 10^-9).
var fixedOne = schemas.Fixed9Units(1_000_000_000)

// apply folds one event into the row; qf is its quantity in Fixed9 units
// (sum meters), q the same as a decimal (max and latest meters only). A
// sum's overflow was checked before (State.overflows).
func (r *Row) apply(q decimal.Decimal, qf schemas.Fixed9, tsNs int64, partition int32, offset int64) {
	switch r.Aggregation {
	case plans.Sum:
		r.acc, _ = r.acc.Add(qf)
		r.stale = true
	case plans.Count:
		r.acc, _ = r.acc.Add(fixedOne)
		r.stale = true
	case plans.Max:
		if r.Events == 0 || q.GreaterThan(r.Value) {
			r.Value = q
		}
	case plans.Latest:
		// Equal times: the later offset wins, as in the raw table's order.
		if r.Events == 0 || tsNs >= r.LatestNs {
			r.Value = q
		}
	case plans.UniqueCount:
		r.Value = one
	}
	r.LatestNs = max(r.LatestNs, tsNs)
	r.Events++
	r.Partition, r.Offset = partition, offset
	r.dirty = true
}

// windowStart truncates sec (unix seconds) to the grain (UTC): Unix time
// has no leap seconds, so UTC minutes, hours and days are whole multiples
// of 60, 3600 and 86400 seconds from the epoch (TestWindowStart holds it
// to time.Truncate and time.Date).
func windowStart(g Grain, sec int64) int64 {
	n := int64(GrainLength(g) / time.Second)
	start := sec - sec%n
	if sec%n < 0 { // before 1970: round down, not toward zero
		start -= n
	}
	return start
}

// GrainLength is the window length of the fixed grains.
func GrainLength(g Grain) time.Duration {
	return [...]time.Duration{time.Minute, time.Hour, 24 * time.Hour, 0}[g]
}
