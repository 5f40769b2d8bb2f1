package webhook_test

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/usagemeter/usagemeter/alerts/webhook"
	"github.com/usagemeter/usagemeter/schemas"
)

// A receiver verifies the raw body before it parses it, refuses anything
// signed outside the replay window, and deduplicates by Usage-Alert-Id
// (delivery is at least once).
func Example_receiver() {
	secret := []byte("whsec_example")
	seen := map[string]bool{} // a real receiver keeps this in its database
	receiver := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err != nil {
			http.Error(w, "cannot read body", http.StatusBadRequest)
			return
		}
		if err := webhook.VerifyRequest(secret, r, body, time.Now(), webhook.DefaultTolerance); err != nil {
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
		alert, err := schemas.DecodeUsageAlert(body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if !seen[alert.AlertID] {
			seen[alert.AlertID] = true
			fmt.Printf("%s crossed %s %s%% of %s\n", alert.TenantID, alert.FeatureType, alert.Threshold, alert.Limit)
		}
		w.WriteHeader(http.StatusNoContent)
	})

	// What usage-alerts sends.
	body := []byte(`{"alert_id":"` + schemas.AlertID("acme", "ai_generation", "2026-11", "percent", mustDec("90")) +
		`","tenant_id":"acme","feature_type":"ai_generation","period":"2026-11","plan":"FREE","kind":"percent",` +
		`"threshold":"90","usage":"45","limit":"50","percentage":"90","level":"warning_90",` +
		`"period_start":"2026-11-01T00:00:00Z","period_end":"2026-12-01T00:00:00Z","source_offsets":{"2":44},` +
		`"detected_at":"2026-11-20T10:00:00Z","schema_version":1}`)
	send := func(body []byte, signedAt time.Time, signedBody []byte) int {
		req := httptest.NewRequest(http.MethodPost, "/hooks/usage", bytes.NewReader(body))
		webhook.SetHeaders(req.Header, secret, "id", signedAt, signedBody)
		rec := httptest.NewRecorder()
		receiver.ServeHTTP(rec, req)
		return rec.Code
	}
	fmt.Println("signed:", send(body, time.Now(), body))
	fmt.Println("again:", send(body, time.Now(), body))
	tampered := bytes.Replace(body, []byte(`"usage":"45"`), []byte(`"usage":"4"`), 1)
	fmt.Println("tampered:", send(tampered, time.Now(), body))
	fmt.Println("replayed an hour later:", send(body, time.Now().Add(-time.Hour), body))
	// Output:
	// acme crossed ai_generation 90% of 50
	// signed: 204
	// again: 204
	// tampered: 401
	// replayed an hour later: 401
}
