package svckit

import (
	"context"
	"sync"
)

// Handoff passes items (fetched Kafka messages) from readers to one loop in
// slices: a reader appends under a mutex, the loop takes everything
// appended so far in one go. It replaces a channel of single messages,
// whose receive in a many-case select cost about 10 % of the aggregator's
// CPU; the loop now selects once per slice. Nothing waits for a slice to
// fill: the loop is woken when the buffer turns non-empty, so an item alone
// is handled as soon as the loop is free. The consumer and the aggregator
// both use it.
type Handoff[T any] struct {
	mu    sync.Mutex
	buf   []T
	limit int           // a reader waits while buf holds this many
	ready chan struct{} // 1 slot: buf turned non-empty
	space chan struct{} // 1 slot: buf was taken
}

// NewHandoff returns a Handoff that holds at most limit items.
func NewHandoff[T any](limit int) *Handoff[T] {
	return &Handoff[T]{buf: make([]T, 0, limit), limit: limit, ready: make(chan struct{}, 1), space: make(chan struct{}, 1)}
}

// Put appends v, waiting while the buffer is full (back-pressure on the
// readers, as a full channel gives).
func (h *Handoff[T]) Put(ctx context.Context, v T) error {
	for {
		h.mu.Lock()
		if len(h.buf) < h.limit {
			h.buf = append(h.buf, v)
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

// PutAll appends items in order, as many at a time as there is room for,
// waiting while the buffer is full: one lock and one wake-up per fetched
// batch instead of per item. On error (ctx ended) some items may have been
// put.
func (h *Handoff[T]) PutAll(ctx context.Context, items []T) error {
	for len(items) > 0 {
		h.mu.Lock()
		if room := h.limit - len(h.buf); room > 0 {
			n := min(room, len(items))
			first := len(h.buf) == 0
			h.buf = append(h.buf, items[:n]...)
			h.mu.Unlock()
			items = items[n:]
			if first {
				select {
				case h.ready <- struct{}{}:
				default: // already signalled, not yet taken
				}
			}
			continue
		}
		h.mu.Unlock()
		select {
		case <-h.space:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// Ready receives when items were put since the last Take.
func (h *Handoff[T]) Ready() <-chan struct{} { return h.ready }

// Take returns every item put since the last Take, in the order put, and
// gives spare (a slice from an earlier Take, done with) to the readers.
func (h *Handoff[T]) Take(spare []T) []T {
	clear(spare) // drop the references to items already handled
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
