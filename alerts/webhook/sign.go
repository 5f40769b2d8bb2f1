// Package webhook signs alerts for receivers and POSTs them: the signature
// scheme (Sign, Verify), the sender with retries, and the record of every
// attempt.
//
// A request carries the alert's JSON as its body and three headers:
//
//	Usage-Alert-Id:          the alert_id (receivers deduplicate by it)
//	Usage-Webhook-Timestamp: seconds since the Unix epoch when it was signed
//	Usage-Webhook-Signature: v1=<hex HMAC-SHA256(secret, timestamp + "." + body)>
//
// Binding the timestamp into the MAC lets a receiver refuse a captured
// request replayed later (the replay window); the body is signed as raw
// bytes, so a receiver must verify before it parses. Several v1= values
// separated by commas may appear while a secret is being rotated.
package webhook

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Header names.
const (
	HeaderAlertID   = "Usage-Alert-Id"
	HeaderTimestamp = "Usage-Webhook-Timestamp"
	HeaderSignature = "Usage-Webhook-Signature"
)

// DefaultTolerance is the replay window receivers should allow.
const DefaultTolerance = 5 * time.Minute

// Verification failures; Verify wraps one of them.
var (
	ErrNoSignature  = errors.New("no v1 signature")
	ErrBadSignature = errors.New("signature does not match")
	ErrBadTimestamp = errors.New("timestamp missing or malformed")
	ErrTooOld       = errors.New("timestamp outside the tolerance")
)

// Sign returns the Usage-Webhook-Signature value for body signed at ts.
func Sign(secret []byte, ts time.Time, body []byte) string {
	return "v1=" + hex.EncodeToString(mac(secret, strconv.FormatInt(ts.Unix(), 10), body))
}

func mac(secret []byte, ts string, body []byte) []byte {
	h := hmac.New(sha256.New, secret)
	h.Write([]byte(ts))
	h.Write([]byte{'.'})
	h.Write(body)
	return h.Sum(nil)
}

// SetHeaders sets the three headers of a request carrying body.
func SetHeaders(h http.Header, secret []byte, alertID string, ts time.Time, body []byte) {
	h.Set("Content-Type", "application/json")
	h.Set(HeaderAlertID, alertID)
	h.Set(HeaderTimestamp, strconv.FormatInt(ts.Unix(), 10))
	h.Set(HeaderSignature, Sign(secret, ts, body))
}

// Verify checks a received request: timestamp is the Usage-Webhook-Timestamp
// header, signature the Usage-Webhook-Signature header, body the raw bytes
// read. It accepts when one v1 value is the HMAC of timestamp.body under
// secret (compared in constant time) and the timestamp is within tolerance
// of now, either way.
func Verify(secret []byte, timestamp, signature string, body []byte, now time.Time, tolerance time.Duration) error {
	sec, err := strconv.ParseInt(timestamp, 10, 64)
	if err != nil || timestamp != strconv.FormatInt(sec, 10) {
		return fmt.Errorf("webhook: %w: %q", ErrBadTimestamp, timestamp)
	}
	if d := now.Sub(time.Unix(sec, 0)); d > tolerance || d < -tolerance {
		return fmt.Errorf("webhook: %w: signed %s ago, tolerance %s", ErrTooOld, d.Round(time.Second), tolerance)
	}
	want := mac(secret, timestamp, body)
	found := false
	for part := range strings.SplitSeq(signature, ",") {
		v, ok := strings.CutPrefix(strings.TrimSpace(part), "v1=")
		if !ok {
			continue
		}
		found = true
		got, err := hex.DecodeString(v)
		if err == nil && hmac.Equal(got, want) {
			return nil
		}
	}
	if !found {
		return fmt.Errorf("webhook: %w in %q", ErrNoSignature, signature)
	}
	return fmt.Errorf("webhook: %w", ErrBadSignature)
}

// VerifyRequest is Verify for an *http.Request whose body was read into
// body.
func VerifyRequest(secret []byte, r *http.Request, body []byte, now time.Time, tolerance time.Duration) error {
	return Verify(secret, r.Header.Get(HeaderTimestamp), r.Header.Get(HeaderSignature), body, now, tolerance)
}
