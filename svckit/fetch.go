package svckit

import (
	"context"
	"errors"
	"time"

	"github.com/segmentio/kafka-go"
)

// PartitionFetch reads one partition on a connection to its leader, with
// kafka.Reader's rules but without its per-message work (a read deadline
// reset and a channel send for every message, about 15 % of a service's
// CPU): the consumer and the aggregator fetch the partitions kafka-go's
// consumer group assigns them with it. The rules:
//   - a position before the partition's first offset (deleted by
//     retention) moves to the first offset without an error (the caller's
//     svckit.OffsetGaps sees the jump);
//   - an empty fetch or a broker timeout fetches again;
//   - a position past the end (a truncated log) waits RetryMin and
//     fetches again from the end;
//   - any other error returns, with the offset to resume from.
type PartitionFetch struct {
	Brokers   []string
	Topic     string
	Partition int
	MaxBytes  int           // one fetch response at most
	MaxWait   time.Duration // a fetch with no new record returns after this
	RetryMin  time.Duration // the wait past the end of a truncated log
	// Chunk is how many messages Deliver gets at once (default 1024).
	Chunk int
	// Progress, if set, is told the partition's high-water mark and the
	// next offset to read after each fetch and each delivered chunk.
	Progress func(hwm, next int64)
}

// batchTimeout bounds reading one fetched batch, as kafka.Reader's
// ReadBatchTimeout does.
const batchTimeout = 10 * time.Second

// Run fetches from offset until ctx ends or an error, and returns the next
// offset to read: the one after the last message deliver took. deliver
// gets each fetch's messages in order, in chunks, and returns how many of
// them it took (all of them unless its error is not nil). It may block
// (the read deadline is set again after each chunk, so waiting for room is
// not a fetch error); the messages are its own once it took them.
func (f PartitionFetch) Run(ctx context.Context, offset int64, deliver func([]kafka.Message) (int, error)) (int64, error) {
	chunk := f.Chunk
	if chunk <= 0 {
		chunk = 1024
	}
	conn, err := DialLeader(ctx, f.Brokers, f.Topic, f.Partition)
	if err != nil {
		return offset, err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) }) // unblock a fetch at once
	defer stop()
	// seek positions the connection at offset, or at the first offset when
	// retention deleted it, and reports whether offset is past the end.
	seek := func() (bool, error) {
		_ = conn.SetDeadline(time.Now().Add(batchTimeout))
		defer func() { _ = conn.SetDeadline(time.Time{}) }()
		first, last, err := conn.ReadOffsets()
		if err != nil {
			return false, err
		}
		offset = max(offset, first)
		_, err = conn.Seek(offset, kafka.SeekAbsolute)
		return offset > last, err
	}
	if _, err := seek(); err != nil {
		return offset, err
	}
	fetched := make([]kafka.Message, 0, chunk)
	for ctx.Err() == nil {
		// The broker answers after MaxWait at most; the deadline covers
		// that and the reading of the batch. (Without MaxWait kafka-go
		// derives the broker's wait from the deadline minus a guessed round
		// trip, and on a busy machine an empty fetch timed out.)
		_ = conn.SetReadDeadline(time.Now().Add(f.MaxWait + batchTimeout))
		batch := conn.ReadBatchWith(kafka.ReadBatchConfig{MinBytes: 1, MaxBytes: f.MaxBytes, MaxWait: f.MaxWait})
		hwm := batch.HighWaterMark()
		f.progress(hwm, offset)
		var deliverErr error
		for more := true; more; {
			fetched = fetched[:0]
			for len(fetched) < chunk {
				m, err := batch.ReadMessage()
				if err != nil {
					more = false
					break
				}
				fetched = append(fetched, m)
			}
			if len(fetched) == 0 {
				break
			}
			n, err := deliver(fetched)
			if n > 0 {
				offset = fetched[n-1].Offset + 1
			}
			clear(fetched) // deliver's now
			if err != nil {
				deliverErr = err
				break
			}
			f.progress(hwm, offset)
			_ = conn.SetReadDeadline(time.Now().Add(batchTimeout))
		}
		closeErr := batch.Close()
		if deliverErr != nil {
			return offset, deliverErr
		}
		switch err := closeErr; {
		case err == nil, errors.Is(err, kafka.RequestTimedOut):
		case errors.Is(err, kafka.OffsetOutOfRange):
			past, err := seek()
			if err != nil {
				return offset, err
			}
			if past { // ahead of the end (a truncated log): wait for it to grow
				t := time.NewTimer(f.RetryMin)
				select {
				case <-t.C:
				case <-ctx.Done():
					t.Stop()
				}
			}
		default:
			return offset, err
		}
	}
	return offset, ctx.Err()
}

func (f PartitionFetch) progress(hwm, next int64) {
	if f.Progress != nil {
		f.Progress(hwm, next)
	}
}
