package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/segmentio/kafka-go"
	"go.uber.org/zap"

	"github.com/usagemeter/usagemeter/aggregator/aggstore"
	"github.com/usagemeter/usagemeter/aggregator/reconcile"
	"github.com/usagemeter/usagemeter/aggregator/service"
	"github.com/usagemeter/usagemeter/aggregator/state"
	"github.com/usagemeter/usagemeter/schemas/plans"
	"github.com/usagemeter/usagemeter/svckit/chconn"
)

func reconcileCmd(ctx context.Context, cfg Config, p *plans.Config, log *zap.Logger, fromS, toS, rawGroup string, force bool) error {
	from, err := time.Parse(time.DateOnly, fromS)
	if err != nil {
		return fmt.Errorf("--from %q: want YYYY-MM-DD", fromS)
	}
	to, err := time.Parse(time.DateOnly, toS)
	if err != nil {
		return fmt.Errorf("--to %q: want YYYY-MM-DD", toS)
	}
	if to.Before(from) {
		return errors.New("--to is before --from")
	}
	conn, err := chconn.Open(ctx, cfg.ClickHouse)
	if err != nil {
		return err
	}
	defer conn.Close()
	if !force {
		if err := safeToReconcile(ctx, cfg, aggstore.New(conn), rawGroup); err != nil {
			return fmt.Errorf("%w (use --force to run anyway)", err)
		}
	}
	// Compute with the plans the running aggregator had: the file plus
	// the run-time assignments.
	a := cfg.Aggregator
	n, err := service.LoadAssignments(ctx, a.Brokers, a.AssignmentTopic, p, log)
	if err != nil {
		return err
	}
	log.Info("plan assignments applied", zap.Int("records", n))
	rep, err := reconcile.Run(ctx, conn, p, from, to.AddDate(0, 0, 1), log)
	if err != nil {
		return err
	}
	if err := publishQuotas(ctx, a, p, rep.Quotas); err != nil {
		return fmt.Errorf("repaired rows are written, but publishing their quota states failed (run reconcile again): %w", err)
	}
	fmt.Printf("reconciled %s..%s: %d raw events; rows compared 1m=%d 1h=%d 1d=%d period=%d; repaired %d\n",
		rep.From.Format(time.DateOnly), rep.To.Format(time.DateOnly), rep.Events,
		rep.Compared[0], rep.Compared[1], rep.Compared[2], rep.Compared[3], rep.Total())
	return nil
}

// publishQuotas puts the repaired totals on the quota-state topic, so that
// quota caches and billing see the repair.
func publishQuotas(ctx context.Context, a service.Config, p *plans.Config, qs []state.Quota) error {
	if len(qs) == 0 {
		return nil
	}
	w := &kafka.Writer{Addr: kafka.TCP(a.Brokers...), Topic: a.QuotaTopic, Balancer: kafka.Murmur2Balancer{},
		RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond}
	defer w.Close()
	now := time.Now().UTC()
	msgs := make([]kafka.Message, len(qs))
	for i, q := range qs {
		st := service.QuotaState(p, q, now)
		msgs[i] = kafka.Message{Key: []byte(st.Key()), Value: st.AppendJSON(nil)}
	}
	return w.WriteMessages(ctx, msgs...)
}

// safeToReconcile refuses while the aggregator runs (it would overwrite
// repairs of open rows from its memory) and while the raw consumer lags
// behind what the aggregator has applied (the raw table would miss events
// the aggregates rightly include).
func safeToReconcile(ctx context.Context, cfg Config, store *aggstore.Store, rawGroup string) error {
	a := cfg.Aggregator
	client := &kafka.Client{Addr: kafka.TCP(a.Brokers...), Timeout: 10 * time.Second}
	res, err := client.DescribeGroups(ctx, &kafka.DescribeGroupsRequest{GroupIDs: []string{a.GroupID}})
	if err != nil {
		return fmt.Errorf("describe group %s: %w", a.GroupID, err)
	}
	for _, g := range res.Groups {
		if len(g.Members) > 0 {
			return fmt.Errorf("usage-aggregator group %s has %d running members: stop them first", a.GroupID, len(g.Members))
		}
	}
	cps, err := store.Checkpoints(ctx, a.GroupID, a.Topic)
	if err != nil {
		return err
	}
	parts := make([]int, 0, len(cps))
	for _, c := range cps {
		parts = append(parts, int(c.Partition))
	}
	off, err := client.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: rawGroup, Topics: map[string][]int{a.Topic: parts}})
	if err != nil {
		return fmt.Errorf("offsets of %s: %w", rawGroup, err)
	}
	committed := map[int]int64{}
	for _, po := range off.Topics[a.Topic] {
		committed[po.Partition] = po.CommittedOffset
	}
	for _, c := range cps {
		if committed[int(c.Partition)] < c.Offset+1 {
			return fmt.Errorf("raw consumer group %s is behind the aggregator on partition %d (committed %d, aggregated through %d)",
				rawGroup, c.Partition, committed[int(c.Partition)], c.Offset)
		}
	}
	return nil
}
