package schemas

import (
	"sort"
	"strconv"
	"time"
	"unicode/utf8"
)

// AppendJSON appends the event's wire form to dst. It writes the quantity as
// a JSON string (exact in every language) and the timestamp in RFC 3339 with
// nanoseconds, UTC. Metadata keys are sorted so equal events encode equally.
// It is what the SDK publishes; it avoids reflection because it runs once
// per published event.
func (e *UsageEvent) AppendJSON(dst []byte) []byte {
	dst = append(dst, `{"id":`...)
	dst = appendString(dst, e.ID)
	dst = append(dst, `,"tenant_id":`...)
	dst = appendString(dst, e.TenantID)
	if e.UserID != "" {
		dst = append(dst, `,"user_id":`...)
		dst = appendString(dst, e.UserID)
	}
	dst = append(dst, `,"feature_type":`...)
	dst = appendString(dst, e.FeatureType)
	dst = append(dst, `,"quantity":"`...)
	dst = append(dst, e.Quantity.String()...)
	dst = append(dst, `","timestamp":"`...)
	dst = e.Timestamp.UTC().AppendFormat(dst, time.RFC3339Nano)
	dst = append(dst, '"')
	if len(e.Metadata) > 0 {
		dst = append(dst, `,"metadata":{`...)
		keys := make([]string, 0, len(e.Metadata))
		for k := range e.Metadata {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for i, k := range keys {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendString(dst, k)
			dst = append(dst, ':')
			dst = appendString(dst, e.Metadata[k])
		}
		dst = append(dst, '}')
	}
	if e.BillingPeriod != "" {
		dst = append(dst, `,"billing_period":`...)
		dst = appendString(dst, e.BillingPeriod)
	}
	if e.SchemaVersion != 0 {
		dst = append(dst, `,"schema_version":`...)
		dst = strconv.AppendInt(dst, int64(e.SchemaVersion), 10)
	}
	return append(dst, '}')
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string. Invalid UTF-8 becomes U+FFFD, as
// encoding/json does.
func appendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
