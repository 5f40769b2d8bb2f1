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
