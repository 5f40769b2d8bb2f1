package server

import (
	"net/http"
	"reflect"
	"testing"
	"time"

	"github.com/usagemeter/usagemeter/quota"
)

// TestDecisionHeadersAsQuota: setDecisionHeaders (usage-api's answers)
// writes exactly the headers quota.SetHeaders (the middleware's) writes.
func TestDecisionHeadersAsQuota(t *testing.T) {
	amount := func(s string) quota.Amount {
		a, err := quota.ParseAmount(s)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	// Half a second past a whole second, so that both calls see the same
	// whole seconds until the reset.
	reset := time.Now().Add(30*24*time.Hour + 500*time.Millisecond)
	cases := map[string]quota.Decision{
		"limited":             {Meter: "api_calls", Usage: amount("2031"), Limit: amount("1000000"), Remaining: amount("997969"), Percentage: 20, Level: "ok", ResetAt: reset},
		"fractions":           {Meter: "tokens", Usage: amount("12.5"), Pending: amount("0.5"), Limit: amount("50.000000001"), Remaining: amount("37.500000001"), Percentage: 2500, Level: "ok", ResetAt: reset},
		"warning":             {Meter: "ai_generation", Usage: amount("45"), Limit: amount("50"), Remaining: amount("5"), Percentage: 9000, Warning: 90, Level: "warning_90", ResetAt: reset},
		"at the limit":        {Meter: "ai_generation", Usage: amount("50"), Limit: amount("50"), Percentage: 10000, Warning: 100, Level: "at_limit", ResetAt: reset},
		"unlimited":           {Meter: "ai_generation", Usage: amount("123456.789"), Unlimited: true, Level: "ok", ResetAt: reset},
		"unlimited, warning?": {Meter: "x", Unlimited: true, Warning: 50, Percentage: 5000, Level: "warning_50", ResetAt: reset},
		"past 2^64 nanos":     {Meter: "storage", Usage: amount("100000000000"), Limit: amount("200000000000"), Remaining: amount("100000000000"), Percentage: 5000, Level: "ok", ResetAt: reset},
		"reset passed":        {Meter: "api_calls", Usage: amount("1"), Limit: amount("10"), Remaining: amount("9"), Percentage: 1000, Level: "ok", ResetAt: time.Now().Add(-time.Hour)},
		"anchored period":     {Meter: "api_calls", Usage: amount("0"), Limit: amount("10"), Remaining: amount("10"), Level: "ok", ResetAt: time.Date(2027, 3, 31, 7, 30, 0, 0, time.UTC)},
	}
	for name, d := range cases {
		want, got := http.Header{}, http.Header{}
		quota.SetHeaders(want, &d)
		setDecisionHeaders(got, &d)
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s:\n got %v\nwant %v", name, got, want)
		}
	}
}

// TestDecisionHeadersAllocs: the answer's headers cost two allocations.
func TestDecisionHeadersAllocs(t *testing.T) {
	d := quota.Decision{Meter: "ai_generation", Usage: quota.Units(45), Limit: quota.Units(50), Remaining: quota.Units(5),
		Percentage: 9000, Warning: 90, Level: "warning_90", ResetAt: time.Now().Add(time.Hour)}
	h := http.Header{}
	if n := testing.AllocsPerRun(100, func() { clear(h); setDecisionHeaders(h, &d) }); n > 2 {
		t.Fatalf("%.0f allocations, want 2", n)
	}
}
