-- Billing-period roll-ups per tenant, meter and subject: the numbers quotas
-- and invoices read. period_id is "2026-11" (calendar month) or
-- "2026-11-15" (anchored on the tenant's day); same value rules as usage_1m.
CREATE TABLE IF NOT EXISTS usage_period
(
    tenant_id        String,
    feature_type     String,
    subject          String,
    period_id        String,
    period_start     DateTime('UTC'),
    period_end       DateTime('UTC'),
    plan             String,
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
PARTITION BY toYYYYMM(period_start)
ORDER BY (tenant_id, feature_type, period_start, subject)
