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
	client := &kafka.Client{Addr: kafka.TCP(s.cfg.Brokers...), Timeout: 10 * time.Second}
	md, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{s.cfg.AssignmentTopic}})
	if err != nil {
		return fmt.Errorf("metadata of %s: %w", s.cfg.AssignmentTopic, err)
	}
	if len(md.Topics) == 0 || md.Topics[0].Error != nil {
		s.log.Warn("plan assignment topic unavailable: plans come from the config file only", zap.String("topic", s.cfg.AssignmentTopic))
		return nil
	}
	type span struct{ first, end int64 }
	spans := map[int]span{}
	// A topic created a moment ago can answer NOT_LEADER for a while.
	if err := s.retry(ctx, "read plan assignment offsets", func(ctx context.Context) error {
		for _, p := range md.Topics[0].Partitions {
			first, end, err := offsetsOf(ctx, client, s.cfg.AssignmentTopic, p.ID)
			if err != nil {
				return err
			}
			spans[p.ID] = span{first, end}
		}
		return nil
	}); err != nil {
		return err
	}
	for _, p := range md.Topics[0].Partitions {
		first, end := spans[p.ID].first, spans[p.ID].end
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: s.cfg.Brokers, Topic: s.cfg.AssignmentTopic, Partition: p.ID, MaxWait: 250 * time.Millisecond})
		if err := r.SetOffset(first); err != nil {
			r.Close()
			return err
		}
		for end > first { // catch up synchronously
			m, err := r.FetchMessage(ctx)
			if err != nil {
				r.Close()
				return fmt.Errorf("read %s: %w", s.cfg.AssignmentTopic, err)
			}
			s.assign(m)
			if m.Offset+1 >= end {
				break
			}
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
					s.m.assignErrors.Inc()
					s.log.Warn("ignored plan assignment", zap.Error(err))
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
	client := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 10 * time.Second}
	md, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		return 0, fmt.Errorf("metadata of %s: %w", topic, err)
	}
	if len(md.Topics) == 0 || md.Topics[0].Error != nil {
		log.Warn("plan assignment topic unavailable: plans come from the config file only", zap.String("topic", topic))
		return 0, nil
	}
	n := 0
	for _, part := range md.Topics[0].Partitions {
		first, end, err := offsetsOf(ctx, client, topic, part.ID)
		if err != nil {
			return n, err
		}
		if end <= first {
			continue
		}
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: topic, Partition: part.ID, MaxWait: 250 * time.Millisecond})
		if err := r.SetOffset(first); err != nil {
			r.Close()
			return n, err
		}
		for {
			m, err := r.FetchMessage(ctx)
			if err != nil {
				r.Close()
				return n, fmt.Errorf("read %s: %w", topic, err)
			}
			a, err := parseAssignment(m)
			if err == nil {
				err = p.Assign(a.tenant, a.a)
			}
			if err != nil {
				log.Warn("ignored plan assignment", zap.Error(err))
			} else {
				n++
			}
			if m.Offset+1 >= end {
				break
			}
		}
		r.Close()
	}
	return n, nil
}

// assign applies one record directly (during the initial catch-up).
func (s *Service) assign(m kafka.Message) {
	a, err := parseAssignment(m)
	if err == nil {
		err = s.plans.Assign(a.tenant, a.a)
	}
	if err != nil {
		s.m.assignErrors.Inc()
		s.log.Warn("ignored plan assignment", zap.Error(err))
	}
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
