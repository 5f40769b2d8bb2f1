package service

import (
	"context"
	"fmt"
	"time"

	"github.com/segmentio/kafka-go"
	"go.uber.org/zap"

	"github.com/usagemeter/usagemeter/schemas/plans"
)

// assignment is one record of the compacted topic usage.plan-assignments
// (format: plans.ParseAssignmentRecord).
type assignment struct {
	tenant string
	a      *plans.Assignment
}

func parseAssignment(m kafka.Message) (assignment, error) {
	tenant, a, err := plans.ParseAssignmentRecord(m.Key, m.Value)
	if err != nil {
		return assignment{}, fmt.Errorf("offset %d: %w", m.Offset, err)
	}
	return assignment{tenant: tenant, a: a}, nil
}

// followAssignments reads the assignment topic from its start: everything
// up to the current end is applied to s.plans before it returns, so that
// aggregation starts with every known plan; later records arrive on ch.
func (s *Service) followAssignments(ctx context.Context, ch chan<- assignment) error {
	ignored := func(err error) {
		s.m.assignErrors.Inc()
		s.log.Warn("ignored plan assignment", zap.Error(err))
	}
	var next map[int]int64
	// A topic created a moment ago can answer NOT_LEADER for a while.
	if err := s.retry(ctx, "read plan assignments", func(ctx context.Context) error {
		var err error
		next, _, err = catchUpAssignments(ctx, s.cfg.Brokers, s.cfg.AssignmentTopic, s.plans, s.log, ignored)
		return err
	}); err != nil {
		return err
	}
	for partition, offset := range next {
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: s.cfg.Brokers, Topic: s.cfg.AssignmentTopic, Partition: partition, MaxWait: 250 * time.Millisecond})
		if err := r.SetOffset(offset); err != nil {
			r.Close()
			return err
		}
		go func() {
			defer r.Close()
			for {
				m, err := r.FetchMessage(ctx)
				if err != nil {
					return
				}
				a, err := parseAssignment(m)
				if err != nil {
					ignored(err)
					continue
				}
				select {
				case ch <- a:
				case <-ctx.Done():
					return
				}
			}
		}()
	}
	return nil
}

// LoadAssignments applies every record of the plan assignment topic, up to
// its current end, to p: what a running aggregator knows, for a tool that
// must compute as it does (reconcile). It returns how many it applied.
func LoadAssignments(ctx context.Context, brokers []string, topic string, p *plans.Config, log *zap.Logger) (int, error) {
	_, n, err := catchUpAssignments(ctx, brokers, topic, p, log, func(err error) {
		log.Warn("ignored plan assignment", zap.Error(err))
	})
	return n, err
}

// catchUpAssignments applies the assignment topic's records, up to the end
// offsets it reads first, to p, and returns where each partition ends
// (where a follower starts) and how many records it applied. A record it
// cannot apply goes to ignored. A missing topic is no error: plans then
// come from the file only.
func catchUpAssignments(ctx context.Context, brokers []string, topic string, p *plans.Config, log *zap.Logger,
	ignored func(error)) (next map[int]int64, applied int, err error) {
	client := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 10 * time.Second}
	md, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		return nil, 0, fmt.Errorf("metadata of %s: %w", topic, err)
	}
	if len(md.Topics) == 0 || md.Topics[0].Error != nil {
		log.Warn("plan assignment topic unavailable: plans come from the config file only", zap.String("topic", topic))
		return nil, 0, nil
	}
	next = make(map[int]int64, len(md.Topics[0].Partitions))
	for _, part := range md.Topics[0].Partitions {
		first, end, err := offsetsOf(ctx, client, topic, part.ID)
		if err != nil {
			return nil, applied, err
		}
		next[part.ID] = end
		if end <= first {
			continue
		}
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: topic, Partition: part.ID, MaxWait: 250 * time.Millisecond})
		if err := r.SetOffset(first); err != nil {
			r.Close()
			return nil, applied, err
		}
		for {
			m, err := r.FetchMessage(ctx)
			if err != nil {
				r.Close()
				return nil, applied, fmt.Errorf("read %s: %w", topic, err)
			}
			a, err := parseAssignment(m)
			if err == nil {
				err = p.Assign(a.tenant, a.a)
			}
			if err != nil {
				ignored(err)
			} else {
				applied++
			}
			if m.Offset+1 >= end {
				break
			}
		}
		r.Close()
	}
	return next, applied, nil
}

// offsetsOf returns the first and the end (next) offset of a partition.
func offsetsOf(ctx context.Context, client *kafka.Client, topic string, partition int) (first, end int64, err error) {
	res, err := client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{
		topic: {kafka.FirstOffsetOf(partition), kafka.LastOffsetOf(partition)}}})
	if err != nil {
		return 0, 0, fmt.Errorf("offsets of %s/%d: %w", topic, partition, err)
	}
	for _, po := range res.Topics[topic] {
		if po.Error != nil {
			return 0, 0, po.Error
		}
		return po.FirstOffset, po.LastOffset, nil
	}
	return 0, 0, fmt.Errorf("offsets of %s/%d: no answer", topic, partition)
}
