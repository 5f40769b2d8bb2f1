-- One-off quota increases granted on usage-api's admin page (append only):
-- who granted how much of which meter to which tenant for which period, why,
-- and where the assignment record that carries it went on
-- usage.plan-assignments (topic, partition, offset). The grant raises that
-- period's limit only; plan_changes keeps plan changes.
CREATE TABLE IF NOT EXISTS quota_grants
(
    tenant_id    String,
    feature_type String,
    period_id    String,
    amount       Decimal(38, 9),
    plan         String,
    version      Int64,
    actor        String,
    reason       String,
    topic        String,
    partition    Int32,
    offset       Int64,
    at           DateTime('UTC')
)
ENGINE = MergeTree()
PARTITION BY toYYYYMM(at)
ORDER BY (tenant_id, at, version)
