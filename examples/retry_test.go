package examples

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/testenv"
)

// TestExamplesSurviveBrokerOutage starts each example's send while its
// broker (a private one, which the test may stop) is down and brings the
// broker back a few seconds later: each example must keep its events and
// deliver every one (its client's retries, then its own rounds of the same
// bytes), with nothing but its own ids in the topic. Duplicates are allowed
// (at-least-once: the pipeline counts an id once).
func TestExamplesSurviveBrokerOutage(t *testing.T) {
	t.Parallel() // each on its own topics, database or broker
	exs := examples(t)
	k := testenv.StartKafka(t)
	topic := testenv.Name("examples_outage")
	createTopic(t, k.Addr, topic)
	vecs, _ := vectorLines(t)
	var valid []schemas.Vector
	for _, v := range vecs {
		if v.Valid() && len(valid) < 10 {
			valid = append(valid, v)
		}
	}
	at := time.Now().UTC().Truncate(time.Minute)
	dir := t.TempDir()
	wantIDs := map[string]bool{}
	files := map[string]string{}
	for _, ex := range exs {
		lines, events := freshCorpus(t, valid, ex.tag, at)
		files[ex.name] = filepath.Join(dir, ex.name+".jsonl")
		if err := os.WriteFile(files[ex.name], encodeLines(lines), 0o644); err != nil {
			t.Fatal(err)
		}
		for _, e := range events {
			wantIDs[e.id] = true
		}
	}

	k.Stop()
	restarted := make(chan struct{})
	go func() {
		defer close(restarted)
		time.Sleep(5 * time.Second) // every example has started and found no broker
		k.Start()
	}()
	env := []string{"KAFKA_BROKERS=" + k.Addr, "USAGE_TOPIC=" + topic}
	parallelExamples(exs, func(ex example) {
		start := time.Now()
		out, err := ex.run(t, env, "send", files[ex.name])
		if err != nil {
			t.Error(err)
			return
		}
		last := strings.TrimSpace(out)
		last = last[strings.LastIndexByte(last, '\n')+1:]
		var summary struct{ Sent, Refused, Failed int }
		if err := json.Unmarshal([]byte(last), &summary); err != nil || summary.Sent != len(valid) || summary.Failed != 0 {
			t.Errorf("%s: %q (%v), want %d sent and none failed", ex.name, last, err, len(valid))
		}
		if d := time.Since(start); d < 5*time.Second {
			t.Errorf("%s finished in %s, before the broker was back: the outage did not happen", ex.name, d)
		}
	})
	<-restarted

	// A fresh transport: kafka-go's default one keeps connections from
	// before the restart, which answer EOF.
	var total int
	client := &kafka.Client{Addr: kafka.TCP(k.Addr), Timeout: 10 * time.Second, Transport: &kafka.Transport{}}
	testenv.Eventually(t, 30*time.Second, "end offsets of "+topic, func() (bool, error) {
		res, err := client.ListOffsets(t.Context(), &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{
			topic: {kafka.LastOffsetOf(0), kafka.LastOffsetOf(1), kafka.LastOffsetOf(2), kafka.LastOffsetOf(3)}}})
		if err != nil {
			return false, err
		}
		total = 0
		for _, po := range res.Topics[topic] {
			if po.Error != nil {
				return false, po.Error
			}
			total += int(po.LastOffset)
		}
		return len(res.Topics[topic]) == partitions, nil
	})
	got := map[string]int{}
	for _, m := range testenv.ReadN(t, k.Addr, topic, total) {
		var ev struct{ ID string }
		if err := json.Unmarshal(m.Value, &ev); err != nil {
			t.Errorf("%s: %v", m.Value, err)
		}
		got[ev.ID]++
	}
	for id := range wantIDs {
		if got[id] == 0 {
			t.Errorf("event %s was not delivered", id)
		}
	}
	for id := range got {
		if !wantIDs[id] {
			t.Errorf("event %s in the topic was not in any example's file", id)
		}
	}
	t.Logf("%d events of %d examples delivered across a broker outage, %d records in the topic", len(wantIDs), len(exs), total)
}

// createTopic creates topic on the private broker without deleting it at the
// end (the broker and its data go when the test ends).
func createTopic(t *testing.T, broker, topic string) {
	t.Helper()
	client := &kafka.Client{Addr: kafka.TCP(broker), Timeout: 30 * time.Second, Transport: &kafka.Transport{}}
	res, err := client.CreateTopics(t.Context(), &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{{
		Topic: topic, NumPartitions: partitions, ReplicationFactor: 1}}})
	if err != nil {
		t.Fatalf("create topic %s: %v", topic, err)
	}
	if err := res.Errors[topic]; err != nil {
		t.Fatalf("create topic %s: %v", topic, err)
	}
	testenv.Eventually(t, 30*time.Second, "topic "+topic+" ready", func() (bool, error) {
		_, err := client.ListOffsets(t.Context(), &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{
			topic: {kafka.LastOffsetOf(0), kafka.LastOffsetOf(1), kafka.LastOffsetOf(2), kafka.LastOffsetOf(3)}}})
		return err == nil, err
	})
}
