package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
)

// TestFloorWritesTheAnswer: the floor answers any body with the captured
// status, headers and body, byte for byte.
func TestFloorWritesTheAnswer(t *testing.T) {
	a := answer{Status: 200, Header: http.Header{"Content-Type": {"application/json"}, "X-Usage-Current": {"7"}}, Body: []byte(`{"allowed":true}` + "\n")}
	srv := httptest.NewServer(floorHandler(a))
	defer srv.Close()
	res, err := http.Post(srv.URL+"/v1/check", "application/json", strings.NewReader(`{"tenant_id":"t"}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 200 || string(body) != string(a.Body) || res.Header.Get("X-Usage-Current") != "7" ||
		res.Header.Get("Content-Type") != "application/json" || res.ContentLength != int64(len(a.Body)) {
		t.Fatalf("%d %v %q", res.StatusCode, res.Header, body)
	}
}

func TestMedianAndNearest(t *testing.T) {
	if m := median([]float64{3, 1, 2}); m != 2 {
		t.Fatalf("median of 3: %v", m)
	}
	if m := median([]float64{4, 1, 3, 2}); m != 2.5 {
		t.Fatalf("median of 4: %v", m)
	}
	floor := []record{{Time: "2026-11-30T03:00:00Z", P99ms: 1}, {Time: "2026-11-30T03:00:30Z", P99ms: 2}}
	if f, ok := nearest(record{Time: "2026-11-30T03:00:20Z"}, floor); !ok || f.P99ms != 2 {
		t.Fatalf("nearest: %+v %v", f, ok)
	}
	if _, ok := nearest(record{Time: "2026-11-30T03:00:20Z"}, nil); ok {
		t.Fatal("nearest of none")
	}
}

func TestProcCPU(t *testing.T) {
	if _, err := procCPU(os.Getpid()); err != nil {
		t.Fatal(err)
	}
	if _, err := procCPU(0); err == nil {
		t.Fatal("pid 0 accepted")
	}
}
