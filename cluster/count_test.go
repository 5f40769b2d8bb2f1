package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/segmentio/kafka-go"
	"github.com/shopspring/decimal"

	"github.com/usagemeter/usagemeter/producer"
	"github.com/usagemeter/usagemeter/schemas"
)

// The independent count (the idea of faults/check_test.go, reduced to what
// these tests publish: only valid events, keyed by tenant through the SDK):
// read every message the topic holds, count each (tenant_id, id) once, and
// compare per tenant and meter with what the sinks hold.

type key struct{ tenant, meter string }

type tally struct {
	events int64
	sum    decimal.Decimal
}

func (t tally) String() string { return fmt.Sprintf("%d events, sum %s", t.events, t.sum) }

// expected counts every distinct (tenant_id, id) in msgs.
func expected(msgs []kafka.Message) (map[key]tally, int, error) {
	out := map[key]tally{}
	seen := map[string]bool{}
	for _, m := range msgs {
		var w struct {
			ID          string `json:"id"`
			TenantID    string `json:"tenant_id"`
			FeatureType string `json:"feature_type"`
			Quantity    string `json:"quantity"`
		}
		if err := json.Unmarshal(m.Value, &w); err != nil {
			return nil, 0, fmt.Errorf("partition %d offset %d: %w", m.Partition, m.Offset, err)
		}
		q, err := decimal.NewFromString(w.Quantity)
		if err != nil {
			return nil, 0, fmt.Errorf("partition %d offset %d: %w", m.Partition, m.Offset, err)
		}
		if seen[w.TenantID+"/"+w.ID] {
			continue
		}
		seen[w.TenantID+"/"+w.ID] = true
		k := key{w.TenantID, w.FeatureType}
		t := out[k]
		t.events++
		t.sum = t.sum.Add(q)
		out[k] = t
	}
	return out, len(seen), nil
}

// readAll reads every message of topic up to its end offsets now.
func readAll(ctx context.Context, brokers []string, topic string, partitions int) ([]kafka.Message, error) {
	client := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 10 * time.Second}
	req := map[string][]kafka.OffsetRequest{}
	for p := range partitions {
		req[topic] = append(req[topic], kafka.LastOffsetOf(p))
	}
	res, err := client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: req})
	if err != nil {
		return nil, fmt.Errorf("end offsets of %s: %w", topic, err)
	}
	var out []kafka.Message
	for _, po := range res.Topics[topic] {
		if po.Error != nil {
			return nil, fmt.Errorf("end offset of %s/%d: %w", topic, po.Partition, po.Error)
		}
		if po.LastOffset == 0 {
			continue
		}
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: topic, Partition: po.Partition,
			MaxBytes: 16 << 20, MaxWait: 100 * time.Millisecond})
		for {
			m, err := r.ReadMessage(ctx)
			if err != nil {
				_ = r.Close()
				return nil, fmt.Errorf("read %s/%d: %w", topic, po.Partition, err)
			}
			out = append(out, m)
			if m.Offset+1 >= po.LastOffset {
				break
			}
		}
		_ = r.Close()
	}
	return out, nil
}

// Sinks read per tenant and meter: the raw rows, and the aggregate tables
// summed over their windows (each row holds its window's full value).
var sinkSQL = map[string]string{
	"usage_events": "SELECT tenant_id, feature_type, count(), toString(sum(quantity)) FROM usage_events FINAL GROUP BY tenant_id, feature_type",
	"usage_1m":     "SELECT tenant_id, feature_type, sum(events), toString(sum(value)) FROM usage_1m FINAL GROUP BY tenant_id, feature_type",
	"usage_period": "SELECT tenant_id, feature_type, sum(events), toString(sum(value)) FROM usage_period FINAL GROUP BY tenant_id, feature_type",
}

func sinkTotals(ctx context.Context, conn driver.Conn, sql string) (map[key]tally, error) {
	rows, err := conn.Query(ctx, sql)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[key]tally{}
	for rows.Next() {
		var k key
		var n uint64
		var sum string
		if err := rows.Scan(&k.tenant, &k.meter, &n, &sum); err != nil {
			return nil, err
		}
		d, err := decimal.NewFromString(sum)
		if err != nil {
			return nil, fmt.Errorf("sum %q: %w", sum, err)
		}
		out[k] = tally{events: int64(n), sum: d}
	}
	return out, rows.Err()
}

// diff returns lost and double-counted events and the first differing
// total ("" when got equals want exactly).
func diff(want, got map[key]tally) (lost, double int64, first string) {
	keys := map[key]bool{}
	for k := range want {
		keys[k] = true
	}
	for k := range got {
		keys[k] = true
	}
	var sorted []key
	for k := range keys {
		sorted = append(sorted, k)
	}
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].tenant+sorted[i].meter < sorted[j].tenant+sorted[j].meter })
	for _, k := range sorted {
		w, g := want[k], got[k]
		if d := g.events - w.events; d > 0 {
			double += d
		} else {
			lost -= d
		}
		if (g.events != w.events || !g.sum.Equal(w.sum)) && first == "" {
			first = fmt.Sprintf("%s/%s: %s, want %s", k.tenant, k.meter, g, w)
		}
	}
	return lost, double, first
}

// stream publishes small batches through the Go SDK (acks=all) until
// stopped; a batch the cluster did not acknowledge is published again
// under the same ids, as a careful caller does, so an outage delays events
// and may duplicate some, and loses none.
type stream struct {
	pub    *producer.Publisher
	prefix string
	mu     sync.Mutex
	rng    *rand.Rand
	seq    int
	acked  int
	errs   int
	stop   chan struct{}
	done   chan error
}

func tenants() []string {
	return []string{"acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "wonka"}
}

func startStream(brokers []string, topic, prefix string, perSecond int) (*stream, error) {
	pub, err := producer.New(brokers, producer.WithTopic(topic), producer.WithRetries(3, 5*time.Second),
		producer.WithBatching(100, 1<<20, 5*time.Millisecond))
	if err != nil {
		return nil, err
	}
	s := &stream{pub: pub, prefix: prefix, rng: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 18)),
		stop: make(chan struct{}), done: make(chan error, 1)}
	go func() { s.done <- s.run(max(1, perSecond/10)) }()
	return s, nil
}

func (s *stream) run(perTick int) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-s.stop:
			return nil
		case <-tick.C:
		}
		batch := make([]schemas.UsageEvent, perTick)
		for i := range batch {
			s.seq++
			batch[i] = schemas.UsageEvent{ID: s.prefix + "-" + strconv.Itoa(s.seq), TenantID: tenants()[s.rng.IntN(len(tenants()))],
				UserID: "u" + strconv.Itoa(s.rng.IntN(4)), FeatureType: []string{"api_calls", "tokens"}[s.rng.IntN(2)],
				Quantity: decimal.New(s.rng.Int64N(100_000)+1, -3), Timestamp: time.Now().UTC()}
		}
		deadline := time.Now().Add(2 * time.Minute)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			err := s.pub.Publish(ctx, batch...)
			cancel()
			if err == nil {
				break
			}
			s.mu.Lock()
			s.errs++
			s.mu.Unlock()
			if time.Now().After(deadline) {
				return fmt.Errorf("publish %d events: %w", len(batch), err)
			}
			time.Sleep(200 * time.Millisecond)
		}
		s.mu.Lock()
		s.acked += len(batch)
		s.mu.Unlock()
	}
}

func (s *stream) counts() (acked, errs int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.acked, s.errs
}

func (s *stream) finish() error {
	close(s.stop)
	err := <-s.done
	if cerr := s.pub.Close(); err == nil {
		err = cerr
	}
	return err
}
