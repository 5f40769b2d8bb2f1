package quota

import (
	"context"
	"fmt"
	"time"

	"github.com/usagemeter/usagemeter/producer"
	"github.com/usagemeter/usagemeter/schemas"
)

// Every use of the producer SDK is in this file.

// ProducerTracker publishes usage events through the producer SDK. With a
// sync Publisher (the default) Track returns once the broker acknowledged
// the event; with producer.WithAsync it returns once queued and delivery
// failures reach the Publisher's callback instead (give it
// Middleware.Requeue, or a closure calling Outbox.Requeue, so that they
// are retried).
type ProducerTracker struct {
	P *producer.Publisher
	// Async: P was made with producer.WithAsync, so a nil error means
	// queued, not acknowledged. The outbox then reports no acknowledgement
	// and tracked pending does not expire before its period ends.
	Async bool
}

// IsAsync reports Async (the outbox asks).
func (t *ProducerTracker) IsAsync() bool { return t.Async }

// NewProducerTracker wraps p.
func NewProducerTracker(p *producer.Publisher) *ProducerTracker { return &ProducerTracker{P: p} }

// Track publishes e. It fills e.ID (schemas.NewID, a UUIDv7: the
// idempotency key) and e.Timestamp first when they are empty, so the
// caller knows the id to retry with even when publishing fails.
func (t *ProducerTracker) Track(ctx context.Context, e *schemas.UsageEvent) error {
	if e.ID == "" {
		e.ID = schemas.NewID()
	}
	if e.Timestamp.IsZero() {
		e.Timestamp = time.Now().UTC()
	}
	if err := t.P.Publish(ctx, *e); err != nil {
		return fmt.Errorf("track %s/%s (id %s): %w", e.TenantID, e.FeatureType, e.ID, err)
	}
	return nil
}

// TrackBatch publishes events in one call (the Outbox delivers this way).
func (t *ProducerTracker) TrackBatch(ctx context.Context, events []schemas.UsageEvent) error {
	if err := t.P.Publish(ctx, events...); err != nil {
		return fmt.Errorf("track %d events: %w", len(events), err)
	}
	return nil
}
