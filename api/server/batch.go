package server

import (
	"net/http"
	"strconv"
	"time"
)

// MaxBatch bounds the checks of one POST /v1/check/batch (the body's
// api.max_body_bytes bounds it too: 16 KiB holds about 200 checks).
const MaxBatch = 100

// checkBatch answers POST /v1/check/batch {"checks": [check, ...]}: each
// item is a /v1/check body without min_position and wait_ms, validated
// and decided as /v1/check does it, answered in order as {"results":
// [decision, ...]}. One call carries many checks, so the per-request cost
// of HTTP on this machine (the bare net/http floor, api/README.md) is paid
// once per batch. Any invalid item refuses the whole call (400 naming
// checks[i].<field>), as does an item for a tenant the key does not act
// for (403): no partial answers. Counts nothing, as /v1/check.
func (s *Server) checkBatch(w http.ResponseWriter, r *http.Request) {
	const route = "check_batch"
	p, ok := s.authenticate(w, r, route)
	if !ok {
		return
	}
	rb := s.getReqBuf()
	defer func() {
		clear(rb.batch) // drop the events' strings
		rb.batch = rb.batch[:0]
		s.reqBufs.Put(rb)
	}()
	members, e := readObject(w, r, s.cfg.MaxBodyBytes, rb)
	if e != nil {
		s.fail(w, route, e)
		return
	}
	var checks []byte
	for _, m := range members {
		if string(m.key) != "checks" {
			key := string(m.key)
			s.fail(w, route, badField(codeUnknownField, key, "unknown field %q (a batch is {\"checks\": [...]})", key))
			return
		}
		checks = m.raw
	}
	if checks == nil {
		s.fail(w, route, badField(codeMissingField, "checks", "checks is required: an array of 1-%d /v1/check bodies", MaxBatch))
		return
	}
	if checks[0] != '[' {
		s.fail(w, route, badField(codeInvalidField, "checks", "checks must be an array of 1-%d /v1/check bodies", MaxBatch))
		return
	}
	now := time.Now()
	reqs := rb.batch[:0]
	// The body is valid JSON (readObject checked it): the array splits by
	// hand as the object does.
	for i := skipSpace(checks, 1); checks[i] != ']'; i = skipSpace(checks, i) {
		if checks[i] == ',' {
			i = skipSpace(checks, i+1)
		}
		n := len(reqs)
		if n == MaxBatch {
			s.fail(w, route, badField(codeInvalidField, "checks", "a batch holds at most %d checks", MaxBatch))
			return
		}
		end := skipValue(checks, i)
		item := checks[i:end]
		i = end
		if item[0] != '{' {
			s.fail(w, route, itemError(n, badField(codeInvalidField, "", "must be a /v1/check body (a JSON object)")))
			return
		}
		ms, e := splitObject(item, &rb.items)
		if e != nil {
			s.fail(w, route, itemError(n, e))
			return
		}
		req, e := s.parseMembers(ms, checkMembers, false, now, rb)
		if e != nil {
			s.fail(w, route, itemError(n, e))
			return
		}
		if !p.actsFor(req.event.TenantID) {
			s.fail(w, route, &apiError{status: http.StatusForbidden, Code: codeForbidden, Field: "checks[" + strconv.Itoa(n) + "].tenant_id",
				Error: "this API key does not act for tenant " + strconv.Quote(req.event.TenantID)})
			return
		}
		reqs = append(reqs, req)
	}
	rb.batch = reqs
	if len(reqs) == 0 {
		s.fail(w, route, badField(codeInvalidField, "checks", "checks is empty: send 1-%d /v1/check bodies", MaxBatch))
		return
	}
	buf := s.bufs.Get().(*[]byte)
	b := append((*buf)[:0], `{"results":[`...)
	for i := range reqs {
		if i > 0 {
			b = append(b, ',')
		}
		q := &reqs[i]
		d := s.cache.Preview(r.Context(), q.event.TenantID, q.event.FeatureType, q.qty)
		b = appendDecision(b, &d)
	}
	b = append(b, "]}\n"...)
	s.writeAnswer(w, b)
	*buf = b
	s.bufs.Put(buf)
	s.batchOK.Inc()
	s.batchChecks.Add(float64(len(reqs)))
}

// itemError names item n in e: field checks[n].<field>, and the message.
func itemError(n int, e *apiError) *apiError {
	at := "checks[" + strconv.Itoa(n) + "]"
	if e.Field != "" {
		e.Field = at + "." + e.Field
	} else {
		e.Field = at
	}
	e.Error = at + ": " + e.Error
	return e
}
