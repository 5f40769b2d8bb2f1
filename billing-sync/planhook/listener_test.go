package planhook_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stripe/stripe-go/v76/webhook"
	"go.uber.org/zap"

	"github.com/usagemeter/usagemeter/billing-sync/planhook"
	"github.com/usagemeter/usagemeter/schemas/plans"
	"github.com/usagemeter/usagemeter/testenv"
)

// The webhook has its own listener: an oversized body gets 413 (not read
// to its end), a client that trickles its body is cut off after the read
// timeout, and nothing but the webhook is served there.
func TestOwnListenerTimeoutsAndBodyLimit(t *testing.T) {
	broker := testenv.Kafka(t)
	topic := testenv.Name("assign")
	testenv.CreateTopic(t, broker, topic, 1, "cleanup.policy", "compact")
	p, err := plans.Load("../../schemas/plans/plans.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg := planhook.DefaultConfig()
	cfg.Secret, cfg.Brokers, cfg.AssignmentTopic = secret, []string{broker}, topic
	cfg.Prices = []planhook.Price{{LookupKey: "pro_monthly", Plan: "PRO"}}
	cfg.Addr, cfg.ReadTimeout, cfg.MaxBodyBytes = "127.0.0.1:0", time.Second, 64<<10
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	h, err := planhook.New(context.Background(), cfg, p, func(context.Context, string) (string, bool) { return "acme", true }, nil, zap.NewNop(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0") // find a free port for the listener
	if err != nil {
		t.Fatal(err)
	}
	cfg.Addr = ln.Addr().String()
	_ = ln.Close()
	srv, err := planhook.Serve(cfg, h, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	url := "http://" + cfg.Addr + cfg.Path

	if code := post(t, url, event("evt_1", 1000, "customer.subscription.created", "pro_monthly"), secret); code != 200 {
		t.Fatalf("a signed webhook: %d", code)
	}
	// 100 KB of padding in a validly signed event: refused for its size.
	big := bytes.Replace(event("evt_2", 2000, "customer.subscription.updated", "pro_monthly"), []byte(`"metadata":{}`),
		[]byte(`"metadata":{"pad":"`+strings.Repeat("x", 100<<10)+`"}`), 1)
	if code := post(t, url, big, secret); code != http.StatusRequestEntityTooLarge {
		t.Fatalf("oversized webhook: %d, want 413", code)
	}
	if got := records(t, broker, topic); len(got) != 1 {
		t.Fatalf("%d records, want only the first webhook's", len(got))
	}
	// /metrics is not served on the webhook's listener.
	resp, err := http.Get("http://" + cfg.Addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound && resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("GET /metrics on the webhook listener: %d", resp.StatusCode)
	}

	// A slow client: headers, then 10 of 1000 promised bytes, then silence.
	conn, err := net.Dial("tcp", cfg.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	sig := webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: []byte("{}"), Secret: secret, Timestamp: time.Now()})
	fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: x\r\nStripe-Signature: %s\r\nContent-Length: 1000\r\n\r\n{\"id\":\"ev", cfg.Path, sig.Header)
	start := time.Now()
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	took := time.Since(start)
	if took > 4*time.Second {
		t.Fatalf("a trickling client held the request for %v (read_timeout 1s); read %q, %v", took, line, err)
	}
	t.Logf("trickling client cut off after %v: %q %v", took.Round(10*time.Millisecond), strings.TrimSpace(line), err)
}
