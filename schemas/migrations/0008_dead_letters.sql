-- The DLQ of last resort: records a service had to divert (to the DLQ or the
-- late topic) that Kafka refused for good (message too large for the topic,
-- topic missing, policy). Writing them here instead of retrying for ever
-- keeps their partition moving and loses nothing. Keyed by the source
-- position, so a replay after a crash writes the same row again.
CREATE TABLE IF NOT EXISTS dead_letters
(
    target_topic     String,
    source_topic     String,
    source_partition Int32,
    source_offset    Int64,
    message_key      String,
    message_value    String,
    header_keys      Array(String),
    header_values    Array(String),
    kafka_error      String,
    failed_at        DateTime('UTC')
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(failed_at)
ORDER BY (source_topic, source_partition, source_offset, target_topic)
