package deadletter

import (
	"context"
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/segmentio/kafka-go"
)

func TestPermanent(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{kafka.MessageSizeTooLarge, true},
		{fmt.Errorf("write: %w", kafka.UnknownTopicOrPartition), true},
		{kafka.MessageTooLargeError{}, true},
		{kafka.WriteErrors{kafka.MessageSizeTooLarge, nil, kafka.PolicyViolation}, true},
		{kafka.WriteErrors{kafka.MessageSizeTooLarge, kafka.LeaderNotAvailable}, false}, // retry the batch
		{kafka.WriteErrors{nil, nil}, false},
		{kafka.LeaderNotAvailable, false},
		{kafka.NotEnoughReplicas, false},
		{io.ErrUnexpectedEOF, false},
		{context.DeadlineExceeded, false},
		{errors.New("dial tcp 127.0.0.1:1: connection refused"), false},
	} {
		if got := Permanent(c.err); got != c.want {
			t.Errorf("Permanent(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
