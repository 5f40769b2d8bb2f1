-- The deduplicated view analysts and the aggregator's reconcile read: each
-- (tenant_id, id) once. metadata_values[indexOf(metadata_keys, 'model')]
-- reads one metadata dimension.
CREATE VIEW IF NOT EXISTS usage_events_dedup AS
SELECT
    id, tenant_id, user_id, feature_type, quantity, event_time, event_time_ns,
    billing_period, metadata_keys, metadata_values, schema_version, ingested_at
FROM usage_events FINAL
