package svckit

import (
	"context"
	"fmt"
	"time"

	"github.com/segmentio/kafka-go"
)

// RetentionGap is how many offsets in [expected, next) retention deleted
// before a reader read them, given the partition's log start offset
// (ListOffsets earliest) asked after the reader returned next.
//
// A reader's offsets legitimately skip: a transactional producer (Java,
// librdkafka, franz-go with transactions) writes a control record (commit
// or abort marker) after each transaction, which every reader skips, and a
// compacted topic drops records. Those offsets still exist in the log (or
// are simply absent from it without the log's start moving), so
// logStart <= expected and the gap is not a loss. kafka-go, asked for an
// offset that retention deleted, silently restarts at the first offset: then
// logStart > expected, and every offset below min(next, logStart) was deleted
// unread. The log start only ever grows, so asking after the jump can
// only see more deletion, never less: a gap it reports is a real loss of
// at most that many records (records, not events: deleted control records,
// if any, are counted too).
func RetentionGap(expected, next, logStart int64) int64 {
	if expected < 0 || next <= expected {
		return 0
	}
	return max(0, min(next, logStart)-expected)
}

// OffsetGaps follows the offsets a reader returns, per partition of one
// topic, and reports the records that retention deleted before they were
// read: at a partition's first record (against the offset it was expected
// to resume from) and at any later jump (kafka-go jumps to the first
// offset mid-read too, when the segment under its position is deleted).
// It asks the broker only on a jump, so a partition read without gaps
// costs one map lookup per record.
//
// Use: Expect(p, offset) when a partition opens at a known position (the
// aggregator's checkpoint + 1); Observe for every record read. A consumer
// group reader that does not say where it resumed sets Group: at the first
// record of a partition, Observe then expects the group's committed offset,
// and on a jump it takes the larger of its own expectation and the
// committed offset (another member may have moved the partition on while
// it was away). Act on a gap as on_retention_gap says: fail, or count it
// and continue.
//
// An OffsetGaps is not safe for concurrent use.
type OffsetGaps struct {
	Client *kafka.Client
	Topic  string
	Group  string // consumer group whose commits say where a partition resumes; empty for none
	next   map[int]int64
}

// NewOffsetGaps returns an OffsetGaps for topic on brokers; group may be
// empty.
func NewOffsetGaps(brokers []string, topic, group string) *OffsetGaps {
	return &OffsetGaps{Client: &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 10 * time.Second},
		Topic: topic, Group: group, next: map[int]int64{}}
}

// Expect says the next record of partition should be at offset next.
func (g *OffsetGaps) Expect(partition int, next int64) { g.next[partition] = next }

// Forget drops what is known of partition (it was revoked).
func (g *OffsetGaps) Forget(partition int) { delete(g.next, partition) }

// Observe records that the reader returned offset of partition and returns
// how many records before it retention deleted unread (0 for none). On an
// error (the broker did not answer) the record is not recorded: call
// Observe again for it.
func (g *OffsetGaps) Observe(ctx context.Context, partition int, offset int64) (int64, error) {
	expected, known := g.next[partition]
	if known && offset == expected {
		g.next[partition] = offset + 1
		return 0, nil
	}
	if !known {
		expected = -1
		if g.Group != "" { // where the group resumes this partition
			c, err := g.committed(ctx, partition)
			if err != nil {
				return 0, err
			}
			expected = c
		}
	}
	missed := int64(0)
	if expected >= 0 && offset > expected {
		// One request per jump; a transactional producer's commit
		// markers cost one per transaction and partition.
		first, err := g.logStart(ctx, partition)
		if err != nil {
			return 0, err
		}
		missed = RetentionGap(expected, offset, first)
		if missed > 0 && known && g.Group != "" {
			// Our expectation may predate a rebalance: another member
			// may have read and committed past it meanwhile.
			c, err := g.committed(ctx, partition)
			if err != nil {
				return 0, err
			}
			missed = RetentionGap(max(expected, c), offset, first)
		}
	}
	g.next[partition] = offset + 1
	return missed, nil
}

func (g *OffsetGaps) logStart(ctx context.Context, partition int) (int64, error) {
	res, err := g.Client.ListOffsets(ctx, &kafka.ListOffsetsRequest{
		Topics: map[string][]kafka.OffsetRequest{g.Topic: {kafka.FirstOffsetOf(partition)}}})
	if err != nil {
		return 0, fmt.Errorf("first offset of %s/%d: %w", g.Topic, partition, err)
	}
	for _, po := range res.Topics[g.Topic] {
		if po.Partition == partition {
			if po.Error != nil {
				return 0, fmt.Errorf("first offset of %s/%d: %w", g.Topic, partition, po.Error)
			}
			return po.FirstOffset, nil
		}
	}
	return 0, fmt.Errorf("first offset of %s/%d: no answer", g.Topic, partition)
}

// committed is the group's committed offset of partition, -1 for none.
func (g *OffsetGaps) committed(ctx context.Context, partition int) (int64, error) {
	res, err := g.Client.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: g.Group, Topics: map[string][]int{g.Topic: {partition}}})
	if err != nil {
		return 0, fmt.Errorf("committed offset of %s in %s/%d: %w", g.Group, g.Topic, partition, err)
	}
	for _, po := range res.Topics[g.Topic] {
		if po.Partition == partition {
			if po.Error != nil {
				return 0, fmt.Errorf("committed offset of %s in %s/%d: %w", g.Group, g.Topic, partition, po.Error)
			}
			return po.CommittedOffset, nil
		}
	}
	return -1, nil
}
