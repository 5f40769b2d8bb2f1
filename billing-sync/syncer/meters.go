package syncer

import (
	"context"
	"errors"
	"fmt"
	"sort"
)

// CheckMeters reads each meter_events meter's settings from Stripe
// (GET /v1/billing/meters/{id}) and refuses a configuration that cannot
// bill right with them, naming the key and the reason:
//   - default_aggregation.formula must be sum: a window's corrections are
//     further events whose values add up (count would count them, last
//     would keep one);
//   - no event_time_window: a pre-aggregated meter keeps only the newest
//     event of each hour or day, so a correction would replace the
//     window's first event instead of adding to it;
//   - the meter's event_name must be the configured one, and the meter
//     active (an inactive meter refuses events).
//
// Settings are immutable after creation in Stripe, so a check at start
// holds for the process's life.
func (s *Syncer) CheckMeters(ctx context.Context) error {
	names := make([]string, 0, len(s.cfg.Meters))
	for name := range s.cfg.Meters {
		names = append(names, name)
	}
	sort.Strings(names)
	var errs []error
	for _, name := range names {
		m := s.cfg.Meters[name]
		if m.Mode != MeterEvents {
			continue
		}
		key := "billing.meters." + name
		ms, err := s.stripe.Meter(ctx, m.MeterID)
		if err != nil {
			return fmt.Errorf("%s.meter_id: read meter %s: %w", key, m.MeterID, err)
		}
		switch {
		case ms.EventName != m.EventName:
			errs = append(errs, fmt.Errorf("%s.event_name: %q, but meter %s takes %q", key, m.EventName, m.MeterID, ms.EventName))
		case ms.Status != "" && ms.Status != "active":
			errs = append(errs, fmt.Errorf("%s.meter_id: meter %s is %s: it refuses events", key, m.MeterID, ms.Status))
		case ms.Formula != "sum":
			errs = append(errs, fmt.Errorf("%s.mode: meter_events needs a meter whose formula is sum; %s aggregates by %q (corrections would not add up): use a sum meter", key, m.MeterID, ms.Formula))
		case ms.EventTimeWindow != "":
			errs = append(errs, fmt.Errorf("%s.mode: meter %s pre-aggregates by %s (the newest event of a window replaces the rest), so corrections would replace, not add: use a meter without event_time_window", key, m.MeterID, ms.EventTimeWindow))
		}
	}
	return errors.Join(errs...)
}
