package schemas

import (
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/shopspring/decimal"
)

func TestMetricTagIsBounded(t *testing.T) {
	v := NewValidator()
	for in, want := range map[string][2]string{
		`{"tenantId":"x"}`:                        {"unknown_field:tenantId", "unknown_field"},
		`{"` + strings.Repeat("z", 300) + `":1}`:  {"unknown_field:" + strings.Repeat("z", 300), "unknown_field"},
		`{"period":"x"}`:                          {"unknown_field:period", "unknown_field"},
		`{"id":"a","id":"b"}`:                     {"duplicate_field:id", "duplicate_field:id"},
		`{"id":"a","metadata":{"k":"1","k":"2"}}`: {"duplicate_field:metadata", "duplicate_field:metadata"},
		`{"tenant_id":1}`:                         {"invalid_type:tenant_id", "invalid_type:tenant_id"},
		`{"id":"a"}`:                              {"missing_field:tenant_id", "missing_field:tenant_id"},
		`{`:                                       {"malformed_json", "malformed_json"},
	} {
		_, err := v.Decode([]byte(in))
		var ve *ValidationError
		if !errors.As(err, &ve) || ve.Tag() != want[0] || ve.MetricTag() != want[1] {
			t.Errorf("%.40s: got %v (metric %q), want %s / %s", in, err, ve.MetricTag(), want[0], want[1])
		}
	}
	// Field names a publisher invents never reach a metric label.
	for data, want := range map[string]string{`{"x":1,"x":2}`: "duplicate_field", `{"a b":1}`: "unknown_field"} {
		_, err := DecodeQuotaState([]byte(data))
		var ve *ValidationError
		if !errors.As(err, &ve) || ve.MetricTag() != want {
			t.Errorf("%s: metric tag %q, want %q (%v)", data, ve.MetricTag(), want, err)
		}
	}
}

func TestNewID(t *testing.T) {
	a, b := NewID(), NewID()
	for _, id := range []string{a, b} {
		u, err := uuid.Parse(id)
		if err != nil || u.Version() != 7 || len(id) > MaxIDLen || !isToken(id, false) {
			t.Fatalf("NewID() = %q: not a UUIDv7 the contract accepts (%v)", id, err)
		}
	}
	if a == b {
		t.Fatal("two NewID calls returned the same id")
	}
}

// The SDK (AppendEvent on a Go value) and the consumer (Decode of the bytes)
// must give the same verdict and tag for any event built in Go.
func TestAppendEventAgreesWithDecode(t *testing.T) {
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	v := NewValidator(WithClock(func() time.Time { return now }))
	r := rand.New(rand.NewPCG(5, 7))
	texts := []string{"", "a", "é", "bob\n", "\x7f", "\xff", "a/b", "API", "api_calls", "org:acme@eu", "2026-11", "2026-12", "2026-13",
		strings.Repeat("é", 256), strings.Repeat("é", 257), strings.Repeat("😀", 1024), strings.Repeat("é", 1025), strings.Repeat("x", 30000)}
	quantities := []decimal.Decimal{decimal.Zero, decimal.NewFromInt(-1), decimal.New(1, -9), decimal.New(1, -10), decimal.New(15, -10),
		decimal.New(1, 18), decimal.RequireFromString("999999999999999999.999999999"), decimal.New(1, 17),
		decimal.RequireFromString("9999999999999999999"), decimal.New(1, 29), decimal.New(15000000000, -10)}
	times := []time.Time{now, now.Add(6 * time.Minute), time.Date(1969, 12, 31, 23, 0, 0, 0, time.UTC), {},
		time.Date(2026, 11, 1, 0, 30, 0, 0, time.FixedZone("x", 3600))}
	pick := func(xs []string) string { return xs[r.IntN(len(xs))] }
	var refused, accepted int
	for range 5000 {
		e := UsageEvent{ID: "e-1", TenantID: "acme", FeatureType: "api_calls", Quantity: decimal.NewFromInt(1), Timestamp: now.Add(-time.Hour)}
		for range 1 + r.IntN(3) {
			switch r.IntN(9) {
			case 0:
				e.ID = pick(texts)
			case 1:
				e.TenantID = pick(texts)
			case 2:
				e.UserID = pick(texts)
			case 3:
				e.FeatureType = pick(texts)
			case 4:
				e.Quantity = quantities[r.IntN(len(quantities))]
			case 5:
				e.Timestamp = times[r.IntN(len(times))]
			case 6:
				e.Metadata = map[string]string{pick(texts): pick(texts)}
				if r.IntN(4) == 0 {
					for i := range 40 {
						e.Metadata[strings.Repeat("k", i+1)] = strings.Repeat("v", 1000)
					}
				}
			case 7:
				e.BillingPeriod = pick(texts)
			case 8:
				e.SchemaVersion = r.IntN(3)
			}
		}
		raw := e.AppendJSON(nil) // what the consumer would read, before Validate normalises e
		_, decErr := v.Decode(raw)
		enc, sdkErr := v.AppendEvent(nil, &e)
		if e.Timestamp.IsZero() {
			continue // AppendJSON writes year 1 for a zero time; the SDK fills now first
		}
		if !eventUTF8(&e) {
			// No JSON text holds these bytes (AppendJSON would write U+FFFD):
			// the SDK refuses rather than send a changed value.
			if sdkErr == nil {
				t.Fatalf("SDK: %v for a string that is not UTF-8", sdkErr)
			}
			continue
		}
		if tagOf(sdkErr) != tagOf(decErr) {
			t.Fatalf("SDK: %v\nconsumer: %v\nevent %.300q", sdkErr, decErr, raw)
		}
		if sdkErr != nil {
			refused++
			if len(enc) != 0 {
				t.Fatalf("refused event appended %d bytes", len(enc))
			}
			continue
		}
		accepted++
		if got, err := v.Decode(enc); err != nil || got.ID != e.ID || !got.Quantity.Equal(e.Quantity) {
			t.Fatalf("Decode(AppendEvent) = %v", err)
		}
	}
	if accepted < 300 || refused < 1000 {
		t.Fatalf("%d accepted, %d refused: the mutations miss one side", accepted, refused)
	}
}

func eventUTF8(e *UsageEvent) bool {
	ok := utf8.ValidString(e.ID) && utf8.ValidString(e.TenantID) && utf8.ValidString(e.UserID) &&
		utf8.ValidString(e.FeatureType) && utf8.ValidString(e.BillingPeriod)
	for k, v := range e.Metadata {
		ok = ok && utf8.ValidString(k) && utf8.ValidString(v)
	}
	return ok
}
