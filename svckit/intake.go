package svckit

import (
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/usagemeter/usagemeter/schemas"
)

// Intake decides whether a usage.events record is counted. The consumer and
// the aggregator both use it, so a record is either in the raw table and in
// every aggregate, or in neither (the consumer puts it in the DLQ):
//
//   - the contract's limits are the schemas defaults, never per-service
//     config, so two services cannot be configured to disagree;
//   - "too far in the future" is judged against the record's Kafka
//     timestamp, not the reader's clock, so a service that reads the record
//     a minute or a day later decides exactly as the first one did;
//   - the routing rule (schemas.CheckRouting) keeps each tenant on one
//     partition.
//
// An Intake is not safe for concurrent use.
type Intake struct {
	v   *schemas.Validator
	ref time.Time // the record time the validator's clock returns
}

// NewIntake returns an Intake.
func NewIntake() *Intake {
	in := &Intake{}
	in.v = schemas.NewValidator(schemas.WithClock(func() time.Time { return in.ref }))
	return in
}

// Decode validates m, read from a topic of `partitions` partitions, and
// returns its event, or a *schemas.ValidationError saying why it is not
// counted.
func (in *Intake) Decode(m kafka.Message, partitions int) (schemas.UsageEvent, error) {
	in.ref = m.Time
	if m.Time.Unix() <= 0 {
		// A record without a timestamp (Kafka's -1): a reference far
		// enough ahead that the future-skew rule accepts any valid
		// timestamp, the same for every reader.
		in.ref = time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC)
	}
	e, err := in.v.Decode(m.Value)
	if err != nil {
		return e, err
	}
	return e, schemas.CheckRouting(m.Key, e.TenantID, m.Partition, partitions)
}
