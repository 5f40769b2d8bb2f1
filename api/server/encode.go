package server

import (
	"bytes"
	"math"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/usagemeter/usagemeter/quota"
)

// appendDecision writes a decision as openapi.yaml's Decision. It is
// written by hand, not with encoding/json, because it is on every answer's
// path and reflection and the source-offsets map cost more than the
// decision itself.
func appendDecision(b []byte, d *quota.Decision) []byte {
	b = append(b, `{"allowed":`...)
	b = strconv.AppendBool(b, d.Allowed)
	if d.Reason != "" {
		b = append(b, `,"reason":`...)
		b = appendString(b, d.Reason)
	}
	b = append(b, `,"tenant_id":`...)
	b = appendString(b, d.Tenant)
	b = append(b, `,"feature_type":`...)
	b = appendString(b, d.Meter)
	b = append(b, `,"plan":`...)
	b = appendString(b, d.Plan)
	b = append(b, `,"period":`...)
	b = appendString(b, d.Period)
	b = append(b, `,"level":`...)
	b = appendString(b, d.Level)
	b = append(b, `,"usage":"`...)
	b = d.Usage.AppendText(b)
	b = append(b, `","pending":"`...)
	b = d.Pending.AppendText(b)
	if d.Unlimited {
		b = append(b, `","limit":"-1","remaining":"-1","percentage":"0"`...)
	} else {
		b = append(b, `","limit":"`...)
		b = d.Limit.AppendText(b)
		b = append(b, `","remaining":"`...)
		b = d.Remaining.AppendText(b)
		b = append(b, `","percentage":"`...)
		b = strconv.AppendInt(b, d.Percentage/100, 10)
		if f := d.Percentage % 100; f != 0 {
			b = append(b, '.', byte('0'+f/10))
			if f%10 != 0 {
				b = append(b, byte('0'+f%10))
			}
		}
		b = append(b, '"')
	}
	b = append(b, `,"warning":`...)
	b = strconv.AppendInt(b, int64(d.Warning), 10)
	b = append(b, `,"reset_at":"`...)
	b = d.ResetAt.UTC().AppendFormat(b, time.RFC3339)
	b = append(b, `","retry_after_ms":`...)
	var retry int64
	if !d.Allowed {
		retry = d.RetryAfter.Milliseconds()
	}
	b = strconv.AppendInt(b, retry, 10)
	s := &d.Staleness
	b = append(b, `,"staleness":{"stale":`...)
	b = strconv.AppendBool(b, s.Stale)
	b = append(b, `,"offset_lag":`...)
	b = strconv.AppendInt(b, s.OffsetLag, 10)
	b = append(b, `,"age_ms":`...)
	b = strconv.AppendInt(b, s.Age.Milliseconds(), 10)
	b = append(b, `,"reachable":`...)
	b = strconv.AppendBool(b, s.Reachable)
	if s.Mode != "" {
		b = append(b, `,"mode":`...)
		b = appendString(b, string(s.Mode))
	}
	o := &d.Offsets
	b = append(b, `},"offsets":{"state_partition":`...)
	b = strconv.AppendInt(b, int64(o.StatePartition), 10)
	b = append(b, `,"state_offset":`...)
	b = strconv.AppendInt(b, o.StateOffset, 10)
	b = append(b, `,"source":{`...)
	var stack [8]int32 // a tenant's events are on one partition: no allocation
	parts := stack[:0]
	for p := range o.Source {
		parts = append(parts, p)
	}
	slices.Sort(parts)
	for i, p := range parts {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, '"')
		b = strconv.AppendInt(b, int64(p), 10)
		b = append(b, `":`...)
		b = strconv.AppendInt(b, o.Source[p], 10)
	}
	b = append(b, `},"assignments":[`...)
	for i, n := range o.Assignments {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(b, n, 10)
	}
	b = append(b, ']')
	if !o.StateUpdatedAt.IsZero() {
		b = append(b, `,"state_updated_at":"`...)
		b = o.StateUpdatedAt.UTC().AppendFormat(b, time.RFC3339Nano)
		b = append(b, '"')
	}
	return append(b, "}}"...)
}

// appendString writes s as a JSON string.
func appendString[T string | []byte](b []byte, s T) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c < 0x20:
			b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
}

// decisionHeaders are the response headers of a decision, in the order
// setDecisionHeaders fills them.
var decisionHeaders = [...]string{"X-Usage-Current", "X-Usage-Limit", "X-Usage-Remaining", "Ratelimit-Policy", "Ratelimit", "X-Usage-Warning"}

// setDecisionHeaders sets what quota.SetHeaders sets, the same text
// (TestDecisionHeadersAsQuota holds it to that), with two allocations
// instead of one or two per header: every value is a substring of one
// string and every []string a window of one array. It is on the path of
// every /v1/check and /v1/track.
func setDecisionHeaders(h http.Header, d *quota.Decision) {
	var stack [256]byte
	b := stack[:0]
	// Header i's value is b[starts[i]:ends[i]]; ends[i] == 0: not set
	// (no value is empty).
	var starts, ends [len(decisionHeaders)]int
	set := func(i int, b []byte, start int) { starts[i], ends[i] = start, len(b) }
	start := len(b)
	b = d.Usage.AppendText(b)
	set(0, b, start)
	if d.Unlimited {
		start = len(b)
		b = append(b, "-1"...)
		set(1, b, start)
		set(2, b, start) // the same "-1"
	} else {
		start = len(b)
		b = d.Limit.AppendText(b)
		set(1, b, start)
		start = len(b)
		b = d.Remaining.AppendText(b)
		set(2, b, start)
		reset := max(0, int64(time.Until(d.ResetAt)/time.Second))
		start = len(b)
		b = append(append(append(b, '"'), d.Meter...), '"')
		b = append(b, ";q="...)
		b = appendWholeFloor(b, d.Limit)
		b = append(b, ";w="...)
		b = strconv.AppendInt(b, int64(d.ResetAt.Sub(d.ResetAt.AddDate(0, -1, 0))/time.Second), 10)
		set(3, b, start)
		start = len(b)
		b = append(append(append(b, '"'), d.Meter...), '"')
		b = append(b, ";r="...)
		b = appendWholeFloor(b, d.Remaining)
		b = append(b, ";t="...)
		b = strconv.AppendInt(b, reset, 10)
		set(4, b, start)
	}
	if d.Warning > 0 {
		start = len(b)
		b = append(b, d.Level...)
		b = append(b, "; "...)
		b = strconv.AppendInt(b, d.Percentage/100, 10)
		b = append(b, "% of "...)
		b = append(b, d.Meter...)
		b = append(b, " used"...)
		set(5, b, start)
	}
	all := string(b)
	vals := make([]string, len(decisionHeaders))
	for i, k := range decisionHeaders {
		if ends[i] == 0 {
			continue
		}
		vals[i] = all[starts[i]:ends[i]]
		h[k] = vals[i : i+1 : i+1]
	}
}

// appendWholeFloor writes a in whole units, as quota's RateLimit fields
// (integers; 2^64-1 when a does not fit).
func appendWholeFloor(b []byte, a quota.Amount) []byte {
	if a.Cmp(quota.Nanos(math.MaxUint64)) > 0 {
		return strconv.AppendUint(b, math.MaxUint64, 10)
	}
	start := len(b)
	b = a.AppendText(b)
	if i := bytes.IndexByte(b[start:], '.'); i >= 0 {
		b = b[:start+i]
	}
	return b
}
