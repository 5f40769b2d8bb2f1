// Package stripespec checks Stripe API response bodies against Stripe's
// OpenAPI spec, the copy embedded in stripe-mock v0.190.0 (the same spec
// stripe-mock validates requests with, pinned by billing-sync's go.mod to
// the version scripts/deps.sh installs). billing-sync's tests hook it into
// stripefake, so the fake cannot answer with a shape Stripe would not.
//
// The spec is OpenAPI 3.0.0. Its schema objects are JSON Schema draft 4
// (OpenAPI 3.0 is based on that family) plus `nullable`, which plain JSON
// Schema validators ignore. Load rewrites each schema reached from a
// response so that a JSON Schema validator (santhosh-tekuri/jsonschema,
// draft 4) reads it the OpenAPI way:
//
//   - `nullable: true` admits null (type [T, "null"], an extra null branch
//     in anyOf/oneOf, null added to an enum);
//   - an object schema with `properties` and no `additionalProperties` is
//     closed (`additionalProperties: false`): Stripe's spec lists every
//     field a resource returns, so a field the fake invents is an error,
//     not an extension.
//
// This package is for tests only: it embeds the 6.5 MB spec, so the
// service binary never imports it.
package stripespec

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/stripe/stripe-mock/embedded"
)

// specURL names the spec document inside the compiler (never fetched).
const specURL = "urn:stripe-mock:v0.190.0:spec3.json"

// Spec validates responses. Safe for concurrent use.
type Spec struct {
	ops []operation

	mu       sync.Mutex // guards compiler and compiled: the compiler is not concurrency safe
	compiler *jsonschema.Compiler
	compiled map[string]*jsonschema.Schema // by JSON pointer of a response schema
}

type operation struct {
	method  string
	path    string // the spec's template, e.g. /v1/customers/{customer}
	re      *regexp.Regexp
	params  int      // template parameters: fewer wins (/v1/customers/search over /v1/customers/{customer})
	codes   []string // response codes in the spec ("200", "default")
	pointer string   // JSON pointer of the operation
}

// Load parses stripe-mock's embedded spec and prepares it for validation.
func Load() (*Spec, error) {
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(embedded.OpenAPISpec))
	if err != nil {
		return nil, fmt.Errorf("parse stripe-mock's spec3.json: %w", err)
	}
	root, ok := doc.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("stripe-mock's spec3.json is not an object")
	}
	if v, _ := root["openapi"].(string); !strings.HasPrefix(v, "3.0") {
		return nil, fmt.Errorf("stripe-mock's spec is OpenAPI %q, this package reads 3.0", v)
	}
	s := &Spec{compiled: map[string]*jsonschema.Schema{}}
	// Every component schema and every response schema is rewritten once,
	// before compiling: $refs from responses lead into components.
	comps, _ := root["components"].(map[string]any)
	schemas, _ := comps["schemas"].(map[string]any)
	for _, sch := range schemas {
		openAPIToJSONSchema(sch)
	}
	paths, _ := root["paths"].(map[string]any)
	for p, item := range paths {
		methods, _ := item.(map[string]any)
		for m, opv := range methods {
			op, _ := opv.(map[string]any)
			responses, _ := op["responses"].(map[string]any)
			if responses == nil {
				continue
			}
			o := operation{method: strings.ToUpper(m), path: p, pointer: "/paths/" + escape(p) + "/" + m}
			for code, rv := range responses {
				r, _ := rv.(map[string]any)
				content, _ := r["content"].(map[string]any)
				media, _ := content["application/json"].(map[string]any)
				if media["schema"] == nil {
					continue
				}
				openAPIToJSONSchema(media["schema"])
				o.codes = append(o.codes, code)
			}
			o.re, o.params = template(p)
			s.ops = append(s.ops, o)
		}
	}
	sort.Slice(s.ops, func(i, j int) bool { return s.ops[i].params < s.ops[j].params })
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft4)
	if err := c.AddResource(specURL, root); err != nil {
		return nil, fmt.Errorf("add stripe-mock's spec: %w", err)
	}
	s.compiler = c
	return s, nil
}

// Operations lists "METHOD /template" of every operation with responses
// (to check that the operations a test relies on exist in the spec).
func (s *Spec) Operations() []string {
	out := make([]string, 0, len(s.ops))
	for _, o := range s.ops {
		out = append(out, o.method+" "+o.path)
	}
	return out
}

// CheckResponse validates body, the answer with status to method on path
// (the request path, e.g. /v1/billing/meters/mtr_1/event_summaries),
// against the spec's response schema for that operation and status (the
// "default" response, Stripe's error object, for statuses it does not
// list). A path or status the spec does not have is an error too.
func (s *Spec) CheckResponse(method, path string, status int, body []byte) error {
	op, ok := s.find(method, path)
	if !ok {
		return fmt.Errorf("%s %s: no such operation in Stripe's spec", method, path)
	}
	code := strconv.Itoa(status)
	if !contains(op.codes, code) {
		code = "default"
		if !contains(op.codes, code) {
			return fmt.Errorf("%s %s: Stripe's spec has no %d (or default) response", method, op.path, status)
		}
	}
	sch, err := s.schema(op.pointer + "/responses/" + code + "/content/application~1json/schema")
	if err != nil {
		return fmt.Errorf("%s %s %s: %w", method, op.path, code, err)
	}
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("%s %s %d: body is not JSON: %w", method, op.path, status, err)
	}
	if err := sch.Validate(v); err != nil {
		return fmt.Errorf("%s %s %d: response violates Stripe's spec: %w", method, op.path, status, err)
	}
	return nil
}

// CheckObject validates an object against a component schema by name
// (e.g. "billing.meter_event").
func (s *Spec) CheckObject(component string, obj any) error {
	sch, err := s.schema("/components/schemas/" + escape(component))
	if err != nil {
		return err
	}
	b, err := json.Marshal(obj)
	if err != nil {
		return fmt.Errorf("encode %s: %w", component, err)
	}
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
	if err != nil {
		return fmt.Errorf("decode %s: %w", component, err)
	}
	if err := sch.Validate(v); err != nil {
		return fmt.Errorf("%s violates Stripe's spec: %w", component, err)
	}
	return nil
}

func (s *Spec) find(method, path string) (operation, bool) {
	for _, o := range s.ops { // fewest template parameters first
		if o.method == method && o.re.MatchString(path) {
			return o, true
		}
	}
	return operation{}, false
}

func (s *Spec) schema(pointer string) (*jsonschema.Schema, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sch, ok := s.compiled[pointer]; ok {
		return sch, nil
	}
	sch, err := s.compiler.Compile(specURL + "#" + pointer)
	if err != nil {
		return nil, fmt.Errorf("compile %s: %w", pointer, err)
	}
	s.compiled[pointer] = sch
	return sch, nil
}

// template turns /v1/customers/{customer} into a regexp and counts its
// parameters.
func template(p string) (*regexp.Regexp, int) {
	var b strings.Builder
	n := 0
	b.WriteString("^")
	for _, seg := range strings.Split(p, "/") {
		if seg == "" {
			continue
		}
		b.WriteString("/")
		if strings.HasPrefix(seg, "{") && strings.HasSuffix(seg, "}") {
			b.WriteString("[^/]+")
			n++
			continue
		}
		b.WriteString(regexp.QuoteMeta(seg))
	}
	b.WriteString("$")
	return regexp.MustCompile(b.String()), n
}

// escape is a JSON pointer token (RFC 6901).
func escape(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "~", "~0"), "/", "~1")
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

// openAPIToJSONSchema rewrites one OpenAPI 3.0 schema object (and the
// schemas inside it) in place, as described in the package comment. It
// walks only schema positions, so a property that happens to be named
// "nullable" or "properties" is never mistaken for a keyword.
func openAPIToJSONSchema(v any) {
	sch, ok := v.(map[string]any)
	if !ok {
		return
	}
	if props, ok := sch["properties"].(map[string]any); ok {
		for _, p := range props {
			openAPIToJSONSchema(p)
		}
		if _, set := sch["additionalProperties"]; !set {
			sch["additionalProperties"] = false
		}
	}
	if ap, ok := sch["additionalProperties"].(map[string]any); ok {
		openAPIToJSONSchema(ap)
	}
	openAPIToJSONSchema(sch["items"])
	for _, k := range []string{"anyOf", "oneOf", "allOf"} {
		if list, ok := sch[k].([]any); ok {
			for _, x := range list {
				openAPIToJSONSchema(x)
			}
		}
	}
	if sch["nullable"] != true {
		return
	}
	delete(sch, "nullable")
	null := map[string]any{"type": "null"}
	switch {
	case sch["anyOf"] != nil:
		sch["anyOf"] = append(sch["anyOf"].([]any), null)
	case sch["oneOf"] != nil:
		sch["oneOf"] = append(sch["oneOf"].([]any), null)
	case sch["$ref"] != nil:
		// Draft 4 ignores keywords beside $ref: move the reference into a
		// branch of its own.
		sch["anyOf"] = []any{map[string]any{"$ref": sch["$ref"]}, null}
		delete(sch, "$ref")
	default:
		if t, ok := sch["type"].(string); ok {
			sch["type"] = []any{t, "null"}
		}
		if e, ok := sch["enum"].([]any); ok {
			sch["enum"] = append(e, nil)
		}
	}
}
