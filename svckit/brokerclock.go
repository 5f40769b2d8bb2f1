package svckit

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go"
)

// ErrBrokerTime wraps a failure to learn a record's broker time (the broker
// did not answer). It is not a verdict on the event: retry the record, never
// skip or refuse it.
var ErrBrokerTime = errors.New("cannot learn the broker time of a record")

// brokerClock proves, for a record of a LogAppendTime topic, whether the
// broker appended it at or after a given time, without reading the
// record's own timestamp: kafka-go v0.4.51 returns firstTimestamp+delta of
// a batch, which the broker leaves as the producer wrote it (CreateTime),
// and drops the batch's maxTimestamp, which is where a LogAppendTime broker
// writes its clock.
//
// The proof: on a LogAppendTime topic append times never decrease with the
// offset, and ListOffsets(timestamp t) returns the first offset whose time
// is >= t, with that time. So for record o:
//
//   - ListOffsets(t) = f <= o proves append(o) >= time(f) >= t;
//   - ListOffsets(t) = f > o, or none, proves append(o) < t.
//
// Both are facts about the log, so every reader, at any time, gets the same
// verdict.
//
// When append times go backwards (a broker clock stepped back, a new
// leader whose clock is behind) the verdict is still the same for every
// reader, cached bounds or not: each answer and each bound is a fact about
// "the first offset whose time is >= t" (ListOffsets' exact semantics,
// which Kafka's max-so-far time index keeps for decreasing times), and
// the verdict is "that offset is <= o", which only grows with o. What
// changes is its meaning behind the step: "some record at or before o was
// appended at >= t", not o itself (TestBrokerClockVerdictsAfterAStepBack).
// Cached and fresh verdicts could differ only once retention deleted the
// record a bound was learned from and the records after it are older: a
// fresh lookup then finds a later first offset.
//
// Each proof is kept per partition as a bound (append(x) >=
// lower.at for every x >= lower.from; append(x) < upper.at for every x <
// upper.below), so most records need no request: see Intake.DecodeRecord
// for the cost.
type brokerClock struct {
	client *kafka.Client
	topic  string
	lower  map[int]bound
	upper  map[int]bound
	// lookups counts ListOffsets requests (Intake.Lookups).
	lookups atomic.Int64
}

// bound is one proven bound on the append times of a range of offsets.
type bound struct {
	offset int64 // lower: from this offset on; upper: below this offset
	at     time.Time
}

func newBrokerClock(brokers []string, topic string) *brokerClock {
	return &brokerClock{client: &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 10 * time.Second},
		topic: topic, lower: map[int]bound{}, upper: map[int]bound{}}
}

// appendedSince reports whether record (partition, offset) was appended at
// or after t (millisecond precision: Kafka's). probe >= t is a later time
// worth proving on the way, because a bound at probe also covers the
// records after this one (the next events of an in-sync publisher).
func (c *brokerClock) appendedSince(ctx context.Context, partition int, offset int64, t, probe time.Time) (bool, error) {
	if lo, ok := c.lower[partition]; ok && offset >= lo.offset && !lo.at.Before(t) {
		return true, nil
	}
	if up, ok := c.upper[partition]; ok && offset < up.offset && !up.at.After(t) {
		return false, nil
	}
	if probe.After(t) {
		f, at, found, err := c.firstAtOrAfter(ctx, partition, probe)
		if err != nil {
			return false, err
		}
		if found && f <= offset {
			c.learnLower(partition, f, at)
			return true, nil
		}
		// Not since probe: the verdict needs t itself.
	}
	// The end offset first: if no record is at or after t, every record
	// below it was appended before t, which answers this partition's next
	// records from a publisher whose clock is ahead without a request each.
	end, err := c.endOffset(ctx, partition)
	if err != nil {
		return false, err
	}
	f, at, found, err := c.firstAtOrAfter(ctx, partition, t)
	if err != nil {
		return false, err
	}
	switch {
	case found && f <= offset:
		c.learnLower(partition, f, at)
		return true, nil
	case found:
		c.learnUpper(partition, f, t)
	default:
		c.learnUpper(partition, max(end, offset+1), t)
	}
	return false, nil
}

func (c *brokerClock) learnLower(partition int, from int64, at time.Time) {
	if lo, ok := c.lower[partition]; !ok || at.After(lo.at) {
		c.lower[partition] = bound{offset: from, at: at}
	}
}

func (c *brokerClock) learnUpper(partition int, below int64, at time.Time) {
	if up, ok := c.upper[partition]; !ok || below > up.offset {
		c.upper[partition] = bound{offset: below, at: at}
	}
}

// firstAtOrAfter is ListOffsets(partition, t): the first offset whose time
// is >= t and that time, or found = false when there is none.
func (c *brokerClock) firstAtOrAfter(ctx context.Context, partition int, t time.Time) (int64, time.Time, bool, error) {
	c.lookups.Add(1)
	// Kafka timestamps are milliseconds: round t up, so that "at or after"
	// stays exact for a t with a fraction of a millisecond.
	ms := t.Add(time.Millisecond - 1).Truncate(time.Millisecond)
	res, err := c.client.ListOffsets(ctx, &kafka.ListOffsetsRequest{
		Topics: map[string][]kafka.OffsetRequest{c.topic: {kafka.TimeOffsetOf(partition, ms)}}})
	if err != nil {
		return 0, time.Time{}, false, fmt.Errorf("%w: offset of %s/%d at %s: %w", ErrBrokerTime, c.topic, partition, ms.Format(time.RFC3339Nano), err)
	}
	for _, po := range res.Topics[c.topic] {
		if po.Partition != partition {
			continue
		}
		if po.Error != nil {
			return 0, time.Time{}, false, fmt.Errorf("%w: offset of %s/%d at %s: %w", ErrBrokerTime, c.topic, partition, ms.Format(time.RFC3339Nano), po.Error)
		}
		for off, at := range po.Offsets { // one entry, or none when no record is that late
			if off >= 0 {
				return off, at, true, nil
			}
		}
		return 0, time.Time{}, false, nil
	}
	return 0, time.Time{}, false, fmt.Errorf("%w: offset of %s/%d: no answer", ErrBrokerTime, c.topic, partition)
}

func (c *brokerClock) endOffset(ctx context.Context, partition int) (int64, error) {
	c.lookups.Add(1)
	res, err := c.client.ListOffsets(ctx, &kafka.ListOffsetsRequest{
		Topics: map[string][]kafka.OffsetRequest{c.topic: {kafka.LastOffsetOf(partition)}}})
	if err != nil {
		return 0, fmt.Errorf("%w: end offset of %s/%d: %w", ErrBrokerTime, c.topic, partition, err)
	}
	for _, po := range res.Topics[c.topic] {
		if po.Partition == partition {
			if po.Error != nil {
				return 0, fmt.Errorf("%w: end offset of %s/%d: %w", ErrBrokerTime, c.topic, partition, po.Error)
			}
			return po.LastOffset, nil
		}
	}
	return 0, fmt.Errorf("%w: end offset of %s/%d: no answer", ErrBrokerTime, c.topic, partition)
}

// TimestampType returns the message.timestamp.type of topic: "CreateTime"
// or "LogAppendTime".
func TimestampType(ctx context.Context, brokers []string, topic string) (string, error) {
	client := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 10 * time.Second}
	res, err := client.DescribeConfigs(ctx, &kafka.DescribeConfigsRequest{Resources: []kafka.DescribeConfigRequestResource{{
		ResourceType: kafka.ResourceTypeTopic, ResourceName: topic, ConfigNames: []string{"message.timestamp.type"}}}})
	if err != nil {
		return "", fmt.Errorf("describe %s: %w", topic, err)
	}
	for _, r := range res.Resources {
		if r.Error != nil {
			return "", fmt.Errorf("describe %s: %w", topic, r.Error)
		}
		for _, e := range r.ConfigEntries {
			if e.ConfigName == "message.timestamp.type" {
				return e.ConfigValue, nil
			}
		}
	}
	return "", fmt.Errorf("describe %s: message.timestamp.type missing", topic)
}
