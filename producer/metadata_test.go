package producer

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	meta "github.com/segmentio/kafka-go/protocol/metadata"
	"github.com/segmentio/kafka-go/protocol/produce"
)

// countingTransport answers metadata requests with code for their topic and
// counts every round trip.
type countingTransport struct {
	calls int
	code  int16
}

func (c *countingTransport) RoundTrip(_ context.Context, _ net.Addr, req kafka.Request) (kafka.Response, error) {
	c.calls++
	m, ok := req.(*meta.Request)
	if !ok {
		return &produce.Response{}, nil
	}
	return &meta.Response{Topics: []meta.ResponseTopic{{Name: m.TopicNames[0], ErrorCode: c.code,
		Partitions: []meta.ResponsePartition{{PartitionIndex: 0}, {PartitionIndex: 1}}}}}, nil
}

// TestTopicMetadata: the writer's per-message look-ups of its topic are
// answered from the last good answer; errors, other topics and other
// requests always reach the transport.
func TestTopicMetadata(t *testing.T) {
	ctx := context.Background()
	next := &countingTransport{}
	tm := &topicMetadata{next: next}
	now := time.Now().UnixNano()
	tm.asOf.Store(now) // as Publish does before handing messages to the writer
	ask := func(topic string) *meta.Response {
		t.Helper()
		res, err := tm.RoundTrip(ctx, kafka.TCP("x"), &meta.Request{TopicNames: []string{topic}})
		if err != nil {
			t.Fatal(err)
		}
		return res.(*meta.Response)
	}
	for range 1000 {
		if r := ask("usage.events"); len(r.Topics[0].Partitions) != 2 {
			t.Fatalf("answer %+v", r)
		}
	}
	if next.calls != 1 {
		t.Fatalf("1000 asks for one topic reached the transport %d times, want 1", next.calls)
	}
	// Publish's time stands for now: past the TTL, the transport is asked.
	tm.asOf.Store(now + int64(metadataTTL) - 1)
	ask("usage.events")
	if next.calls != 1 {
		t.Fatalf("an answer younger than the TTL reached the transport (%d calls)", next.calls)
	}
	tm.asOf.Store(now + int64(metadataTTL) + int64(time.Millisecond))
	ask("usage.events")
	ask("usage.events")
	if next.calls != 2 {
		t.Fatalf("an answer past the TTL was reused (%d calls, want 2)", next.calls)
	}
	tm.asOf.Store(0)
	ask("other")
	if next.calls != 3 {
		t.Fatalf("another topic was answered from the cache (%d calls)", next.calls)
	}
	if _, err := tm.RoundTrip(ctx, kafka.TCP("x"), &produce.Request{}); err != nil || next.calls != 4 {
		t.Fatalf("a produce request did not pass through (%d calls, %v)", next.calls, err)
	}
	// An error answer (topic deleted, not created yet) is never reused.
	bad := &topicMetadata{next: &countingTransport{code: int16(kafka.UnknownTopicOrPartition)}}
	for range 3 {
		res, err := bad.RoundTrip(ctx, kafka.TCP("x"), &meta.Request{TopicNames: []string{"gone"}})
		if err != nil || res.(*meta.Response).Topics[0].ErrorCode == 0 {
			t.Fatalf("answer %+v, %v", res, err)
		}
	}
	if n := bad.next.(*countingTransport).calls; n != 3 {
		t.Fatalf("error answers were cached: %d calls for 3 asks", n)
	}
}
