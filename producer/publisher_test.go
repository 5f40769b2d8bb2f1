package producer

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/segmentio/kafka-go"
	"github.com/shopspring/decimal"

	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/testenv"
)

const testPartitions = 4

// fixedNow is the injected clock: a past instant with sub-second digits, so
// that a timestamp round trip through RFC 3339 is checked to the nanosecond.
var fixedNow = time.Date(2025, time.March, 14, 15, 9, 26, 535897932, time.UTC)

func fixedClock() time.Time { return fixedNow }

// newTopic returns the test broker and a fresh topic with 4 partitions.
func newTopic(t testing.TB) (broker, topic string) {
	t.Helper()
	broker = testenv.Kafka(t)
	topic = testenv.Name("producer_test")
	testenv.CreateTopic(t, broker, topic, testPartitions)
	return broker, topic
}

func newPublisher(t testing.TB, broker, topic string, opts ...Option) *Publisher {
	t.Helper()
	base := []Option{WithTopic(topic), WithClock(fixedClock), WithRetries(3, 5*time.Second)}
	p, err := New([]string{broker}, append(base, opts...)...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

func ev(tenant, meter, qty string, meta map[string]string) schemas.UsageEvent {
	return schemas.UsageEvent{
		TenantID:    tenant,
		UserID:      "user-" + tenant,
		FeatureType: meter,
		Quantity:    decimal.RequireFromString(qty),
		Metadata:    meta,
	}
}

// endOffsets returns the end offset of each partition of topic.
func endOffsets(t testing.TB, broker, topic string) []int64 {
	t.Helper()
	return testenv.EndOffsets(t, broker, topic, testPartitions)
}

func sum(xs []int64) (n int64) {
	for _, x := range xs {
		n += x
	}
	return n
}

// readTopic reads every message of every partition of topic, in offset order
// within each partition.
func readTopic(t testing.TB, broker, topic string) []kafka.Message {
	t.Helper()
	ends := endOffsets(t, broker, topic)
	var all []kafka.Message
	for part, end := range ends {
		if end == 0 {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		conn, err := kafka.DialLeader(ctx, "tcp", broker, topic, part)
		cancel()
		if err != nil {
			t.Fatalf("dial leader of %s/%d: %v", topic, part, err)
		}
		for offset := int64(0); offset < end; {
			_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := conn.Seek(offset, kafka.SeekAbsolute); err != nil {
				t.Fatalf("seek %s/%d@%d: %v", topic, part, offset, err)
			}
			batch := conn.ReadBatch(1, 16<<20)
			for offset < end {
				m, err := batch.ReadMessage()
				if err != nil {
					break
				}
				all = append(all, m)
				offset = m.Offset + 1
			}
			if err := batch.Close(); err != nil {
				t.Fatalf("read %s/%d@%d: %v", topic, part, offset, err)
			}
		}
		_ = conn.Close()
	}
	return all
}

// sameEvent fails the test if got differs from want in any field.
func sameEvent(t testing.TB, got, want schemas.UsageEvent) {
	t.Helper()
	if got.ID != want.ID || got.TenantID != want.TenantID || got.UserID != want.UserID ||
		got.FeatureType != want.FeatureType || got.BillingPeriod != want.BillingPeriod ||
		got.SchemaVersion != want.SchemaVersion || !maps.Equal(got.Metadata, want.Metadata) ||
		!got.Timestamp.Equal(want.Timestamp) ||
		!got.Quantity.Equal(want.Quantity) || got.Quantity.String() != want.Quantity.String() {
		t.Errorf("event mismatch:\n got %+v\nwant %+v", got, want)
	}
}

func TestPublishSync(t *testing.T) {
	t.Parallel()
	broker, topic := newTopic(t)
	p := newPublisher(t, broker, topic)

	explicitTS := time.Date(2025, time.February, 28, 23, 59, 59, 999_000_000, time.FixedZone("CET", 3600))
	var events []schemas.UsageEvent
	for i := range 24 {
		tenant := fmt.Sprintf("tenant-%02d", i%8)
		e := ev(tenant, schemas.MeterAPICalls, "1", map[string]string{"endpoint": "/v1/items", "method": "GET"})
		switch i % 4 {
		case 1:
			e = ev(tenant, "tokens", "12.5", map[string]string{"model": "gpt-4o-mini", "note": "quote \" and é"})
		case 2:
			e = ev(tenant, schemas.MeterStorage, "0.000000001", nil)
			e.ID = fmt.Sprintf("caller-id.%d", i) // kept as given
		case 3:
			e = ev(tenant, schemas.MeterAIGeneration, "999999999999999999.999999999", nil)
			e.Timestamp = explicitTS // kept, normalised to UTC
		}
		events = append(events, e)
	}
	if err := p.Publish(context.Background(), events...); err != nil {
		t.Fatalf("Publish: %v", err)
	}

	// The caller's slice now holds what was sent.
	for i, e := range events {
		switch i % 4 {
		case 2:
			if want := fmt.Sprintf("caller-id.%d", i); e.ID != want {
				t.Errorf("event %d: ID = %q, want the caller's %q", i, e.ID, want)
			}
		default:
			id, err := uuid.Parse(e.ID)
			if err != nil || id.Version() != 7 {
				t.Errorf("event %d: ID %q is not a UUIDv7 (err %v)", i, e.ID, err)
			}
		}
		wantTS, wantPeriod := fixedNow, "2025-03"
		if i%4 == 3 {
			wantTS, wantPeriod = explicitTS.UTC(), "2025-02"
		}
		if !e.Timestamp.Equal(wantTS) || e.Timestamp.Location() != time.UTC {
			t.Errorf("event %d: Timestamp = %v, want %v", i, e.Timestamp, wantTS)
		}
		if e.BillingPeriod != wantPeriod || e.SchemaVersion != schemas.CurrentSchemaVersion {
			t.Errorf("event %d: BillingPeriod %q SchemaVersion %d, want %q %d", i, e.BillingPeriod, e.SchemaVersion, wantPeriod, schemas.CurrentSchemaVersion)
		}
	}
	ids := map[string]bool{}
	for _, e := range events {
		ids[e.ID] = true
	}
	if len(ids) != len(events) {
		t.Errorf("%d distinct ids for %d events", len(ids), len(events))
	}
	if s := p.Stats(); s != (Stats{Published: int64(len(events))}) {
		t.Errorf("Stats = %+v, want Published %d only", s, len(events))
	}

	msgs := readTopic(t, broker, topic)
	if len(msgs) != len(events) {
		t.Fatalf("topic holds %d messages, want %d", len(msgs), len(events))
	}
	byID := map[string]schemas.UsageEvent{}
	for _, e := range events {
		byID[e.ID] = e
	}
	v := schemas.NewValidator()
	partitionsUsed := map[int]bool{}
	order := map[string][]string{} // tenant -> ids in offset order
	for _, m := range msgs {
		got, err := v.Decode(m.Value)
		if err != nil {
			t.Fatalf("decode %s: %v", m.Value, err)
		}
		want, ok := byID[got.ID]
		if !ok {
			t.Fatalf("unexpected event id %q on the topic", got.ID)
		}
		sameEvent(t, got, want)
		if string(m.Key) != want.TenantID {
			t.Errorf("key = %q, want tenant_id %q", m.Key, want.TenantID)
		}
		wantPart := kafka.Murmur2Balancer{}.Balance(kafka.Message{Key: m.Key}, 0, 1, 2, 3)
		if m.Partition != wantPart {
			t.Errorf("tenant %s on partition %d, Murmur2 says %d", m.Key, m.Partition, wantPart)
		}
		partitionsUsed[m.Partition] = true
		order[got.TenantID] = append(order[got.TenantID], got.ID)
	}
	if len(partitionsUsed) < 2 {
		t.Errorf("8 tenants all landed on %v: the partition check proves little", partitionsUsed)
	}
	for tenant, got := range order {
		var want []string
		for _, e := range events {
			if e.TenantID == tenant {
				want = append(want, e.ID)
			}
		}
		if !slices.Equal(got, want) {
			t.Errorf("tenant %s: order on the partition %v, published %v", tenant, got, want)
		}
	}
}

func TestPublishRefusesInvalidCall(t *testing.T) {
	t.Parallel()
	valid := func() schemas.UsageEvent { return ev("acme", schemas.MeterAPICalls, "1", nil) }
	cases := []struct {
		name   string
		mutate func(*schemas.UsageEvent)
		tag    string
	}{
		{"negative quantity", func(e *schemas.UsageEvent) { e.Quantity = decimal.RequireFromString("-1") }, "invalid_quantity"},
		{"too many decimals", func(e *schemas.UsageEvent) { e.Quantity = decimal.RequireFromString("0.0000000001") }, "invalid_quantity"},
		{"19 integer digits", func(e *schemas.UsageEvent) { e.Quantity = decimal.New(1, 18) }, "invalid_quantity"},
		{"missing tenant_id", func(e *schemas.UsageEvent) { e.TenantID = "" }, "missing_field:tenant_id"},
		{"bad tenant_id", func(e *schemas.UsageEvent) { e.TenantID = "acme corp" }, "invalid_field:tenant_id"},
		{"missing feature_type", func(e *schemas.UsageEvent) { e.FeatureType = "" }, "missing_field:feature_type"},
		{"bad feature_type", func(e *schemas.UsageEvent) { e.FeatureType = "API Calls" }, "invalid_field:feature_type"},
		{"bad id", func(e *schemas.UsageEvent) { e.ID = "no spaces allowed" }, "invalid_field:id"},
		{"future timestamp", func(e *schemas.UsageEvent) { e.Timestamp = time.Now().Add(time.Hour) }, "timestamp_too_far_in_future"},
		{"bad billing period", func(e *schemas.UsageEvent) { e.BillingPeriod = "2025-13" }, "invalid_billing_period"},
		{"bad schema version", func(e *schemas.UsageEvent) { e.SchemaVersion = 99 }, "unsupported_schema_version"},
		{"billing period of another month", func(e *schemas.UsageEvent) { e.BillingPeriod = "2025-04" }, "invalid_billing_period"},
		{"user_id of 257 two-byte characters", func(e *schemas.UsageEvent) { e.UserID = strings.Repeat("é", 257) }, "invalid_field:user_id"},
		// Every field valid, but over 32 KiB once encoded: the consumer
		// would send it to the DLQ, so the SDK refuses it with that tag.
		{"over 32 KiB encoded", func(e *schemas.UsageEvent) { e.Metadata = bigMetadata(40, 1000) }, "payload_too_large"},
	}
	for _, mode := range []string{"sync", "async"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			broker, topic := newTopic(t)
			var opts []Option
			if mode == "async" {
				opts = append(opts, WithAsync(func(err error, _ []schemas.UsageEvent) { t.Errorf("callback: %v", err) }))
			}
			p := newPublisher(t, broker, topic, opts...)
			refused := 0
			for _, c := range cases {
				events := []schemas.UsageEvent{valid(), valid(), valid(), valid()}
				c.mutate(&events[2])
				err := p.Publish(context.Background(), events...)
				var verr *schemas.ValidationError
				if !errors.As(err, &verr) {
					t.Errorf("%s: Publish = %v, want a *schemas.ValidationError", c.name, err)
					continue
				}
				if verr.Tag() != c.tag {
					t.Errorf("%s: tag %q, want %q (%v)", c.name, verr.Tag(), c.tag, err)
				}
				if !strings.Contains(err.Error(), "event 2 ") {
					t.Errorf("%s: error %q does not name the event's index", c.name, err)
				}
				refused += len(events)
			}
			// A valid event published (and acknowledged) afterwards is the
			// only one on the topic: none of the refused calls' events went out.
			sentinel := valid()
			if err := p.Publish(context.Background(), sentinel); err != nil {
				t.Fatalf("Publish valid event: %v", err)
			}
			if err := p.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			if ends := endOffsets(t, broker, topic); sum(ends) != 1 {
				t.Errorf("end offsets %v, want only the sentinel event", ends)
			}
			if s, want := p.Stats(), (Stats{Published: 1, Refused: int64(refused)}); s != want {
				t.Errorf("Stats = %+v, want %+v", s, want)
			}
		})
	}
}

func TestPublishAsyncCloseFlushes(t *testing.T) {
	t.Parallel()
	broker, topic := newTopic(t)
	p := newPublisher(t, broker, topic, WithAsync(func(err error, _ []schemas.UsageEvent) { t.Errorf("callback: %v", err) }))

	const total, perCall = 10_000, 250
	ctx := context.Background()
	var wg sync.WaitGroup
	for w := range 4 { // concurrent publishers share one Publisher
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := w; c < total/perCall; c += 4 {
				events := make([]schemas.UsageEvent, perCall)
				for i := range events {
					n := c*perCall + i
					events[i] = ev(fmt.Sprintf("tenant-%03d", n%100), schemas.MeterAPICalls, "1",
						map[string]string{"endpoint": "/v1/items", "method": "GET"})
				}
				if err := p.Publish(ctx, events...); err != nil {
					t.Errorf("Publish: %v", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if ends := endOffsets(t, broker, topic); sum(ends) != total {
		t.Errorf("right after Close the topic holds %d events %v, want %d", sum(ends), ends, total)
	}
	if s := p.Stats(); s != (Stats{Published: total}) {
		t.Errorf("Stats = %+v, want Published %d only", s, total)
	}
	if err := p.Publish(ctx, ev("acme", schemas.MeterAPICalls, "1", nil)); !errors.Is(err, ErrClosed) {
		t.Errorf("Publish after Close = %v, want ErrClosed", err)
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
}

type failure struct {
	err    error
	events []schemas.UsageEvent
}

func TestPublishAsyncDeliveryFailure(t *testing.T) {
	t.Parallel()
	broker, topic := newTopic(t)
	failures := make(chan failure, 16)
	p := newPublisher(t, broker, topic,
		WithRetries(2, 2*time.Second),
		WithAsync(func(err error, events []schemas.UsageEvent) { failures <- failure{err, events} }))
	// A private transport whose metadata cache outlives the test: the
	// writer keeps routing to the topic after it is deleted, so the events
	// are queued and the produce requests fail (kafka-go refuses a topic
	// missing from its cache before queueing; see TestPublishAsyncUnknownTopic).
	transport := &kafka.Transport{MetadataTTL: time.Hour}
	t.Cleanup(transport.CloseIdleConnections)
	p.w.Transport = transport

	ctx := context.Background()
	if err := p.Publish(ctx, ev("acme", schemas.MeterAPICalls, "1", nil)); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	testenv.Eventually(t, 10*time.Second, "the first event to be acknowledged", func() (bool, error) {
		return p.Stats().Published == 1, nil
	})

	deleteTopic(t, broker, topic)
	events := []schemas.UsageEvent{
		ev("acme", schemas.MeterAPICalls, "1", nil),
		ev("acme", schemas.MeterAIGeneration, "2.5", map[string]string{"model": "m1"}),
		ev("acme", schemas.MeterStorage, "0.125", nil),
	}
	start := time.Now()
	if err := p.Publish(ctx, events...); err != nil {
		t.Fatalf("async Publish = %v, want nil (queued)", err)
	}
	var got []schemas.UsageEvent
	for len(got) < len(events) {
		select {
		case f := <-failures:
			var kerr kafka.Error // the broker's answer, after the retries
			if !errors.As(f.err, &kerr) {
				t.Fatalf("callback error %v, want a kafka.Error", f.err)
			}
			t.Logf("callback after %s: %v", time.Since(start).Round(time.Millisecond), f.err)
			got = append(got, f.events...)
		case <-time.After(15 * time.Second):
			t.Fatalf("callback received %d of %d events", len(got), len(events))
		}
	}
	if len(got) != len(events) {
		t.Fatalf("callback received %d events, want %d", len(got), len(events))
	}
	for i := range events {
		if events[i].ID == "" {
			t.Fatalf("event %d has no id", i)
		}
		sameEvent(t, got[i], events[i]) // one partition: one batch, in order
	}
	if s := p.Stats(); s.Failed != int64(len(events)) || s.Published != 1 {
		t.Errorf("Stats = %+v, want Published 1, Failed %d", s, len(events))
	}
}

func deleteTopic(t testing.TB, broker, topic string) {
	t.Helper()
	client := &kafka.Client{Addr: kafka.TCP(broker), Timeout: 10 * time.Second}
	res, err := client.DeleteTopics(context.Background(), &kafka.DeleteTopicsRequest{Topics: []string{topic}})
	if err == nil {
		err = res.Errors[topic]
	}
	if err != nil {
		t.Fatalf("delete topic %s: %v", topic, err)
	}
	// Polled with ListOffsets, not Conn.ReadPartitions: that sends an old
	// metadata request, which makes a broker with auto.create.topics.enable
	// create the topic again.
	testenv.Eventually(t, 10*time.Second, "topic "+topic+" to be deleted", func() (bool, error) {
		res, err := client.ListOffsets(context.Background(), &kafka.ListOffsetsRequest{
			Topics: map[string][]kafka.OffsetRequest{topic: {kafka.LastOffsetOf(0)}},
		})
		if err == nil && len(res.Topics[topic]) == 1 {
			err = res.Topics[topic][0].Error
		}
		return errors.Is(err, kafka.UnknownTopicOrPartition), err
	})
}

func TestPublishAsyncUnknownTopic(t *testing.T) {
	t.Parallel()
	broker := testenv.Kafka(t)
	topic := testenv.Name("producer_missing") // never created; the writer does not auto-create
	called := make(chan struct{}, 1)
	p := newPublisher(t, broker, topic,
		WithRetries(2, 2*time.Second),
		WithAsync(func(error, []schemas.UsageEvent) { called <- struct{}{} }))

	start := time.Now()
	err := p.Publish(context.Background(), ev("acme", schemas.MeterAPICalls, "1", nil), ev("acme", schemas.MeterAPICalls, "1", nil))
	if !errors.Is(err, kafka.UnknownTopicOrPartition) {
		t.Fatalf("Publish to a missing topic = %v, want UnknownTopicOrPartition", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Publish took %s", d)
	}
	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case <-called:
		t.Error("callback called for events that Publish already refused")
	default:
	}
	if s := p.Stats(); s != (Stats{Failed: 2}) {
		t.Errorf("Stats = %+v, want Failed 2", s)
	}
}

func TestPublishCancelledContext(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"sync", "async"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			broker, topic := newTopic(t)
			var opts []Option
			if mode == "async" {
				opts = append(opts, WithAsync(nil))
			}
			p := newPublisher(t, broker, topic, opts...)
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			err := p.Publish(ctx, ev("acme", schemas.MeterAPICalls, "1", nil))
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("Publish with a cancelled context = %v, want context.Canceled", err)
			}
			if err := p.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			if ends := endOffsets(t, broker, topic); sum(ends) != 0 {
				t.Errorf("end offsets %v: a publish with a cancelled context went out", ends)
			}
			if s := p.Stats(); s != (Stats{}) {
				t.Errorf("Stats = %+v, want zero", s)
			}
		})
	}
}

func TestPublishCompression(t *testing.T) {
	t.Parallel()
	for _, codec := range []string{"lz4", "zstd", "snappy", "gzip", "none"} {
		t.Run(codec, func(t *testing.T) {
			t.Parallel()
			broker, topic := newTopic(t)
			p := newPublisher(t, broker, topic, WithCompression(codec))
			events := make([]schemas.UsageEvent, 200)
			for i := range events {
				events[i] = ev(fmt.Sprintf("tenant-%d", i%10), schemas.MeterAIGeneration, fmt.Sprintf("%d.%03d", i, i),
					map[string]string{"endpoint": "/v1/generate", "method": "POST", "prompt": strings.Repeat("abc ", i%50)})
			}
			if err := p.Publish(context.Background(), events...); err != nil {
				t.Fatalf("Publish: %v", err)
			}
			msgs := readTopic(t, broker, topic)
			if len(msgs) != len(events) {
				t.Fatalf("read %d messages, want %d", len(msgs), len(events))
			}
			byID := map[string]schemas.UsageEvent{}
			for _, e := range events {
				byID[e.ID] = e
			}
			v := schemas.NewValidator()
			for _, m := range msgs {
				got, err := v.Decode(m.Value)
				if err != nil {
					t.Fatalf("decode: %v", err)
				}
				sameEvent(t, got, byID[got.ID])
			}
		})
	}
}

func TestNewErrors(t *testing.T) {
	cases := []struct {
		name    string
		brokers []string
		opts    []Option
		want    string
	}{
		{"no brokers", nil, nil, "broker"},
		{"empty broker", []string{""}, nil, "broker"},
		{"empty topic", []string{"127.0.0.1:19092"}, []Option{WithTopic("")}, "topic"},
		{"unknown codec", []string{"127.0.0.1:19092"}, []Option{WithCompression("brotli")}, `"brotli"`},
	}
	for _, c := range cases {
		p, err := New(c.brokers, c.opts...)
		if err == nil {
			_ = p.Close()
			t.Errorf("%s: New succeeded", c.name)
			continue
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %q does not mention %s", c.name, err, c.want)
		}
	}
}

func TestCompressionCodec(t *testing.T) {
	cases := map[string]kafka.Compression{
		"lz4": kafka.Lz4, "zstd": kafka.Zstd, "snappy": kafka.Snappy, "gzip": kafka.Gzip, "none": 0, "": 0,
	}
	for name, want := range cases {
		got, err := compressionCodec(name)
		if err != nil || got != want {
			t.Errorf("compressionCodec(%q) = %v, %v; want %v", name, got, err, want)
		}
	}
	for _, name := range []string{"LZ4", "brotli", "zstd "} {
		if _, err := compressionCodec(name); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("%q", name)) {
			t.Errorf("compressionCodec(%q) error = %v, want one naming it", name, err)
		}
	}
	if got := defaultConfig().compression; got != "lz4" {
		t.Errorf("default compression %q, want lz4", got)
	}
}

func TestPublishClosedAndEmpty(t *testing.T) {
	p, err := New([]string{"127.0.0.1:19092"}, WithTopic("never-used"))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Publish(context.Background()); err != nil {
		t.Errorf("Publish with no events = %v", err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.Publish(context.Background(), ev("acme", schemas.MeterAPICalls, "1", nil)); !errors.Is(err, ErrClosed) {
		t.Errorf("Publish after Close = %v, want ErrClosed", err)
	}
}

// bigMetadata returns n entries with values of size bytes.
func bigMetadata(n, size int) map[string]string {
	m := make(map[string]string, n)
	for i := range n {
		m[fmt.Sprintf("k%02d", i)] = strings.Repeat("v", size)
	}
	return m
}

// The SDK refuses exactly what the consumer's Decode refuses, with the same
// tag, around the size limit (no broker needed: refusal happens first).
func TestPublishSizeLimitMatchesConsumer(t *testing.T) {
	t.Parallel()
	p, err := New([]string{"127.0.0.1:1"}, WithClock(fixedClock))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	consumer := schemas.NewValidator()
	build := func(pad int) schemas.UsageEvent {
		e := ev("acme", schemas.MeterAPICalls, "1", bigMetadata(32, 1000))
		e.ID, e.Timestamp = "size-test", fixedNow
		e.Metadata["pad"] = strings.Repeat("p", pad)
		return e
	}
	encode := func(e schemas.UsageEvent) []byte {
		e.Metadata = maps.Clone(e.Metadata)
		if err := consumer.Validate(&e); err != nil {
			t.Fatal(err)
		}
		return e.AppendJSON(nil)
	}
	base := len(encode(build(0))) // each pad byte adds one encoded byte
	checked := 0
	for target := schemas.DefaultMaxEventBytes - 3; target <= schemas.DefaultMaxEventBytes+3; target++ {
		e := build(target - base)
		encoded := encode(e)
		if len(encoded) != target {
			t.Fatalf("built %d bytes, want %d", len(encoded), target)
		}
		_, decErr := consumer.Decode(encoded)
		pubErr := p.Publish(context.Background(), e)
		var ve *schemas.ValidationError
		switch {
		case decErr == nil && errors.As(pubErr, &ve):
			t.Fatalf("%d bytes: consumer accepts, SDK refuses: %v", len(encoded), pubErr)
		case decErr != nil && (!errors.As(pubErr, &ve) || ve.Tag() != "payload_too_large"):
			t.Fatalf("%d bytes: consumer refuses (%v), SDK says %v", len(encoded), decErr, pubErr)
		}
		if (decErr == nil) == (target <= schemas.DefaultMaxEventBytes) {
			checked++
		}
	}
	if checked != 7 {
		t.Fatalf("the consumer's verdicts around %d bytes are not the limit's", schemas.DefaultMaxEventBytes)
	}
}

// A caller that retries after a timeout must send the same id: with
// NewEvent (the README's way) and with the events of the PublishError.
func TestPublishRetryAfterTimeoutKeepsID(t *testing.T) {
	t.Parallel()
	broker, topic := newTopic(t)
	// A partial batch waits 1.5 s, so a 100 ms deadline expires while the
	// first attempt is queued: it may still be delivered later.
	p := newPublisher(t, broker, topic, WithBatching(1000, 1<<20, 1500*time.Millisecond))
	publishWithTimeout := func(e schemas.UsageEvent) error {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		return p.Publish(ctx, e)
	}

	built := NewEvent("retry-a", schemas.MeterAPICalls, decimal.NewFromInt(1))
	err := publishWithTimeout(built)
	var perr *PublishError
	if !errors.As(err, &perr) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("first attempt: %v, want a *PublishError wrapping the deadline", err)
	}
	if err := p.Publish(context.Background(), built); err != nil { // the retry
		t.Fatalf("retry: %v", err)
	}

	bare := ev("retry-b", schemas.MeterAPICalls, "1", nil) // no id: Publish fills one on its copy
	err = publishWithTimeout(bare)
	if !errors.As(err, &perr) || len(perr.Events) != 1 || perr.Events[0].ID == "" {
		t.Fatalf("first attempt: %v, want a *PublishError with the event as sent", err)
	}
	if err := p.Publish(context.Background(), perr.Events...); err != nil {
		t.Fatalf("retry: %v", err)
	}
	if err := p.Close(); err != nil { // delivers whatever the first attempts left queued
		t.Fatal(err)
	}

	ids := map[string]map[string]int{} // tenant -> id -> messages
	for _, m := range readTopic(t, broker, topic) {
		e, err := schemas.NewValidator().Decode(m.Value)
		if err != nil {
			t.Fatal(err)
		}
		if ids[e.TenantID] == nil {
			ids[e.TenantID] = map[string]int{}
		}
		ids[e.TenantID][e.ID]++
	}
	for _, tenant := range []string{"retry-a", "retry-b"} {
		if len(ids[tenant]) != 1 {
			t.Errorf("tenant %s: ids on the topic %v, want one id however many attempts arrived", tenant, ids[tenant])
		}
	}
	if _, ok := ids["retry-a"][built.ID]; !ok {
		t.Errorf("NewEvent's id %s is not what was sent: %v", built.ID, ids["retry-a"])
	}
	if _, ok := ids["retry-b"][perr.Events[0].ID]; !ok {
		t.Errorf("PublishError's id %s is not what was sent: %v", perr.Events[0].ID, ids["retry-b"])
	}
}
