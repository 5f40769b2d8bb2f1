package quota

import (
	"context"
	"fmt"

	"github.com/usagemeter/usagemeter/producer"
	"github.com/usagemeter/usagemeter/schemas"
)

// Every use of the producer SDK is in this file.

// ProducerTracker publishes usage events through the producer SDK. With a
// sync Publisher (the default) Track returns once the broker acknowledged
// the event; with producer.WithAsync it returns once queued and delivery
// failures reach the Publisher's callback instead.
type ProducerTracker struct {
	P *producer.Publisher
}

// NewProducerTracker wraps p.
func NewProducerTracker(p *producer.Publisher) *ProducerTracker { return &ProducerTracker{P: p} }

// Track publishes e. Publish fills e.ID (a UUIDv7, the idempotency key)
// and e.Timestamp when empty; e is updated so the caller can retry with the
// same id.
func (t *ProducerTracker) Track(ctx context.Context, e *schemas.UsageEvent) error {
	evs := [1]schemas.UsageEvent{*e}
	err := t.P.Publish(ctx, evs[:]...)
	*e = evs[0]
	if err != nil {
		return fmt.Errorf("track %s/%s: %w", e.TenantID, e.FeatureType, err)
	}
	return nil
}
