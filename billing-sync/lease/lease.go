// Package lease makes one billing-sync process at a time the writer, with a
// fence. It uses Kafka's group membership the way Kafka Connect elects its
// leader: every process (each `run`, and `reconcile`) joins one consumer
// group on a one-partition topic; the member the coordinator assigns that
// partition holds the lease for that generation. The generation id is the
// fence: it is recorded on every audit row, and before each Stripe write
// the holder commits an offset under it, which the group coordinator
// refuses (ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID, REBALANCE_IN_PROGRESS)
// once another generation has begun. A deposed writer (frozen past its
// session, cut off from the broker) therefore finds out before its next
// write, not after.
//
// A rebalance (a process joins or leaves) ends the generation: the holder's
// Term context is cancelled, and kafka-go does not join the next generation
// until the holder has stopped (End), so two terms never overlap while
// both processes are alive and connected.
package lease

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	"go.uber.org/zap"
)

// ErrLost means the term ended: another generation began, or this member
// left the group. Nothing may be written under it any more.
var ErrLost = errors.New("billing-sync lease lost")

// Config of the lease.
type Config struct {
	// Enabled makes run and reconcile take the lease (default true). Off
	// only for a single process that nothing else can run beside.
	Enabled bool     `mapstructure:"enabled"`
	Brokers []string `mapstructure:"brokers"`
	// Topic has exactly one partition; its holder is the writer.
	Topic string `mapstructure:"topic"`
	Group string `mapstructure:"group"`
	// SessionTimeout: a member that stops heartbeating (SIGKILL, freeze)
	// loses the lease this long after its last heartbeat.
	SessionTimeout    time.Duration `mapstructure:"session_timeout"`
	HeartbeatInterval time.Duration `mapstructure:"heartbeat_interval"`
	// RebalanceTimeout bounds how long a holder may take to stop when
	// another member joins.
	RebalanceTimeout time.Duration `mapstructure:"rebalance_timeout"`
	// Wait bounds how long a one-shot command (reconcile) waits for the
	// lease before it fails.
	Wait time.Duration `mapstructure:"wait"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{Enabled: true, Brokers: []string{"127.0.0.1:19092"}, Topic: "usage.billing-sync.lease", Group: "usage-billing-sync",
		SessionTimeout: 10 * time.Second, HeartbeatInterval: time.Second, RebalanceTimeout: 30 * time.Second, Wait: 5 * time.Minute}
}

// Validate names the first bad key.
func (c Config) Validate() error {
	switch {
	case !c.Enabled:
		return nil
	case len(c.Brokers) == 0:
		return errors.New("lease.brokers: empty")
	case c.Topic == "":
		return errors.New("lease.topic: empty")
	case c.Group == "":
		return errors.New("lease.group: empty")
	case c.SessionTimeout < 6*time.Second:
		return errors.New("lease.session_timeout: must be >= 6s (the broker's group.min.session.timeout.ms)")
	case c.HeartbeatInterval <= 0 || c.HeartbeatInterval*3 > c.SessionTimeout:
		return errors.New("lease.heartbeat_interval: must be > 0 and at most a third of session_timeout")
	case c.RebalanceTimeout <= 0:
		return errors.New("lease.rebalance_timeout: must be > 0")
	case c.Wait <= 0:
		return errors.New("lease.wait: must be > 0")
	}
	return nil
}

// Lease is this process's membership in the writers' group.
type Lease struct {
	cfg Config
	cg  *kafka.ConsumerGroup
	log *zap.Logger

	mu   sync.Mutex
	term *Term
	// preempt: a one-shot command (reconcile) that takes the lease from a
	// running `run` at the next rebalance. held: this member held the lease
	// in its last generation (it keeps it at a rebalance: sticky).
	preempt   bool
	wasHolder atomic.Bool

	held   prometheus.Gauge
	terms  prometheus.Counter
	fenced prometheus.Counter
}

// Option configures a Lease.
type Option func(*Lease)

// Preempt makes this member take the lease at the next rebalance (its
// joining causes one) from members without it: for a one-shot command such
// as reconcile, which would otherwise wait for a running `run` to stop.
func Preempt() Option { return func(l *Lease) { l.preempt = true } }

// Join joins the group; Acquire waits for the lease. reg may be nil.
func Join(ctx context.Context, cfg Config, log *zap.Logger, reg prometheus.Registerer, opts ...Option) (*Lease, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := checkTopic(ctx, cfg); err != nil {
		return nil, err
	}
	l := &Lease{cfg: cfg, log: log,
		held: prometheus.NewGauge(prometheus.GaugeOpts{Name: "billing_lease_held", Help: "1 while this process holds the billing writer lease."}),
		terms: prometheus.NewCounter(prometheus.CounterOpts{Name: "billing_lease_terms_total",
			Help: "Lease terms (generations) this process held."}),
		fenced: prometheus.NewCounter(prometheus.CounterOpts{Name: "billing_lease_fenced_total",
			Help: "Stripe writes refused because the lease was lost before them."}),
	}
	for _, o := range opts {
		o(l)
	}
	cg, err := kafka.NewConsumerGroup(kafka.ConsumerGroupConfig{
		ID: cfg.Group, Brokers: cfg.Brokers, Topics: []string{cfg.Topic},
		SessionTimeout: cfg.SessionTimeout, HeartbeatInterval: cfg.HeartbeatInterval, RebalanceTimeout: cfg.RebalanceTimeout,
		JoinGroupBackoff: time.Second, Timeout: 5 * time.Second, GroupBalancers: []kafka.GroupBalancer{balancer{l}},
	})
	if err != nil {
		return nil, fmt.Errorf("lease group %s: %w", cfg.Group, err)
	}
	l.cg = cg
	if reg != nil {
		reg.MustRegister(l.held, l.terms, l.fenced)
	}
	return l, nil
}

// balancer gives the one partition to one member: a preempting member
// first, then the member that held it last generation (so a rebalance
// does not move the writer needlessly), then the lowest member id.
type balancer struct{ l *Lease }

func (balancer) ProtocolName() string { return "billing-sync-lease-v1" }

func (b balancer) UserData() ([]byte, error) {
	var prio, held byte
	if b.l.preempt {
		prio = 1
	}
	if b.l.wasHolder.Load() {
		held = 1
	}
	return []byte{prio, held}, nil
}

func (balancer) AssignGroups(members []kafka.GroupMember, partitions []kafka.Partition) kafka.GroupMemberAssignments {
	out := kafka.GroupMemberAssignments{}
	if len(members) == 0 {
		return out
	}
	rank := func(m kafka.GroupMember) int {
		if len(m.UserData) < 2 {
			return 0
		}
		return int(m.UserData[0])*2 + int(m.UserData[1])
	}
	ms := append([]kafka.GroupMember(nil), members...)
	sort.Slice(ms, func(i, j int) bool {
		if ri, rj := rank(ms[i]), rank(ms[j]); ri != rj {
			return ri > rj
		}
		return ms[i].ID < ms[j].ID
	})
	for _, m := range ms {
		out[m.ID] = map[string][]int{}
	}
	for _, p := range partitions {
		out[ms[0].ID][p.Topic] = append(out[ms[0].ID][p.Topic], p.ID)
	}
	return out
}

// checkTopic refuses a lease topic with more than one partition: with two,
// two members would each hold one.
func checkTopic(ctx context.Context, cfg Config) error {
	client := &kafka.Client{Addr: kafka.TCP(cfg.Brokers...), Timeout: 10 * time.Second}
	md, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{cfg.Topic}})
	if err != nil {
		return fmt.Errorf("lease.topic %s: metadata: %w", cfg.Topic, err)
	}
	if len(md.Topics) != 1 || md.Topics[0].Error != nil {
		return fmt.Errorf("lease.topic %s: %v", cfg.Topic, md.Topics)
	}
	if n := len(md.Topics[0].Partitions); n != 1 {
		return fmt.Errorf("lease.topic %s: has %d partitions, needs exactly 1", cfg.Topic, n)
	}
	return nil
}

// Term is one generation in which this process holds the lease.
type Term struct {
	l      *Lease
	gen    *kafka.Generation
	ctx    context.Context
	cancel context.CancelFunc
	ended  chan struct{}
	once   sync.Once
	check  sync.Mutex // one commit at a time on the generation's coordinator connection
}

// Acquire blocks until this member holds the lease (or ctx ends). Call
// End when done with the term; its Context ends when the lease is lost.
func (l *Lease) Acquire(ctx context.Context) (*Term, error) { return l.acquire(ctx, ctx) }

// AcquireWithin is Acquire that gives up after wait; the term, once
// held, lives as long as ctx.
func (l *Lease) AcquireWithin(ctx context.Context, wait time.Duration) (*Term, error) {
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	return l.acquire(ctx, wctx)
}

func (l *Lease) acquire(ctx, wctx context.Context) (*Term, error) {
	for {
		gen, err := l.cg.Next(wctx)
		if err != nil {
			if wctx.Err() != nil {
				return nil, wctx.Err()
			}
			if errors.Is(err, kafka.ErrGroupClosed) {
				return nil, err
			}
			// Rebalance in progress, coordinator moving: try again.
			l.log.Debug("lease: joining the group", zap.Error(err))
			continue
		}
		l.wasHolder.Store(holds(gen, l.cfg.Topic))
		if !holds(gen, l.cfg.Topic) {
			l.log.Info("lease: standing by (another process is the writer)", zap.Int32("generation", gen.ID))
			ended := make(chan struct{})
			gen.Start(func(gctx context.Context) { <-gctx.Done(); close(ended) })
			select {
			case <-ended:
				continue
			case <-wctx.Done():
				return nil, wctx.Err()
			}
		}
		tctx, cancel := context.WithCancel(ctx)
		t := &Term{l: l, gen: gen, ctx: tctx, cancel: cancel, ended: make(chan struct{})}
		// kafka-go joins the next generation only after this returns: the
		// holder stops before anyone else can hold the lease.
		gen.Start(func(gctx context.Context) {
			select {
			case <-gctx.Done():
			case <-t.ended:
			}
			cancel()
			<-t.ended
		})
		l.mu.Lock()
		l.term = t
		l.mu.Unlock()
		l.held.Set(1)
		l.terms.Inc()
		l.log.Info("lease: this process is the billing writer", zap.Int32("generation", gen.ID), zap.String("member", gen.MemberID))
		return t, nil
	}
}

func holds(gen *kafka.Generation, topic string) bool {
	for _, pa := range gen.Assignments[topic] {
		if pa.ID == 0 {
			return true
		}
	}
	return false
}

// Generation is the term's fence token.
func (t *Term) Generation() int32 { return t.gen.ID }

// Context ends when the lease is lost (or the term ended).
func (t *Term) Context() context.Context { return t.ctx }

// Check asks the group coordinator whether this term is still current, by
// committing an offset under its generation: after a rebalance the
// coordinator refuses it. A nil error means no other writer had begun when
// the coordinator answered.
func (t *Term) Check(ctx context.Context) error {
	// Always ask the coordinator: a process frozen past its session may
	// not have noticed locally. The commit is one round trip to one
	// partition; its value is irrelevant, the generation is what counts.
	t.check.Lock()
	err := t.gen.CommitOffsets(map[string]map[int]int64{t.l.cfg.Topic: {0: 0}})
	t.check.Unlock()
	if err == nil && t.ctx.Err() != nil {
		err = errors.New("the generation ended")
	}
	if err != nil {
		t.l.fenced.Inc()
		t.cancel()
		return fmt.Errorf("%w (generation %d): %w", ErrLost, t.gen.ID, err)
	}
	return nil
}

// End gives the term up: the next generation may begin.
func (t *Term) End() {
	t.once.Do(func() {
		t.cancel()
		close(t.ended)
		t.l.held.Set(0)
	})
}

// Close ends any term and leaves the group, so another member takes the
// lease at once instead of after the session timeout.
func (l *Lease) Close() error {
	l.mu.Lock()
	t := l.term
	l.mu.Unlock()
	if t != nil {
		t.End()
	}
	return l.cg.Close()
}
