package svckit

import (
	"context"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/usagemeter/usagemeter/testenv"
)

// After a broker clock step-back (or a leader move to a broker whose clock
// is behind) append times decrease with the offset for a while. A CreateTime
// topic lets the test write such times on the real broker: ListOffsets
// searches record times the same way for both timestamp types. The
// question the review raised: can a reader with cached bounds (one
// long-lived clock) judge a record differently than a reader that asks the
// broker afresh (a new clock per record: another service, a restart)? It
// cannot: every bound is a fact about "the first offset whose time is >= t"
// (ListOffsets' exact semantics, which Kafka's max-so-far time index keeps
// for non-monotonic times), so cached and fresh verdicts are both "some
// record at or before o was appended at >= t", checked here against that
// rule computed from the times the test wrote. What a step-back changes is
// the meaning for a record behind the step (its own time is earlier than
// the verdict says); the test shows that too.
func TestBrokerClockVerdictsAfterAStepBack(t *testing.T) {
	broker := testenv.Kafka(t)
	topic := testenv.Name("stepback")
	testenv.CreateTopic(t, broker, topic, 1, "message.timestamp.type", "CreateTime")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	base := time.Now().Truncate(time.Millisecond)
	// In sync, a 10-minute step back, a slow new leader 3 minutes behind,
	// then in sync again.
	var times []time.Time
	for i := range 4 {
		times = append(times, base.Add(time.Duration(i)*time.Second))
	}
	for i := range 4 {
		times = append(times, base.Add(-10*time.Minute+time.Duration(i)*time.Second))
	}
	for i := range 4 {
		times = append(times, base.Add(-3*time.Minute+time.Duration(i)*time.Second))
	}
	for i := range 4 {
		times = append(times, base.Add(10*time.Second+time.Duration(i)*time.Second))
	}
	w := &kafka.Writer{Addr: kafka.TCP(broker), Topic: topic, RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond}
	defer w.Close()
	for i, at := range times { // one batch per record: its own time
		if err := w.WriteMessages(ctx, kafka.Message{Value: []byte{byte(i)}, Time: at}); err != nil {
			t.Fatal(err)
		}
	}
	// Thresholds around every written time, as DecodeRecord makes them
	// (event time - 5 min, probe event time - 2.5 min).
	var thresholds []time.Time
	for _, at := range times {
		thresholds = append(thresholds, at.Add(-time.Millisecond), at, at.Add(time.Millisecond), at.Add(-4*time.Minute), at.Add(6*time.Minute))
	}
	cached := newBrokerClock([]string{broker}, topic)
	disagreeWithOwnTime := 0
	for o := range times {
		for _, th := range thresholds {
			want := false // the rule, from the written times
			for x := 0; x <= o; x++ {
				want = want || !times[x].Before(th)
			}
			got, err := cached.appendedSince(ctx, 0, int64(o), th, th.Add(150*time.Second))
			if err != nil {
				t.Fatal(err)
			}
			fresh, err := newBrokerClock([]string{broker}, topic).appendedSince(ctx, 0, int64(o), th, th)
			if err != nil {
				t.Fatal(err)
			}
			if got != want || fresh != want {
				t.Fatalf("record %d (time %s), threshold %s: cached %v, fresh %v, rule %v",
					o, times[o].Sub(base), th.Sub(base), got, fresh, want)
			}
			if got != !times[o].Before(th) {
				disagreeWithOwnTime++
			}
		}
	}
	// The known limit: behind the step, "appended at >= t" is proven for an
	// earlier record, not for this one.
	if disagreeWithOwnTime == 0 {
		t.Fatal("no verdict differs from the record's own time: the step-back was not exercised")
	}
	t.Logf("%d records x %d thresholds: cached = fresh = rule; %d verdicts differ from the record's own time (behind the step); the cached clock made %d lookups",
		len(times), len(thresholds), disagreeWithOwnTime, cached.lookups.Load())
}
