package webhook

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"
)

// A fixed vector: receivers in other languages check their code against it.
func TestSignVector(t *testing.T) {
	got := Sign([]byte("whsec_test"), time.Unix(1764547200, 0), []byte(`{"a":1}`))
	// printf '1764547200.{"a":1}' | openssl dgst -sha256 -hmac whsec_test
	const want = "v1=b6f2143a1a033b1cc7ccfdd67886f1bf023858b48bf2d18ef7d9cb2ddacabe0e"
	if got != want {
		t.Fatalf("Sign = %s, want %s", got, want)
	}
}

func TestVerify(t *testing.T) {
	secret, body, now := []byte("s3cret"), []byte(`{"alert_id":"x"}`), time.Unix(1_800_000_000, 0)
	ts := strconv.FormatInt(now.Unix(), 10)
	sig := Sign(secret, now, body)
	cases := []struct {
		name    string
		secret  []byte
		ts, sig string
		body    []byte
		want    error
	}{
		{"good", secret, ts, sig, body, nil},
		{"rotation: second value matches", secret, ts, "v1=00, " + sig, body, nil},
		{"tampered body", secret, ts, sig, []byte(`{"alert_id":"y"}`), ErrBadSignature},
		{"other secret", []byte("other"), ts, sig, body, ErrBadSignature},
		{"timestamp changed", secret, strconv.FormatInt(now.Unix()-1, 10), sig, body, ErrBadSignature},
		{"too old", secret, strconv.FormatInt(now.Unix()-301, 10), Sign(secret, now.Add(-301*time.Second), body), body, ErrTooOld},
		{"too far ahead", secret, strconv.FormatInt(now.Unix()+301, 10), Sign(secret, now.Add(301*time.Second), body), body, ErrTooOld},
		{"no timestamp", secret, "", sig, body, ErrBadTimestamp},
		{"padded timestamp", secret, "0" + ts, sig, body, ErrBadTimestamp},
		{"no v1", secret, ts, "v0=abc", body, ErrNoSignature},
		{"not hex", secret, ts, "v1=zz", body, ErrBadSignature},
	}
	for _, c := range cases {
		err := Verify(c.secret, c.ts, c.sig, c.body, now, DefaultTolerance)
		if !errors.Is(err, c.want) || (c.want == nil) != (err == nil) {
			t.Errorf("%s: got %v, want %v", c.name, err, c.want)
		}
	}
}

// The Python receiver snippet in alerts/README.md runs as written: it
// accepts a request signed by Sign and refuses a tampered body and an old
// timestamp.
func TestReadmePythonVerifier(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 not installed")
	}
	readme, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)```python\n(.*?)```").FindSubmatch(readme)
	if m == nil {
		t.Fatal("alerts/README.md has no python block")
	}
	secret, body, now := "whsec_py", `{"alert_id":"abc","usage":"45"}`, time.Now()
	sig := Sign([]byte(secret), now, []byte(body))
	ts := strconv.FormatInt(now.Unix(), 10)
	old := strconv.FormatInt(now.Unix()-600, 10)
	script := string(m[1]) + `
import sys
secret, body, ts, sig, old, old_sig = sys.argv[1:7]
assert verify(secret.encode(), ts, sig, body.encode()), "good request refused"
assert not verify(secret.encode(), ts, sig, body.replace("45", "4").encode()), "tampered body accepted"
assert not verify(secret.encode(), old, old_sig, body.encode()), "old timestamp accepted"
assert not verify(b"other", ts, sig, body.encode()), "other secret accepted"
print("ok")
`
	out, err := exec.Command(py, "-c", script, secret, body, ts, sig, old,
		Sign([]byte(secret), now.Add(-600*time.Second), []byte(body))).CombinedOutput()
	if err != nil || string(out) != "ok\n" {
		t.Fatalf("python verifier: %v\n%s", err, out)
	}
}
