-- Where usage-aggregator resumes: per consumer group and partition, the
-- last usage.events offset whose effects are all in the aggregate tables,
-- and the event-time watermark at that point. Written after the rows.
CREATE TABLE IF NOT EXISTS aggregator_checkpoints
(
    consumer_group String,
    topic          String,
    partition      Int32,
    offset         Int64,
    watermark      DateTime('UTC'),
    updated_at     DateTime('UTC'),
    version        UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (consumer_group, topic, partition)
