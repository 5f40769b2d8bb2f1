package svckit

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/usagemeter/usagemeter/testenv"
)

func TestRetentionGap(t *testing.T) {
	for _, c := range []struct {
		expected, next, logStart, want int64
	}{
		{5, 5, 0, 0},   // no jump
		{5, 9, 0, 0},   // a jump over offsets that still exist: control records
		{5, 9, 5, 0},   // the log starts where we expected
		{5, 9, 9, 4},   // kafka-go restarted at the first offset: 5..8 deleted unread
		{5, 9, 12, 4},  // retention went on after the jump: still only 5..8 unread
		{5, 9, 7, 2},   // 5, 6 deleted; 7, 8 exist and were skipped (markers)
		{-1, 9, 9, 0},  // no expectation: a new group starts at the first offset by design
		{9, 5, 9, 0},   // backwards (a replay): nothing missed
		{0, 100, 0, 0}, // an empty expectation against an intact log
	} {
		if got := RetentionGap(c.expected, c.next, c.logStart); got != c.want {
			t.Errorf("RetentionGap(%d, %d, %d) = %d, want %d", c.expected, c.next, c.logStart, got, c.want)
		}
	}
}

// A real kafka-go reader positioned on deleted records jumps to the first
// offset without an error; OffsetGaps reports exactly the records it never
// returned, and nothing for a jump over offsets that still exist.
func TestOffsetGapsSeesKafkaGoJumpOverDeletedRecords(t *testing.T) {
	broker := testenv.Kafka(t)
	topic := testenv.Name("gaps")
	testenv.CreateTopic(t, broker, topic, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	w := &kafka.Writer{Addr: kafka.TCP(broker), Topic: topic, RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond}
	defer w.Close()
	for i := range 10 {
		if err := w.WriteMessages(ctx, kafka.Message{Value: fmt.Appendf(nil, "m%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	g := NewOffsetGaps([]string{broker}, topic, "")
	g.Expect(0, 0)
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{broker}, Topic: topic, Partition: 0, MaxWait: 100 * time.Millisecond})
	defer r.Close()
	for range 3 { // offsets 0, 1, 2
		m, err := r.ReadMessage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if missed, err := g.Observe(ctx, 0, m.Offset); err != nil || missed != 0 {
			t.Fatalf("offset %d: missed %d, %v", m.Offset, missed, err)
		}
	}
	// Retention (here: DeleteRecords) removes 0..6 while the reader is
	// positioned at 3; a new reader asked for 3 also lands on 7.
	testenv.DeleteRecords(t, broker, topic, 0, 7)
	r2 := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{broker}, Topic: topic, Partition: 0, MaxWait: 100 * time.Millisecond})
	defer r2.Close()
	if err := r2.SetOffset(3); err != nil {
		t.Fatal(err)
	}
	m, err := r2.ReadMessage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if m.Offset != 7 {
		t.Fatalf("kafka-go read offset %d after its position was deleted; this test expects its jump to the first offset, 7", m.Offset)
	}
	missed, err := g.Observe(ctx, 0, m.Offset)
	if err != nil {
		t.Fatal(err)
	}
	if missed != 4 { // 3, 4, 5, 6
		t.Fatalf("missed %d records, want 4 (offsets 3 to 6)", missed)
	}
	// A jump over offsets that exist (what a transaction's commit marker
	// looks like to a reader) is no loss.
	g.Expect(0, 8)
	if missed, err := g.Observe(ctx, 0, 9); err != nil || missed != 0 {
		t.Fatalf("jump over existing offsets: missed %d, %v; want 0", missed, err)
	}
}

// A group reader resumes a partition where the group committed: a first
// record beyond the committed offset, with the records between deleted, is
// a gap; a first record at the committed offset is not.
func TestOffsetGapsFirstRecordAgainstTheGroupsCommit(t *testing.T) {
	broker := testenv.Kafka(t)
	topic, group := testenv.Name("gaps"), testenv.Name("group")
	testenv.CreateTopic(t, broker, topic, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	w := &kafka.Writer{Addr: kafka.TCP(broker), Topic: topic, RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond}
	defer w.Close()
	for i := range 10 {
		if err := w.WriteMessages(ctx, kafka.Message{Value: fmt.Appendf(nil, "m%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	client := &kafka.Client{Addr: kafka.TCP(broker), Timeout: 10 * time.Second}
	if _, err := client.OffsetCommit(ctx, &kafka.OffsetCommitRequest{GroupID: group, GenerationID: -1,
		Topics: map[string][]kafka.OffsetCommit{topic: {{Partition: 0, Offset: 2}}}}); err != nil {
		t.Fatal(err)
	}
	if missed, err := NewOffsetGaps([]string{broker}, topic, group).Observe(ctx, 0, 2); err != nil || missed != 0 {
		t.Fatalf("first record at the commit: missed %d, %v", missed, err)
	}
	testenv.DeleteRecords(t, broker, topic, 0, 5)
	if missed, err := NewOffsetGaps([]string{broker}, topic, group).Observe(ctx, 0, 5); err != nil || missed != 3 {
		t.Fatalf("first record after deleted 2..4: missed %d, %v; want 3", missed, err)
	}
}
