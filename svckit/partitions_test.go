package svckit

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/usagemeter/usagemeter/testenv"
)

// The pinned count must match at start; a partition added while running
// stops the watcher with ErrPartitionCountChanged naming both counts.
func TestPinAndWatchPartitions(t *testing.T) {
	broker := testenv.Kafka(t)
	topic := testenv.Name("grow")
	testenv.CreateTopic(t, broker, topic, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	brokers := []string{broker}
	if n, err := PinPartitions(ctx, brokers, topic, 0); err != nil || n != 2 {
		t.Fatalf("unpinned: %d, %v; want 2", n, err)
	}
	if n, err := PinPartitions(ctx, brokers, topic, 2); err != nil || n != 2 {
		t.Fatalf("pinned 2: %d, %v; want 2", n, err)
	}
	_, err := PinPartitions(ctx, brokers, topic, 4)
	if !errors.Is(err, ErrPartitionCountChanged) || !strings.Contains(err.Error(), "has 2 partitions, topic_partitions is 4") {
		t.Fatalf("pinned 4 on a topic of 2: %v", err)
	}

	done := make(chan error, 1)
	go func() { done <- WatchPartitions(ctx, brokers, topic, 2, 100*time.Millisecond) }()
	time.Sleep(300 * time.Millisecond)
	select {
	case err := <-done:
		t.Fatalf("watcher stopped before any change: %v", err)
	default:
	}
	client := &kafka.Client{Addr: kafka.TCP(broker), Timeout: 10 * time.Second}
	res, err := client.CreatePartitions(ctx, &kafka.CreatePartitionsRequest{Topics: []kafka.TopicPartitionsConfig{{Name: topic, Count: 3}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := res.Errors[topic]; err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, ErrPartitionCountChanged) || !strings.Contains(err.Error(), "had 2 partitions and now has 3") {
			t.Fatalf("watcher: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("watcher did not see the third partition within 20 s")
	}
}
