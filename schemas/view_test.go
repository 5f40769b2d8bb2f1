package schemas

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/big"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shopspring/decimal"
)

// compareView reports how DecodeView's result differs from Decode's: the
// same error (every field of the *ValidationError), or the same values.
func compareView(data []byte, got *EventView, gerr error, want UsageEvent, werr error) string {
	if gerr != nil || werr != nil {
		if !reflect.DeepEqual(gerr, werr) {
			return "view: " + errString(gerr) + ", Decode: " + errString(werr)
		}
		return ""
	}
	switch {
	case got.ID != want.ID, got.TenantID != want.TenantID, got.UserID != want.UserID, got.FeatureType != want.FeatureType:
		return "identity differs"
	case !got.Quantity.Decimal().Equal(want.Quantity):
		return "quantity: view " + got.Quantity.String() + ", Decode " + want.Quantity.String()
	case got.Quantity.String() != want.Quantity.String():
		return "quantity text: view " + got.Quantity.String() + ", Decode " + want.Quantity.String()
	case !got.Timestamp.Equal(want.Timestamp) || got.Timestamp.Location() != want.Timestamp.Location():
		return "timestamp differs"
	case got.BillingPeriod != want.BillingPeriod || got.SchemaVersion != want.SchemaVersion:
		return "billing period or schema version differs"
	case len(got.Metadata) != len(want.Metadata):
		return fmt.Sprintf("metadata: view %d entries, Decode %d", len(got.Metadata), len(want.Metadata))
	}
	for _, m := range got.Metadata {
		if w, ok := want.Metadata[m.Key]; !ok || w != m.Value {
			return fmt.Sprintf("metadata %q: view %q, Decode %q", m.Key, m.Value, w)
		}
		if v, _ := got.Meta(m.Key); v != m.Value {
			return fmt.Sprintf("Meta(%q) = %q, want %q", m.Key, v, m.Value)
		}
	}
	if order := metadataOrder(data); !sameKeys(order, got.Metadata) {
		return fmt.Sprintf("metadata order: view %v, document %v", got.Metadata, order)
	}
	back := got.UsageEvent()
	if len(want.Metadata) == 0 {
		want.Metadata = nil // documented: nil for no entries
	}
	if !reflect.DeepEqual(back.Metadata, want.Metadata) || !back.Quantity.Equal(want.Quantity) || back.ID != want.ID ||
		back.TenantID != want.TenantID || back.UserID != want.UserID || back.FeatureType != want.FeatureType ||
		!back.Timestamp.Equal(want.Timestamp) || back.BillingPeriod != want.BillingPeriod || back.SchemaVersion != want.SchemaVersion {
		return fmt.Sprintf("UsageEvent(): %+v, Decode %+v", back, want)
	}
	return ""
}

func sameKeys(keys []string, entries []MetadataEntry) bool {
	if len(keys) != len(entries) {
		return false
	}
	for i := range keys {
		if keys[i] != entries[i].Key {
			return false
		}
	}
	return true
}

// metadataOrder lists the metadata keys of a valid event in document
// order, read with encoding/json's tokenizer.
func metadataOrder(data []byte) []string {
	dec := json.NewDecoder(bytes.NewReader(data))
	var keys []string
	if _, err := dec.Token(); err != nil { // '{'
		return nil
	}
	for dec.More() {
		k, err := dec.Token()
		if err != nil {
			return keys
		}
		if k != "metadata" {
			var skip json.RawMessage
			if dec.Decode(&skip) != nil {
				return keys
			}
			continue
		}
		if t, err := dec.Token(); err != nil || t != json.Delim('{') {
			continue // null
		}
		for dec.More() {
			mk, err := dec.Token()
			if err != nil {
				return keys
			}
			keys = append(keys, mk.(string))
			if _, err := dec.Token(); err != nil { // the value, a string
				return keys
			}
		}
		if _, err := dec.Token(); err != nil { // '}'
			return keys
		}
	}
	return keys
}

// viewCorpus is every input the Decode tests use: the shared vectors,
// tricky inputs, prefixes of a full event and the differential corpus.
func viewCorpus(tb testing.TB) [][]byte {
	return append(decodeSeeds(tb), eventCorpus()...)
}

func TestDecodeViewMatchesDecode(t *testing.T) {
	v := NewValidator(WithClock(func() time.Time { return fuzzNow }))
	aliased := NewValidator(WithClock(func() time.Time { return fuzzNow }), WithAliasedInput())
	var view EventView // reused across every input, as a service does
	n, valid := 0, 0
	for _, data := range viewCorpus(t) {
		werr := decodeBothWays(t, v, aliased, &view, data)
		n++
		if werr == nil {
			valid++
		}
	}
	t.Logf("%d inputs, %d valid", n, valid)
}

func FuzzDecodeViewMatchesDecode(f *testing.F) {
	for _, s := range viewCorpus(f) {
		f.Add(s)
	}
	v := NewValidator(WithClock(func() time.Time { return fuzzNow }))
	var view EventView
	aliased := NewValidator(WithClock(func() time.Time { return fuzzNow }), WithAliasedInput())
	f.Fuzz(func(t *testing.T, data []byte) {
		decodeBothWays(t, v, aliased, &view, data)
	})
}

func TestDecodeViewMetadataInDocumentOrder(t *testing.T) {
	v := NewValidator()
	var view EventView
	for _, n := range []int{0, 1, 3, 16, 17, 40, 64, 65} {
		var meta []string
		for i := range n {
			meta = append(meta, fmt.Sprintf(`"k%02d":"v%d"`, n-i, i)) // descending keys: not sorted order
		}
		data := []byte(`{"id":"e1","tenant_id":"acme","feature_type":"api_calls","quantity":"2.5","timestamp":"2026-11-20T10:00:00Z","metadata":{` +
			strings.Join(meta, ",") + `}}`)
		err := v.DecodeView(data, &view)
		if n > MaxMetadataEntries {
			if tagOf(err) != "invalid_field:metadata" {
				t.Fatalf("%d entries: got %v, want invalid_field:metadata", n, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%d entries: %v", n, err)
		}
		for i, m := range view.Metadata {
			if want := fmt.Sprintf("k%02d", n-i); m.Key != want || m.Value != fmt.Sprint("v", i) {
				t.Fatalf("%d entries: entry %d is %q=%q, want %q=v%d", n, i, m.Key, m.Value, want, i)
			}
		}
		// A duplicate after 16 entries is found by the set, before by the scan.
		dup := bytes.Replace(data, []byte(`}}`), []byte(`,"k01":"again"}}`), 1)
		if err := v.DecodeView(dup, &view); n > 0 && tagOf(err) != "duplicate_field:metadata" {
			t.Fatalf("%d entries and a duplicate: got %v", n, err)
		}
	}
}

func TestDecodeViewAllocatesOnlyTheCopy(t *testing.T) {
	raw := []byte(`{"id":"018f3a5e-7c1d-7b3e-9a2f-0c4b5d6e7f80","tenant_id":"acme","user_id":"user-42","feature_type":"api_calls","quantity":"1.25","timestamp":"2026-11-20T10:00:00.123456789Z","metadata":{"endpoint":"/v1/items","method":"GET"}}`)
	v := NewValidator()
	var view EventView
	if err := v.DecodeView(raw, &view); err != nil {
		t.Fatal(err)
	}
	if n := testing.AllocsPerRun(100, func() { _ = v.DecodeView(raw, &view) }); n > 1 {
		t.Fatalf("%v allocations per event, want 1 (the message's string copy)", n)
	}
	if view.Quantity != Fixed9Units(1_250_000_000) {
		t.Fatalf("quantity %v", view.Quantity)
	}
	aliased := NewValidator(WithAliasedInput())
	if n := testing.AllocsPerRun(100, func() { _ = aliased.DecodeView(raw, &view) }); n != 0 {
		t.Fatalf("aliased: %v allocations per event, want 0", n)
	}
}

func TestFixed9Bounds(t *testing.T) {
	maxDec := decimal.New(1, 29).Sub(decimal.New(1, -9)) // 10^29 - 10^-9
	if got := MaxFixed9().Decimal(); !got.Equal(maxDec) {
		t.Fatalf("MaxFixed9 = %s, want %s", got, maxDec)
	}
	if f, ok := Fixed9FromDecimal(maxDec); !ok || f != MaxFixed9() {
		t.Fatalf("FromDecimal(max) = %v, %v", f, ok)
	}
	for _, bad := range []string{"-0.000000001", "0.0000000001", "100000000000000000000000000000", "1e40"} {
		if f, ok := Fixed9FromDecimal(decimal.RequireFromString(bad)); ok {
			t.Errorf("FromDecimal(%s) = %v, want false", bad, f)
		}
	}
	for _, ok := range []string{"0", "-0", "1.000000000000", "12.5", "0.000000001", "123456789012345678.123456789", "5E+3", "99999999999999999999999999999.999999999"} {
		d := decimal.RequireFromString(ok)
		f, fits := Fixed9FromDecimal(d)
		if !fits || !f.Decimal().Equal(d) || f.String() != d.String() {
			t.Errorf("%s: FromDecimal = %v %v, back %s, String %q want %q", ok, f, fits, f.Decimal(), f.String(), d.String())
		}
	}
	if _, ok := MaxFixed9().Add(MaxFixed9()); !ok {
		t.Fatal("max+max must not carry out of 128 bits")
	}
	if _, ok := (Fixed9{Hi: 1 << 63}).Add(Fixed9{Hi: 1 << 63}); ok {
		t.Fatal("2^127+2^127 must carry")
	}
	if _, ok := Fixed9Units(1).Sub(Fixed9Units(2)); ok {
		t.Fatal("1-2 must borrow")
	}
}

func TestFixed9Arithmetic(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	mask := new(big.Int).Lsh(big.NewInt(1), 64)
	mask.Sub(mask, big.NewInt(1))
	toBig := func(f Fixed9) *big.Int {
		b := new(big.Int).SetUint64(f.Hi)
		return b.Lsh(b, 64).Or(b, new(big.Int).SetUint64(f.Lo))
	}
	for range 20000 {
		a := Fixed9{Hi: r.Uint64() >> (1 + r.IntN(64)), Lo: r.Uint64()}
		b := Fixed9{Hi: r.Uint64() >> (1 + r.IntN(64)), Lo: r.Uint64()}
		sum, ok := a.Add(b)
		want := new(big.Int).Add(toBig(a), toBig(b))
		if !ok || toBig(sum).Cmp(want) != 0 {
			t.Fatalf("%v + %v = %v", a, b, sum)
		}
		if got, want := a.Cmp(b), toBig(a).Cmp(toBig(b)); got != want {
			t.Fatalf("Cmp(%v, %v) = %d, want %d", a, b, got, want)
		}
		if a.Cmp(b) >= 0 {
			diff, ok := a.Sub(b)
			if !ok || toBig(diff).Cmp(new(big.Int).Sub(toBig(a), toBig(b))) != 0 {
				t.Fatalf("%v - %v = %v", a, b, diff)
			}
		}
		d := decimal.NewFromBigInt(toBig(a), -9)
		if a.String() != d.String() || !a.Decimal().Equal(d) {
			t.Fatalf("String %q, Decimal %s, want %s", a.String(), a.Decimal(), d)
		}
		if back, ok := Fixed9FromDecimal(d); (ok != (a.Cmp(MaxFixed9()) <= 0)) || ok && back != a {
			t.Fatalf("FromDecimal(%s) = %v %v", d, back, ok)
		}
		// Decimal128: two's complement little-endian, as ClickHouse stores it.
		raw := a.AppendDecimal128(nil)
		le := toBig(a).FillBytes(make([]byte, 16))
		for i := range 8 {
			le[i], le[15-i] = le[15-i], le[i]
		}
		if !bytes.Equal(raw, le) {
			t.Fatalf("AppendDecimal128(%v) = %x, want %x", a, raw, le)
		}
	}
}

func BenchmarkDecodeView(b *testing.B) {
	b.Run("copy", func(b *testing.B) { benchmarkDecodeView(b, NewValidator()) })
	b.Run("aliased", func(b *testing.B) { benchmarkDecodeView(b, NewValidator(WithAliasedInput())) })
}

func benchmarkDecodeView(b *testing.B, v *Validator) {
	raw := []byte(`{"id":"018f3a5e-7c1d-7b3e-9a2f-0c4b5d6e7f80","tenant_id":"acme","user_id":"user-42","feature_type":"api_calls","quantity":"1","timestamp":"2026-11-20T10:00:00.123456789Z","metadata":{"endpoint":"/v1/items","method":"GET"}}`)
	var view EventView
	b.ReportAllocs()
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		if err := v.DecodeView(raw, &view); err != nil {
			b.Fatal(err)
		}
	}
}

// decodeBothWays decodes data with Decode, then into view with a copy (v)
// and in place (aliased, on a clone of data), and fails unless both views
// match Decode's event or error; it returns Decode's error.
func decodeBothWays(t *testing.T, v, aliased *Validator, view *EventView, data []byte) error {
	t.Helper()
	want, werr := v.Decode(data)
	gerr := v.DecodeView(data, view)
	if msg := compareView(data, view, gerr, want, werr); msg != "" {
		t.Fatalf("%s\ninput: %q", msg, data)
	}
	gerr = aliased.DecodeView(slices.Clone(data), view)
	if msg := compareView(data, view, gerr, want, werr); msg != "" {
		t.Fatalf("aliased: %s\ninput: %q", msg, data)
	}
	return werr
}
