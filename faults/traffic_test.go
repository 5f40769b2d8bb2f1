package faults

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/shopspring/decimal"

	"github.com/usagemeter/usagemeter/producer"
	"github.com/usagemeter/usagemeter/schemas"
)

// allTenants spread over all four partitions with murmur2; with librdkafka's
// default CRC32 partitioner half of them land elsewhere (acme, globex,
// initech, hooli, stark, wonka) and half on the same partition.
func allTenants() []string {
	return []string{"acme", "globex", "initech", "umbrella", "hooli", "stark",
		"wayne", "wonka", "tyrell", "cyberdyne", "soylent", "aperture"}
}

// meterNames are the meters of plansYAML.
func meterNames() []string { return []string{"api_calls", "tokens"} }

// load publishes through the Go SDK, in sync mode, a steady stream of
// events for a set of tenants until it is stopped. A batch the broker did
// not acknowledge is published again with the same ids (what a careful
// caller does), so an outage delays events but loses none.
type load struct {
	pub      *producer.Publisher
	prefix   string   // of every id, unique per case
	tenants  []string // whom the events are for
	perTick  int      // events per 20 ms
	dupEvery int      // also republish every n-th batch at once (0: never)

	mu     sync.Mutex
	rng    *rand.Rand
	seq    int
	acked  []schemas.UsageEvent // every event the broker acknowledged, in order
	errors atomic.Int64         // failed Publish calls (each retried)

	stop func() error
}

func newLoad(broker, topic, prefix string, tenantSet []string, eventsPerSecond int) (*load, error) {
	pub, err := producer.New([]string{broker}, producer.WithTopic(topic), producer.WithRetries(3, 5*time.Second))
	if err != nil {
		return nil, fmt.Errorf("new publisher: %w", err)
	}
	return &load{pub: pub, prefix: prefix, tenants: tenantSet, perTick: max(1, eventsPerSecond/50),
		rng: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 6))}, nil
}

// event returns a new event with a unique id and a small quantity: on
// ClickHouse 18.16 a Decimal sum() past 10^29 overflows silently, and the
// suite must measure the pipeline, not that.
func (l *load) event(tenant string) schemas.UsageEvent {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.seq++
	return schemas.UsageEvent{
		ID:          l.prefix + "-" + strconv.Itoa(l.seq),
		TenantID:    tenant,
		UserID:      "user-" + strconv.Itoa(l.rng.IntN(5)),
		FeatureType: meterNames()[l.rng.IntN(2)],
		Quantity:    decimal.New(l.rng.Int64N(100_000)+1, -3), // 0.001 to 100
		Timestamp:   time.Now().UTC(),
	}
}

func (l *load) batch(n int) []schemas.UsageEvent {
	out := make([]schemas.UsageEvent, n)
	for i := range out {
		l.mu.Lock()
		tenant := l.tenants[l.rng.IntN(len(l.tenants))]
		l.mu.Unlock()
		out[i] = l.event(tenant)
	}
	return out
}

// start publishes in the background until the returned stop is called.
func (l *load) start() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.run(ctx) }()
	l.stop = func() error {
		cancel()
		err := <-done
		if cerr := l.pub.Close(); err == nil {
			err = cerr
		}
		return err
	}
}

func (l *load) run(ctx context.Context) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for n := 1; ; n++ {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		b := l.batch(l.perTick)
		if err := l.publish(b); err != nil {
			return err
		}
		if l.dupEvery > 0 && n%l.dupEvery == 0 {
			if err := l.publish(b); err != nil {
				return err
			}
		}
	}
}

// publish sends events until the broker acknowledges them, for at most
// two minutes (a broker restart takes seconds).
func (l *load) publish(events []schemas.UsageEvent) error {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		err := l.pub.Publish(ctx, events...)
		cancel()
		if err == nil {
			l.mu.Lock()
			l.acked = append(l.acked, events...)
			l.mu.Unlock()
			return nil
		}
		l.errors.Add(1)
		if time.Now().After(deadline) {
			return fmt.Errorf("publish %d events: %w", len(events), err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// ackedSlice returns a copy of acknowledged events [from, to).
func (l *load) ackedSlice(from, to int) []schemas.UsageEvent {
	l.mu.Lock()
	defer l.mu.Unlock()
	from, to = max(0, min(from, len(l.acked))), max(0, min(to, len(l.acked)))
	return append([]schemas.UsageEvent(nil), l.acked[from:to]...)
}

func (l *load) ackedCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.acked)
}

// writeRaw publishes messages with a kafka-go writer of the caller's
// choice of balancer: what a publisher that ignores the SDK does.
func writeRaw(ctx context.Context, broker, topic string, bal kafka.Balancer, msgs []kafka.Message) error {
	w := &kafka.Writer{Addr: kafka.TCP(broker), Topic: topic, Balancer: bal, RequiredAcks: kafka.RequireAll,
		BatchTimeout: time.Millisecond}
	err := w.WriteMessages(ctx, msgs...)
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %d raw messages to %s: %w", len(msgs), topic, err)
	}
	return nil
}

// publishKcat publishes events keyed by tenant with kcat (librdkafka) and
// its default partitioner, consistent_random (CRC32 of the key), as a
// Python or C publisher configured with defaults does.
func publishKcat(ctx context.Context, broker, topic string, events []schemas.UsageEvent) error {
	var in bytes.Buffer
	for i := range events {
		in.WriteString(events[i].TenantID)
		in.WriteByte('|')
		in.Write(events[i].AppendJSON(nil))
		in.WriteByte('\n')
	}
	cmd := exec.CommandContext(ctx, "kcat", "-P", "-b", broker, "-t", topic, "-K", "|", "-X", "acks=all")
	cmd.Stdin = &in
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("kcat -P %d events: %w\n%s", len(events), err, out)
	}
	return nil
}
