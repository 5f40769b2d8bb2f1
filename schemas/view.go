package schemas

import "time"

// EventView is a decoded, valid UsageEvent in a caller-owned value that
// DecodeView refills, for readers that handle millions of events: no
// metadata map and no decimal.Decimal (a big.Int) per event. Its strings
// are substrings of one copy of the message, as Decode's are; they stay
// valid after the next DecodeView into the same view (only Metadata's
// backing array is reused), so keep a string, never the Metadata slice.
type EventView struct {
	ID          string
	TenantID    string
	UserID      string // "" when absent
	FeatureType string
	// Quantity is exact, in units of 10^-9, below 10^18 (18 integer digits).
	Quantity  Fixed9
	Timestamp time.Time // UTC
	// Metadata holds the entries in document order, keys unique.
	Metadata      []MetadataEntry
	BillingPeriod string // YYYY-MM, derived when absent
	SchemaVersion int
}

// MetadataEntry is one metadata key and its value.
type MetadataEntry struct{ Key, Value string }

// Meta returns the value of metadata key, and whether it is there. It
// scans the entries (at most MaxMetadataEntries).
func (v *EventView) Meta(key string) (string, bool) {
	for i := range v.Metadata {
		if v.Metadata[i].Key == key {
			return v.Metadata[i].Value, true
		}
	}
	return "", false
}

// UsageEvent returns the event as Decode returns it, for callers that need
// the public type (dead letters, re-routing, tests). Quantity is equal to
// Decode's (decimal.Equal; its exponent is -9) and Metadata is nil when
// there are no entries (Decode gives an empty map for "metadata": {}; both
// read, range and encode the same). It allocates the map and the decimal.
func (v *EventView) UsageEvent() UsageEvent {
	e := UsageEvent{ID: v.ID, TenantID: v.TenantID, UserID: v.UserID, FeatureType: v.FeatureType,
		Quantity: v.Quantity.Decimal(), Timestamp: v.Timestamp, BillingPeriod: v.BillingPeriod, SchemaVersion: v.SchemaVersion}
	if len(v.Metadata) > 0 {
		e.Metadata = make(map[string]string, len(v.Metadata))
		for _, m := range v.Metadata {
			e.Metadata[m.Key] = m.Value
		}
	}
	return e
}

// DecodeView is Decode into dst: the same verdict for every input (the
// same *ValidationError, code, field and reason) and, for a valid event,
// the same values, with the quantity as Fixed9 and the metadata as a flat
// list in document order appended to dst.Metadata[:0]. On error dst is
// cleared (keeping Metadata's backing array). One string copy of data is
// the only allocation for the usual event (more only for escaped strings
// or over 16 metadata entries); none with WithAliasedInput.
func (v *Validator) DecodeView(data []byte, dst *EventView) error {
	w := wireEvent{UsageEvent: UsageEvent{SchemaVersion: CurrentSchemaVersion}, flat: true, entries: dst.Metadata[:0], alias: v.alias}
	if err := v.decodeWire(data, &w); err != nil {
		*dst = EventView{Metadata: w.entries[:0]}
		return err
	}
	e := &w.UsageEvent
	*dst = EventView{ID: e.ID, TenantID: e.TenantID, UserID: e.UserID, FeatureType: e.FeatureType,
		Quantity: w.fixed, Timestamp: e.Timestamp, Metadata: w.entries, BillingPeriod: e.BillingPeriod, SchemaVersion: e.SchemaVersion}
	return nil
}
