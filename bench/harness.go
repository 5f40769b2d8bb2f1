package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/segmentio/kafka-go"
	"github.com/shopspring/decimal"

	"github.com/usagemeter/usagemeter/producer"
	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/svckit"
)

// partitions of the events topic in every mode (as `make run` creates it).
const partitions = 4

// meters of the bench events: sums, so that every total has an exact
// expected value computed here, independently of the engines.
var meters = []string{"api_calls", "tokens"}

// workload is the events of a run, and their expected totals.
type workload struct {
	runID string
	seq   int
	// expected sum of quantity per feature over distinct ids published.
	sums     map[string]decimal.Decimal
	distinct int
}

func newWorkload() *workload {
	return &workload{runID: strconv.FormatInt(time.Now().UnixNano()%1e10, 36), sums: map[string]decimal.Decimal{}}
}

// next makes n new events over tenants, with times just before now, and
// adds them to the expected totals; feature "" alternates the meters. tokens carry fractional quantities so
// that the decimal path is exercised.
func (w *workload) next(n, tenants int, tenantFmt, feature string) []schemas.UsageEvent {
	now := time.Now().UTC()
	evs := make([]schemas.UsageEvent, n)
	for i := range evs {
		w.seq++
		s := w.seq
		feature := feature
		if feature == "" {
			feature = meters[s%len(meters)]
		}
		q := decimal.NewFromInt(int64(s%7 + 1))
		if feature == "tokens" {
			q = decimal.New(int64(s%100_000), -3)
		}
		evs[i] = schemas.UsageEvent{ID: fmt.Sprintf("b%s-%d", w.runID, s), TenantID: fmt.Sprintf(tenantFmt, s%tenants),
			UserID: fmt.Sprintf("user-%d", s%500), FeatureType: feature, Quantity: q,
			Timestamp: now.Add(-time.Duration(n-i) * time.Microsecond)}
		w.sums[feature] = w.sums[feature].Add(q)
	}
	w.distinct += n
	return evs
}

// warmUp makes the events published before the clock starts, in both
// modes: one per tenant (the first 10,000 tenants at most: every group has
// joined and written once) and at least o.warmup in all, over those
// tenants. A large warm-up is no free lunch: ClickHouse then merges its
// parts while the clock runs (100,000 events: its CPU per event 0.8-1.0 ->
// 1.1-1.5 in fresh-broker pairs), so the default is none.
func (w *workload) warmUp(o options, tenantFmt string) []schemas.UsageEvent {
	return w.next(o.warmupEvents(), min(o.tenants, 10_000), tenantFmt, "")
}

// warmupEvents is how many events warmUp makes.
func (o *options) warmupEvents() int { return max(min(o.tenants, 10_000), o.warmup) }

// publisher is the SDK as an app uses it: async, lz4, calls of 1000.
type publisher struct {
	p      *producer.Publisher
	failed atomic.Int64
}

func newPublisher(broker, topic string) (*publisher, error) {
	pub := &publisher{}
	p, err := producer.New([]string{broker}, producer.WithTopic(topic),
		producer.WithAsync(func(_ error, evs []schemas.UsageEvent) { pub.failed.Add(int64(len(evs))) }))
	if err != nil {
		return nil, fmt.Errorf("producer: %w", err)
	}
	pub.p = p
	return pub, nil
}

func (p *publisher) publish(ctx context.Context, evs []schemas.UsageEvent) error {
	for i := 0; i < len(evs); i += 1000 {
		if err := p.p.Publish(ctx, evs[i:min(i+1000, len(evs))]...); err != nil {
			return fmt.Errorf("publish: %w", err)
		}
	}
	return nil
}

// close waits for every queued event and reports async failures.
func (p *publisher) close() error {
	if err := p.p.Close(); err != nil {
		return fmt.Errorf("producer close: %w", err)
	}
	if n := p.failed.Load(); n > 0 {
		return fmt.Errorf("%d events failed to publish", n)
	}
	return nil
}

func createTopics(ctx context.Context, broker string, topics ...kafka.TopicConfig) error {
	if err := svckit.CreateTopics(ctx, []string{broker}, topics...); err != nil {
		return err
	}
	// Right after creation a partition can still answer NOT_LEADER.
	for _, tc := range topics {
		for {
			_, err := endOffsets(ctx, broker, tc.Topic, tc.NumPartitions)
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				return fmt.Errorf("topic %s not ready: %w", tc.Topic, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return nil
}

// endOffsets sums the end offsets of a topic's partitions: how many
// messages it holds (nothing is deleted during a run).
func endOffsets(ctx context.Context, broker, topic string, n int) (int64, error) {
	client := &kafka.Client{Addr: kafka.TCP(broker), Timeout: 10 * time.Second}
	req := make([]kafka.OffsetRequest, n)
	for p := range n {
		req[p] = kafka.LastOffsetOf(p)
	}
	res, err := client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: req}})
	if err != nil {
		return 0, fmt.Errorf("list offsets of %s: %w", topic, err)
	}
	var total int64
	for _, po := range res.Topics[topic] {
		if po.Error != nil {
			return 0, fmt.Errorf("list offsets of %s[%d]: %w", topic, po.Partition, po.Error)
		}
		total += po.LastOffset
	}
	if len(res.Topics[topic]) != n {
		return 0, fmt.Errorf("list offsets of %s: %d partitions answered of %d", topic, len(res.Topics[topic]), n)
	}
	return total, nil
}

// committed is the sum over the topic's partitions of what group has
// committed (the offset it would read next; none counts 0).
func committed(ctx context.Context, broker, group, topic string, n int) (int64, error) {
	client := &kafka.Client{Addr: kafka.TCP(broker), Timeout: 10 * time.Second}
	parts := make([]int, n)
	for p := range n {
		parts[p] = p
	}
	res, err := client.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{topic: parts}})
	if err == nil {
		err = res.Error
	}
	if err != nil {
		return 0, fmt.Errorf("committed offsets of %s: %w", group, err)
	}
	var total int64
	for _, po := range res.Topics[topic] {
		if po.Error != nil {
			return 0, fmt.Errorf("committed offsets of %s[%d]: %w", group, po.Partition, po.Error)
		}
		total += max(po.CommittedOffset, 0)
	}
	return total, nil
}

// gate is a consumer group brokerGated waits for, and the milestone
// (Record.Phases) its commit of the whole topic marks.
type gate struct{ group, phase string }

// brokerGated polls the end of the throughput phase mostly at the broker:
// cond (ClickHouse queries) runs once every gate's group has committed the
// end of the topic — the consumer commits after its insert, the aggregator
// after its checkpoint, the Kafka engine after writing a block — and at
// least every 250 ms (a commit may fail: the aggregator's are best
// effort). A query costs ClickHouse about a millisecond of CPU (measured:
// 200 in 0.17 s), which at every 20 ms poll would put a third of a
// microsecond per event in its row; an offset request costs the broker
// microseconds. Each group's first commit of the whole topic is noted in
// phases (seconds since start); when cond holds, the milestones not seen
// yet are noted then.
func brokerGated(ctx context.Context, broker, topic string, gates []gate, phases map[string]float64, start time.Time,
	cond func() (bool, string, error)) func() (bool, string, error) {
	var lastCH time.Time
	return func() (bool, string, error) {
		end, err := endOffsets(ctx, broker, topic, partitions)
		if err != nil {
			return false, "", err
		}
		atEnd := true
		for _, g := range gates {
			c, err := committed(ctx, broker, g.group, topic, partitions)
			if err != nil {
				return false, "", err
			}
			notePhase(phases, g.phase, start, c >= end)
			atEnd = atEnd && c >= end
		}
		if !atEnd && time.Since(lastCH) < 250*time.Millisecond {
			return false, "", nil
		}
		lastCH = time.Now()
		ok, state, err := cond()
		for _, g := range gates {
			notePhase(phases, g.phase, start, ok)
		}
		return ok, state, err
	}
}

func openCH(ctx context.Context, addr, db string) (driver.Conn, error) {
	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{addr}, Auth: clickhouse.Auth{Database: db},
		DialTimeout: 5 * time.Second, ReadTimeout: 60 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("clickhouse %s: %w", addr, err)
	}
	if err := conn.Ping(ctx); err != nil {
		return nil, fmt.Errorf("clickhouse %s: %w", addr, err)
	}
	return conn, nil
}

// count runs a query returning one UInt64.
func count(ctx context.Context, conn driver.Conn, sql string, args ...any) (uint64, error) {
	var n uint64
	if err := conn.QueryRow(ctx, sql, args...).Scan(&n); err != nil {
		return 0, fmt.Errorf("%s: %w", sql, err)
	}
	return n, nil
}

// sumsByFeature runs a query returning (feature_type, toString(sum)).
func sumsByFeature(ctx context.Context, conn driver.Conn, sql string, args ...any) (map[string]decimal.Decimal, error) {
	rows, err := conn.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", sql, err)
	}
	defer rows.Close()
	out := map[string]decimal.Decimal{}
	for rows.Next() {
		var f, s string
		if err := rows.Scan(&f, &s); err != nil {
			return nil, fmt.Errorf("scan sums: %w", err)
		}
		d, err := decimal.NewFromString(s)
		if err != nil {
			return nil, fmt.Errorf("sum %q of %s: %w", s, f, err)
		}
		out[f] = d
	}
	return out, rows.Err()
}

// compareSums adds one check per meter.
func compareSums(after, what string, want, got map[string]decimal.Decimal) []Check {
	var out []Check
	for _, m := range meters {
		out = append(out, Check{After: after, What: what + " " + m, Expected: want[m].String(), Got: got[m].String(),
			Exact: want[m].Equal(got[m])})
	}
	return out
}

// waitFor polls cond every 100 ms until it holds or timeout passes.
func waitFor(ctx context.Context, timeout time.Duration, what string, cond func() (bool, string, error)) error {
	return pollFor(ctx, timeout, 100*time.Millisecond, what, cond)
}

// notePhase records, once, the seconds since start at which a milestone of
// the throughput phase was first seen to hold.
func notePhase(phases map[string]float64, what string, start time.Time, holds bool) {
	if _, seen := phases[what]; holds && !seen {
		phases[what] = round(time.Since(start).Seconds(), 2)
	}
}

// throughputPoll is how often the throughput phase's end is looked for: the
// clock stops at the first poll that sees every event, so the poll adds up
// to this much to the measured time (1 % of a 2 s run). Most polls ask only
// the broker (brokerGated).
const throughputPoll = 20 * time.Millisecond

// pollFor is waitFor polling every interval.
func pollFor(ctx context.Context, timeout, every time.Duration, what string, cond func() (bool, string, error)) error {
	deadline := time.Now().Add(timeout)
	var state string
	for {
		ok, s, err := cond()
		if err == nil && ok {
			return nil
		}
		if s != "" {
			state = s
		}
		if err != nil {
			state = err.Error()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not reached within %s (%s)", what, timeout, state)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", what, context.Cause(ctx))
		case <-time.After(every):
		}
	}
}

// restartClickHouse stops the private server (SIGTERM, then SIGKILL after
// the script's grace) and starts it again, with scripts/clickhouse.sh.
func restartClickHouse(o options, down time.Duration) error {
	for _, step := range []string{"stop", "start"} {
		cmd := exec.Command(o.chScript, step)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("clickhouse.sh %s: %w\n%s", step, err, out)
		}
		if step == "stop" {
			time.Sleep(down)
		}
	}
	return nil
}

// proc is a service process this harness started.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

func startProc(dir, name, bin string, env []string, args ...string) (*proc, error) {
	f, err := os.Create(filepath.Join(dir, name+".log"))
	if err != nil {
		return nil, fmt.Errorf("log of %s: %w", name, err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env, cmd.Dir, cmd.Stdout, cmd.Stderr = env, dir, f, f
	if err := cmd.Start(); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); _ = f.Close(); close(p.done) }()
	return p, nil
}

// alive fails when the process has exited.
func (p *proc) alive() error {
	select {
	case <-p.done:
		return fmt.Errorf("%s exited: %v", p.name, p.err)
	default:
		return nil
	}
}

// stop sends SIGTERM and waits up to 20 s, then kills.
func (p *proc) stop() {
	_ = p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func command(bin string, env []string, args ...string) *exec.Cmd {
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	return cmd
}
