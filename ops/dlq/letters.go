// Package dlq reads the dead-letter queue as one list, wherever a letter
// landed: the Kafka topic usage.events.dlq, and the ClickHouse fallback
// table dead_letters (records Kafka refused for good, e.g. over the DLQ
// topic's size limit). It filters, counts and shows letters, and replays
// repaired ones to usage.events (see Replayer).
package dlq

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/segmentio/kafka-go"

	"github.com/usagemeter/usagemeter/schemas"
)

// Where a letter is stored.
const (
	StoreKafka      = "kafka"
	StoreClickHouse = "clickhouse"
)

// Letter is one refused message with why and where it was refused.
type Letter struct {
	Store string // StoreKafka or StoreClickHouse
	// Topic, Partition, Offset locate the letter: its DLQ position for
	// StoreKafka; for StoreClickHouse (which has no DLQ position) the
	// position of the original in its source topic, the table's key.
	Topic     string
	Partition int
	Offset    int64
	Key       []byte
	Value     []byte // the original bytes, untouched
	Headers   []kafka.Header
	Tag       string // usage.error
	Reason    string // usage.error.reason (and Kafka's error for the fallback)
	// Source* is where the consumer or aggregator read the original.
	SourceTopic     string
	SourcePartition int
	SourceOffset    int64
	FailedAt        time.Time
	Tenant          string // tenant_id of the value when it has one, else the key
}

// ID names a letter for `dlq show` and the replay record:
// "kafka:<dlq topic>/<partition>/<offset>" or
// "clickhouse:<source topic>/<partition>/<offset>".
func (l Letter) ID() string {
	return fmt.Sprintf("%s:%s/%d/%d", l.Store, l.Topic, l.Partition, l.Offset)
}

// ParseID splits a letter id into its store, topic, partition and offset.
func ParseID(id string) (store, topic string, partition int, offset int64, err error) {
	store, rest, ok := strings.Cut(id, ":")
	if !ok || (store != StoreKafka && store != StoreClickHouse) {
		return "", "", 0, 0, fmt.Errorf("letter id %q: want kafka:<topic>/<partition>/<offset> or clickhouse:<topic>/<partition>/<offset>", id)
	}
	i := strings.LastIndex(rest, "/")
	j := strings.LastIndex(rest[:max(i, 0)], "/")
	if i < 0 || j < 1 {
		return "", "", 0, 0, fmt.Errorf("letter id %q: want <store>:<topic>/<partition>/<offset>", id)
	}
	p, perr := strconv.Atoi(rest[j+1 : i])
	o, oerr := strconv.ParseInt(rest[i+1:], 10, 64)
	if perr != nil || oerr != nil || p < 0 || o < 0 {
		return "", "", 0, 0, fmt.Errorf("letter id %q: partition and offset must be non-negative integers", id)
	}
	return store, rest[:j], p, o, nil
}

// Filter selects letters. Zero fields select everything.
type Filter struct {
	// Tag matches the tag exactly or its code before ':' (missing_field
	// matches missing_field:tenant_id).
	Tag    string
	Tenant string
	From   time.Time // failed at or after
	To     time.Time // failed before
	Store  string    // "", StoreKafka or StoreClickHouse
	IDs    []string  // only these letters (Letter.ID)
}

// Validate names the field at fault.
func (f Filter) Validate() error {
	if f.Store != "" && f.Store != StoreKafka && f.Store != StoreClickHouse {
		return fmt.Errorf("store: %q is not kafka or clickhouse", f.Store)
	}
	if !f.From.IsZero() && !f.To.IsZero() && !f.From.Before(f.To) {
		return fmt.Errorf("from: %s is not before to %s", f.From.Format(time.RFC3339), f.To.Format(time.RFC3339))
	}
	for _, id := range f.IDs {
		if _, _, _, _, err := ParseID(id); err != nil {
			return fmt.Errorf("id: %w", err)
		}
	}
	return nil
}

// Match reports whether l is selected.
func (f Filter) Match(l Letter) bool {
	if f.Tag != "" && l.Tag != f.Tag && !strings.HasPrefix(l.Tag, f.Tag+":") {
		return false
	}
	if f.Tenant != "" && l.Tenant != f.Tenant {
		return false
	}
	if !f.From.IsZero() && l.FailedAt.Before(f.From) {
		return false
	}
	if !f.To.IsZero() && !l.FailedAt.Before(f.To) {
		return false
	}
	if f.Store != "" && l.Store != f.Store {
		return false
	}
	if len(f.IDs) > 0 {
		for _, id := range f.IDs {
			if id == l.ID() {
				return true
			}
		}
		return false
	}
	return true
}

// Source reads the DLQ topic and the fallback table.
type Source struct {
	Brokers []string
	Topic   string      // the DLQ topic, e.g. usage.events.dlq
	Conn    driver.Conn // nil: the Kafka topic only
}

// Letters returns every letter f selects, Kafka's first (by partition and
// offset), then the fallback table's (by failed_at).
func (s Source) Letters(ctx context.Context, f Filter) ([]Letter, error) {
	if err := f.Validate(); err != nil {
		return nil, err
	}
	var out []Letter
	if f.Store != StoreClickHouse {
		ls, err := s.kafkaLetters(ctx, f)
		if err != nil {
			return nil, err
		}
		out = append(out, ls...)
	}
	if f.Store != StoreKafka && s.Conn != nil {
		ls, err := s.tableLetters(ctx, f)
		if err != nil {
			return nil, err
		}
		out = append(out, ls...)
	}
	return out, nil
}

// kafkaLetters reads each partition of the DLQ topic from its first to its
// end offset as of the call (a snapshot: letters arriving meanwhile wait
// for the next call).
func (s Source) kafkaLetters(ctx context.Context, f Filter) ([]Letter, error) {
	if len(s.Brokers) == 0 || s.Topic == "" {
		return nil, errors.New("kafka.brokers and dlq.topic are required to read the DLQ topic")
	}
	client := &kafka.Client{Addr: kafka.TCP(s.Brokers...), Timeout: 30 * time.Second}
	md, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{s.Topic}})
	if err != nil {
		return nil, fmt.Errorf("metadata of %s: %w", s.Topic, err)
	}
	if len(md.Topics) != 1 || md.Topics[0].Error != nil {
		return nil, fmt.Errorf("topic %s: %v", s.Topic, md.Topics[0].Error)
	}
	n := len(md.Topics[0].Partitions)
	// One request per end: Kafka refuses a partition twice in one request.
	first, err := offsets(ctx, client, s.Topic, n, kafka.FirstOffsetOf)
	if err != nil {
		return nil, err
	}
	end, err := offsets(ctx, client, s.Topic, n, kafka.LastOffsetOf)
	if err != nil {
		return nil, err
	}
	// Selected by id: read only the partitions named, from the lowest
	// offset named (`dlq show` does not scan the whole topic).
	from := map[int]int64{}
	for _, id := range f.IDs {
		store, topic, p, off, _ := ParseID(id)
		if store == StoreKafka && topic == s.Topic && p < n {
			if o, ok := from[p]; !ok || off < o {
				from[p] = off
			}
		}
	}
	var out []Letter
	for p := range n {
		start := first[p]
		if len(f.IDs) > 0 {
			o, ok := from[p]
			if !ok {
				continue
			}
			start = max(start, o)
		}
		ls, err := s.readPartition(ctx, p, start, end[p], f)
		if err != nil {
			return nil, err
		}
		out = append(out, ls...)
	}
	return out, nil
}

func offsets(ctx context.Context, c *kafka.Client, topic string, n int, at func(int) kafka.OffsetRequest) ([]int64, error) {
	var reqs []kafka.OffsetRequest
	for p := range n {
		reqs = append(reqs, at(p))
	}
	res, err := c.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil {
		return nil, fmt.Errorf("offsets of %s: %w", topic, err)
	}
	out := make([]int64, n)
	for _, po := range res.Topics[topic] {
		if po.Error != nil {
			return nil, fmt.Errorf("offsets of %s/%d: %w", topic, po.Partition, po.Error)
		}
		if po.Partition < n {
			out[po.Partition] = max(po.FirstOffset, po.LastOffset)
		}
	}
	return out, nil
}

// idleRead bounds a wait for the next record below the end offset.
const idleRead = 10 * time.Second

func (s Source) readPartition(ctx context.Context, partition int, first, end int64, f Filter) ([]Letter, error) {
	if first >= end {
		return nil, nil
	}
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: s.Brokers, Topic: s.Topic, Partition: partition,
		MaxWait: 200 * time.Millisecond})
	defer r.Close()
	if err := r.SetOffset(first); err != nil {
		return nil, fmt.Errorf("seek %s/%d: %w", s.Topic, partition, err)
	}
	var out []Letter
	for {
		// The end offset can sit past the last record (a transaction
		// marker): a read that waits this long has nothing left to give.
		fctx, cancel := context.WithTimeout(ctx, idleRead)
		m, err := r.FetchMessage(fctx)
		cancel()
		if err != nil {
			if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
				return out, nil
			}
			return nil, fmt.Errorf("read %s/%d: %w", s.Topic, partition, err)
		}
		l := fromMessage(m)
		if f.Match(l) {
			out = append(out, l)
		}
		if m.Offset+1 >= end {
			return out, nil
		}
	}
}

func fromMessage(m kafka.Message) Letter {
	h := map[string]string{}
	for _, x := range m.Headers {
		h[x.Key] = string(x.Value)
	}
	l := Letter{Store: StoreKafka, Topic: m.Topic, Partition: m.Partition, Offset: m.Offset, Key: m.Key, Value: m.Value,
		Headers: m.Headers, Tag: h[schemas.HeaderError], Reason: h[schemas.HeaderReason], SourceTopic: h[schemas.HeaderSourceTopic]}
	l.SourcePartition, _ = strconv.Atoi(h[schemas.HeaderSourcePartition])
	l.SourceOffset, _ = strconv.ParseInt(h[schemas.HeaderSourceOffset], 10, 64)
	l.FailedAt, _ = time.Parse(time.RFC3339Nano, h[schemas.HeaderFailedAt])
	if l.FailedAt.IsZero() {
		l.FailedAt = m.Time.UTC()
	}
	l.Tenant = tenantOf(m.Key, m.Value)
	return l
}

// tenantOf reads tenant_id from a JSON object; a value that is not one,
// or has no string tenant_id, belongs to its key.
func tenantOf(key, value []byte) string {
	var obj map[string]json.RawMessage
	if json.Unmarshal(value, &obj) == nil {
		var t string
		if json.Unmarshal(obj["tenant_id"], &t) == nil && t != "" {
			return t
		}
	}
	return string(key)
}

// deadLettersQuery reads the fallback table's letters for one DLQ topic.
// The failed_at bounds are the filter's, applied in SQL; tag and tenant
// are read from the headers and the value, so they are filtered in Go.
type deadLettersQuery struct {
	Target   string
	From, To time.Time
}

func (q deadLettersQuery) toSQL() (string, []any) {
	sql := `SELECT source_topic, source_partition, source_offset, message_key, message_value, header_keys, header_values,
 kafka_error, failed_at FROM dead_letters FINAL WHERE target_topic = ?`
	args := []any{q.Target}
	if !q.From.IsZero() {
		sql += ` AND failed_at >= ?`
		args = append(args, q.From.UTC().Truncate(time.Second))
	}
	if !q.To.IsZero() {
		sql += ` AND failed_at < ?`
		args = append(args, q.To.UTC())
	}
	return sql + ` ORDER BY failed_at, source_topic, source_partition, source_offset`, args
}

func (s Source) tableLetters(ctx context.Context, f Filter) ([]Letter, error) {
	sql, args := deadLettersQuery{Target: s.Topic, From: f.From, To: f.To}.toSQL()
	rows, err := s.Conn.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("read dead_letters: %w", err)
	}
	defer rows.Close()
	var out []Letter
	for rows.Next() {
		var (
			srcTopic, key, value, kafkaErr string
			part                           int32
			off                            int64
			hk, hv                         []string
			at                             time.Time
		)
		if err := rows.Scan(&srcTopic, &part, &off, &key, &value, &hk, &hv, &kafkaErr, &at); err != nil {
			return nil, fmt.Errorf("scan dead_letters: %w", err)
		}
		l := Letter{Store: StoreClickHouse, Topic: srcTopic, Partition: int(part), Offset: off, Key: []byte(key),
			Value: []byte(value), SourceTopic: srcTopic, SourcePartition: int(part), SourceOffset: off, FailedAt: at.UTC()}
		for i := range hk {
			if i >= len(hv) {
				break
			}
			l.Headers = append(l.Headers, kafka.Header{Key: hk[i], Value: []byte(hv[i])})
			switch hk[i] {
			case schemas.HeaderError:
				l.Tag = hv[i]
			case schemas.HeaderReason:
				l.Reason = hv[i]
			}
		}
		l.Reason = strings.TrimSpace(l.Reason + " (kept in ClickHouse: " + kafkaErr + ")")
		l.Tenant = tenantOf(l.Key, l.Value)
		if f.Match(l) {
			out = append(out, l)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read dead_letters: %w", err)
	}
	return out, nil
}

// Count is the number of letters per store, tag and tenant.
type Count struct {
	Store, Tag, Tenant string
	Letters            int
}

// CountBy groups letters by store, tag and tenant, sorted.
func CountBy(ls []Letter) []Count {
	idx := map[[3]string]int{}
	for _, l := range ls {
		idx[[3]string{l.Store, l.Tag, l.Tenant}]++
	}
	out := make([]Count, 0, len(idx))
	for k, n := range idx {
		out = append(out, Count{Store: k[0], Tag: k[1], Tenant: k[2], Letters: n})
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Store != b.Store {
			return a.Store < b.Store
		}
		if a.Tag != b.Tag {
			return a.Tag < b.Tag
		}
		return a.Tenant < b.Tenant
	})
	return out
}
