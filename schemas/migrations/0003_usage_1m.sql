-- One-minute event-time windows per tenant, meter and subject (user_id, or
-- the metadata value a unique_count meter counts by), written by
-- usage-aggregator. Each row holds the window's full value, not a delta, and
-- the highest usage.events offset folded into it (source_partition,
-- source_offset): re-writing a row after a restart or a late event replaces
-- it (ReplacingMergeTree, newest version wins), and the offset tells the
-- aggregator whether an event is already in it.
--   sum: total quantity; count: events; max: largest quantity;
--   latest: quantity of the newest event (latest_ns = its time);
--   unique_count: 1 (the subject was active in the window).
CREATE TABLE IF NOT EXISTS usage_1m
(
    tenant_id        String,
    feature_type     String,
    subject          String,
    window_start     DateTime('UTC'),
    aggregation      String,
    value            Decimal(38, 9),
    events           UInt64,
    latest_ns        Int64,
    source_partition Int32,
    source_offset    Int64,
    updated_at       DateTime('UTC'),
    version          UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(window_start)
ORDER BY (tenant_id, feature_type, window_start, subject)
