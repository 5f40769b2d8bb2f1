package main

import (
	_ "embed"
	"encoding/json"
	"net/http"
	"net/http/pprof"

	"github.com/usagemeter/usagemeter/aggregator/service"
)

//go:embed status.html
var statusHTML []byte

// registerStatus serves the operator's quota page: the last published state
// of every open quota (every tenant, so keep http.addr on loopback).
//
// It also serves Go's profiles (/debug/pprof/: heap, CPU) on the same
// loopback address: the aggregator's memory depends on tenants x meters x
// windows, and a heap profile of the running process is what says where it
// goes.
func registerStatus(mux *http.ServeMux, svc *service.Service) {
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = w.Write(statusHTML)
	})
	mux.HandleFunc("GET /api/quotas", func(w http.ResponseWriter, r *http.Request) {
		tenant := r.URL.Query().Get("tenant")
		all := svc.QuotaStates()
		out := all[:0]
		for _, q := range all {
			if tenant == "" || q.TenantID == tenant {
				out = append(out, q)
			}
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		_ = enc.Encode(out)
	})
}
