package main

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

// TestRecordKeepsFlusherAndFinalStatus: behind the demo's status
// recorder the middleware can still flush (answer before tracking), and
// the status tallied is the final one: not a 1xx, not a superfluous
// WriteHeader after the answer started.
func TestRecordKeepsFlusherAndFinalStatus(t *testing.T) {
	for _, c := range []struct {
		name    string
		handler func(w http.ResponseWriter)
		want    int
	}{
		{"103 then 201", func(w http.ResponseWriter) { w.WriteHeader(http.StatusEarlyHints); w.WriteHeader(http.StatusCreated) }, 201},
		{"write then 500", func(w http.ResponseWriter) {
			_, _ = w.Write([]byte("x"))
			w.WriteHeader(http.StatusInternalServerError)
		}, 200},
		{"nothing", func(http.ResponseWriter) {}, 200},
	} {
		rec := httptest.NewRecorder()
		w, status := record(rec)
		c.handler(w)
		if err := http.NewResponseController(w).Flush(); err != nil {
			t.Errorf("%s: flush through the recorder: %v", c.name, err)
		}
		if got := status(); got != c.want {
			t.Errorf("%s: status %d, want %d", c.name, got, c.want)
		}
	}
}
