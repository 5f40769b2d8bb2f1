package server

import (
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/usagemeter/usagemeter/schemas"
)

// BenchmarkParseCheck is the cost of reading and validating a /v1/check
// body with the contract's decoder (the part of a check this package adds
// to net/http and the decision).
func BenchmarkParseCheck(b *testing.B) {
	s := &Server{cfg: DefaultConfig(), validator: schemas.NewValidator(), meters: map[string]bool{"ai_generation": true}}
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
