package server_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// TestCheckBodiesOfEveryLength: the pooled body read (known length) and
// the MaxBytesReader one (chunked, unknown length) answer alike: a valid
// body is 200 with the Content-Length net/http computes, an oversized one
// is 413 whether its length is announced or not.
func TestCheckBodiesOfEveryLength(t *testing.T) {
	e := newEnv(t)
	const body = `{"tenant_id":"tenant-a","feature_type":"ai_generation","quantity":"1"}`
	big := `{"tenant_id":"tenant-a","feature_type":"ai_generation","quantity":"1"` + strings.Repeat(" ", 2000) + `}`
	for _, c := range []struct {
		name    string
		body    string
		chunked bool
		status  int
	}{
		{"known length", body, false, 200},
		{"chunked", body, true, 200},
		{"oversized, known length", big, false, 413},
		{"oversized, chunked", big, true, 413},
	} {
		var rd io.Reader = strings.NewReader(c.body)
		if c.chunked {
			rd = io.MultiReader(rd) // hides the length: sent chunked
		}
		req, _ := http.NewRequest("POST", e.srv.URL+"/v1/check", rd)
		req.Header.Set("Authorization", "Bearer "+keyA)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != c.status {
			t.Fatalf("%s: %d %s", c.name, res.StatusCode, raw)
		}
		if c.status == 200 {
			if cl := res.Header.Get("Content-Length"); cl != strconv.Itoa(len(raw)) || res.Header.Get("Content-Type") != "application/json" {
				t.Fatalf("%s: Content-Length %q, Content-Type %q for %d bytes", c.name, cl, res.Header.Get("Content-Type"), len(raw))
			}
			if res.Header.Get("X-Usage-Limit") != "50" || res.Header.Get("Ratelimit-Policy") == "" {
				t.Fatalf("%s: headers %v", c.name, res.Header)
			}
		}
	}
}

// TestConcurrentChecksKeepTheirOwnBodies: request buffers are pooled, so
// many checks at once, each for its own tenant and quantity, must each be
// answered about their own body.
func TestConcurrentChecksKeepTheirOwnBodies(t *testing.T) {
	e := newEnv(t)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Go(func() {
			for i := range 50 {
				tenant := fmt.Sprintf("t-%d-%d", g, i)
				// Bodies of different lengths, so a stale byte would show.
				body := fmt.Sprintf(`{"tenant_id":%q,"feature_type":"ai_generation","quantity":"%d%s"}`, tenant, i+1, strings.Repeat("0", i%5))
				req, _ := http.NewRequest("POST", e.srv.URL+"/v1/check", strings.NewReader(body))
				req.Header.Set("Authorization", "Bearer "+keyAdmin)
				res, err := http.DefaultClient.Do(req)
				if err != nil {
					errs <- err
					return
				}
				var d struct {
					Tenant  string `json:"tenant_id"`
					Allowed bool   `json:"allowed"`
				}
				err = json.NewDecoder(res.Body).Decode(&d)
				res.Body.Close()
				// FREE allows 50 ai_generation: quantities above refuse.
				q, _ := strconv.Atoi(fmt.Sprintf("%d%s", i+1, strings.Repeat("0", i%5)))
				if err != nil || res.StatusCode != 200 || d.Tenant != tenant || d.Allowed != (q <= 50) {
					errs <- fmt.Errorf("%s: %d %+v %v (quantity %d)", body, res.StatusCode, d, err, q)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
