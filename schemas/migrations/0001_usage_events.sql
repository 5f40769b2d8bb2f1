-- Raw events, one row per accepted Kafka message. Identity is (tenant_id, id):
-- ReplacingMergeTree keeps one row per identity within a partition, so reads
-- through FINAL (or the usage_events_dedup view) count each id once even when
-- the consumer re-inserts a batch after a crash or a producer retries.
-- version = 2^63 - kafka_offset keeps the FIRST write of a conflicting id,
-- matching the aggregator's first-seen rule. Partitions are event months;
-- a retry carries the same timestamp, so its duplicates share a partition.
-- DateTime('UTC') so that months and windows are UTC whatever the server zone.
CREATE TABLE IF NOT EXISTS usage_events
(
    id              String,
    tenant_id       String,
    user_id         String,
    feature_type    String,
    quantity        Decimal(38, 9),
    event_time      DateTime('UTC'),
    event_time_ns   UInt32,
    billing_period  String,
    metadata_keys   Array(String),
    metadata_values Array(String),
    schema_version  UInt8,
    ingested_at     DateTime('UTC'),
    kafka_partition Int32,
    kafka_offset    Int64,
    version         UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(event_time)
ORDER BY (tenant_id, id)
