package svckit

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// ErrPartitionCountChanged says the events topic no longer has the
// partition count a service judges routing by. Both services stop on it
// (see PinPartitions and WatchPartitions): after a change, murmur2(tenant)
// mod n names other partitions, and two readers that each follow the count
// at their own moment would count an event twice or not at all.
var ErrPartitionCountChanged = errors.New("the partition count of the events topic changed")

// PinPartitions returns the partition count of topic, which must equal
// pinned when pinned > 0 (the services' topic_partitions): a service never
// starts judging routing by a count it was not configured for. Call it once
// at start, then run WatchPartitions with the count it returns.
func PinPartitions(ctx context.Context, brokers []string, topic string, pinned int) (int, error) {
	n, err := Partitions(ctx, brokers, topic)
	if err != nil {
		return 0, err
	}
	if pinned > 0 && n != pinned {
		return 0, fmt.Errorf("%w: %s has %d partitions, topic_partitions is %d: tenants would map to other partitions "+
			"than the events already in it; refusing to start. To grow, create a new topic (see README, growing usage.events); "+
			"set topic_partitions to %d only if the topic always had %d",
			ErrPartitionCountChanged, topic, n, pinned, n, n)
	}
	return n, nil
}

// WatchPartitions re-reads the partition count of topic every `every`
// until ctx ends (it returns nil then) or the count differs from n (it
// returns an error wrapping ErrPartitionCountChanged, naming both counts).
// A failed read is skipped: the next tick tries again. The consumer and
// the aggregator both run it with the count PinPartitions gave them and
// stop on its error, so neither ever judges routing by a count the other
// does not use.
func WatchPartitions(ctx context.Context, brokers []string, topic string, n int, every time.Duration) error {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		now, err := Partitions(ctx, brokers, topic)
		if err != nil {
			continue
		}
		if now != n {
			return fmt.Errorf("%w: %s had %d partitions and now has %d; stopping: every event read so far was judged by %d "+
				"(see README, growing usage.events)", ErrPartitionCountChanged, topic, n, now, n)
		}
	}
}
