package svckit

import (
	"context"
	"sync"
	"testing"
	"time"
)

// item stands for a fetched message.
type item struct {
	Partition int
	Offset    int64
}

// TestHandoff: every message put by concurrent readers is taken exactly
// once, each reader's in order; a full buffer holds readers back; a lone
// message wakes the loop at once.
func TestHandoff(t *testing.T) {
	ctx := context.Background()
	h := NewHandoff[item](8)
	const readers, each = 3, 1000
	var wg sync.WaitGroup
	for p := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for o := range each {
				if err := h.Put(ctx, item{Partition: p, Offset: int64(o)}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	takeInOrder(t, h, readers, readers*each)
	wg.Wait()
	select {
	case <-h.Ready():
		if b := h.Take(nil); len(b) != 0 {
			t.Fatalf("%d messages left over", len(b))
		}
	default:
	}
	// A full buffer holds a reader until the loop takes.
	for i := range 8 {
		if err := h.Put(ctx, item{Offset: int64(i)}); err != nil {
			t.Fatal(err)
		}
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := h.Put(short, item{}); err == nil {
		t.Fatal("a ninth message was taken into a buffer of 8")
	}
	<-h.Ready()
	if b := h.Take(nil); len(b) != 8 {
		t.Fatalf("took %d, want 8", len(b))
	}
	if err := h.Put(ctx, item{Offset: 99}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-h.Ready():
	case <-time.After(time.Second):
		t.Fatal("a lone message did not wake the loop")
	}
	if b := h.Take(nil); len(b) != 1 || b[0].Offset != 99 {
		t.Fatalf("took %+v", b)
	}
}

// TestHandoffPutAll: chunks larger than the limit from concurrent readers
// arrive whole, each reader's in order, never more than the limit at once;
// a full buffer holds PutAll until the loop takes or ctx ends.
func TestHandoffPutAll(t *testing.T) {
	ctx := context.Background()
	h := NewHandoff[item](8)
	const readers, chunks, chunk = 4, 50, 13
	var wg sync.WaitGroup
	for p := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range chunks {
				items := make([]item, chunk)
				for i := range items {
					items[i] = item{Partition: p, Offset: int64(c*chunk + i)}
				}
				if err := h.PutAll(ctx, items); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	takeInOrder(t, h, readers, readers*chunks*chunk)
	wg.Wait()
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := h.PutAll(short, make([]item, 9)); err == nil {
		t.Fatal("nine messages were taken into a buffer of 8")
	}
	<-h.Ready()
	if b := h.Take(nil); len(b) != 8 {
		t.Fatalf("took %d, want 8 (as many as fit before ctx ended)", len(b))
	}
}

// takeInOrder takes total messages from h in batches of at most 8 and
// fails unless each partition's offsets come 0, 1, 2, ... in order.
func takeInOrder(t *testing.T, h *Handoff[item], partitions, total int) {
	t.Helper()
	next := make([]int64, partitions)
	var spare []item
	for got := 0; got < total; {
		select {
		case <-h.Ready():
		case <-time.After(5 * time.Second):
			t.Fatalf("no batch after %d messages", got)
		}
		batch := h.Take(spare)
		if len(batch) > 8 {
			t.Fatalf("batch of %d past the limit 8", len(batch))
		}
		for _, m := range batch {
			if m.Offset != next[m.Partition] {
				t.Fatalf("partition %d: offset %d, want %d", m.Partition, m.Offset, next[m.Partition])
			}
			next[m.Partition]++
		}
		got += len(batch)
		spare = batch
	}
}
