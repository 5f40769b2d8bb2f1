// Package deadletter diverts records a service will not count (invalid
// input to the DLQ, late events to the late topic). Kafka first; when Kafka
// refuses a write for good (the record is over the topic's size limit, the
// topic is missing or forbidden), the records go to the ClickHouse table
// dead_letters instead, so one record that cannot be diverted never stops
// its partition, and none is lost.
package deadletter

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/segmentio/kafka-go"

	"github.com/usagemeter/usagemeter/schemas"
)

// Writer writes diverted records. It is safe for concurrent use if its
// kafka.Writer is.
type Writer struct {
	kw   *kafka.Writer
	conn driver.Conn
	// Fallback, when set, learns how many records went to ClickHouse and
	// why (for a metric and a log line).
	Fallback func(n int, kafkaErr error)
}

// New returns a Writer that writes to kw and falls back to conn (nil: no
// fallback, every error is returned for the caller to retry).
func New(kw *kafka.Writer, conn driver.Conn) *Writer { return &Writer{kw: kw, conn: conn} }

// Write writes msgs. An error is transient (the broker is unreachable,
// ClickHouse is down): retrying the same records is safe, both targets
// tolerate duplicates of a record.
func (w *Writer) Write(ctx context.Context, msgs ...kafka.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	err := w.kw.WriteMessages(ctx, msgs...)
	if err == nil || !Permanent(err) || w.conn == nil {
		return err
	}
	if ferr := w.writeClickHouse(ctx, msgs, err); ferr != nil {
		return fmt.Errorf("kafka refused %d diverted records (%v); dead_letters: %w", len(msgs), err, ferr)
	}
	if w.Fallback != nil {
		w.Fallback(len(msgs), err)
	}
	return nil
}

// Permanent reports whether Kafka will refuse err's records however often
// they are retried.
func Permanent(err error) bool {
	var we kafka.WriteErrors
	if errors.As(err, &we) {
		for _, e := range we {
			if e != nil && !Permanent(e) {
				return false
			}
		}
		return we.Count() > 0
	}
	var tooLarge kafka.MessageTooLargeError
	if errors.As(err, &tooLarge) {
		return true
	}
	var ke kafka.Error
	if errors.As(err, &ke) {
		switch ke {
		case kafka.MessageSizeTooLarge, kafka.RecordListTooLarge, kafka.InvalidRecord, kafka.InvalidTopic,
			kafka.UnknownTopicOrPartition, kafka.TopicAuthorizationFailed, kafka.PolicyViolation:
			return true
		}
	}
	return false
}

const insertDeadLetters = `INSERT INTO dead_letters (target_topic, source_topic, source_partition, source_offset,
 message_key, message_value, header_keys, header_values, kafka_error, failed_at)`

func (w *Writer) writeClickHouse(ctx context.Context, msgs []kafka.Message, kafkaErr error) error {
	batch, err := w.conn.PrepareBatch(ctx, insertDeadLetters)
	if err != nil {
		return fmt.Errorf("prepare insert into dead_letters: %w", err)
	}
	defer func() { _ = batch.Abort() }()
	now := time.Now().UTC().Truncate(time.Second)
	for _, m := range msgs {
		keys, values := make([]string, len(m.Headers)), make([]string, len(m.Headers))
		src := map[string]string{}
		for i, h := range m.Headers {
			keys[i], values[i] = h.Key, string(h.Value)
			src[h.Key] = values[i]
		}
		var part int32
		var off int64
		_, _ = fmt.Sscan(src[schemas.HeaderSourcePartition], &part)
		_, _ = fmt.Sscan(src[schemas.HeaderSourceOffset], &off)
		topic := m.Topic
		if topic == "" {
			topic = w.kw.Topic
		}
		if err := batch.Append(topic, src[schemas.HeaderSourceTopic], part, off, string(m.Key), string(m.Value),
			keys, values, kafkaErr.Error(), now); err != nil {
			return fmt.Errorf("append to dead_letters batch: %w", err)
		}
	}
	if err := batch.Send(); err != nil {
		return fmt.Errorf("insert %d rows into dead_letters: %w", len(msgs), err)
	}
	return nil
}
