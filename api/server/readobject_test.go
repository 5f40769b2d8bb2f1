package server

import (
	"bytes"
	"encoding/json"
	"net/http/httptest"
	"testing"
)

// TestReadObjectOnGeneratedBodies runs the fuzz target's check on bodies
// built from nested values with strings, escapes and white space that go
// test would not otherwise try.
func TestReadObjectOnGeneratedBodies(t *testing.T) {
	vals := []string{`1`, `-0.5e-3`, `"a,b}"`, `"\\"`, `"\"}"`, `true`, `null`, `[]`, `{}`, `[1, "]", {"k": [2]}]`, `{"x": {"y": "}"}, "z": []}`, `"\u00e9"`}
	check := fuzzCheck(t)
	for i, v := range vals {
		for j, u := range vals {
			for _, sp := range []string{"", " ", "\n\t "} {
				body := "{" + sp + `"k` + string(rune('a'+i)) + `"` + sp + ":" + sp + v + sp + "," + sp + `"m\u0041` + string(rune('a'+j)) + `":` + u + sp + "}" + sp
				check([]byte(body))
			}
		}
	}
}

// FuzzReadObject: the hand-written splitter agrees with encoding/json on
// every valid object (members, in any order, and their values), and
// refuses whatever encoding/json refuses.
func FuzzReadObject(f *testing.F) {
	for _, s := range []string{`{}`, ` { "a" : 1 , "b":[1,{"c":"}"}] ,"d\u0041":"x\"y"} `, `{"a":{"b":{}}}`, `[1]`, `{"a":1}{}`,
		`{"a":-1.5e3,"b":true,"c":null,"d":"\\"}`, `{"a":1,"a":2}`, "{\"a\":\"\xff\"}", `{"a":1,}`, ``, `   `} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) { fuzzCheck(t)(body) })
}

func fuzzCheck(t *testing.T) func([]byte) {
	return func(body []byte) {
		t.Helper()
		r := httptest.NewRequest("POST", "/", bytes.NewReader(body))
		members, e := readObject(httptest.NewRecorder(), r, 1<<20, new(reqBuf))
		var want map[string]json.RawMessage
		werr := json.Unmarshal(body, &want)
		if werr != nil || want == nil {
			if e == nil && werr != nil {
				t.Fatalf("%q: accepted, encoding/json says %v", body, werr)
			}
			return
		}
		if e != nil {
			if e.Tag != "" || len(members) >= maxMembers || len(want) > maxMembers || e.Error == "the body has more than 16 members" {
				return // a duplicate member, or too many
			}
			t.Fatalf("%q: refused (%s), encoding/json took it", body, e.Error)
		}
		if len(members) != len(want) {
			t.Fatalf("%q: %d members, encoding/json %d", body, len(members), len(want))
		}
		for _, m := range members {
			var a, b bytes.Buffer
			_ = json.Compact(&a, m.raw)
			_ = json.Compact(&b, want[string(m.key)])
			if !bytes.Equal(a.Bytes(), b.Bytes()) {
				t.Fatalf("%q: member %q = %s, encoding/json %s", body, m.key, m.raw, want[string(m.key)])
			}
		}
	}
}
