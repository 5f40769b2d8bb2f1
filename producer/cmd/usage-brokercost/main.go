// Command usage-brokercost measures the Kafka broker's CPU per event by
// kind of traffic, reading utime+stime of the broker's pid from /proc
// before and after each phase (use a broker whose CPU is yours alone):
//
//   - produce: the SDK's writer settings at full speed (Publish calls of
//     1000, async), into a fresh topic;
//   - group:   one consumer-group Reader reads it all, as usage-consumer
//     configures it (MinBytes, MaxWait 250 ms, QueueCapacity 4096, 16 MiB);
//   - parts:   one Reader per partition reads it all, as usage-aggregator
//     does (MaxWait 100 ms);
//   - live:    both kinds of readers follow a fresh topic while it is
//     produced, the real case.
//
// It prints one line per phase: broker CPU µs per event, produce requests
// and fetches per 1000 events (kafka-go's Writer/Reader stats), and the
// reader's p50/p99 lag behind the append time in the live phase.
//
//	usage-brokercost -brokers 127.0.0.1:24092 -pidfile .cache/run/kafka-24092/kafka.pid
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/compress"
	"github.com/shopspring/decimal"

	"github.com/usagemeter/usagemeter/schemas"
)

type options struct {
	brokers     []string
	pidfile     string
	events      int
	tenants     int
	partitions  int
	codec       string
	batchSize   int
	batchBytes  int64
	linger      time.Duration
	topicConf   []kafka.ConfigEntry
	groupMin    int
	groupWait   time.Duration
	partsMin    int
	partsWait   time.Duration
	phases      []string
	label       string
	rate        int
	readerCount int
}

func main() {
	var o options
	var brokers, topicConf, phases string
	flag.StringVar(&brokers, "brokers", "127.0.0.1:24092", "comma-separated brokers")
	flag.StringVar(&o.pidfile, "pidfile", ".cache/run/kafka-24092/kafka.pid", "the broker's pid file")
	flag.IntVar(&o.events, "events", 500_000, "events per phase")
	flag.IntVar(&o.tenants, "tenants", 50, "tenants (keys)")
	flag.IntVar(&o.partitions, "partitions", 4, "partitions of the topic")
	flag.StringVar(&o.codec, "compression", "lz4", "producer codec: lz4, zstd, snappy, gzip, none")
	flag.IntVar(&o.batchSize, "batch-size", 10000, "Writer.BatchSize")
	flag.Int64Var(&o.batchBytes, "batch-bytes", 1<<20, "Writer.BatchBytes")
	flag.DurationVar(&o.linger, "linger", 5*time.Millisecond, "Writer.BatchTimeout")
	flag.StringVar(&topicConf, "topic-config", "message.timestamp.type=LogAppendTime", "topic config entries k=v,k=v")
	flag.IntVar(&o.groupMin, "group-min-bytes", 1, "consumer-group reader MinBytes")
	flag.DurationVar(&o.groupWait, "group-max-wait", 250*time.Millisecond, "consumer-group reader MaxWait")
	flag.IntVar(&o.partsMin, "parts-min-bytes", 1, "per-partition readers MinBytes")
	flag.DurationVar(&o.partsWait, "parts-max-wait", 100*time.Millisecond, "per-partition readers MaxWait")
	flag.StringVar(&phases, "phases", "produce,group,parts,live", "phases to run")
	flag.StringVar(&o.label, "label", "", "a label printed on every line")
	flag.IntVar(&o.rate, "rate", 0, "live phase: events/s (0: as fast as possible)")
	flag.Parse()
	o.brokers = strings.Split(brokers, ",")
	o.phases = strings.Split(phases, ",")
	for kv := range strings.SplitSeq(topicConf, ",") {
		if kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			fmt.Fprintln(os.Stderr, "usage-brokercost: -topic-config wants k=v")
			os.Exit(2)
		}
		o.topicConf = append(o.topicConf, kafka.ConfigEntry{ConfigName: k, ConfigValue: v})
	}
	if err := run(context.Background(), o); err != nil {
		fmt.Fprintln(os.Stderr, "usage-brokercost:", err)
		os.Exit(1)
	}
}

// brokerCPU returns utime+stime of the broker process.
func brokerCPU(pidfile string) (time.Duration, error) {
	b, err := os.ReadFile(pidfile)
	if err != nil {
		return 0, fmt.Errorf("pid file: %w", err)
	}
	stat, err := os.ReadFile("/proc/" + strings.TrimSpace(string(b)) + "/stat")
	if err != nil {
		return 0, fmt.Errorf("broker stat: %w", err)
	}
	// Fields after the command name (which may hold spaces): state is 3,
	// utime 14, stime 15, in clock ticks (100 per second on Linux).
	s := string(stat)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("broker stat: %w", err)
	}
	return time.Duration(ut+st) * 10 * time.Millisecond, nil
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	return strings.Join(strings.Fields(string(b))[:1], "")
}

// result is one phase's figures.
type result struct {
	phase              string
	events             int
	elapsed            time.Duration
	broker, self       time.Duration
	writes, fetches    int64
	lagP50, lagP99     time.Duration // the group reader's
	partP50, partP99   time.Duration // the per-partition readers'
	loadStart, loadEnd string
}

func (r result) print(o options) {
	per := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(r.events) }
	lag := ""
	if r.lagP99 > 0 {
		lag = fmt.Sprintf(" lag p50/p99 group %v/%v parts %v/%v", r.lagP50.Round(time.Millisecond), r.lagP99.Round(time.Millisecond),
			r.partP50.Round(time.Millisecond), r.partP99.Round(time.Millisecond))
	}
	fmt.Printf("%s phase=%-7s events=%d %6.0fk ev/s broker %.2f us/ev, client %.2f us/ev, produce req/1k ev %.2f, fetches/1k ev %.2f%s load %s->%s | codec=%s batch=%d/%d linger=%v topic=%v group=%d/%v parts=%d/%v\n",
		o.label, r.phase, r.events, float64(r.events)/r.elapsed.Seconds()/1000, per(r.broker), per(r.self),
		float64(r.writes)*1000/float64(r.events), float64(r.fetches)*1000/float64(r.events), lag, r.loadStart, r.loadEnd,
		o.codec, o.batchSize, o.batchBytes, o.linger, o.topicConf, o.groupMin, o.groupWait, o.partsMin, o.partsWait)
}

// measure runs f and reads the broker's and this process's CPU around it.
func measure(o options, phase string, events int, f func(*result) error) (result, error) {
	r := result{phase: phase, events: events, loadStart: loadavg()}
	b0, err := brokerCPU(o.pidfile)
	if err != nil {
		return r, err
	}
	s0, t0 := selfCPU(), time.Now()
	if err := f(&r); err != nil {
		return r, fmt.Errorf("%s: %w", phase, err)
	}
	r.elapsed, r.self = time.Since(t0), selfCPU()-s0
	b1, err := brokerCPU(o.pidfile)
	if err != nil {
		return r, err
	}
	r.broker, r.loadEnd = b1-b0, loadavg()
	r.print(o)
	return r, nil
}

func run(ctx context.Context, o options) error {
	events := encodeEvents(o.events, o.tenants)
	stamp := time.Now().Format("150405")
	topic := "brokercost_" + stamp
	if slices.Contains(o.phases, "produce") || slices.Contains(o.phases, "group") || slices.Contains(o.phases, "parts") {
		if err := createTopic(ctx, o, topic); err != nil {
			return err
		}
		// Produce always runs first: the read phases read what it wrote.
		if _, err := measure(o, "produce", o.events, func(r *result) error {
			w, err := produce(ctx, o, topic, events, nil)
			r.writes = w
			return err
		}); err != nil {
			return err
		}
		time.Sleep(time.Second)
	}
	if slices.Contains(o.phases, "group") {
		if _, err := measure(o, "group", o.events, func(r *result) error {
			f, err := readGroup(ctx, o, topic, "g"+stamp, o.events, nil)
			r.fetches = f
			return err
		}); err != nil {
			return err
		}
		time.Sleep(time.Second)
	}
	if slices.Contains(o.phases, "parts") {
		if _, err := measure(o, "parts", o.events, func(r *result) error {
			f, err := readParts(ctx, o, topic, o.events, nil)
			r.fetches = f
			return err
		}); err != nil {
			return err
		}
		time.Sleep(time.Second)
	}
	if slices.Contains(o.phases, "live") {
		live := topic + "_live"
		if err := createTopic(ctx, o, live); err != nil {
			return err
		}
		if _, err := measure(o, "live", o.events, func(r *result) error { return runLive(ctx, o, live, events, r) }); err != nil {
			return err
		}
	}
	return nil
}

func createTopic(ctx context.Context, o options, topic string) error {
	client := &kafka.Client{Addr: kafka.TCP(o.brokers...), Timeout: 30 * time.Second}
	res, err := client.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{{
		Topic: topic, NumPartitions: o.partitions, ReplicationFactor: 1, ConfigEntries: o.topicConf}}})
	if err != nil {
		return fmt.Errorf("create topic: %w", err)
	}
	if err := res.Errors[topic]; err != nil {
		return fmt.Errorf("create topic: %w", err)
	}
	time.Sleep(500 * time.Millisecond) // leaders settle
	return nil
}

// encodeEvents returns the bench's kind of events, JSON-encoded as the SDK
// sends them (about 200 bytes each), with their keys.
func encodeEvents(n, tenants int) []kafka.Message {
	v := schemas.NewValidator()
	now := time.Now().UTC()
	msgs := make([]kafka.Message, n)
	features := []string{schemas.MeterAPICalls, schemas.MeterAIGeneration, "tokens"}
	for i := range msgs {
		e := schemas.UsageEvent{ID: schemas.NewID(), TenantID: fmt.Sprintf("tenant-%04d", i%tenants),
			UserID: fmt.Sprintf("user-%d", i%500), FeatureType: features[i%3], Quantity: decimal.NewFromInt(int64(1 + i%7)),
			Timestamp: now}
		b, err := v.AppendEvent(nil, &e)
		if err != nil {
			panic(err)
		}
		msgs[i] = kafka.Message{Key: []byte(e.TenantID), Value: b}
	}
	return msgs
}

func codecOf(name string) kafka.Compression {
	switch name {
	case "lz4":
		return kafka.Lz4
	case "zstd":
		return kafka.Zstd
	case "snappy":
		return kafka.Snappy
	case "gzip":
		return kafka.Gzip
	}
	return compress.None
}

// produce writes the events with the SDK's Writer settings (async, calls of
// 1000, acks=all) and returns the number of produce requests. With a rate
// it paces calls of 100.
func produce(ctx context.Context, o options, topic string, msgs []kafka.Message, sent *atomic.Int64) (int64, error) {
	var failed atomic.Int64
	w := &kafka.Writer{Addr: kafka.TCP(o.brokers...), Topic: topic, Balancer: kafka.Murmur2Balancer{},
		BatchSize: o.batchSize, BatchBytes: o.batchBytes, BatchTimeout: o.linger, RequiredAcks: kafka.RequireAll,
		Compression: codecOf(o.codec), Async: true, MaxAttempts: 10, WriteTimeout: 10 * time.Second,
		Completion: func(m []kafka.Message, err error) {
			if err != nil {
				failed.Add(int64(len(m)))
			}
		}}
	call := 1000
	var tick *time.Ticker
	if o.rate > 0 {
		call = 100
		tick = time.NewTicker(time.Second * time.Duration(call) / time.Duration(o.rate))
		defer tick.Stop()
	}
	for i := 0; i < len(msgs); i += call {
		if tick != nil {
			<-tick.C
		}
		batch := msgs[i:min(i+call, len(msgs))]
		for j := range batch {
			batch[j].Time = time.Now() // the lag is measured from here
		}
		if err := w.WriteMessages(ctx, batch...); err != nil {
			return 0, err
		}
		if sent != nil {
			sent.Add(int64(len(batch)))
		}
	}
	if err := w.Close(); err != nil {
		return 0, err
	}
	if n := failed.Load(); n > 0 {
		return 0, fmt.Errorf("%d events not delivered", n)
	}
	return w.Stats().Writes, nil
}

// lagRec records the append-time lag of some messages (LogAppendTime
// topics: the broker's clock, this machine's).
type lagRec struct {
	mu  sync.Mutex
	lag []time.Duration
}

func (l *lagRec) add(m kafka.Message) {
	if l == nil || m.Offset%50 != 0 {
		return
	}
	d := time.Since(m.Time)
	l.mu.Lock()
	l.lag = append(l.lag, d)
	l.mu.Unlock()
}

func (l *lagRec) quantiles() (p50, p99 time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.lag) == 0 {
		return 0, 0
	}
	slices.Sort(l.lag)
	return l.lag[len(l.lag)/2], l.lag[len(l.lag)*99/100]
}

// readGroup reads n messages with one group member configured as
// usage-consumer does, committing every 20,000 (it commits per ClickHouse
// batch), and returns its fetch count.
func readGroup(ctx context.Context, o options, topic, group string, n int, lag *lagRec) (int64, error) {
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: o.brokers, GroupID: group, Topic: topic,
		MinBytes: o.groupMin, MaxBytes: 16 << 20, MaxWait: o.groupWait, QueueCapacity: 4096,
		StartOffset: kafka.FirstOffset, CommitInterval: 0})
	defer r.Close()
	var last kafka.Message
	for i := range n {
		m, err := r.FetchMessage(ctx)
		if err != nil {
			return 0, err
		}
		lag.add(m)
		last = m
		if (i+1)%20000 == 0 {
			if err := r.CommitMessages(ctx, last); err != nil {
				return 0, err
			}
		}
	}
	if err := r.CommitMessages(ctx, last); err != nil {
		return 0, err
	}
	return r.Stats().Fetches, nil
}

// readParts reads n messages with one Reader per partition, as
// usage-aggregator does, and returns their fetch count.
func readParts(ctx context.Context, o options, topic string, n int, lag *lagRec) (int64, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var got, fetches atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, o.partitions)
	for p := range o.partitions {
		wg.Go(func() {
			r := kafka.NewReader(kafka.ReaderConfig{Brokers: o.brokers, Topic: topic, Partition: p,
				MinBytes: o.partsMin, MaxBytes: 16 << 20, MaxWait: o.partsWait, QueueCapacity: 4096})
			defer func() { fetches.Add(r.Stats().Fetches); r.Close() }()
			for {
				m, err := r.FetchMessage(ctx)
				if err != nil {
					if ctx.Err() == nil {
						errc <- err
					}
					return
				}
				lag.add(m)
				if got.Add(1) == int64(n) {
					cancel()
				}
			}
		})
	}
	wg.Wait()
	select {
	case err := <-errc:
		return 0, err
	default:
	}
	if got.Load() < int64(n) {
		return 0, fmt.Errorf("read %d of %d", got.Load(), n)
	}
	return fetches.Load(), nil
}

// runLive produces while a group reader and the per-partition readers
// follow the topic.
func runLive(ctx context.Context, o options, topic string, msgs []kafka.Message, r *result) error {
	var wg sync.WaitGroup
	var gFetch, pFetch int64
	var gErr, pErr error
	lag, plag := &lagRec{}, &lagRec{}
	wg.Go(func() { gFetch, gErr = readGroup(ctx, o, topic, "live"+topic, len(msgs), lag) })
	wg.Go(func() { pFetch, pErr = readParts(ctx, o, topic, len(msgs), plag) })
	time.Sleep(2 * time.Second) // the group joins, the readers idle-poll
	w, err := produce(ctx, o, topic, msgs, nil)
	wg.Wait()
	if err := errors.Join(err, gErr, pErr); err != nil {
		return err
	}
	r.writes, r.fetches = w, gFetch+pFetch
	r.lagP50, r.lagP99 = lag.quantiles()
	r.partP50, r.partP99 = plag.quantiles()
	return nil
}
