package svckit

import (
	"context"
	"fmt"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/usagemeter/usagemeter/schemas"
)

// Intake decides whether a usage.events record is counted. The consumer and
// the aggregator both use it, so a record is either in the raw table and in
// every aggregate, or in neither (the consumer puts it in the DLQ, or
// re-routes it when only its routing is wrong):
//
//   - the contract's limits are the schemas defaults, never per-service
//     config, so two services cannot be configured to disagree;
//   - "too far in the future" is judged against the time the broker
//     appended the record (DecodeRecord, on a LogAppendTime topic), not
//     the reader's clock nor the publisher's, so a service that reads the
//     record a minute or a day later decides exactly as the first one did;
//   - the routing rule (schemas.CheckRouting) keeps each tenant on one
//     partition.
//
// An Intake is not safe for concurrent use.
type Intake struct {
	v     *schemas.Validator
	ref   time.Time    // the time the validator's clock returns
	clock *brokerClock // nil: judge by the record's own timestamp
	alias bool         // DecodeView/DecodeRecordView read m.Value in place
}

// IntakeOption configures an Intake.
type IntakeOption func(*Intake)

// WithBrokerClock makes DecodeRecord judge "at most 5 minutes in the
// future" against the broker's append time of each record of topic, which
// must be a LogAppendTime topic (EventTopicConfig; check it with
// TimestampType and leave this option out for a CreateTime topic, whose
// times are the publishers').
func WithBrokerClock(brokers []string, topic string) IntakeOption {
	return func(in *Intake) { in.clock = newBrokerClock(brokers, topic) }
}

// WithAliasedValues makes DecodeView and DecodeRecordView decode m.Value in
// place (schemas.WithAliasedInput): the view's strings are substrings of
// m.Value, with no copy per record. The caller promises never to modify a
// message's Value afterwards; kafka-go gives every message a Value of its
// own and never writes to it again.
func WithAliasedValues() IntakeOption { return func(in *Intake) { in.alias = true } }

// NewIntake returns an Intake.
func NewIntake(opts ...IntakeOption) *Intake {
	in := &Intake{}
	for _, o := range opts {
		o(in)
	}
	vopts := []schemas.Option{schemas.WithClock(func() time.Time { return in.ref })}
	if in.alias {
		vopts = append(vopts, schemas.WithAliasedInput())
	}
	in.v = schemas.NewValidator(vopts...)
	return in
}

// Decode validates m, read from a topic of `partitions` partitions, and
// returns its event, or a *schemas.ValidationError saying why it is not
// counted. It judges the future rule against m.Time, the time kafka-go
// reports, which is the publisher's clock even on a LogAppendTime topic
// (kafka-go v0.4.51 ignores the LogAppendTime flag): use DecodeRecord.
func (in *Intake) Decode(m kafka.Message, partitions int) (schemas.UsageEvent, error) {
	in.setRecordRef(m)
	e, err := in.v.Decode(m.Value)
	if err != nil {
		return e, err
	}
	return e, schemas.CheckRouting(m.Key, e.TenantID, m.Partition, partitions)
}

// DecodeView is Decode into dst (schemas.Validator.DecodeView): the same
// verdicts, without a metadata map or a big.Int per event.
func (in *Intake) DecodeView(m kafka.Message, partitions int, dst *schemas.EventView) error {
	in.setRecordRef(m)
	if err := in.v.DecodeView(m.Value, dst); err != nil {
		return err
	}
	return schemas.CheckRouting(m.Key, dst.TenantID, m.Partition, partitions)
}

// setRecordRef makes the validator's clock m's timestamp, for Decode.
func (in *Intake) setRecordRef(m kafka.Message) {
	in.ref = m.Time
	if m.Time.Unix() <= 0 {
		// A record without a timestamp (Kafka's -1): a reference far
		// enough ahead that the future-skew rule accepts any valid
		// timestamp, the same for every reader.
		in.ref = time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC)
	}
}

// lastReference is the validator's clock while DecodeRecord decodes: every
// timestamp up to 2105 (ClickHouse's last DateTime year) passes the future
// rule there, and later ones fail it with the tag they always had.
func lastReference() time.Time { return time.Date(2105, 12, 31, 23, 55, 0, 0, time.UTC) }

// DecodeRecord is Decode with the future rule judged against the broker's
// append time of m (see WithBrokerClock): an event is refused as
// timestamp_too_far_in_future when its timestamp is more than
// schemas.DefaultMaxFutureSkew after the time the broker appended it. The
// order is: the contract, then the future rule (for a misrouted record
// too: it is judged at its own append time, not its later copy's), then
// routing.
//
// Cost: a record needs a request only when no earlier answer for its
// partition decides it. Answers are kept per partition as proven bounds; a
// publisher in step with the broker costs at most one ListOffsets per
// partition for every 2.5 minutes of event time (the probe proves the
// append time is no older than event time - 2.5 min, which covers the
// next 2.5 minutes of events), and a refusal costs three requests (end
// offset, then the time) and answers every later record of the partition
// below that end offset with a timestamp at least as far ahead, so a
// publisher whose clock is hours ahead costs about three requests per
// fetch, not per event. Lookups counts them.
//
// An error wrapping ErrBrokerTime is no verdict: the broker did not answer;
// try the record again.
func (in *Intake) DecodeRecord(ctx context.Context, m kafka.Message, partitions int) (schemas.UsageEvent, error) {
	if in.clock == nil {
		return in.Decode(m, partitions)
	}
	in.ref = lastReference()
	e, err := in.v.Decode(m.Value)
	if err != nil {
		return e, err
	}
	return e, in.judge(ctx, m, partitions, e.TenantID, e.Timestamp)
}

// DecodeRecordView is DecodeRecord into dst (schemas.Validator.DecodeView):
// the same verdicts by the same broker-clock rule, without a metadata map
// or a big.Int per event. On a routing or future-rule error dst holds the
// decoded event (a misrouted event's tenant names its partition); on a
// contract error it is cleared.
func (in *Intake) DecodeRecordView(ctx context.Context, m kafka.Message, partitions int, dst *schemas.EventView) error {
	if in.clock == nil {
		return in.DecodeView(m, partitions, dst)
	}
	in.ref = lastReference()
	if err := in.v.DecodeView(m.Value, dst); err != nil {
		return err
	}
	return in.judge(ctx, m, partitions, dst.TenantID, dst.Timestamp)
}

// judge applies the broker-clock future rule, then routing, to a record
// that passed the contract.
func (in *Intake) judge(ctx context.Context, m kafka.Message, partitions int, tenant string, ts time.Time) error {
	// A misrouted record is judged too, before its routing error: its
	// re-routed copy is appended later, so judging only the copy would
	// loosen the rule by the consumer's lag. A copy of an original that
	// passed passes as well (later append, same timestamp).
	routing := schemas.CheckRouting(m.Key, tenant, m.Partition, partitions)
	skew := schemas.DefaultMaxFutureSkew
	ok, err := in.clock.appendedSince(ctx, m.Partition, m.Offset, ts.Add(-skew), ts.Add(-skew/2))
	if err != nil {
		return err
	}
	if !ok {
		return &schemas.ValidationError{Code: schemas.CodeTimestampTooFarInFuture, Field: "timestamp",
			Reason: fmt.Sprintf("%s is more than %s ahead of the time the broker appended the record", ts.Format(time.RFC3339Nano), skew)}
	}
	return routing
}

// Lookups returns how many ListOffsets requests DecodeRecord has made.
func (in *Intake) Lookups() int64 {
	if in.clock == nil {
		return 0
	}
	return in.clock.lookups.Load()
}
