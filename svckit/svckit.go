// Package svckit holds what every usage-* service's cmd shares: config
// loading (LoadConfig: defaults, file, USAGE_* environment, flags),
// logging (NewLogger), topic creation, the HTTP server for /metrics and
// /healthz, dead-letter messages, and what the consumer and the aggregator
// must decide alike about usage.events: the intake rule (Intake,
// DecodeRecord: the contract, routing, and the future rule by the broker's
// clock), re-routing a misrouted event (Misrouted, Reroute,
// RoutingBalancer), retention gaps (OffsetGaps, RetentionGap) and the
// partition count (PinPartitions, WatchPartitions). Apps never import
// it (they use producer and quota); services do. Subpackages: backoff
// (retries), chconn (the ClickHouse connection and migrations) and
// deadletter (DLQ writes with a ClickHouse fallback).
package svckit

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/segmentio/kafka-go"
	"go.uber.org/zap"

	"github.com/usagemeter/usagemeter/schemas"
)

// EventTopicConfig is the topic configuration of usage.events when a
// service creates it: the broker stamps each record's time, so the rule
// "at most 5 minutes in the future" is judged against the broker's clock,
// identically by every reader (see Intake).
func EventTopicConfig() []kafka.ConfigEntry {
	return []kafka.ConfigEntry{{ConfigName: "message.timestamp.type", ConfigValue: "LogAppendTime"}}
}

// CreateTopics creates the topics that do not exist yet, and logs nothing:
// the caller says which it asked for. ReplicationFactor -1 takes the
// cluster's default.replication.factor.
func CreateTopics(ctx context.Context, brokers []string, topics ...kafka.TopicConfig) error {
	client := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 30 * time.Second}
	res, err := client.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: topics})
	if err != nil {
		return fmt.Errorf("create topics: %w", err)
	}
	for t, terr := range res.Errors {
		if terr != nil && !errors.Is(terr, kafka.TopicAlreadyExists) {
			return fmt.Errorf("create topic %s: %w", t, terr)
		}
	}
	return nil
}

// Partitions returns how many partitions topic has.
func Partitions(ctx context.Context, brokers []string, topic string) (int, error) {
	client := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 10 * time.Second}
	md, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		return 0, fmt.Errorf("metadata of %s: %w", topic, err)
	}
	if len(md.Topics) != 1 {
		return 0, fmt.Errorf("metadata of %s: no such topic", topic)
	}
	if err := md.Topics[0].Error; err != nil {
		return 0, fmt.Errorf("metadata of %s: %w", topic, err)
	}
	if len(md.Topics[0].Partitions) == 0 {
		return 0, fmt.Errorf("metadata of %s: no partitions", topic)
	}
	return len(md.Topics[0].Partitions), nil
}

// Registry returns a registry with the Go and process collectors.
func Registry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// ServeHTTP serves /metrics from reg, /healthz, and whatever extra adds to
// the mux, on addr. Shut the returned server down on exit.
func ServeHTTP(addr string, reg *prometheus.Registry, log *zap.Logger, extra func(*http.ServeMux)) (*http.Server, error) {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	if extra != nil {
		extra(mux)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("http.addr %s: %w", addr, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("http server", zap.Error(err))
		}
	}()
	log.Info("serving HTTP", zap.String("addr", "http://"+ln.Addr().String()))
	return srv, nil
}

// DeadLetter returns m addressed to topic (the DLQ or the late topic) with
// its original key, bytes and headers, plus the schemas.Header* headers
// saying why and where it was read.
func DeadLetter(m kafka.Message, topic, code, reason string) kafka.Message {
	headers := append(append([]kafka.Header(nil), m.Headers...),
		kafka.Header{Key: schemas.HeaderError, Value: []byte(code)},
		kafka.Header{Key: schemas.HeaderReason, Value: []byte(reason)},
		kafka.Header{Key: schemas.HeaderSourceTopic, Value: []byte(m.Topic)},
		kafka.Header{Key: schemas.HeaderSourcePartition, Value: []byte(strconv.Itoa(m.Partition))},
		kafka.Header{Key: schemas.HeaderSourceOffset, Value: []byte(strconv.FormatInt(m.Offset, 10))},
		kafka.Header{Key: schemas.HeaderFailedAt, Value: []byte(time.Now().UTC().Format(time.RFC3339Nano))})
	return kafka.Message{Topic: topic, Key: m.Key, Value: m.Value, Headers: headers}
}
