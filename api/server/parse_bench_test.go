package server

import (
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/usagemeter/usagemeter/quota"
	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/schemas/plans"
)

// BenchmarkParseCheck is the cost of reading and validating a /v1/check
// body with the contract's decoder (the part of a check this package adds
// to net/http and the decision).
func BenchmarkParseCheck(b *testing.B) {
	p, err := plans.Parse([]byte("meters: { ai_generation: { aggregation: sum } }\nplans: { FREE: { meters: { ai_generation: { limit: 50 } } } }\ndefault_plan: FREE\n"))
	if err != nil {
		b.Fatal(err)
	}
	c, err := quota.New(quota.DefaultConfig(), p, zap.NewNop()) // not run: parse only asks it about the meter
	if err != nil {
		b.Fatal(err)
	}
	s := &Server{cfg: DefaultConfig(), validator: schemas.NewValidator(), cache: c}
	const body = `{"tenant_id":"tenant-05","feature_type":"ai_generation","quantity":"1"}`
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		r := httptest.NewRequest("POST", "/v1/check", strings.NewReader(body))
		if _, e := s.parse(nil, r, checkMembers, now); e != nil {
			b.Fatal(e.Error)
		}
	}
}
