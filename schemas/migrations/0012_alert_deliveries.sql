-- One row per webhook attempt of usage-alerts' sender (append only): the
-- alert, the endpoint, the outcome (ok, failed, gave_up), the HTTP status
-- (0 when no answer came) and why it failed. The sender skips an alert
-- that already has an ok row for its endpoint, so a replay of usage.alerts
-- or a restart sends nothing again once a delivery is recorded.
CREATE TABLE IF NOT EXISTS alert_deliveries
(
    alert_id     String,
    endpoint     String,
    tenant_id    String,
    feature_type String,
    period       String,
    kind         String,
    threshold    String,
    attempt      UInt32,
    outcome      String,
    http_status  UInt16,
    detail       String,
    attempted_at DateTime('UTC'),
    duration_ms  UInt32
)
ENGINE = MergeTree()
PARTITION BY toYYYYMM(attempted_at)
ORDER BY (alert_id, endpoint, attempted_at)
