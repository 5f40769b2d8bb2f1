package dlq

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
)

// Transform repairs a letter's value before it is replayed: fields renamed
// (tenant -> tenant_id, or metadata.tokens_used -> metadata.tokens) and
// string fields set. A path is a top-level field or metadata.<key>. An
// empty Transform replays the original bytes unchanged.
type Transform struct {
	Rename [][2]string // old, new
	Set    [][2]string // field, string value
}

// ParseTransform reads --rename old=new and --set field=value flags.
func ParseTransform(renames, sets []string) (Transform, error) {
	var t Transform
	for _, r := range renames {
		from, to, ok := strings.Cut(r, "=")
		if !ok || !validPath(from) || !validPath(to) {
			return Transform{}, fmt.Errorf("rename: %q is not old=new (a field, or metadata.<key>)", r)
		}
		t.Rename = append(t.Rename, [2]string{from, to})
	}
	for _, s := range sets {
		field, value, ok := strings.Cut(s, "=")
		if !ok || !validPath(field) {
			return Transform{}, fmt.Errorf("set: %q is not field=value (a field, or metadata.<key>)", s)
		}
		t.Set = append(t.Set, [2]string{field, value})
	}
	return t, nil
}

func validPath(p string) bool {
	top, sub, nested := strings.Cut(p, ".")
	if top == "" || (nested && (top != "metadata" || sub == "" || strings.Contains(sub, "."))) {
		return false
	}
	return true
}

// Empty reports whether t changes nothing.
func (t Transform) Empty() bool { return len(t.Rename) == 0 && len(t.Set) == 0 }

// String is how the replay record names the transform.
func (t Transform) String() string {
	var parts []string
	for _, r := range t.Rename {
		parts = append(parts, "rename "+r[0]+"="+r[1])
	}
	for _, s := range t.Set {
		parts = append(parts, "set "+s[0]+"="+s[1])
	}
	return strings.Join(parts, "; ")
}

// Apply returns the repaired value. The value must be a JSON object; a
// rename of a field that is absent changes nothing (the letters of one
// selection need not all have the fault), a rename onto a field that is
// present is an error (it would silently drop one of them).
func (t Transform) Apply(value []byte) ([]byte, error) {
	if t.Empty() {
		return value, nil
	}
	var obj map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(value))
	dec.UseNumber()
	if err := dec.Decode(&obj); err != nil || obj == nil {
		return nil, fmt.Errorf("transform: the value is not a JSON object")
	}
	var meta map[string]json.RawMessage
	if raw, ok := obj["metadata"]; ok && string(raw) != "null" {
		if err := json.Unmarshal(raw, &meta); err != nil {
			return nil, fmt.Errorf("transform: metadata is not an object")
		}
	}
	get := func(p string) (map[string]json.RawMessage, string) {
		if k, ok := strings.CutPrefix(p, "metadata."); ok {
			if meta == nil {
				meta = map[string]json.RawMessage{}
			}
			return meta, k
		}
		return obj, p
	}
	for _, r := range t.Rename {
		src, sk := get(r[0])
		v, ok := src[sk]
		if !ok {
			continue
		}
		dst, dk := get(r[1])
		if _, taken := dst[dk]; taken {
			return nil, fmt.Errorf("transform: rename %s=%s: %s is already set", r[0], r[1], r[1])
		}
		delete(src, sk)
		dst[dk] = v
	}
	for _, s := range t.Set {
		dst, dk := get(s[0])
		b, _ := json.Marshal(s[1])
		dst[dk] = b
	}
	if meta != nil {
		b, err := json.Marshal(meta)
		if err != nil {
			return nil, fmt.Errorf("transform: encode metadata: %w", err)
		}
		obj["metadata"] = b
	}
	out, err := json.Marshal(obj)
	if err != nil {
		return nil, fmt.Errorf("transform: encode: %w", err)
	}
	return out, nil
}
