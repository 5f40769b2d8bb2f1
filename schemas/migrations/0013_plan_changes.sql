-- Plan assignments made on usage-api's admin page (append only): who
-- changed which tenant to which plan, why, and where the versioned record
-- went on usage.plan-assignments (topic, partition, offset), so that an
-- operator's change can be traced to the record every quota cache read.
CREATE TABLE IF NOT EXISTS plan_changes
(
    tenant_id     String,
    plan          String,
    previous_plan String,
    anchor_day    UInt8,
    version       Int64,
    actor         String,
    reason        String,
    topic         String,
    partition     Int32,
    offset        Int64,
    at            DateTime('UTC')
)
ENGINE = MergeTree()
PARTITION BY toYYYYMM(at)
ORDER BY (tenant_id, at, version)
