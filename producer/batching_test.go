package producer

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/segmentio/kafka-go"

	"github.com/usagemeter/usagemeter/schemas"
)

// TestBatchingDefaults: sync publishes keep a 5 ms linger (a sync Publish
// waits for it), async ones default to 20 ms (fewer, larger produce
// requests); the count bound stays near what 1 MiB holds, since kafka-go
// allocates it with every batch; WithBatching's zeros keep the defaults.
func TestBatchingDefaults(t *testing.T) {
	for _, tc := range []struct {
		name      string
		opts      []Option
		size      int
		bytes     int64
		linger    time.Duration
		wantAsync bool
	}{
		{"sync", nil, 4096, 1 << 20, 5 * time.Millisecond, false},
		{"async", []Option{WithAsync(nil)}, 4096, 1 << 20, 20 * time.Millisecond, true},
		{"sync zeros", []Option{WithBatching(0, 0, 0)}, 4096, 1 << 20, 5 * time.Millisecond, false},
		{"async zeros", []Option{WithAsync(nil), WithBatching(0, -1, 0)}, 4096, 1 << 20, 20 * time.Millisecond, true},
		{"async set", []Option{WithBatching(100, 2048, 50*time.Millisecond), WithAsync(nil)}, 100, 2048, 50 * time.Millisecond, true},
		{"sync set", []Option{WithBatching(0, 0, time.Millisecond)}, 4096, 1 << 20, time.Millisecond, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := New([]string{"127.0.0.1:1"}, tc.opts...)
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			if p.w.BatchSize != tc.size || p.w.BatchBytes != tc.bytes || p.w.BatchTimeout != tc.linger || p.w.Async != tc.wantAsync {
				t.Fatalf("writer BatchSize %d BatchBytes %d BatchTimeout %v Async %v, want %d %d %v %v",
					p.w.BatchSize, p.w.BatchBytes, p.w.BatchTimeout, p.w.Async, tc.size, tc.bytes, tc.linger, tc.wantAsync)
			}
		})
	}
}

// TestFillIDs: the ids Publish fills for a call (random bits read once per
// call) are UUIDv7s as schemas.NewID makes them: version 7, RFC 4122
// variant, distinct and in creation order; an id already set is kept.
func TestFillIDs(t *testing.T) {
	p, err := New([]string{"127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	events := make([]schemas.UsageEvent, 5000)
	events[17].ID = "kept"
	if err := p.fillIDs(events, time.Now().UnixNano()); err != nil {
		t.Fatal(err)
	}
	later, err := uuid.Parse(schemas.NewID())
	if err != nil {
		t.Fatal(err)
	}
	if events[17].ID != "kept" {
		t.Fatalf("a set id was replaced: %q", events[17].ID)
	}
	seen := map[string]bool{}
	last := ""
	for i, e := range events {
		if i == 17 {
			continue
		}
		id, err := uuid.Parse(e.ID)
		if err != nil || id.Version() != 7 || id.Variant() != uuid.RFC4122 || id.String() != e.ID {
			t.Fatalf("event %d: id %q is not a canonical UUIDv7 (%v)", i, e.ID, err)
		}
		if seen[e.ID] || e.ID <= last {
			t.Fatalf("event %d: id %q repeated or out of order after %q", i, e.ID, last)
		}
		seen[e.ID], last = true, e.ID
	}
	// Both take their time part from the clock: a schemas.NewID made after the
	// call (5000 ids take far longer than one 256 ns step) sorts after.
	if later.String() <= last {
		t.Fatalf("schemas.NewID %s made later sorts before %s", later, last)
	}
}

// TestPublishReusesMessagesSafely: the []kafka.Message a successful call
// used is recycled; a following call (shorter, then longer) must not carry
// any of its keys, values or callback events.
func TestPublishReusesMessagesSafely(t *testing.T) {
	broker, topic := newTopic(t)
	p := newPublisher(t, broker, topic, WithAsync(func(err error, _ []schemas.UsageEvent) { t.Errorf("callback: %v", err) }))
	ctx := context.Background()
	var want []schemas.UsageEvent
	for _, n := range []int{300, 7, 1000} {
		batch := make([]schemas.UsageEvent, n)
		for i := range batch {
			batch[i] = ev("tenant-"+string(rune('a'+i%5)), schemas.MeterAPICalls, "1", nil)
		}
		if err := p.Publish(ctx, batch...); err != nil {
			t.Fatal(err)
		}
		want = append(want, batch...)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for part := range testPartitions {
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{broker}, Topic: topic, Partition: part, MaxWait: 100 * time.Millisecond})
		last, err := kafka.DialLeader(ctx, "tcp", broker, topic, part)
		if err != nil {
			t.Fatal(err)
		}
		end, err := last.ReadLastOffset()
		last.Close()
		if err != nil {
			t.Fatal(err)
		}
		for range end {
			m, err := r.ReadMessage(ctx)
			if err != nil {
				t.Fatal(err)
			}
			e, err := schemas.NewValidator().Decode(m.Value)
			if err != nil {
				t.Fatalf("partition %d offset %d: %v", part, m.Offset, err)
			}
			if string(m.Key) != e.TenantID {
				t.Fatalf("partition %d offset %d: key %q for tenant %q", part, m.Offset, m.Key, e.TenantID)
			}
			got[e.ID] = e.TenantID
		}
		r.Close()
	}
	if len(got) != len(want) {
		t.Fatalf("read %d distinct events, published %d", len(got), len(want))
	}
	for _, e := range want {
		if got[e.ID] != e.TenantID {
			t.Fatalf("event %s: read tenant %q, published %q", e.ID, got[e.ID], e.TenantID)
		}
	}
}
