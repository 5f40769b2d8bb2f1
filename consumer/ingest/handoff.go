package ingest

import (
	"context"
	"sync"

	"github.com/segmentio/kafka-go"
)

// handoff passes fetched messages to the batching loop in slices: the
// fetcher appends under a mutex, the loop takes everything appended so far
// in one go, so the loop's many-case select runs once per slice, not once
// per message (the aggregator does the same; each keeps its own small copy
// since a component never imports another's packages). Nothing waits for
// a slice to fill: the loop is woken when the buffer turns non-empty.
type handoff struct {
	mu    sync.Mutex
	buf   []kafka.Message
	limit int           // the fetcher waits while buf holds this many
	ready chan struct{} // 1 slot: buf turned non-empty
	space chan struct{} // 1 slot: buf was taken
}

func newHandoff(limit int) *handoff {
	return &handoff{buf: make([]kafka.Message, 0, limit), limit: limit, ready: make(chan struct{}, 1), space: make(chan struct{}, 1)}
}

// put appends m, waiting while the buffer is full (back-pressure, as the
// full channel it replaced gave).
func (h *handoff) put(ctx context.Context, m kafka.Message) error {
	for {
		h.mu.Lock()
		if len(h.buf) < h.limit {
			h.buf = append(h.buf, m)
			first := len(h.buf) == 1
			h.mu.Unlock()
			if first {
				select {
				case h.ready <- struct{}{}:
				default: // already signalled, not yet taken
				}
			}
			return nil
		}
		h.mu.Unlock()
		select {
		case <-h.space:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// take returns every message put since the last take, in the order put,
// and gives spare (a slice from an earlier take, done with) to the fetcher.
func (h *handoff) take(spare []kafka.Message) []kafka.Message {
	clear(spare) // drop references to messages already handled
	h.mu.Lock()
	out := h.buf
	h.buf = spare[:0]
	h.mu.Unlock()
	select {
	case h.space <- struct{}{}:
	default:
	}
	return out
}
