// Package schemas is the wire contract of the usage pipeline.
//
// A UsageEvent is one JSON object per Kafka message on the topic
// usage.events, keyed by tenant_id. The JSON Schema in
// usage_event.schema.json (draft 2020-12) is the contract for producers in
// any language; Decode and Validate enforce the same rules in Go and report
// a *ValidationError whose Tag is a stable machine-readable code such as
// "missing_field:tenant_id" or "invalid_quantity". The shared test vectors in
// testdata/vectors.json pin both down, so that SDKs in other languages can
// run the same cases.
//
// Quantities are exact decimals of at most 18 integer and 9 fractional
// digits (QuantityIntDigits, QuantityScale); float64 never appears in the
// contract. Totals (aggregates, QuotaState usage and limits) are ClickHouse
// Decimal(38, 9), 29 integer digits, where a sum() past 10^29 wraps
// silently: capping one event at 10^18 means a total can only overflow
// after 10^11 maximal events of one tenant, meter and period (and the
// aggregator refuses, as aggregate_overflow, an event that would). On the wire a quantity may be a JSON string ("1.25", preferred,
// because JSON parsers in other languages turn numbers into floats) or a
// JSON number (1.25), which is read from its text, not through a float.
//
// Readers that handle millions of events use Validator.DecodeView instead
// of Decode: the same verdict for every input (the same *ValidationError,
// checked by TestDecodeViewMatchesDecode over the shared vectors and the
// differential corpus, and by FuzzDecodeViewMatchesDecode), decoded into a
// caller-owned EventView that is refilled per event: the quantity as
// Fixed9 (exact units of 10^-9 in 128 bits, convertible to and from
// decimal.Decimal and written as ClickHouse Decimal128 by
// AppendDecimal128), the metadata as a flat list in document order, and
// one allocation per event (the message's string copy; none with
// WithAliasedInput, for callers that never modify the message afterwards).
// EventView.UsageEvent gives the public type back where one is needed.
//
// The other contracts follow the same pattern (JSON Schema, decoder with the
// same error tags, shared vectors): QuotaState on usage.quota-state
// (quota_state.go) and UsageAlert on usage.alerts (usage_alert.go), whose
// deterministic AlertID makes each threshold crossing one message key.
package schemas
