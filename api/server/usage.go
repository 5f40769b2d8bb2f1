package server

import (
	"bytes"
	"errors"
	"net/http"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/usagemeter/usagemeter/api/usageread"
)

const (
	codeUsageUnavailable = "USAGE_READ_UNAVAILABLE"
	codeUsageFailed      = "USAGE_READ_FAILED"
)

// WithUsage enables GET /v1/usage/{tenant} and the usage pages, read from
// ClickHouse by rd (read-only). Without it those routes answer 503
// USAGE_READ_UNAVAILABLE: usage-api then only needs Kafka.
func (s *Server) WithUsage(rd *usageread.Reader) *Server {
	s.usage = rd
	return s
}

// usageRows answers GET /v1/usage/{tenant}: JSON, or CSV with format=csv
// (the next page's cursor then in X-Next-Cursor).
func (s *Server) usageRows(w http.ResponseWriter, r *http.Request) {
	const route = "usage"
	tenant := r.PathValue("tenant")
	p, ok := s.pageAuth(w, r, route) // the page's CSV links carry its cookie
	if !ok {
		return
	}
	if e := s.validTenant(tenant, time.Now()); e != nil {
		s.fail(w, route, e)
		return
	}
	if !s.actsFor(w, route, p, tenant) {
		return
	}
	if s.usage == nil {
		s.fail(w, route, &apiError{status: http.StatusServiceUnavailable, Code: codeUsageUnavailable,
			Error: "usage reads are not configured on this instance (clickhouse.addr)"})
		return
	}
	q := r.URL.Query()
	format := q.Get("format")
	if format != "" && format != "json" && format != "csv" {
		s.fail(w, route, badField(codeInvalidField, "format", "format must be json or csv, not %q", format))
		return
	}
	req, err := usageread.Parse(usageread.Params{Tenant: tenant, From: q.Get("from"), To: q.Get("to"),
		Granularity: q.Get("granularity"), GroupBy: q.Get("group_by"), Meter: q.Get("meter"),
		Limit: q.Get("limit"), Cursor: q.Get("cursor")}, time.Now())
	var fe *usageread.FieldError
	if errors.As(err, &fe) {
		s.fail(w, route, badField(codeInvalidField, fe.Field, "%s", fe.Reason))
		return
	}
	page, err := s.usage.Read(r.Context(), req)
	if err != nil {
		s.usageFailed.Inc()
		s.log.Warn("usage read failed", zap.String("tenant", tenant), zap.Error(err))
		s.fail(w, route, &apiError{status: http.StatusServiceUnavailable, Code: codeUsageFailed, Error: "usage could not be read now; retry"})
		return
	}
	if format == "csv" {
		var buf bytes.Buffer
		if err := usageread.WriteCSV(&buf, page.Rows, true); err != nil {
			s.fail(w, route, &apiError{status: http.StatusInternalServerError, Code: codeUsageFailed, Error: err.Error()})
			return
		}
		h := w.Header()
		h.Set("Content-Type", "text/csv; charset=utf-8")
		h.Set("Content-Disposition", `attachment; filename="usage-`+tenant+`.csv"`) // tenant ids are [A-Za-z0-9._:@-]
		if page.Next != "" {
			h.Set("X-Next-Cursor", page.Next)
		}
		h.Set("Content-Length", strconv.Itoa(buf.Len()))
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(buf.Bytes())
		s.answers.WithLabelValues(route, "200").Inc()
		return
	}
	writeJSON(w, http.StatusOK, usageAnswer{Tenant: tenant, From: req.From, To: req.To, Granularity: string(req.Granularity),
		GroupBy: req.GroupBy, Rows: page.Rows, Next: page.Next})
	s.answers.WithLabelValues(route, "200").Inc()
}

type usageAnswer struct {
	Tenant      string          `json:"tenant_id"`
	From        time.Time       `json:"from"`
	To          time.Time       `json:"to"`
	Granularity string          `json:"granularity"`
	GroupBy     string          `json:"group_by"`
	Rows        []usageread.Row `json:"rows"`
	Next        string          `json:"next_cursor,omitempty"`
}
