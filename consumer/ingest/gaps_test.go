package ingest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/segmentio/kafka-go"

	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/svckit"
	"github.com/usagemeter/usagemeter/testenv"
)

// Retention deletes events after the group's commit before the consumer
// reads them: kafka-go resumes at the first offset without a word. With
// on_retention_gap: fail the consumer stops naming the gap (and meets it
// again at the next start); with continue it counts the lost records and
// goes on.
func TestRetentionGapAfterTheCommit(t *testing.T) {
	e := newEnv(t, "")
	ctx := context.Background()
	events, _ := mixed(20, time.Now().Add(-time.Hour))
	for i := range events {
		events[i].TenantID = "acme" // one partition
	}
	p := e.publisher()
	if err := p.Publish(ctx, events[:10]...); err != nil {
		t.Fatal(err)
	}
	r := e.start()
	e.waitDedup(10, 60*time.Second)
	if err := r.shutdown(t); err != nil {
		t.Fatal(err)
	}
	if err := p.Publish(ctx, events[10:]...); err != nil {
		t.Fatal(err)
	}
	part := int32(schemas.PartitionFor("acme", 4))
	testenv.DeleteRecords(t, e.broker, e.cfg.Topic, part, 15) // 10..14 never read

	r = e.start()
	select {
	case err := <-r.done:
		r.done <- err
		if err == nil || !strings.Contains(err.Error(), "5 records before offset 15 were deleted by retention") {
			t.Fatalf("Run with on_retention_gap: fail returned %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the consumer did not stop at the retention gap")
	}
	if n := e.count("FROM usage_events"); n != 10 {
		t.Fatalf("%d raw rows after the refused gap, want 10", n)
	}

	e.cfg.OnRetentionGap = "continue"
	r = e.start()
	e.waitDedup(15, 60*time.Second)
	if got := testutil.ToFloat64(r.c.m.retentionGap); got != 5 {
		t.Fatalf("retention gap metric %v, want 5", got)
	}
	if err := r.shutdown(t); err != nil {
		t.Fatal(err)
	}
}

// The consumer judges routing by the count it started with: it refuses to
// start on a topic of another count than the pinned one, and stops, after
// writing and committing what it read, when a partition is added.
func TestPartitionCountPinnedAndWatched(t *testing.T) {
	e := newEnv(t, "")
	c, err := New(e.cfg, e.store, e.log, WithPinnedPartitions(8))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Run(context.Background()); !errors.Is(err, svckit.ErrPartitionCountChanged) {
		t.Fatalf("Run pinned to 8 partitions on a topic of 4: %v", err)
	}

	r := e.start(func(c *Consumer) { c.partitionsEvery = 100 * time.Millisecond })
	events, want := mixed(200, time.Now().Add(-time.Hour))
	if err := e.publisher().Publish(context.Background(), events...); err != nil {
		t.Fatal(err)
	}
	e.waitDedup(200, 60*time.Second)
	client := &kafka.Client{Addr: kafka.TCP(e.broker), Timeout: 10 * time.Second}
	res, err := client.CreatePartitions(context.Background(), &kafka.CreatePartitionsRequest{
		Topics: []kafka.TopicPartitionsConfig{{Name: e.cfg.Topic, Count: 5}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := res.Errors[e.cfg.Topic]; err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-r.done:
		r.done <- err
		if !errors.Is(err, svckit.ErrPartitionCountChanged) || !strings.Contains(err.Error(), "had 4 partitions and now has 5") {
			t.Fatalf("Run after a partition was added: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the consumer kept running after the topic grew from 4 to 5 partitions")
	}
	assertSums(t, e.sums(), want)
	assertCommittedToEnd(t, e)
}

// On a LogAppendTime topic, a publisher whose host is 2 h ahead (its
// records' CreateTime and event times both 2 h ahead) is refused as
// timestamp_too_far_in_future: judged by the broker's clock, which kafka-go
// does not report; its neighbours on the partition are counted.
func TestFutureJudgedByTheBrokersClock(t *testing.T) {
	e := newEnv(t, "")
	e.cfg.Topic = testenv.Name("events-lat")
	testenv.CreateTopic(t, e.broker, e.cfg.Topic, 4, "message.timestamp.type", "LogAppendTime")
	r := e.start()
	now := time.Now()
	var msgs []kafka.Message
	for i := range 30 {
		ts := now.Add(time.Duration(i) * time.Millisecond)
		msgs = append(msgs, kafka.Message{Key: []byte("acme"), Time: ts,
			Value: fmt.Appendf(nil, `{"id":"ok-%d","tenant_id":"acme","feature_type":"api_calls","quantity":"1","timestamp":%q}`, i, ts.UTC().Format(time.RFC3339Nano))})
		if i%3 == 0 {
			ahead := now.Add(2 * time.Hour)
			msgs = append(msgs, kafka.Message{Key: []byte("acme"), Time: ahead,
				Value: fmt.Appendf(nil, `{"id":"skew-%d","tenant_id":"acme","feature_type":"api_calls","quantity":"1","timestamp":%q}`, i, ahead.UTC().Format(time.RFC3339Nano))})
		}
	}
	if err := e.rawWriter().WriteMessages(context.Background(), msgs...); err != nil {
		t.Fatal(err)
	}
	e.waitDedup(30, 60*time.Second)
	dlq := testenv.ReadN(t, e.broker, e.cfg.DLQTopic, 10)
	for _, m := range dlq {
		if tag := testenv.Headers(m)[schemas.HeaderError]; tag != string(schemas.CodeTimestampTooFarInFuture) || !strings.Contains(string(m.Value), `"skew-`) {
			t.Errorf("DLQ holds %s with %q", m.Value, tag)
		}
	}
	if err := r.shutdown(t); err != nil {
		t.Fatal(err)
	}
	if n := e.count("FROM usage_events WHERE id LIKE 'skew-%'"); n != 0 {
		t.Fatalf("%d events from the host 2 h ahead counted", n)
	}
	part := schemas.PartitionFor("acme", 4)
	client := &kafka.Client{Addr: kafka.TCP(e.broker)}
	off, err := client.OffsetFetch(context.Background(), &kafka.OffsetFetchRequest{GroupID: e.cfg.GroupID, Topics: map[string][]int{e.cfg.Topic: {part}}})
	if err != nil {
		t.Fatal(err)
	}
	if got := off.Topics[e.cfg.Topic][0].CommittedOffset; got != int64(len(msgs)) {
		t.Fatalf("committed %d, want %d (the end of acme's partition)", got, len(msgs))
	}
}

// Mid-read: ClickHouse is down, so the consumer stops fetching partway
// through acme's partition; retention deletes records ahead of its
// position; when ClickHouse returns, kafka-go jumps to the first offset
// without an error. With on_retention_gap: continue the consumer counts
// exactly the records it never read (end offset minus the rows it wrote)
// and goes on to the end.
func TestRetentionGapMidRead(t *testing.T) {
	ch := testenv.StartClickHouse(t)
	e := newEnv(t, ch.Addr)
	e.cfg.BatchSize = 100
	e.cfg.FetchMaxBytes = 16 << 10 // small fetches: the reader stays behind while ClickHouse is down
	e.cfg.OnRetentionGap = "continue"
	r := e.start()
	events, _ := mixed(20200, time.Now().Add(-time.Hour))
	for i := range events {
		events[i].TenantID = "acme" // one partition
	}
	p := e.publisher()
	if err := p.Publish(context.Background(), events[:200]...); err != nil {
		t.Fatal(err)
	}
	e.waitDedup(200, 60*time.Second)
	ch.Stop()
	if err := p.Publish(context.Background(), events[200:]...); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "insert errors while ClickHouse is down", func() (bool, error) {
		return testutil.ToFloat64(r.c.m.insertErrors) >= 1, nil
	})
	time.Sleep(2 * time.Second) // the reader's queue fills and it stops fetching
	part := schemas.PartitionFor("acme", 4)
	end := int64(len(events))
	testenv.DeleteRecords(t, e.broker, e.cfg.Topic, int32(part), end-1000)
	ch.Start()
	testenv.Eventually(t, 90*time.Second, "the consumer at the end of acme's partition", func() (bool, error) {
		client := &kafka.Client{Addr: kafka.TCP(e.broker)}
		off, err := client.OffsetFetch(context.Background(), &kafka.OffsetFetchRequest{GroupID: e.cfg.GroupID, Topics: map[string][]int{e.cfg.Topic: {part}}})
		if err != nil {
			return false, err
		}
		return off.Topics[e.cfg.Topic][0].CommittedOffset == end, nil
	})
	rows := e.count("FROM usage_events FINAL")
	missed := testutil.ToFloat64(r.c.m.retentionGap)
	t.Logf("%d rows written, %v records deleted unread, of %d", rows, missed, end)
	if missed <= 0 || int64(missed) != end-int64(rows) {
		t.Fatalf("retention gap metric %v, want %d (end offset %d minus %d rows written)", missed, end-int64(rows), end, rows)
	}
}
