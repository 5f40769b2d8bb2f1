package lease_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/usagemeter/usagemeter/billing-sync/lease"
	"github.com/usagemeter/usagemeter/testenv"
)

func testConfig(t *testing.T) lease.Config {
	broker := testenv.Kafka(t)
	cfg := lease.DefaultConfig()
	cfg.Brokers = []string{broker}
	cfg.Topic = testenv.Name("lease")
	cfg.Group = testenv.Name("lease_group")
	cfg.SessionTimeout, cfg.HeartbeatInterval, cfg.RebalanceTimeout = 6*time.Second, 500*time.Millisecond, 4*time.Second
	testenv.CreateTopic(t, broker, cfg.Topic, 1)
	return cfg
}

// One holder at a time; a holder that does not stop when another member
// joins is evicted, and its next Check is refused by the group coordinator
// (not only by its own bookkeeping): the fence holds for a frozen writer.
func TestOneHolderAndDeposedWriterIsFenced(t *testing.T) {
	cfg := testConfig(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	a, err := lease.Join(ctx, cfg, zaptest.NewLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	ta, err := a.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := ta.Check(ctx); err != nil {
		t.Fatalf("the holder's check failed: %v", err)
	}

	b, err := lease.Join(ctx, cfg, zaptest.NewLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	got := make(chan *lease.Term, 1)
	go func() {
		tb, err := b.Acquire(ctx)
		if err != nil {
			t.Errorf("b: %v", err)
		}
		got <- tb
	}()
	// a is "frozen": it never calls End, so the coordinator evicts it after
	// the rebalance timeout, and b becomes the writer in a later generation.
	var tb *lease.Term
	select {
	case tb = <-got:
	case <-time.After(40 * time.Second):
		t.Fatal("b never got the lease")
	}
	if tb == nil {
		t.Fatal("b: no term")
	}
	if tb.Generation() <= ta.Generation() {
		t.Fatalf("b's generation %d is not after a's %d", tb.Generation(), ta.Generation())
	}
	err = ta.Check(ctx)
	if !errors.Is(err, lease.ErrLost) {
		t.Fatalf("the deposed writer's check: %v, want ErrLost", err)
	}
	t.Logf("deposed writer (generation %d) refused: %v", ta.Generation(), err)
	if err := tb.Check(ctx); err != nil {
		t.Fatalf("the new writer's check failed: %v", err)
	}
	// Leaving hands the lease over at once.
	ta.End()
	tb.End()
}

func TestRefusesTopicWithMorePartitions(t *testing.T) {
	cfg := testConfig(t)
	cfg.Topic = testenv.Name("lease4")
	testenv.CreateTopic(t, cfg.Brokers[0], cfg.Topic, 4)
	_, err := lease.Join(context.Background(), cfg, zaptest.NewLogger(t), nil)
	if err == nil || !strings.Contains(err.Error(), "needs exactly 1") {
		t.Fatalf("want a refusal naming the partitions, got %v", err)
	}
}

func TestValidateNamesKey(t *testing.T) {
	cfg := lease.DefaultConfig()
	cfg.SessionTimeout = time.Second
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "lease.session_timeout") {
		t.Fatalf("got %v", err)
	}
}

// A one-shot command (reconcile) joining takes the lease from the holder
// (a `run`): the holder's term ends at the rebalance, and it gets the lease
// back, in a later generation, once the one-shot member leaves.
func TestPreemptingMemberTakesLeaseAndGivesItBack(t *testing.T) {
	cfg := testConfig(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	run, err := lease.Join(ctx, cfg, zaptest.NewLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer run.Close()
	t1, err := run.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := lease.Join(ctx, cfg, zaptest.NewLogger(t), nil, lease.Preempt())
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan *lease.Term, 1)
	go func() {
		tr, err := rec.Acquire(ctx)
		if err != nil {
			t.Errorf("reconcile member: %v", err)
		}
		got <- tr
	}()
	select {
	case <-t1.Context().Done(): // the rebalance ends the run's term
	case <-time.After(20 * time.Second):
		t.Fatal("the holder's term did not end when a preempting member joined")
	}
	t1.End()
	back := make(chan *lease.Term, 1)
	go func() {
		t2, err := run.Acquire(ctx) // stands by while reconcile holds it
		if err != nil {
			t.Errorf("run member: %v", err)
		}
		back <- t2
	}()
	var tr *lease.Term
	select {
	case tr = <-got:
	case <-time.After(20 * time.Second):
		t.Fatal("the preempting member never got the lease")
	}
	if tr == nil || tr.Check(ctx) != nil || tr.Generation() <= t1.Generation() {
		t.Fatalf("reconcile's term %+v is not current and later than %d", tr, t1.Generation())
	}
	if err := t1.Check(ctx); err == nil {
		t.Fatal("the run's old term still passes the fence")
	}
	select {
	case t2 := <-back:
		t.Fatalf("the run got the lease (generation %d) while reconcile held it", t2.Generation())
	default:
	}
	_ = rec.Close()
	select {
	case t2 := <-back:
		if t2 == nil || t2.Check(ctx) != nil || t2.Generation() <= tr.Generation() {
			t.Fatalf("the run's new term is not current/later")
		}
		t2.End()
	case <-time.After(20 * time.Second):
		t.Fatal("the run did not get the lease back after reconcile left")
	}
}

// BenchmarkCheck measures the fence: one offset commit under the
// generation, a round trip to the group coordinator (before every write).
func BenchmarkCheck(b *testing.B) {
	broker := testenv.Kafka(b)
	cfg := lease.DefaultConfig()
	cfg.Brokers, cfg.Topic, cfg.Group = []string{broker}, testenv.Name("lease"), testenv.Name("lease_group")
	testenv.CreateTopic(b, broker, cfg.Topic, 1)
	ctx := context.Background()
	l, err := lease.Join(ctx, cfg, zaptest.NewLogger(b), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	term, err := l.Acquire(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer term.End()
	b.ResetTimer()
	for range b.N {
		if err := term.Check(ctx); err != nil {
			b.Fatal(err)
		}
	}
}
