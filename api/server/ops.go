package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/usagemeter/usagemeter/schemas"
)

// Ops reads the pipeline's standing from Kafka for the admin page: each
// group's lag on the events topic (its committed offsets, which the
// consumer and the aggregator both commit after their writes) and the DLQ
// records by their usage.error tag.
type Ops struct {
	Client      *kafka.Client
	EventsTopic string
	DLQTopic    string
	Groups      []string // usage-consumer, usage-aggregator
	// DLQScan bounds the DLQ read per partition (the newest records);
	// counts then cover only those.
	DLQScan int64
}

// GroupLag is one group's records not yet committed on the events topic.
type GroupLag struct {
	Group     string
	Lag       int64
	Committed bool // false: the group committed nothing on some partition
}

// DLQTags counts DLQ records by tag over Scanned records (Total on the topic).
type DLQTags struct {
	Tags           []TagCount
	Scanned, Total int64
}

// TagCount is one tag's count.
type TagCount struct {
	Tag   string
	Count int64
}

func (o *Ops) partitions(ctx context.Context, topic string) ([]int, error) {
	md, err := o.Client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		return nil, fmt.Errorf("metadata of %s: %w", topic, err)
	}
	if len(md.Topics) != 1 || md.Topics[0].Error != nil {
		return nil, fmt.Errorf("metadata of %s: %v", topic, md.Topics)
	}
	var ps []int
	for _, p := range md.Topics[0].Partitions {
		ps = append(ps, p.ID)
	}
	slices.Sort(ps)
	return ps, nil
}

// offsets returns each partition's first and end offsets.
func (o *Ops) offsets(ctx context.Context, topic string, ps []int) (map[int][2]int64, error) {
	var reqs []kafka.OffsetRequest
	for _, p := range ps {
		reqs = append(reqs, kafka.FirstOffsetOf(p), kafka.LastOffsetOf(p))
	}
	res, err := o.Client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil {
		return nil, fmt.Errorf("list offsets of %s: %w", topic, err)
	}
	out := map[int][2]int64{}
	for _, po := range res.Topics[topic] {
		if po.Error != nil {
			return nil, fmt.Errorf("offsets of %s/%d: %w", topic, po.Partition, po.Error)
		}
		out[po.Partition] = [2]int64{po.FirstOffset, po.LastOffset}
	}
	return out, nil
}

// Lag returns each group's lag: Σ over partitions of end - committed (from
// the first offset where a partition has no commit).
func (o *Ops) Lag(ctx context.Context) ([]GroupLag, error) {
	ps, err := o.partitions(ctx, o.EventsTopic)
	if err != nil {
		return nil, err
	}
	ends, err := o.offsets(ctx, o.EventsTopic, ps)
	if err != nil {
		return nil, err
	}
	var out []GroupLag
	for _, g := range o.Groups {
		res, err := o.Client.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: g, Topics: map[string][]int{o.EventsTopic: ps}})
		if err == nil && res.Error != nil {
			err = res.Error
		}
		if err != nil {
			return nil, fmt.Errorf("committed offsets of %s: %w", g, err)
		}
		gl := GroupLag{Group: g, Committed: true}
		for _, p := range res.Topics[o.EventsTopic] {
			if p.Error != nil {
				return nil, fmt.Errorf("committed offset of %s on %s/%d: %w", g, o.EventsTopic, p.Partition, p.Error)
			}
			fe := ends[p.Partition]
			from := p.CommittedOffset
			if from < 0 {
				from, gl.Committed = fe[0], false
			}
			gl.Lag += max(fe[1]-from, 0)
		}
		out = append(out, gl)
	}
	return out, nil
}

// DLQCounts counts the DLQ's newest DLQScan records per partition by tag.
func (o *Ops) DLQCounts(ctx context.Context) (DLQTags, error) {
	var out DLQTags
	ps, err := o.partitions(ctx, o.DLQTopic)
	if err != nil {
		return out, err
	}
	ends, err := o.offsets(ctx, o.DLQTopic, ps)
	if err != nil {
		return out, err
	}
	counts := map[string]int64{}
	for _, p := range ps {
		first, end := ends[p][0], ends[p][1]
		out.Total += end - first
		at := max(first, end-o.DLQScan)
		for at < end {
			res, err := o.Client.Fetch(ctx, &kafka.FetchRequest{Topic: o.DLQTopic, Partition: p, Offset: at, MaxBytes: 4 << 20, MaxWait: 100 * time.Millisecond})
			if err == nil && res.Error != nil {
				err = res.Error
			}
			if err != nil {
				return out, fmt.Errorf("read %s/%d at %d: %w", o.DLQTopic, p, at, err)
			}
			next := at
			for {
				r, err := res.Records.ReadRecord()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					return out, fmt.Errorf("read %s/%d: %w", o.DLQTopic, p, err)
				}
				if r.Offset < at || r.Offset >= end {
					continue // a batch may start before the offset asked for
				}
				tag := "(none)"
				for _, h := range r.Headers {
					if h.Key == schemas.HeaderError {
						tag = string(h.Value)
					}
				}
				counts[tag]++
				out.Scanned++
				next = r.Offset + 1
			}
			if next == at { // nothing readable (e.g. compacted away): stop here
				break
			}
			at = next
		}
	}
	for t, n := range counts {
		out.Tags = append(out.Tags, TagCount{Tag: t, Count: n})
	}
	slices.SortFunc(out.Tags, func(a, b TagCount) int {
		if a.Count != b.Count {
			return int(b.Count - a.Count)
		}
		return cmpString(a.Tag, b.Tag)
	})
	return out, nil
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// WithOps adds lag and DLQ counts to the admin page.
func (s *Server) WithOps(o *Ops) *Server {
	s.ops = o
	return s
}
