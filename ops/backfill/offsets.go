// Package backfill moves a consumer group back in time so that it reads a
// range of usage.events again: per partition, the first offset whose
// record time is at or after a timestamp (Kafka's ListOffsets by time), committed for the
// group while none of its members runs.
package backfill

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/segmentio/kafka-go"
)

// Position is one partition's committed offset before and after a reset.
type Position struct {
	Partition int
	Committed int64 // -1: nothing committed
	Target    int64
}

// Resetter commits offsets for a group that is not running.
type Resetter struct {
	Brokers []string
	Timeout time.Duration
}

func (r Resetter) client() *kafka.Client {
	t := r.Timeout
	if t <= 0 {
		t = 30 * time.Second
	}
	return &kafka.Client{Addr: kafka.TCP(r.Brokers...), Timeout: t}
}

// ErrGroupActive is returned when the group has members: offsets committed
// under a running member would be overwritten by its next commit.
var ErrGroupActive = errors.New("the group has running members: stop every member first")

// Plan returns, per partition of topic, what the group has committed and
// the first offset at or after at (the end offset when no record is that
// recent).
func (r Resetter) Plan(ctx context.Context, group, topic string, at time.Time) ([]Position, error) {
	if group == "" || topic == "" {
		return nil, errors.New("group and topic are required")
	}
	c := r.client()
	md, err := c.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		return nil, fmt.Errorf("metadata of %s: %w", topic, err)
	}
	if len(md.Topics) != 1 || md.Topics[0].Error != nil {
		return nil, fmt.Errorf("topic %s: %v", topic, md.Topics[0].Error)
	}
	n := len(md.Topics[0].Partitions)
	var reqs []kafka.OffsetRequest
	parts := make([]int, n)
	for p := range n {
		reqs = append(reqs, kafka.TimeOffsetOf(p, at))
		parts[p] = p
	}
	res, err := c.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil {
		return nil, fmt.Errorf("offsets of %s at %s: %w", topic, at.Format(time.RFC3339), err)
	}
	targets := map[int]int64{}
	for _, po := range res.Topics[topic] {
		if po.Error != nil {
			return nil, fmt.Errorf("offset of %s/%d at %s: %w", topic, po.Partition, at.Format(time.RFC3339), po.Error)
		}
		// kafka-go reports the offset found for a timestamp in Offsets
		// (timestamp -> offset); none means no record that recent: the end.
		off := int64(-1)
		for o := range po.Offsets {
			off = o
		}
		if off < 0 {
			off = po.LastOffset
		}
		targets[po.Partition] = off
	}
	end, err := r.ends(ctx, c, topic, n)
	if err != nil {
		return nil, err
	}
	committed, err := c.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{topic: parts}})
	if err != nil {
		return nil, fmt.Errorf("committed offsets of %s: %w", group, err)
	}
	if committed.Error != nil {
		return nil, fmt.Errorf("committed offsets of %s: %w", group, committed.Error)
	}
	cur := map[int]int64{}
	for _, p := range committed.Topics[topic] {
		cur[p.Partition] = p.CommittedOffset
	}
	var out []Position
	for p := range n {
		t, ok := targets[p]
		if !ok || t < 0 {
			t = end[p]
		}
		c, ok := cur[p]
		if !ok {
			c = -1
		}
		out = append(out, Position{Partition: p, Committed: c, Target: t})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Partition < out[j].Partition })
	return out, nil
}

func (r Resetter) ends(ctx context.Context, c *kafka.Client, topic string, n int) (map[int]int64, error) {
	var reqs []kafka.OffsetRequest
	for p := range n {
		reqs = append(reqs, kafka.LastOffsetOf(p))
	}
	res, err := c.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil {
		return nil, fmt.Errorf("end offsets of %s: %w", topic, err)
	}
	out := map[int]int64{}
	for _, po := range res.Topics[topic] {
		out[po.Partition] = po.LastOffset
	}
	return out, nil
}

// Apply commits the planned targets for group. It refuses while the group
// has members (a running member would commit over the reset, or keep
// reading from where it is).
func (r Resetter) Apply(ctx context.Context, group, topic string, plan []Position) error {
	c := r.client()
	desc, err := c.DescribeGroups(ctx, &kafka.DescribeGroupsRequest{GroupIDs: []string{group}})
	if err != nil {
		return fmt.Errorf("describe group %s: %w", group, err)
	}
	for _, g := range desc.Groups {
		if g.Error != nil {
			return fmt.Errorf("describe group %s: %w", group, g.Error)
		}
		if len(g.Members) > 0 {
			return fmt.Errorf("group %s (%s, %d members): %w", group, g.GroupState, len(g.Members), ErrGroupActive)
		}
	}
	var commits []kafka.OffsetCommit
	for _, p := range plan {
		commits = append(commits, kafka.OffsetCommit{Partition: p.Partition, Offset: p.Target})
	}
	// Generation -1 and no member id: a commit for an empty group, as
	// kafka-consumer-groups.sh --reset-offsets makes it.
	res, err := c.OffsetCommit(ctx, &kafka.OffsetCommitRequest{GroupID: group, GenerationID: -1,
		Topics: map[string][]kafka.OffsetCommit{topic: commits}})
	if err != nil {
		return fmt.Errorf("commit offsets for %s: %w", group, err)
	}
	for _, ps := range res.Topics {
		for _, p := range ps {
			if p.Error != nil {
				return fmt.Errorf("commit offset of %s/%d for %s: %w", topic, p.Partition, group, p.Error)
			}
		}
	}
	return nil
}
