package main

import (
	"context"
	"fmt"
	"time"

	"github.com/segmentio/kafka-go"
)

// warmBroker publishes n events through the SDK to a scratch topic, reads
// them back on per-partition connections (the services' fetch path) and
// deletes the topic, before any mode is measured. A broker started seconds
// before costs up to twice the CPU per event while its JVM is young, and
// that is a start-up cost, not a running one (pipeline runs on a broker
// started seconds before: broker 1.58-1.68 µs per event in 5 runs; after
// 1M events on a scratch topic 1.26-1.44, after 3M 1.08-1.32, and after
// 1M produced and 1M read by a consumer group 1.00-1.02). ClickHouse plays
// no part in it: a warm-up through the pipeline would leave it merging
// the warm-up's parts while the clock runs.
func warmBroker(ctx context.Context, broker string, n int) error {
	topic := fmt.Sprintf("bench_warm_%d", time.Now().UnixNano()%1e12)
	if err := createTopics(ctx, broker, kafka.TopicConfig{Topic: topic, NumPartitions: partitions, ReplicationFactor: 1}); err != nil {
		return err
	}
	defer func() {
		client := &kafka.Client{Addr: kafka.TCP(broker), Timeout: 10 * time.Second}
		_, _ = client.DeleteTopics(context.Background(), &kafka.DeleteTopicsRequest{Topics: []string{topic}})
	}()
	pub, err := newPublisher(broker, topic)
	if err != nil {
		return err
	}
	w := newWorkload()
	for sent := 0; sent < n; sent += 100_000 { // in parts: a million events at once is 300 MB
		if err := pub.publish(ctx, w.next(min(100_000, n-sent), 50, "warm-%02d", "")); err != nil {
			return err
		}
	}
	if err := pub.close(); err != nil {
		return err
	}
	for p := range partitions {
		if err := readPartition(ctx, broker, topic, p); err != nil {
			return err
		}
	}
	return nil
}

// readPartition reads one partition from the start to its end offset.
func readPartition(ctx context.Context, broker, topic string, p int) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	conn, err := kafka.DialLeader(ctx, "tcp", broker, topic, p)
	if err != nil {
		return fmt.Errorf("warm-up read of %s[%d]: %w", topic, p, err)
	}
	defer conn.Close()
	end, err := conn.ReadLastOffset()
	if err != nil {
		return fmt.Errorf("warm-up read of %s[%d]: %w", topic, p, err)
	}
	for offset := int64(0); offset < end; {
		if _, err := conn.Seek(offset, kafka.SeekAbsolute); err != nil {
			return fmt.Errorf("warm-up read of %s[%d]: %w", topic, p, err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		batch := conn.ReadBatch(1, 1<<20)
		for {
			m, err := batch.ReadMessage()
			if err != nil {
				break
			}
			offset = m.Offset + 1
		}
		if err := batch.Close(); err != nil {
			return fmt.Errorf("warm-up read of %s[%d] at %d: %w", topic, p, offset, err)
		}
	}
	return nil
}
