package schemas

// Kafka header names on every message a service diverts from usage.events
// (the DLQ, the late topic). They are part of the wire contract: operators
// and tools in any language read them to learn why an event was refused.
const (
	HeaderError           = "usage.error"            // stable tag, e.g. missing_field:tenant_id
	HeaderReason          = "usage.error.reason"     // human-readable detail
	HeaderSourceTopic     = "usage.source.topic"     // where the message was read
	HeaderSourcePartition = "usage.source.partition" //
	HeaderSourceOffset    = "usage.source.offset"    //
	HeaderFailedAt        = "usage.failed_at"        // RFC 3339, when it was refused
)
