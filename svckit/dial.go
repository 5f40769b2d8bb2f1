package svckit

import (
	"context"
	"fmt"

	"github.com/segmentio/kafka-go"
)

// DialLeader connects to the leader of topic's partition through the first
// of brokers that answers. It dials with kafka.DefaultDialer, which
// KafkaSecurity.Install sets, so a fetcher that reads partitions on its own
// connections uses the process's TLS and SASL settings as kafka.Reader
// did (a dialer of its own would connect in plain text and be refused).
func DialLeader(ctx context.Context, brokers []string, topic string, partition int) (*kafka.Conn, error) {
	var err error
	for _, b := range brokers {
		var conn *kafka.Conn
		if conn, err = kafka.DefaultDialer.DialLeader(ctx, "tcp", b, topic, partition); err == nil {
			return conn, nil
		}
	}
	return nil, fmt.Errorf("dial the leader of %s[%d]: %w", topic, partition, err)
}
