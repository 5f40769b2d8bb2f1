-- One-day roll-ups of usage_1m, same columns and rules: full values, not
-- deltas, with the source offset they reflect.
CREATE TABLE IF NOT EXISTS usage_1d
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
