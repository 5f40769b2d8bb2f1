-- What `usage-ops dlq replay` decided for each dead letter, one row per
-- letter and run (append only): replayed to usage.events, or skipped and
-- why (already_stored, already_replayed, duplicate_letter, still_invalid).
-- A letter is (letter_store, dlq_topic, dlq_partition, dlq_offset): its DLQ
-- position, or for the dead_letters fallback the original's source
-- position. A later run skips every letter with a `replayed` row, and any
-- (tenant_id, event_id) already in usage_events.
CREATE TABLE IF NOT EXISTS dlq_replays
(
    replay_id     String,
    replayed_at   DateTime('UTC'),
    letter_store  String,
    dlq_topic     String,
    dlq_partition Int32,
    dlq_offset    Int64,
    message_key   String,
    tenant_id     String,
    event_id      String,
    error_tag     String,
    transform     String,
    outcome       String,
    detail        String,
    target_topic  String
)
ENGINE = MergeTree()
PARTITION BY toYYYYMM(replayed_at)
ORDER BY (letter_store, dlq_topic, dlq_partition, dlq_offset, replayed_at)
