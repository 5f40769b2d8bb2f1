// Package usageread answers usage-api's read API (GET /v1/usage/{tenant})
// from ClickHouse's aggregates: usage_1m, usage_1h, usage_1d and
// usage_period for meters and users, usage_events for a metadata key. As in
// aggregator/aggstore, every query is a struct whose toSQL returns the text
// and its bound arguments: nothing a caller sends is ever spliced into SQL.
package usageread

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/schemas/plans"
)

// Granularity is the window of a row.
type Granularity string

const (
	Minute Granularity = "minute"
	Hour   Granularity = "hour"
	Day    Granularity = "day"
	Period Granularity = "period" // the tenant's billing period
)

// The group_by values; a metadata key is "metadata.<key>".
const (
	ByMeter        = "meter"
	ByUser         = "user"
	metadataPrefix = "metadata."
)

// Limits on one request. A range is bounded per granularity so that a
// request never scans more than about a month of minutes or raw events.
const (
	DefaultLimit = 1000
	MaxLimit     = 10000
	// MaxMetadataRange bounds group_by=metadata.<key>, which reads the raw
	// events (the aggregates do not keep metadata).
	MaxMetadataRange = 31 * 24 * time.Hour
)

// MaxRange is the longest from..to a granularity accepts.
func MaxRange(g Granularity) time.Duration {
	switch g {
	case Minute:
		return 24 * time.Hour
	case Hour:
		return 31 * 24 * time.Hour
	case Day:
		return 400 * 24 * time.Hour
	default:
		return 5 * 366 * 24 * time.Hour
	}
}

// Request is one validated read.
type Request struct {
	Tenant      string
	From, To    time.Time // [From, To): windows starting in it; periods overlapping it
	Granularity Granularity
	GroupBy     string // "meter", "user" or "metadata.<key>"
	MetadataKey string // set when GroupBy is metadata.<key>
	Meter       string // optional filter: one meter
	Limit       int
	Offset      int // from the cursor
}

// FieldError is a refused parameter: the field and why.
type FieldError struct {
	Field, Reason string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Reason }

func bad(field, format string, args ...any) error {
	return &FieldError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// Params are the request's query parameters as sent.
type Params struct {
	Tenant, From, To, Granularity, GroupBy, Meter, Limit, Cursor string
}

// Parse validates p at now: defaults are the last 24 hours, day rows,
// grouped by meter, DefaultLimit rows.
func Parse(p Params, now time.Time) (Request, error) {
	r := Request{Tenant: p.Tenant, Granularity: Day, GroupBy: ByMeter, Limit: DefaultLimit, Meter: p.Meter}
	if err := schemas.CheckTenantID(p.Tenant); err != nil {
		return r, bad("tenant", "%v", err)
	}
	if p.Meter != "" {
		if err := schemas.CheckFeatureType(p.Meter); err != nil {
			return r, bad("meter", "%v", err)
		}
	}
	if p.Granularity != "" {
		switch g := Granularity(p.Granularity); g {
		case Minute, Hour, Day, Period:
			r.Granularity = g
		default:
			return r, bad("granularity", "must be minute, hour, day or period, not %q", p.Granularity)
		}
	}
	switch gb := p.GroupBy; {
	case gb == "" || gb == ByMeter:
	case gb == ByUser:
		r.GroupBy = ByUser
	case strings.HasPrefix(gb, metadataPrefix):
		key := gb[len(metadataPrefix):]
		if key == "" || !printable(key) || utf8.RuneCountInString(key) > schemas.MaxMetadataKeyLen {
			return r, bad("group_by", "metadata key must be 1-%d printable characters", schemas.MaxMetadataKeyLen)
		}
		r.GroupBy, r.MetadataKey = gb, key
		if r.Granularity == Period {
			return r, bad("group_by", "a metadata key groups minute, hour or day rows, not period (the raw events carry no period start)")
		}
	default:
		return r, bad("group_by", "must be meter, user or metadata.<key>, not %q", gb)
	}
	var err error
	r.To = now.UTC().Truncate(time.Second)
	if p.To != "" {
		if r.To, err = time.Parse(time.RFC3339, p.To); err != nil {
			return r, bad("to", "must be an RFC 3339 time (2026-11-30T00:00:00Z)")
		}
	}
	r.From = r.To.Add(-24 * time.Hour)
	if p.From != "" {
		if r.From, err = time.Parse(time.RFC3339, p.From); err != nil {
			return r, bad("from", "must be an RFC 3339 time (2026-11-01T00:00:00Z)")
		}
	}
	r.From, r.To = r.From.UTC(), r.To.UTC()
	if !r.From.Before(r.To) {
		return r, bad("from", "must be before to")
	}
	maxRange := MaxRange(r.Granularity)
	if r.MetadataKey != "" {
		maxRange = min(maxRange, MaxMetadataRange)
	}
	if r.To.Sub(r.From) > maxRange {
		return r, bad("to", "the range is at most %s for granularity %s%s", maxRange, r.Granularity,
			map[bool]string{true: " grouped by a metadata key", false: ""}[r.MetadataKey != ""])
	}
	if p.Limit != "" {
		if r.Limit, err = strconv.Atoi(p.Limit); err != nil || r.Limit < 1 || r.Limit > MaxLimit {
			return r, bad("limit", "must be an integer from 1 to %d", MaxLimit)
		}
	}
	if p.Cursor != "" {
		if r.Offset, err = DecodeCursor(p.Cursor); err != nil {
			return r, bad("cursor", "not a cursor this API returned")
		}
	}
	return r, nil
}

// The cursor is the offset of the next page, with a prefix so that a
// number typed by hand is refused rather than silently read.
const cursorPrefix = "o"

// MaxOffset bounds pagination: deeper pages would make ClickHouse sort and
// skip too much; narrow the range instead.
const MaxOffset = 1_000_000

// EncodeCursor returns the cursor of the page starting at offset.
func EncodeCursor(offset int) string { return cursorPrefix + strconv.Itoa(offset) }

// DecodeCursor reads a cursor of EncodeCursor.
func DecodeCursor(c string) (int, error) {
	n, err := strconv.Atoi(strings.TrimPrefix(c, cursorPrefix))
	if !strings.HasPrefix(c, cursorPrefix) || err != nil || n < 0 || n > MaxOffset {
		return 0, errors.New("bad cursor")
	}
	return n, nil
}

func printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}

func table(g Granularity) string {
	switch g {
	case Minute:
		return "usage_1m"
	case Hour:
		return "usage_1h"
	case Day:
		return "usage_1d"
	}
	return "usage_period"
}

// windowQuery reads the aggregate rows of one tenant, one row per window,
// meter and (for group_by=user) subject. Grouped by meter, each meter is
// combined across subjects by its own aggregation: a sum, count or
// unique_count adds up (a unique_count row is one subject of that window),
// a max takes the largest, a latest the value of the newest event; a gauge
// is never summed. Limit+1 rows are read to know whether a next page exists.
type windowQuery struct {
	Req Request
	// Exclude are meters left out (group_by=user: unique_count meters
	// whose subject is a metadata value, not a user).
	Exclude []string
}

func (q windowQuery) toSQL() (string, []any) {
	r := q.Req
	start := "window_start"
	if r.Granularity == Period {
		start = "period_start"
	}
	var sb strings.Builder
	args := []any{}
	if r.GroupBy == ByUser {
		sb.WriteString(`SELECT ` + start + `, feature_type, aggregation, subject, toString(value), events FROM ` + table(r.Granularity) + ` FINAL`)
	} else {
		sb.WriteString(`SELECT ` + start + ` AS w, feature_type, any(aggregation) AS agg, '',
 multiIf(agg = 'max', toString(max(value)), agg = 'latest', toString(argMax(value, latest_ns)), toString(sum(value))),
 sum(events) FROM ` + table(r.Granularity) + ` FINAL`)
	}
	sb.WriteString(` WHERE tenant_id = ?`)
	args = append(args, r.Tenant)
	if r.Granularity == Period {
		sb.WriteString(` AND period_start < ? AND period_end > ?`)
	} else {
		sb.WriteString(` AND window_start >= ? AND window_start < ?`)
		args = append(args, r.From)
		args = append(args, r.To)
	}
	if r.Granularity == Period {
		args = append(args, r.To, r.From)
	}
	if r.Meter != "" {
		sb.WriteString(` AND feature_type = ?`)
		args = append(args, r.Meter)
	}
	if len(q.Exclude) > 0 {
		sb.WriteString(` AND NOT has(?, feature_type)`)
		args = append(args, q.Exclude)
	}
	if r.GroupBy == ByUser {
		sb.WriteString(` ORDER BY ` + start + `, feature_type, subject`)
	} else {
		sb.WriteString(` GROUP BY w, feature_type ORDER BY w, feature_type`)
	}
	sb.WriteString(` LIMIT ?, ?`)
	args = append(args, r.Offset, r.Limit+1)
	return sb.String(), args
}

// metadataQuery groups the raw events of one tenant by a metadata key's
// value: the aggregates do not keep metadata. Gauges and unique counts
// (Exclude) cannot be split by a key and are left out; a count meter
// (Counts) counts events, anything else sums quantities, as the aggregator
// sums an unknown meter. A missing key groups as "". Events are
// deduplicated by FINAL: the consumer's table is a ReplacingMergeTree keyed
// by the event id.
type metadataQuery struct {
	Req     Request
	Exclude []string
	Counts  []string
}

func (q metadataQuery) toSQL() (string, []any) {
	r := q.Req
	w := map[Granularity]string{Minute: "toStartOfMinute(event_time)", Hour: "toStartOfHour(event_time)",
		Day: "toStartOfDay(event_time)"}[r.Granularity]
	value := "toString(sum(quantity))"
	args := []any{r.MetadataKey}
	if len(q.Counts) > 0 {
		value = "if(has(?, feature_type), toString(toDecimal128(count(), 9)), toString(sum(quantity)))"
		args = append(args, q.Counts)
	}
	sql := `SELECT ` + w + ` AS w, feature_type, '' AS agg, metadata_values[indexOf(metadata_keys, ?)] AS g, ` + value + `, count()
 FROM usage_events FINAL WHERE tenant_id = ? AND event_time >= ? AND event_time < ?`
	args = append(args, r.Tenant, r.From, r.To)
	if r.Meter != "" {
		sql += ` AND feature_type = ?`
		args = append(args, r.Meter)
	}
	if len(q.Exclude) > 0 {
		sql += ` AND NOT has(?, feature_type)`
		args = append(args, q.Exclude)
	}
	sql += ` GROUP BY w, feature_type, g ORDER BY w, feature_type, g LIMIT ?, ?`
	args = append(args, r.Offset, r.Limit+1)
	return sql, args
}

// metersFor splits the plans file's meters for a query: which a user
// grouping leaves out (unique counts by a metadata value), which a
// metadata grouping leaves out (gauges, unique counts) and which count
// events.
func metersFor(p *plans.Config) (notUser, notMetadata, counts []string) {
	for name, m := range p.Meters {
		switch m.Aggregation {
		case plans.UniqueCount:
			notMetadata = append(notMetadata, name)
			if m.UniqueBy != "" && m.UniqueBy != "user_id" {
				notUser = append(notUser, name)
			}
		case plans.Max, plans.Latest:
			notMetadata = append(notMetadata, name)
		case plans.Count:
			counts = append(counts, name)
		}
	}
	slices.Sort(notUser)
	slices.Sort(notMetadata)
	slices.Sort(counts)
	return notUser, notMetadata, counts
}
