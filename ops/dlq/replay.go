package dlq

import (
	"context"
	"fmt"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/segmentio/kafka-go"
	"go.uber.org/zap"

	"github.com/usagemeter/usagemeter/schemas"
)

// Outcomes of one letter in a replay, as recorded in dlq_replays.
const (
	Replayed        = "replayed"         // published to the events topic
	WouldReplay     = "would_replay"     // dry run: would have been published
	AlreadyStored   = "already_stored"   // (tenant_id, id) is in usage_events: replaying would count nothing
	AlreadyReplayed = "already_replayed" // this letter was replayed by an earlier run
	DuplicateLetter = "duplicate_letter" // another letter of this selection carries the same (tenant_id, id)
	StillInvalid    = "still_invalid"    // the (transformed) value still breaks the contract
)

// Replay headers on a replayed message, so that a reader of usage.events
// can tell a replay from a first publication.
const (
	HeaderReplayedFrom = "usage.replayed.from" // the letter's ID
	HeaderReplayID     = "usage.replay.id"
)

// Replayer puts repaired letters back on the events topic.
type Replayer struct {
	Brokers     []string
	EventsTopic string
	Conn        driver.Conn // usage_events and dlq_replays live here
	Validator   *schemas.Validator
	Log         *zap.Logger
	// WriteTimeout bounds the publication of one replay.
	WriteTimeout time.Duration
}

// Decision is what a replay did (or, dry, would do) with one letter.
type Decision struct {
	Letter  Letter
	Tenant  string
	EventID string
	Outcome string
	Detail  string
	Value   []byte // what was (or would be) published
}

// Report sums up a replay.
type Report struct {
	ReplayID  string
	DryRun    bool
	Decisions []Decision
	Counts    map[string]int // per outcome
}

// Replay decides, for each letter in order, whether replaying it can count
// anything, publishes those that can (unless dryRun) with their original
// key, and records every decision in dlq_replays (not in a dry run).
//
// Never double counting rests on the dedup identity (tenant_id, id): a
// letter whose identity is already in usage_events, or was replayed by an
// earlier run, or repeats another letter of this selection, is not
// published. What is published is deduplicated downstream anyway (raw
// table FINAL, the aggregator's dedup horizon); not publishing is what keeps
// an old identity from reaching the aggregator a second time.
func (r Replayer) Replay(ctx context.Context, letters []Letter, t Transform, dryRun bool) (Report, error) {
	rep := Report{ReplayID: schemas.NewID(), DryRun: dryRun, Counts: map[string]int{}}
	if r.Validator == nil {
		r.Validator = schemas.NewValidator()
	}
	decisions := make([]Decision, len(letters))
	byTenant := map[string][]string{}
	for i, l := range letters {
		d := Decision{Letter: l}
		value, err := t.Apply(l.Value)
		if err == nil {
			var ev schemas.UsageEvent
			ev, err = r.Validator.Decode(value)
			d.Tenant, d.EventID, d.Value = ev.TenantID, ev.ID, value
		}
		if err != nil {
			d.Outcome, d.Detail = StillInvalid, err.Error()
		} else {
			byTenant[d.Tenant] = append(byTenant[d.Tenant], d.EventID)
		}
		decisions[i] = d
	}
	stored, err := r.storedIDs(ctx, byTenant)
	if err != nil {
		return rep, err
	}
	done, err := r.replayedLetters(ctx, letters)
	if err != nil {
		return rep, err
	}
	seen := map[[2]string]string{}
	var msgs []kafka.Message
	var publish []int
	for i := range decisions {
		d := &decisions[i]
		if d.Outcome != "" {
			continue
		}
		ident := [2]string{d.Tenant, d.EventID}
		switch {
		case done[d.Letter.ID()] != "":
			d.Outcome, d.Detail = AlreadyReplayed, "by replay "+done[d.Letter.ID()]
		case stored[ident]:
			d.Outcome = AlreadyStored
		case seen[ident] != "":
			d.Outcome, d.Detail = DuplicateLetter, "same (tenant_id, id) as "+seen[ident]
		default:
			seen[ident] = d.Letter.ID()
			d.Outcome = WouldReplay
			if !dryRun {
				msgs = append(msgs, kafka.Message{Key: d.Letter.Key, Value: d.Value, Headers: replayHeaders(d.Letter, rep.ReplayID)})
				publish = append(publish, i)
			}
		}
	}
	if len(msgs) > 0 {
		if err := r.publish(ctx, msgs); err != nil {
			return rep, err
		}
		for _, i := range publish {
			decisions[i].Outcome = Replayed
		}
	}
	rep.Decisions = decisions
	for _, d := range decisions {
		rep.Counts[d.Outcome]++
	}
	if dryRun {
		return rep, nil
	}
	if err := r.record(ctx, rep, t); err != nil {
		return rep, err
	}
	r.Log.Info("replayed DLQ letters", zap.String("replay_id", rep.ReplayID), zap.Any("outcomes", rep.Counts))
	return rep, nil
}

func replayHeaders(l Letter, replayID string) []kafka.Header {
	var hs []kafka.Header
	for _, h := range l.Headers {
		// The refusal headers describe the letter, not the replayed event.
		switch h.Key {
		case schemas.HeaderError, schemas.HeaderReason, schemas.HeaderSourceTopic, schemas.HeaderSourcePartition,
			schemas.HeaderSourceOffset, schemas.HeaderFailedAt:
			continue
		}
		hs = append(hs, h)
	}
	return append(hs, kafka.Header{Key: HeaderReplayedFrom, Value: []byte(l.ID())},
		kafka.Header{Key: HeaderReplayID, Value: []byte(replayID)})
}

// publish writes with acks=all and the Murmur2 partitioner on the original
// key, as the SDK does: a letter keyed by its tenant lands on its tenant's
// partition, and one with another key (or none) is re-routed by the
// consumer, exactly as the original would have been.
func (r Replayer) publish(ctx context.Context, msgs []kafka.Message) error {
	timeout := r.WriteTimeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	w := &kafka.Writer{Addr: kafka.TCP(r.Brokers...), Topic: r.EventsTopic, Balancer: &kafka.Murmur2Balancer{},
		RequiredAcks: kafka.RequireAll, BatchTimeout: 5 * time.Millisecond, BatchSize: 1000, WriteTimeout: timeout}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	err := w.WriteMessages(ctx, msgs...)
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		// Some may be written: running the replay again is safe, because
		// the written ones are deduplicated by their identity.
		return fmt.Errorf("publish %d replayed events to %s (run the replay again: what was written is deduplicated): %w",
			len(msgs), r.EventsTopic, err)
	}
	return nil
}

// storedIDsQuery finds which ids of one tenant usage_events holds. Any row
// means stored: FINAL is not needed to know an identity exists.
type storedIDsQuery struct {
	Tenant string
	IDs    []string
}

func (q storedIDsQuery) toSQL() (string, []any) {
	return `SELECT DISTINCT id FROM usage_events WHERE tenant_id = ? AND has(?, id)`, []any{q.Tenant, q.IDs}
}

func (r Replayer) storedIDs(ctx context.Context, byTenant map[string][]string) (map[[2]string]bool, error) {
	out := map[[2]string]bool{}
	for tenant, ids := range byTenant {
		for start := 0; start < len(ids); start += 1000 {
			sql, args := storedIDsQuery{Tenant: tenant, IDs: ids[start:min(start+1000, len(ids))]}.toSQL()
			var rows []struct {
				ID string `ch:"id"`
			}
			if err := r.Conn.Select(ctx, &rows, sql, args...); err != nil {
				return nil, fmt.Errorf("look up stored events of tenant %s: %w", tenant, err)
			}
			for _, row := range rows {
				out[[2]string{tenant, row.ID}] = true
			}
		}
	}
	return out, nil
}

// replayedQuery lists letters of one store and topic an earlier run
// published.
type replayedQuery struct {
	Store, Topic string
}

func (q replayedQuery) toSQL() (string, []any) {
	return `SELECT dlq_partition, dlq_offset, any(replay_id) AS replay_id FROM dlq_replays
WHERE letter_store = ? AND dlq_topic = ? AND outcome = ? GROUP BY dlq_partition, dlq_offset`, []any{q.Store, q.Topic, Replayed}
}

func (r Replayer) replayedLetters(ctx context.Context, letters []Letter) (map[string]string, error) {
	out := map[string]string{}
	asked := map[[2]string]bool{}
	for _, l := range letters {
		k := [2]string{l.Store, l.Topic}
		if asked[k] {
			continue
		}
		asked[k] = true
		sql, args := replayedQuery{Store: l.Store, Topic: l.Topic}.toSQL()
		var rows []struct {
			Partition int32  `ch:"dlq_partition"`
			Offset    int64  `ch:"dlq_offset"`
			ReplayID  string `ch:"replay_id"`
		}
		if err := r.Conn.Select(ctx, &rows, sql, args...); err != nil {
			return nil, fmt.Errorf("read dlq_replays: %w", err)
		}
		for _, row := range rows {
			out[Letter{Store: l.Store, Topic: l.Topic, Partition: int(row.Partition), Offset: row.Offset}.ID()] = row.ReplayID
		}
	}
	return out, nil
}

const insertReplays = `INSERT INTO dlq_replays (replay_id, replayed_at, letter_store, dlq_topic, dlq_partition, dlq_offset,
 message_key, tenant_id, event_id, error_tag, transform, outcome, detail, target_topic)`

func (r Replayer) record(ctx context.Context, rep Report, t Transform) error {
	if len(rep.Decisions) == 0 {
		return nil
	}
	batch, err := r.Conn.PrepareBatch(ctx, insertReplays)
	if err != nil {
		return fmt.Errorf("prepare insert into dlq_replays: %w", err)
	}
	defer func() { _ = batch.Abort() }()
	now := time.Now().UTC().Truncate(time.Second)
	for _, d := range rep.Decisions {
		l := d.Letter
		if err := batch.Append(rep.ReplayID, now, l.Store, l.Topic, int32(l.Partition), l.Offset, string(l.Key), d.Tenant,
			d.EventID, l.Tag, t.String(), d.Outcome, d.Detail, r.EventsTopic); err != nil {
			return fmt.Errorf("append to dlq_replays batch: %w", err)
		}
	}
	if err := batch.Send(); err != nil {
		return fmt.Errorf("record %d decisions of replay %s in dlq_replays: %w", len(rep.Decisions), rep.ReplayID, err)
	}
	return nil
}
