// Package producer is the Go SDK for publishing usage events.
//
// A Publisher validates each event against the contract in package schemas
// (an invalid event is refused with its *schemas.ValidationError and never
// published), fills the idempotency key (a UUIDv7) and the timestamp when
// they are empty, and writes the events as JSON to the topic usage.events,
// keyed by tenant_id and partitioned with the Murmur2 partitioner that the
// Java client and franz-go use, so events from any language land on the
// same partition for the same tenant.
//
// Delivery is at-least-once (kafka-go has no idempotent producer): a retried
// batch may be written twice. That is safe because the consumer and the
// aggregator count each (tenant_id, id) once, as long as the id is fixed
// before the first attempt: build events with NewEvent (or set ID with
// schemas.NewID), or retry with the Events of the *PublishError, never by
// publishing a fresh value without an id again.
//
// Publish checks events with the consumer's own rules (schemas.Validator,
// AppendEvent), encoded size included, so an event it accepts never lands
// in the DLQ, and one it refuses carries the tag the DLQ would have shown.
package producer
