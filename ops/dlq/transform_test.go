package dlq

import (
	"strings"
	"testing"
)

func TestTransform(t *testing.T) {
	for _, c := range []struct {
		renames, sets []string
		in, want, err string
	}{
		{nil, nil, `{"b":1, "a":2}`, `{"b":1, "a":2}`, ""}, // no transform: the original bytes
		{[]string{"tenant=tenant_id"}, nil, `{"tenant":"acme","quantity":"1.50"}`, `{"quantity":"1.50","tenant_id":"acme"}`, ""},
		{[]string{"tenant=tenant_id"}, nil, `{"tenant_id":"acme"}`, `{"tenant_id":"acme"}`, ""}, // nothing to rename
		{[]string{"metadata.tokens_used=metadata.tokens"}, nil, `{"metadata":{"tokens_used":"12","model":"m"}}`,
			`{"metadata":{"model":"m","tokens":"12"}}`, ""},
		{[]string{"user=metadata.user"}, nil, `{"user":"u1"}`, `{"metadata":{"user":"u1"}}`, ""},
		{nil, []string{"feature_type=api_calls", "metadata.source=replay"}, `{"feature_type":"apicalls"}`,
			`{"feature_type":"api_calls","metadata":{"source":"replay"}}`, ""},
		{[]string{"tenant=tenant_id"}, nil, `{"tenant":"a","tenant_id":"b"}`, "", "tenant_id is already set"},
		{[]string{"a=b"}, nil, `["not an object"]`, "", "not a JSON object"},
		{[]string{"a=b"}, nil, `{"metadata":"x","a":1}`, "", "metadata is not an object"},
	} {
		tr, err := ParseTransform(c.renames, c.sets)
		if err != nil {
			t.Fatal(err)
		}
		got, err := tr.Apply([]byte(c.in))
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%v %v on %s: %v, want %q", c.renames, c.sets, c.in, err, c.err)
			}
			continue
		}
		if err != nil || string(got) != c.want {
			t.Errorf("%v %v on %s: %s (%v), want %s", c.renames, c.sets, c.in, got, err, c.want)
		}
	}
	for _, bad := range [][2][]string{{{"tenant"}, nil}, {{"a.b=c"}, nil}, {{"metadata.=x"}, nil}, {nil, {"novalue"}}, {{"=x"}, nil}} {
		if _, err := ParseTransform(bad[0], bad[1]); err == nil {
			t.Errorf("ParseTransform(%v, %v): no error", bad[0], bad[1])
		}
	}
}

func TestParseID(t *testing.T) {
	store, topic, p, off, err := ParseID("kafka:usage.events.dlq/3/42")
	if err != nil || store != StoreKafka || topic != "usage.events.dlq" || p != 3 || off != 42 {
		t.Fatalf("%s %s %d %d %v", store, topic, p, off, err)
	}
	for _, bad := range []string{"usage.events.dlq/3/42", "s3:t/1/2", "kafka:t/x/2", "kafka:t/1/-2", "kafka:/1", "kafka:/1/2"} {
		if _, _, _, _, err := ParseID(bad); err == nil {
			t.Errorf("ParseID(%q): no error", bad)
		}
	}
}
