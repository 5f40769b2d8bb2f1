// Package backoff retries an operation with exponential backoff and jitter
// until it succeeds or its context ends. The consumer and the aggregator use
// it for every write they must not give up on.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Policy bounds the pause between attempts: it starts at Min and doubles up
// to Max. Each pause is jittered down to half its length, so that several
// processes do not retry in step.
type Policy struct {
	Min, Max time.Duration
}

// Retry runs fn until it returns nil, or ctx ends (then it returns ctx's
// error). After each failure, onError (if not nil) learns the attempt
// number, the pause before the next attempt and the error.
func Retry(ctx context.Context, p Policy, fn func(context.Context) error, onError func(attempt int, pause time.Duration, err error)) error {
	pause := p.Min
	for attempt := 1; ; attempt++ {
		err := fn(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if onError != nil {
			onError(attempt, pause, err)
		}
		jittered := pause/2 + time.Duration(rand.Int64N(int64(pause)/2+1))
		select {
		case <-time.After(jittered):
		case <-ctx.Done():
			return ctx.Err()
		}
		pause = min(pause*2, p.Max)
	}
}
