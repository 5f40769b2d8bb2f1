package backfill_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/usagemeter/usagemeter/ops/backfill"
	"github.com/usagemeter/usagemeter/testenv"
)

// A group that read everything is moved back to a time: it commits, per
// partition, the first record at or after it, refuses while a member runs,
// and a member that joins afterwards re-reads exactly the records from
// that time on.
func TestResetByTimestampRereadsTheRange(t *testing.T) {
	broker := testenv.Kafka(t)
	topic, group := testenv.Name("events"), testenv.Name("group")
	testenv.CreateTopic(t, broker, topic, 4) // CreateTime: the test sets each record's time
	ctx := context.Background()
	// Per partition p: 3+p records an hour before `at`, then 5 after it.
	at := time.Now().Add(-90 * time.Minute).Truncate(time.Millisecond)
	w := &kafka.Writer{Addr: kafka.TCP(broker), Topic: topic, RequiredAcks: kafka.RequireAll, BatchTimeout: 5 * time.Millisecond,
		Balancer: kafka.BalancerFunc(func(m kafka.Message, _ ...int) int { p, _ := strconv.Atoi(string(m.Key)); return p })}
	defer w.Close()
	var msgs []kafka.Message
	after := 0
	for p := range 4 {
		for i := range 3 + p {
			msgs = append(msgs, kafka.Message{Key: []byte(strconv.Itoa(p)), Value: fmt.Appendf(nil, "old-%d-%d", p, i), Time: at.Add(-time.Hour + time.Duration(i)*time.Second)})
		}
		for i := range 5 {
			msgs = append(msgs, kafka.Message{Key: []byte(strconv.Itoa(p)), Value: fmt.Appendf(nil, "new-%d-%d", p, i), Time: at.Add(time.Duration(i) * time.Second)})
			after++
		}
	}
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	// The group has read everything.
	ends := testenv.EndOffsets(t, broker, topic, 4)
	var commits []kafka.OffsetCommit
	for p, o := range ends {
		commits = append(commits, kafka.OffsetCommit{Partition: p, Offset: o})
	}
	c := &kafka.Client{Addr: kafka.TCP(broker)}
	if _, err := c.OffsetCommit(ctx, &kafka.OffsetCommitRequest{GroupID: group, GenerationID: -1, Topics: map[string][]kafka.OffsetCommit{topic: commits}}); err != nil {
		t.Fatal(err)
	}

	r := backfill.Resetter{Brokers: []string{broker}}
	plan, err := r.Plan(ctx, group, topic, at)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range plan {
		if p.Committed != ends[p.Partition] || p.Target != int64(3+p.Partition) {
			t.Fatalf("partition %d: committed %d target %d, want %d and %d", p.Partition, p.Committed, p.Target, ends[p.Partition], 3+p.Partition)
		}
	}
	// A time after every record: the end, nothing to re-read.
	late, err := r.Plan(ctx, group, topic, time.Now().Add(time.Hour))
	if err != nil || late[0].Target != ends[0] {
		t.Fatalf("plan after the last record: %+v (%v), want the end offsets", late, err)
	}

	// Refused while a member is in the group.
	member := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{broker}, GroupID: group, Topic: topic, MaxWait: 100 * time.Millisecond})
	testenv.Eventually(t, 30*time.Second, "the member to join", func() (bool, error) {
		err := r.Apply(ctx, group, topic, plan)
		return errors.Is(err, backfill.ErrGroupActive), err
	})
	if err := member.Close(); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "the reset once the member left", func() (bool, error) {
		err := r.Apply(ctx, group, topic, plan)
		return err == nil, err
	})

	// A member of the group now re-reads exactly the records from `at` on.
	rd := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{broker}, GroupID: group, Topic: topic, MaxWait: 100 * time.Millisecond})
	defer rd.Close()
	rctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	for i := range after {
		m, err := rd.ReadMessage(rctx)
		if err != nil {
			t.Fatalf("re-read %d of %d: %v", i, after, err)
		}
		if m.Time.Before(at) || string(m.Value[:4]) != "new-" {
			t.Fatalf("re-read %q at %s: before %s", m.Value, m.Time, at)
		}
	}
	short, cancel2 := context.WithTimeout(ctx, 2*time.Second)
	defer cancel2()
	if m, err := rd.ReadMessage(short); err == nil {
		t.Fatalf("read %q beyond the %d records after the reset time", m.Value, after)
	}
}
