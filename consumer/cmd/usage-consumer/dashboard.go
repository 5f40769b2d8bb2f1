package main

import (
	_ "embed"
	"encoding/json"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/usagemeter/usagemeter/consumer/chstore"
)

//go:embed dashboard.html
var dashboardHTML []byte

// registerDashboard serves an operator page with this month's exact totals
// per tenant and meter, read from the deduplicated ClickHouse view. It shows
// every tenant, so http.addr stays on loopback unless it is behind auth.
func registerDashboard(mux *http.ServeMux, store *chstore.Store, log *zap.Logger) {
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = w.Write(dashboardHTML)
	})
	mux.HandleFunc("GET /api/totals", func(w http.ResponseWriter, r *http.Request) {
		now := time.Now().UTC()
		q := chstore.TotalsQuery{
			Since:    time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC),
			TenantID: r.URL.Query().Get("tenant"),
			Limit:    500,
		}
		totals, err := store.Totals(r.Context(), q)
		if err != nil {
			log.Warn("dashboard query", zap.Error(err))
			http.Error(w, "ClickHouse query failed: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"period_start": q.Since, "totals": totals})
	})
}
