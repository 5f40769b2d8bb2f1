package schemas

import (
	"bytes"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/shopspring/decimal"
)

// sameAsAppendEvent encodes a copy of e with AppendEvent and another with a
// BatchEncoder made at the same clock reading, after prefix, and fails
// unless bytes, errors and the normalised events agree. It reports whether
// the encoder's fast path took the event.
func sameAsAppendEvent(t *testing.T, v *Validator, e UsageEvent) bool {
	t.Helper()
	prefix := []byte("prefix")
	slow, fast := e, e
	want, wantErr := v.AppendEvent(bytes.Clone(prefix), &slow)
	enc := v.BatchEncoder()
	_, usual := enc.appendUsual(bytes.Clone(prefix), &UsageEvent{ID: e.ID, TenantID: e.TenantID, UserID: e.UserID,
		FeatureType: e.FeatureType, Quantity: e.Quantity, Timestamp: e.Timestamp, Metadata: e.Metadata,
		BillingPeriod: e.BillingPeriod, SchemaVersion: e.SchemaVersion})
	got, gotErr := enc.Append(bytes.Clone(prefix), &fast)
	sameErr := reflect.DeepEqual(gotErr, wantErr)
	if len(e.Metadata) > 1 && !sameErr {
		// AppendEvent reports the first bad entry in map order, which
		// differs from one call to the next: compare the tag only.
		sameErr = tagOf(gotErr) == tagOf(wantErr)
	}
	if !bytes.Equal(got, want) || !sameErr || !reflect.DeepEqual(fast, slow) {
		t.Fatalf("event %+v\nAppendEvent:  %q, %v, %+v\nBatchEncoder: %q, %v, %+v (fast path %v)",
			e, want, wantErr, slow, got, gotErr, fast, usual)
	}
	if usual && wantErr != nil {
		t.Fatalf("fast path took an event AppendEvent refuses: %v", wantErr)
	}
	return usual
}

// TestBatchEncoderMatchesAppendEvent: random events, valid and not, in the
// forms the fast path handles and the ones it hands to AppendEvent.
func TestBatchEncoderMatchesAppendEvent(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	v := NewValidator(WithClock(func() time.Time { return now }))
	r := rand.New(rand.NewPCG(19, 7))
	texts := []string{"", "a", "é", "bob\n", "\x7f", "\xff", "a/b", "a\"b", `a\b`, "API", "api_calls", "org:acme@eu", "2026-11",
		"2026-12", "2026-13", "tenant-042", "user 7", "~!#$%&'()*+,-./:;<=>?@[]^_`{|}", "\t", "0192f4c5-7a3e-7b9c-8d2e-3f4a5b6c7d8e",
		strings.Repeat("x", 64), strings.Repeat("x", 65), strings.Repeat("x", 128), strings.Repeat("x", 129),
		strings.Repeat("x", 256), strings.Repeat("x", 257), strings.Repeat("x", 1024), strings.Repeat("x", 1025),
		strings.Repeat("é", 300), strings.Repeat("x", 33000)}
	times := []time.Time{now, now.Add(-time.Hour), now.Add(5 * time.Minute), now.Add(5*time.Minute + 1), now.Add(6 * time.Minute),
		time.Date(2026, 11, 30, 11, 59, 59, 123456789, time.UTC), time.Date(2026, 11, 30, 11, 59, 59, 120000000, time.UTC),
		time.Date(2026, 11, 30, 11, 59, 59, 1, time.UTC), time.Date(2026, 10, 31, 23, 59, 59, 999999999, time.UTC),
		time.Date(2026, 11, 1, 0, 30, 0, 0, time.FixedZone("x", 3600)), time.Date(1970, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(1969, 12, 31, 23, 59, 59, 0, time.UTC), time.Date(2105, 12, 31, 23, 59, 59, 0, time.UTC),
		time.Date(2106, 1, 1, 0, 0, 0, 0, time.UTC), time.Now(), {}}
	pick := func(xs []string) string { return xs[r.IntN(len(xs))] }
	var fast, slow int
	for range 20000 {
		e := UsageEvent{ID: "0192f4c5-7a3e-7b9c-8d2e-3f4a5b6c7d8e", TenantID: "tenant-007", FeatureType: "api_calls",
			Quantity: decimal.NewFromInt(1), Timestamp: now.Add(-time.Minute)}
		for range r.IntN(4) {
			switch r.IntN(10) {
			case 0:
				e.ID = pick(texts)
			case 1:
				e.TenantID = pick(texts)
			case 2:
				e.UserID = pick(texts)
			case 3:
				e.FeatureType = pick(texts)
			case 4, 5:
				e.Quantity = randomQuantity(r)
			case 6:
				e.Timestamp = times[r.IntN(len(times))]
			case 7:
				e.Metadata = map[string]string{}
				for range r.IntN(20) {
					if r.IntN(3) == 0 {
						e.Metadata[pick(texts)] = pick(texts)
					} else {
						e.Metadata[string(rune('a'+r.IntN(26)))+pick([]string{"", "x", "_id", "b"})] = pick([]string{"GET", "/v1/items", "", "claude-haiku"})
					}
				}
			case 8:
				e.BillingPeriod = pick(append(texts, "2026-10"))
			case 9:
				e.SchemaVersion = r.IntN(3)
			}
		}
		if sameAsAppendEvent(t, v, e) {
			fast++
		} else {
			slow++
		}
	}
	if fast < 5000 || slow < 5000 {
		t.Fatalf("fast path %d, slow path %d: the mutations miss one side", fast, slow)
	}
}

// randomQuantity: the forms Go code builds (NewFromInt, New with any
// exponent, parsed text, big coefficients), valid and not.
func randomQuantity(r *rand.Rand) decimal.Decimal {
	coefs := []int64{0, 1, 5, 10, 15, 100, 1500, 123456789, 999999999999999999, 1000000000000000000, -1, 1 << 62}
	c := coefs[r.IntN(len(coefs))]
	if r.IntN(2) == 0 {
		c = r.Int64N(1 << r.IntN(63))
	}
	switch r.IntN(5) {
	case 0:
		return decimal.NewFromInt(c)
	case 1:
		return decimal.New(c, int32(r.IntN(60)-35))
	case 2:
		return decimal.New(c, int32(r.IntN(2000)-1000))
	case 3:
		texts := []string{"0", "0.000", "1.500", "0.000000001", "0.0000000010", "0.0000000001", "2500.0", "25e2", "1e-9", "1e18",
			"999999999999999999.999999999", "1000000000000000000", "12345678901234567890123", "0.1234567890123456789"}
		return decimal.RequireFromString(texts[r.IntN(len(texts))])
	}
	return decimal.Decimal{}
}

func TestBatchEncoderQuantities(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for range 200000 {
		d := randomQuantity(r)
		got, ok := appendQuantity(nil, d)
		valid := checkQuantity(d) == nil
		if ok && (!valid || string(got) != d.String()) || !ok && valid && d.NumDigits() <= 18 {
			t.Fatalf("%s (coefficient %d, exponent %d): fast %q %v, valid %v", d, d.CoefficientInt64(), d.Exponent(), got, ok, valid)
		}
	}
}

// TestBatchEncoderVectors: every valid shared vector, as the consumer
// decodes it, encodes the same way on both paths.
func TestBatchEncoderVectors(t *testing.T) {
	vectors, err := TestVectors()
	if err != nil {
		t.Fatal(err)
	}
	v := NewValidator(WithClock(func() time.Time { return time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC) }))
	n := 0
	for _, vec := range vectors {
		e, err := v.Decode(vec.Bytes())
		if err != nil {
			continue
		}
		sameAsAppendEvent(t, v, e)
		e.BillingPeriod, e.SchemaVersion = "", 0 // as built in Go
		sameAsAppendEvent(t, v, e)
		n++
	}
	if n < 10 {
		t.Fatalf("only %d valid vectors", n)
	}
}

// TestBatchEncoderClock: the encoder reads the clock once, when made.
func TestBatchEncoderClock(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	v := NewValidator(WithClock(func() time.Time { return now }))
	enc := v.BatchEncoder()
	now = now.Add(time.Hour)
	e := UsageEvent{ID: "e1", TenantID: "t", FeatureType: "api_calls", Quantity: decimal.NewFromInt(1), Timestamp: now}
	if _, err := enc.Append(nil, &e); err != nil {
		t.Fatal(err) // the fast path refuses it, AppendEvent reads the clock again
	}
	if _, ok := enc.appendUsual(nil, &e); ok {
		t.Fatal("the fast path took a time past the clock it read plus the skew")
	}
}

func BenchmarkAppendEvent(b *testing.B) {
	v := NewValidator()
	e := UsageEvent{ID: "0192f4c5-7a3e-7b9c-8d2e-3f4a5b6c7d8e", TenantID: "tenant-042", UserID: "user-0294",
		FeatureType: "ai_generation", Quantity: decimal.NewFromInt(1), Timestamp: time.Now().UTC(),
		Metadata: map[string]string{"endpoint": "/v1/generate", "method": "POST", "model": "gpt-4o-mini"}}
	buf := make([]byte, 0, 1024)
	b.Run("AppendEvent", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			ev := e
			if _, err := v.AppendEvent(buf[:0], &ev); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("BatchEncoder", func(b *testing.B) {
		b.ReportAllocs()
		enc := v.BatchEncoder()
		for b.Loop() {
			ev := e
			if _, err := enc.Append(buf[:0], &ev); err != nil {
				b.Fatal(err)
			}
		}
	})
}
