package producer

import (
	"context"
	"net"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go"
	meta "github.com/segmentio/kafka-go/protocol/metadata"
)

// metadataTTL bounds how long the writer reuses one answer about its topic.
// kafka-go's Transport already serves metadata from a cache refreshed every
// 6 s; this adds at most metadataTTL to how late a new partition count or a
// deleted topic is seen.
const metadataTTL = 500 * time.Millisecond

// topicMetadata answers kafka.Writer's metadata look-ups for one topic from
// the last successful answer. The writer asks once per message (for the
// partition count), and kafka-go's Transport builds a filtered copy of its
// cache for each ask: four allocations and ~10 % of the SDK's CPU per event.
// Other requests, other topics and failed answers pass through.
type topicMetadata struct {
	next kafka.RoundTripper // nil: kafka.DefaultTransport at the time of the request, as a Writer without a Transport
	last atomic.Pointer[metadataAnswer]
	// asOf is the start of the latest Publish call (Unix ns), taken as
	// now by the look-ups: the writer makes them in WriteMessages, once
	// per message, and a clock read each was 4 % of the SDK's CPU. An
	// answer may so serve past metadataTTL by as long as one call takes
	// to encode and partition its events. 0: read the clock.
	asOf atomic.Int64
}

func (t *topicMetadata) transport() kafka.RoundTripper {
	if t.next != nil {
		return t.next
	}
	return kafka.DefaultTransport
}

type metadataAnswer struct {
	topic string
	auto  bool
	res   *meta.Response
	until int64 // Unix ns
}

func (t *topicMetadata) RoundTrip(ctx context.Context, addr net.Addr, req kafka.Request) (kafka.Response, error) {
	m, ok := req.(*meta.Request)
	if !ok || len(m.TopicNames) != 1 {
		return t.transport().RoundTrip(ctx, addr, req)
	}
	now := t.asOf.Load()
	if now == 0 {
		now = time.Now().UnixNano()
	}
	if a := t.last.Load(); a != nil && a.topic == m.TopicNames[0] && a.auto == m.AllowAutoTopicCreation && now < a.until {
		return a.res, nil
	}
	res, err := t.transport().RoundTrip(ctx, addr, req)
	if err != nil {
		return res, err
	}
	if r, ok := res.(*meta.Response); ok && len(r.Topics) == 1 && r.Topics[0].Name == m.TopicNames[0] &&
		r.Topics[0].ErrorCode == 0 && len(r.Topics[0].Partitions) > 0 {
		t.last.Store(&metadataAnswer{topic: m.TopicNames[0], auto: m.AllowAutoTopicCreation, res: r, until: now + int64(metadataTTL)})
	}
	return res, nil
}

// partitions is the partition count of the last good answer about topic,
// however old, or 0: Publish lays out its events by it.
func (t *topicMetadata) partitions(topic string) int {
	if a := t.last.Load(); a != nil && a.topic == topic {
		return len(a.res.Topics[0].Partitions)
	}
	return 0
}
