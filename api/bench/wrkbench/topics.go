package main

import (
	"context"
	"flag"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/usagemeter/usagemeter/producer"
	"github.com/usagemeter/usagemeter/quota"
	"github.com/usagemeter/usagemeter/svckit"
)

// topicsMain creates the default topics usage-api --demo reads, shaped as
// usage-aggregator creates them, when they are missing: on a broker no
// aggregator has run against (a fresh machine, a private broker), the
// quota cache would otherwise wait for them for ever and no decision would
// be fresh. Existing topics are left as they are.
func topicsMain(args []string) error {
	fs := flag.NewFlagSet("topics", flag.ContinueOnError)
	brokers := fs.String("kafka", "127.0.0.1:19092", "bootstrap brokers, comma-separated")
	partitions := fs.Int("partitions", 4, "partitions of the events and quota-state topics (usage-aggregator's topic_partitions)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	q := quota.DefaultConfig()
	compact := []kafka.ConfigEntry{{ConfigName: "cleanup.policy", ConfigValue: "compact"}}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return svckit.CreateTopics(ctx, strings.Split(*brokers, ","),
		kafka.TopicConfig{Topic: producer.DefaultTopic, NumPartitions: *partitions, ReplicationFactor: 1, ConfigEntries: svckit.EventTopicConfig()},
		kafka.TopicConfig{Topic: q.StateTopic, NumPartitions: *partitions, ReplicationFactor: 1, ConfigEntries: compact},
		kafka.TopicConfig{Topic: q.AssignmentTopic, NumPartitions: 1, ReplicationFactor: 1, ConfigEntries: compact},
		kafka.TopicConfig{Topic: q.PositionTopic, NumPartitions: 1, ReplicationFactor: 1, ConfigEntries: compact})
}
