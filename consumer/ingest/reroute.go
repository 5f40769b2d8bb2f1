package ingest

import (
	"context"
	"errors"
	"fmt"

	"github.com/segmentio/kafka-go"
	"go.uber.org/zap"

	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/svckit"
)

// publishReroutes writes b's re-routed copies, acks=all. Transient errors
// are retried for ever (nothing is committed past them). A copy the broker
// refuses for good because it is too large (the copy adds a key and two
// headers, so an original within ~100 bytes of the size limit makes one)
// would otherwise be retried for ever and stop every partition: its
// original goes to the DLQ instead, tagged reroute_too_large, and its
// partition moves on.
func (c *Consumer) publishReroutes(ctx context.Context, b *batch) error {
	pending := make([]int, len(b.reroute)) // indexes into b.reroute still to write
	for i := range pending {
		pending[i] = i
	}
	var refused []kafka.Message // DLQ records of copies refused for good, not yet written
	return c.retry(ctx, "re-route misrouted events", c.m.rerouteErrors, func(ctx context.Context) error {
		if len(pending) > 0 {
			msgs := make([]kafka.Message, len(pending))
			for j, i := range pending {
				msgs[j] = b.reroute[i]
			}
			err := c.rerouteW.WriteMessages(ctx, msgs...)
			failed, anyTooLarge := pending, tooLarge(err)
			var we kafka.WriteErrors
			if errors.As(err, &we) && len(we) == len(pending) {
				failed = failed[:0:0]
				for j, e := range we {
					if e != nil {
						failed = append(failed, pending[j])
						anyTooLarge = anyTooLarge || tooLarge(e)
					}
				}
			}
			switch {
			case err == nil:
				pending = nil
			case !anyTooLarge:
				pending = failed // only what failed is written again
				return err
			default:
				// The broker refuses a whole produce batch for one
				// oversized record: write each failed copy alone to tell
				// the oversized ones from their neighbours.
				var again []int
				var lastErr error
				for _, i := range failed {
					err := c.rerouteW.WriteMessages(ctx, b.reroute[i])
					switch {
					case err == nil:
					case tooLarge(err):
						refused = append(refused, c.rerouteRefused(b.rerouteSrc[i], b.reroute[i], err))
					default:
						again, lastErr = append(again, i), err
					}
				}
				pending = again
				if lastErr != nil {
					return lastErr
				}
			}
		}
		if len(refused) > 0 {
			if err := c.dlq.Write(ctx, refused...); err != nil {
				return fmt.Errorf("DLQ the originals of %d re-routed copies too large for %s: %w", len(refused), c.cfg.Topic, err)
			}
			refused = nil
		}
		return nil
	})
}

// rerouteRefused is the DLQ record for original m whose re-routed copy
// the broker refused for good (err), and counts and logs it.
func (c *Consumer) rerouteRefused(m, cp kafka.Message, err error) kafka.Message {
	c.m.rerouteTooLarge.Inc()
	reason := fmt.Sprintf("valid but misrouted event: its re-routed copy (%d bytes of value, %d headers, key %q) is too large for %s (%v); "+
		"it is in neither the raw table nor the aggregates: republish it keyed by its tenant_id with fewer or smaller headers, "+
		"or raise the topic's max.message.bytes",
		len(cp.Value), len(cp.Headers), cp.Key, c.cfg.Topic, err)
	c.log.Error("re-routed copy refused by the broker as too large; the original goes to the DLQ",
		zap.Int("partition", m.Partition), zap.Int64("offset", m.Offset), zap.String("tenant_id", string(cp.Key)), zap.Error(err))
	return svckit.DeadLetter(m, "", string(schemas.CodeRerouteTooLarge), reason)
}

// tooLarge reports whether err says the broker (or kafka-go's own
// BatchBytes check) refuses a record for its size, which no retry changes.
func tooLarge(err error) bool {
	if err == nil {
		return false
	}
	var we kafka.WriteErrors
	if errors.As(err, &we) {
		for _, e := range we {
			if tooLarge(e) {
				return true
			}
		}
		return false
	}
	var mtl kafka.MessageTooLargeError
	if errors.As(err, &mtl) {
		return true
	}
	var ke kafka.Error
	return errors.As(err, &ke) && (ke == kafka.MessageSizeTooLarge || ke == kafka.RecordListTooLarge)
}
