package backoff

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestRetryUntilSuccessThenCancel(t *testing.T) {
	calls, reported := 0, 0
	err := Retry(context.Background(), Policy{Min: time.Millisecond, Max: 4 * time.Millisecond},
		func(context.Context) error {
			if calls++; calls < 4 {
				return errors.New("down")
			}
			return nil
		},
		func(attempt int, pause time.Duration, err error) {
			reported++
			if attempt != reported || pause > 4*time.Millisecond || err == nil {
				t.Errorf("attempt %d pause %s err %v", attempt, pause, err)
			}
		})
	if err != nil || calls != 4 || reported != 3 {
		t.Fatalf("err=%v calls=%d reported=%d", err, calls, reported)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	err = Retry(ctx, Policy{Min: time.Millisecond, Max: time.Millisecond}, func(context.Context) error { return errors.New("down") }, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("want the context's error, got %v", err)
	}
}
