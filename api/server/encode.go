package server

import (
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
func appendString(b []byte, s string) []byte {
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
