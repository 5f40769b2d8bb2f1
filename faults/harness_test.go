package faults

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/segmentio/kafka-go"

	"github.com/usagemeter/usagemeter/svckit"
	"github.com/usagemeter/usagemeter/testenv"
)

const (
	// partitions of usage.events in every case: the consumer and the
	// aggregator must route by murmur2(tenant_id) % partitions.
	partitions = 4
	// sessionTimeout is the group session the suite gives both services
	// (kafka.session_timeout, aggregator.session_timeout; issue 6 asks for
	// about 10 s). A replacement member waits out a SIGKILLed member's
	// session, so a recovery must take at most sessionTimeout + catchUp.
	sessionTimeout = 10 * time.Second
	catchUp        = 15 * time.Second
)

// binaries are the service executables under test, built once per run of
// the test binary from the working tree.
type binaries struct{ consumer, aggregator string }

func buildBinaries(t *testing.T) binaries {
	t.Helper()
	bins, err := testenv.BuildCommands(t.TempDir(), "./consumer/cmd/usage-consumer", "./aggregator/cmd/usage-aggregator")
	if err != nil {
		t.Fatal(err)
	}
	return binaries{consumer: bins[0], aggregator: bins[1]}
}

// engines are the addresses of the broker and the ClickHouse server a
// case runs against.
type engines struct{ broker, clickhouse string }

// pipeline is one case's private slice of the engines: its own topics,
// consumer groups and database, and the service processes it started.
type pipeline struct {
	t                            *testing.T
	bins                         binaries
	eng                          engines
	topic, dlq, late, quota, asg string
	rawGroup, aggGroup           string
	db                           string
	plansFile                    string
	dir                          string // logs of the service processes
	conn                         driver.Conn
	procs                        []*proc
	consumer                     *proc   // the current usage-consumer
	aggregators                  []*proc // every usage-aggregator started, oldest first
}

// plansYAML meters everything as a sum, unlimited (LIMITED, for case 10's
// plan change, has limits the traffic never reaches), so that a quota
// state's usage is the exact total of its tenant, meter and period, and
// rejects unknown meters (the suite publishes none).
const plansYAML = `meters:
  api_calls: { aggregation: sum }
  tokens:    { aggregation: sum }
unknown_meters: reject
plans:
  METERED: { meters: { api_calls: { limit: -1 }, tokens: { limit: -1 } } }
  LIMITED: { meters: { api_calls: { limit: 100000000 }, tokens: { limit: 100000000 } } }
default_plan: METERED
`

func newPipeline(t *testing.T, bins binaries, eng engines) *pipeline {
	t.Helper()
	name := testenv.Name("faults")
	dir := t.TempDir()
	p := &pipeline{t: t, bins: bins, eng: eng, dir: dir,
		topic: name + ".events", dlq: name + ".dlq", late: name + ".late", quota: name + ".quota", asg: name + ".plans",
		rawGroup: name + ".raw", aggGroup: name + ".agg", db: name, plansFile: filepath.Join(dir, "plans.yaml")}
	if err := os.WriteFile(p.plansFile, []byte(plansYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	compact := []kafka.ConfigEntry{{ConfigName: "cleanup.policy", ConfigValue: "compact"}}
	createTopics(t, eng.broker,
		// As the services create it: LogAppendTime, so the future rule is
		// judged by the broker's clock.
		kafka.TopicConfig{Topic: p.topic, NumPartitions: partitions, ReplicationFactor: 1, ConfigEntries: svckit.EventTopicConfig()},
		kafka.TopicConfig{Topic: p.dlq, NumPartitions: partitions, ReplicationFactor: 1},
		kafka.TopicConfig{Topic: p.late, NumPartitions: partitions, ReplicationFactor: 1},
		kafka.TopicConfig{Topic: p.quota, NumPartitions: partitions, ReplicationFactor: 1, ConfigEntries: compact},
		kafka.TopicConfig{Topic: p.asg, NumPartitions: 1, ReplicationFactor: 1, ConfigEntries: compact})
	// The real migrate command, once, so the two services never race to
	// create the tables.
	cmd := exec.Command(bins.consumer, "migrate")
	cmd.Env = p.consumerEnv()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("usage-consumer migrate: %v\n%s", err, out)
	}
	p.conn = testenv.Open(t, eng.clickhouse, p.db)
	t.Cleanup(p.stopAll)
	return p
}

// createTopics creates topics and waits until every partition answers.
// Unlike testenv.CreateTopic it does not delete them at the end: the
// private broker is purged when the run ends, and deleting topics on a
// broker a failed case left stopped would only wait out a timeout per
// topic.
func createTopics(t *testing.T, broker string, topics ...kafka.TopicConfig) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client := &kafka.Client{Addr: kafka.TCP(broker), Timeout: 30 * time.Second}
	res, err := client.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: topics})
	if err != nil {
		t.Fatalf("create topics: %v", err)
	}
	for _, tc := range topics {
		if err := res.Errors[tc.Topic]; err != nil {
			t.Fatalf("create topic %s: %v", tc.Topic, err)
		}
		// Right after creation a partition can still answer NOT_LEADER.
		for {
			_, err := offsetsOf(ctx, broker, tc.Topic, tc.NumPartitions)
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("topic %s not ready: %v", tc.Topic, err)
			}
			sleep(ctx, 50*time.Millisecond)
		}
	}
}

// env is the process environment without any USAGE_* variable of the
// caller's, so that nothing but the suite's settings reaches a service.
func (p *pipeline) env(settings ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "USAGE_") {
			env = append(env, kv)
		}
	}
	return append(env, settings...)
}

// consumerEnv keeps production defaults except where the case's private
// names and engines go.
func (p *pipeline) consumerEnv() []string {
	return p.env(
		"USAGE_KAFKA_BROKERS="+p.eng.broker,
		"USAGE_KAFKA_TOPIC="+p.topic,
		"USAGE_KAFKA_GROUP_ID="+p.rawGroup,
		"USAGE_KAFKA_DLQ_TOPIC="+p.dlq,
		"USAGE_KAFKA_SESSION_TIMEOUT="+sessionTimeout.String(),
		"USAGE_CLICKHOUSE_ADDR="+p.eng.clickhouse,
		"USAGE_CLICKHOUSE_DATABASE="+p.db,
		"USAGE_TOPIC_PARTITIONS="+strconv.Itoa(partitions),
	)
}

func (p *pipeline) aggregatorEnv() []string {
	return p.env(
		"USAGE_AGGREGATOR_BROKERS="+p.eng.broker,
		"USAGE_AGGREGATOR_TOPIC="+p.topic,
		"USAGE_AGGREGATOR_GROUP_ID="+p.aggGroup,
		"USAGE_AGGREGATOR_QUOTA_TOPIC="+p.quota,
		"USAGE_AGGREGATOR_LATE_TOPIC="+p.late,
		"USAGE_AGGREGATOR_DLQ_TOPIC="+p.dlq,
		"USAGE_AGGREGATOR_ASSIGNMENT_TOPIC="+p.asg,
		"USAGE_AGGREGATOR_SESSION_TIMEOUT="+sessionTimeout.String(),
		"USAGE_CLICKHOUSE_ADDR="+p.eng.clickhouse,
		"USAGE_CLICKHOUSE_DATABASE="+p.db,
		"USAGE_TOPIC_PARTITIONS="+strconv.Itoa(partitions),
	)
}

// startConsumer starts a usage-consumer (port 0: several may run at once),
// with extra environment settings if any.
func (p *pipeline) startConsumer(extra ...string) *proc {
	p.consumer = p.start("usage-consumer", p.bins.consumer, append(p.consumerEnv(), extra...), "run", "--http", "127.0.0.1:0")
	return p.consumer
}

func (p *pipeline) startAggregator() *proc {
	a := p.start("usage-aggregator", p.bins.aggregator, p.aggregatorEnv(), "--plans", p.plansFile, "--http", "127.0.0.1:0", "run")
	p.aggregators = append(p.aggregators, a)
	return a
}

// proc is one service process the suite started.
type proc struct {
	name string
	log  string // its stdout and stderr
	cmd  *exec.Cmd
	done chan struct{} // closed when it has exited; err is set then
	err  error
	// signalled is set before the suite signals it, so that an exit the
	// suite did not cause is told apart.
	signalled atomic.Bool
}

func (p *pipeline) start(name, bin string, env []string, args ...string) *proc {
	p.t.Helper()
	logPath := filepath.Join(p.dir, fmt.Sprintf("%02d-%s.log", len(p.procs), name))
	f, err := os.Create(logPath)
	if err != nil {
		p.t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env, cmd.Dir, cmd.Stdout, cmd.Stderr = env, p.dir, f, f
	if err := cmd.Start(); err != nil {
		_ = f.Close()
		p.t.Fatalf("start %s: %v", name, err)
	}
	pr := &proc{name: name, log: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		pr.err = cmd.Wait()
		_ = f.Close()
		close(pr.done)
	}()
	p.procs = append(p.procs, pr)
	return pr
}

// kill sends SIGKILL, as an OOM killer or a node loss would, and waits
// for the process to be gone.
func (pr *proc) kill() {
	pr.signalled.Store(true)
	_ = pr.cmd.Process.Signal(syscall.SIGKILL)
	<-pr.done
}

// pause freezes the process (SIGSTOP), as a long GC pause, a frozen VM or
// a stalled disk does: it keeps its sockets and its memory, and resumes
// where it was.
func (pr *proc) pause() { _ = pr.cmd.Process.Signal(syscall.SIGSTOP) }

func (pr *proc) resume() { _ = pr.cmd.Process.Signal(syscall.SIGCONT) }

// stop sends SIGTERM and gives the process grace to flush, then kills it.
func (pr *proc) stop(grace time.Duration) {
	pr.signalled.Store(true)
	pr.resume() // a paused process would hold SIGTERM pending
	_ = pr.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-pr.done:
	case <-time.After(grace):
		_ = pr.cmd.Process.Signal(syscall.SIGKILL)
		<-pr.done
	}
}

// died reports an exit the suite did not cause, with the last log lines.
func (pr *proc) died() error {
	select {
	case <-pr.done:
		if !pr.signalled.Load() {
			return fmt.Errorf("%s exited by itself (%v)%s\nlast log lines of pid %d:\n%s",
				pr.name, pr.err, lastError(pr.log), pr.cmd.Process.Pid, tail(pr.log, 6))
		}
	default:
	}
	return nil
}

func (p *pipeline) stopAll() {
	for _, pr := range p.procs {
		pr.stop(15 * time.Second)
	}
}

// alive returns the first unexpected exit among the case's processes.
func (p *pipeline) alive() error {
	var errs []error
	for _, pr := range p.procs {
		errs = append(errs, pr.died())
	}
	return errors.Join(errs...)
}

// logProblems logs the last warnings and errors of every process of the
// case, to say why it failed.
func (p *pipeline) logProblems() {
	for _, pr := range p.procs {
		status := "running"
		select {
		case <-pr.done:
			status = fmt.Sprintf("exited (%v)", pr.err)
		default:
		}
		p.t.Logf("%s (pid %d, %s), last warnings and errors:\n%s", pr.name, pr.cmd.Process.Pid, status, problems(pr.log, 5))
	}
}

// problems returns the last n warn or error lines of a zap JSON log.
func problems(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if l := sc.Text(); strings.Contains(l, `"level":"warn"`) || strings.Contains(l, `"level":"error"`) {
			if lines = append(lines, l); len(lines) > n {
				lines = lines[1:]
			}
		}
	}
	return strings.Join(lines, "\n")
}

// lastError returns ": msg: error" of the last error line of a zap JSON
// log, or "".
func lastError(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	out := ""
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var entry struct{ Level, Msg, Error string }
		if json.Unmarshal(sc.Bytes(), &entry) == nil && entry.Level == "error" {
			out = ": " + entry.Msg + ": " + entry.Error
		}
	}
	return out
}

// tail returns the last n lines of a file.
func tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}

// endOffsets returns the next offset of every partition of a topic of the
// case's partition count.
func endOffsets(ctx context.Context, broker, topic string) ([]int64, error) {
	return offsetsOf(ctx, broker, topic, partitions)
}

// offsetsOf returns the next offset of partitions 0..n-1 of topic.
func offsetsOf(ctx context.Context, broker, topic string, n int) ([]int64, error) {
	var reqs []kafka.OffsetRequest
	for p := range n {
		reqs = append(reqs, kafka.LastOffsetOf(p))
	}
	client := &kafka.Client{Addr: kafka.TCP(broker), Timeout: 5 * time.Second}
	res, err := client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil {
		return nil, fmt.Errorf("end offsets of %s: %w", topic, err)
	}
	if got := len(res.Topics[topic]); got != n {
		return nil, fmt.Errorf("end offsets of %s: %d partitions answered, want %d", topic, got, n)
	}
	out := make([]int64, n)
	for _, po := range res.Topics[topic] {
		if po.Error != nil {
			return nil, fmt.Errorf("end offset of %s/%d: %w", topic, po.Partition, po.Error)
		}
		out[po.Partition] = po.LastOffset
	}
	return out, nil
}

// positions are where each service stands, as next offsets per partition:
// the raw consumer's committed offsets (it commits only what it wrote) and
// the aggregator's checkpoints in ClickHouse (written after the rows).
type positions struct{ raw, agg []int64 }

func (p *pipeline) positions(ctx context.Context) (positions, error) {
	pos := positions{raw: make([]int64, partitions), agg: make([]int64, partitions)}
	client := &kafka.Client{Addr: kafka.TCP(p.eng.broker), Timeout: 5 * time.Second}
	all := make([]int, partitions)
	for i := range all {
		all[i] = i
	}
	res, err := client.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: p.rawGroup, Topics: map[string][]int{p.topic: all}})
	if err != nil {
		return pos, fmt.Errorf("committed offsets of %s: %w", p.rawGroup, err)
	}
	for _, po := range res.Topics[p.topic] {
		if po.Error == nil && po.Partition < partitions {
			pos.raw[po.Partition] = po.CommittedOffset
		}
	}
	rows, err := p.conn.Query(ctx, `SELECT partition, max(offset) FROM aggregator_checkpoints FINAL
WHERE consumer_group = ? AND topic = ? GROUP BY partition`, p.aggGroup, p.topic)
	if err != nil {
		return pos, fmt.Errorf("aggregator checkpoints: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var part int32
		var off int64
		if err := rows.Scan(&part, &off); err != nil {
			return pos, fmt.Errorf("aggregator checkpoints: %w", err)
		}
		if part >= 0 && part < partitions {
			pos.agg[part] = off + 1
		}
	}
	return pos, rows.Err()
}

// behind lists the partitions where a service has not reached target.
func (pos positions) behind(target []int64) string {
	var out []string
	for i, end := range target {
		if pos.raw[i] < end {
			out = append(out, fmt.Sprintf("consumer p%d %d<%d", i, pos.raw[i], end))
		}
		if pos.agg[i] < end {
			out = append(out, fmt.Sprintf("aggregator p%d %d<%d", i, pos.agg[i], end))
		}
	}
	return strings.Join(out, ", ")
}

// waitCaughtUp is the recovery measure: it takes the end of usage.events
// now, waits until both services have passed it, and returns the time
// since the fault (from). It gives up after limit, or at once when a
// service exits by itself.
func (p *pipeline) waitCaughtUp(from time.Time, limit time.Duration) (time.Duration, error) {
	ctx, cancel := context.WithDeadline(context.Background(), from.Add(limit))
	defer cancel()
	var target []int64
	var last error
	for ctx.Err() == nil {
		if err := p.alive(); err != nil {
			return time.Since(from), err
		}
		if target == nil { // the broker may have just restarted
			if target, last = endOffsets(ctx, p.eng.broker, p.topic); last != nil {
				target = nil
			}
		}
		if target != nil {
			pos, err := p.positions(ctx)
			if err == nil {
				if last = fmt.Errorf("behind: %s", pos.behind(target)); pos.behind(target) == "" {
					return time.Since(from), nil
				}
			} else {
				last = err
			}
		}
		sleep(ctx, 100*time.Millisecond)
	}
	return time.Since(from), fmt.Errorf("not caught up %s after the fault: %w", limit, last)
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-time.After(d):
	case <-ctx.Done():
	}
}
