package usageread

import (
	"strings"
	"testing"
	"time"
)

func TestParseRefusesNamingTheField(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		p     Params
		field string
	}{
		{Params{Tenant: "a b"}, "tenant"},
		{Params{Tenant: "t' OR '1'='1"}, "tenant"},
		{Params{Tenant: ""}, "tenant"},
		{Params{Tenant: "t", Granularity: "week"}, "granularity"},
		{Params{Tenant: "t", Granularity: "day; DROP TABLE usage_1d"}, "granularity"},
		{Params{Tenant: "t", GroupBy: "feature_type"}, "group_by"},
		{Params{Tenant: "t", GroupBy: "subject) FROM system.tables --"}, "group_by"},
		{Params{Tenant: "t", GroupBy: "metadata."}, "group_by"},
		{Params{Tenant: "t", GroupBy: "metadata.a\x00b"}, "group_by"},
		{Params{Tenant: "t", GroupBy: "metadata." + strings.Repeat("k", 129)}, "group_by"},
		{Params{Tenant: "t", GroupBy: "metadata.model", Granularity: "period"}, "group_by"},
		{Params{Tenant: "t", Meter: "Api Calls"}, "meter"},
		{Params{Tenant: "t", From: "yesterday"}, "from"},
		{Params{Tenant: "t", To: "2026-11-30"}, "to"},
		{Params{Tenant: "t", From: "2026-11-30T00:00:00Z", To: "2026-11-29T00:00:00Z"}, "from"},
		{Params{Tenant: "t", Granularity: "minute", From: "2026-11-28T00:00:00Z", To: "2026-11-30T00:00:00Z"}, "to"},
		{Params{Tenant: "t", GroupBy: "metadata.m", From: "2026-09-01T00:00:00Z", To: "2026-11-30T00:00:00Z"}, "to"},
		{Params{Tenant: "t", Limit: "0"}, "limit"},
		{Params{Tenant: "t", Limit: "10001"}, "limit"},
		{Params{Tenant: "t", Limit: "1e3"}, "limit"},
		{Params{Tenant: "t", Cursor: "100"}, "cursor"},
		{Params{Tenant: "t", Cursor: "o-1"}, "cursor"},
		{Params{Tenant: "t", Cursor: "o99999999"}, "cursor"},
	} {
		_, err := Parse(c.p, now)
		fe, ok := err.(*FieldError)
		if !ok || fe.Field != c.field || fe.Reason == "" {
			t.Errorf("%+v: got %v, want a refusal of %s", c.p, err, c.field)
		}
	}
	r, err := Parse(Params{Tenant: "t", GroupBy: "metadata.k'); DROP TABLE x; --", Limit: "5", Cursor: EncodeCursor(10)}, now)
	if err != nil || r.MetadataKey != "k'); DROP TABLE x; --" || r.Limit != 5 || r.Offset != 10 || !r.To.Equal(now) ||
		!r.From.Equal(now.Add(-24*time.Hour)) || r.Granularity != Day {
		t.Fatalf("valid hostile-looking key: %+v, %v", r, err)
	}
}

// The SQL text never contains what the caller sent: every value is a
// bound argument.
func TestQueriesBindEveryValue(t *testing.T) {
	r := Request{Tenant: "t-x", MetadataKey: "KEYXYZ", Meter: "m.zzz", GroupBy: "metadata.KEYXYZ", Granularity: Hour, Limit: 10}
	for _, q := range []interface{ toSQL() (string, []any) }{
		metadataQuery{Req: r, Exclude: []string{"g1"}, Counts: []string{"c1"}},
		windowQuery{Req: r, Exclude: []string{"g1"}},
	} {
		sql, args := q.toSQL()
		for _, v := range []string{"t-x", "KEYXYZ", "m.zzz", "g1", "c1"} {
			if strings.Contains(sql, v) {
				t.Errorf("%T splices %q into %s", q, v, sql)
			}
		}
		if strings.Count(sql, "?") != len(args) {
			t.Errorf("%T: %d placeholders, %d args", q, strings.Count(sql, "?"), len(args))
		}
	}
}
