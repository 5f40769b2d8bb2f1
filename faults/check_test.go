package faults

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/shopspring/decimal"

	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/testenv"
)

// DLQ tags the design gives refused events (issue 6).
const (
	tagKeyMismatch     = "key_mismatch"
	tagWrongPartition  = "wrong_partition"
	tagInvalidQuantity = "invalid_quantity"
	// quantityIntDigits is the designed per-event cap: a quantity of 10^18
	// or more is refused, so that no sum of a row can overflow Decimal(38, 9).
	quantityIntDigits = 18
)

// key is one tenant's meter.
type key struct{ tenant, meter string }

func (k key) String() string { return k.tenant + "/" + k.meter }

// tally is a count of events and the exact sum of their quantities.
type tally struct {
	events int64
	sum    decimal.Decimal
}

// expectation is what the sinks must hold, computed in Go from every
// message in usage.events with the design's rules, independently of the
// services' code: a message is refused when its quantity is over the cap;
// every other (tenant_id, id) counts once, whatever its key and partition
// (the consumer re-routes a misrouted event; its copy in the topic is one
// more message with the same tenant_id and id).
type expectation struct {
	messages int               // in usage.events, retries and refused ones included
	totals   map[key]tally     // countable events
	ids      map[string]bool   // tenant/id of every countable event
	refused  map[string]string // id of every refused message -> its DLQ tag
}

// wireEvent is the part of a UsageEvent the count needs, decoded with
// encoding/json rather than the services' decoder.
type wireEvent struct {
	ID          string          `json:"id"`
	TenantID    string          `json:"tenant_id"`
	FeatureType string          `json:"feature_type"`
	Quantity    json.RawMessage `json:"quantity"`
}

func expect(msgs []kafka.Message) (*expectation, error) {
	e := &expectation{totals: map[key]tally{}, ids: map[string]bool{}, refused: map[string]string{}}
	limit := decimal.New(1, quantityIntDigits)
	for _, m := range msgs {
		var w wireEvent
		if err := json.Unmarshal(m.Value, &w); err != nil {
			return nil, fmt.Errorf("partition %d offset %d: %w", m.Partition, m.Offset, err)
		}
		var text string
		if err := json.Unmarshal(w.Quantity, &text); err != nil {
			return nil, fmt.Errorf("partition %d offset %d: quantity %s is not a string: %w", m.Partition, m.Offset, w.Quantity, err)
		}
		q, err := decimal.NewFromString(text)
		if err != nil {
			return nil, fmt.Errorf("partition %d offset %d: %w", m.Partition, m.Offset, err)
		}
		e.messages++
		tag := ""
		switch {
		case q.GreaterThanOrEqual(limit):
			tag = tagInvalidQuantity
		}
		if tag != "" {
			if prev, ok := e.refused[w.ID]; ok && prev != tag {
				return nil, fmt.Errorf("id %s refused twice with different tags: the suite publishes each refused id once", w.ID)
			}
			e.refused[w.ID] = tag
			continue
		}
		id := w.TenantID + "/" + w.ID
		if e.ids[id] {
			continue // a retry: counted once
		}
		e.ids[id] = true
		k := key{w.TenantID, w.FeatureType}
		t := e.totals[k]
		t.events++
		t.sum = t.sum.Add(q)
		e.totals[k] = t
	}
	return e, nil
}

// murmur2Partition is where the Java client, franz-go and the Go SDK put
// a tenant: kafka-go's Murmur2Balancer, not the code under test.
func murmur2Partition(tenant string) int {
	all := make([]int, partitions)
	for i := range all {
		all[i] = i
	}
	return kafka.Murmur2Balancer{Consistent: true}.Balance(kafka.Message{Key: []byte(tenant)}, all...)
}

// readAll reads every message of topic up to its current end.
func readAll(ctx context.Context, broker, topic string) ([]kafka.Message, error) {
	ends, err := endOffsets(ctx, broker, topic)
	if err != nil {
		return nil, err
	}
	var out []kafka.Message
	for part, end := range ends {
		if end == 0 {
			continue
		}
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{broker}, Topic: topic, Partition: part,
			MaxBytes: 16 << 20, MaxWait: 100 * time.Millisecond})
		for {
			m, err := r.ReadMessage(ctx)
			if err != nil {
				_ = r.Close()
				return nil, fmt.Errorf("read %s/%d: %w", topic, part, err)
			}
			out = append(out, m)
			if m.Offset+1 >= end {
				break
			}
		}
		_ = r.Close()
	}
	return out, nil
}

// sinkNames are the places a total is read from, in report order.
func sinkNames() []string {
	return []string{"usage_events", "usage_1m", "usage_1h", "usage_1d", "usage_period", "quota"}
}

// observation holds, per sink, the totals per tenant and meter.
type observation map[string]map[key]tally

// observe reads the raw table and the four aggregate tables through FINAL
// (each sums, over subjects and windows, the full value of every row and
// the events folded into it) and the quota follower's latest states.
func (p *pipeline) observe(ctx context.Context, q *quotaFollower) (observation, error) {
	obs := observation{"quota": q.totals()}
	queries := map[string]string{
		"usage_events": "SELECT tenant_id, feature_type, count(), toString(sum(quantity)) FROM usage_events FINAL GROUP BY tenant_id, feature_type",
	}
	for _, table := range []string{"usage_1m", "usage_1h", "usage_1d", "usage_period"} {
		queries[table] = "SELECT tenant_id, feature_type, sum(events), toString(sum(value)) FROM " + table +
			" FINAL GROUP BY tenant_id, feature_type"
	}
	for sink, sql := range queries {
		got, err := p.totals(ctx, sql)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", sink, err)
		}
		obs[sink] = got
	}
	return obs, nil
}

func (p *pipeline) totals(ctx context.Context, sql string) (map[key]tally, error) {
	rows, err := p.conn.Query(ctx, sql)
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
			return nil, fmt.Errorf("%s: sum %q: %w", k, sum, err)
		}
		out[k] = tally{events: int64(n), sum: d}
	}
	return out, rows.Err()
}

// gap is how far one sink is from the expectation: events missing and
// events in excess, summed per tenant and meter, and the number of tenant
// and meter totals that differ in the last digit.
type gap struct {
	lost, double int64
	wrongSums    int
	first        string // the first differing total, for the log
}

func (g gap) zero() bool { return g.lost == 0 && g.double == 0 && g.wrongSums == 0 }

// gap compares one sink with e. A quota state carries no event count, so
// only its sums are compared.
func (e *expectation) gap(got map[key]tally, counts bool) gap {
	keys := map[key]bool{}
	for k := range e.totals {
		keys[k] = true
	}
	for k := range got {
		keys[k] = true
	}
	var sorted []key
	for k := range keys {
		sorted = append(sorted, k)
	}
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].String() < sorted[j].String() })
	var g gap
	for _, k := range sorted {
		want, have := e.totals[k], got[k]
		if counts {
			if d := have.events - want.events; d > 0 {
				g.double += d
			} else {
				g.lost -= d
			}
		}
		if !have.sum.Equal(want.sum) || counts && have.events != want.events {
			if g.wrongSums++; g.first == "" {
				g.first = fmt.Sprintf("%s: %d events, sum %s; want %d events, sum %s", k, have.events, have.sum, want.events, want.sum)
			}
		}
	}
	return g
}

// gaps compares every sink.
func (e *expectation) gaps(obs observation) map[string]gap {
	out := map[string]gap{}
	for _, sink := range sinkNames() {
		out[sink] = e.gap(obs[sink], sink != "quota")
	}
	return out
}

func exact(gaps map[string]gap) bool {
	for _, g := range gaps {
		if !g.zero() {
			return false
		}
	}
	return true
}

// describe names the sinks that differ.
func describe(gaps map[string]gap) string {
	var out []string
	for _, sink := range sinkNames() {
		if g, ok := gaps[sink]; ok && !g.zero() {
			out = append(out, fmt.Sprintf("%s: lost %d, double %d, %d totals differ (%s)", sink, g.lost, g.double, g.wrongSums, g.first))
		}
	}
	return strings.Join(out, "; ")
}

// converge waits, up to limit, until every sink equals e exactly and the
// DLQ holds at least the refused messages. It returns how long that took
// and the last gaps seen. It stops early when a service has exited by
// itself, after one more look at the sinks.
func (p *pipeline) converge(e *expectation, q *quotaFollower, limit time.Duration) (time.Duration, map[string]gap, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	var last error
	var gaps map[string]gap
	for ctx.Err() == nil {
		dead := p.alive()
		obs, err := p.observe(ctx, q)
		switch {
		case ctx.Err() != nil: // cut short by the deadline: keep the last answer
		case err != nil:
			last = err
		default:
			gaps = e.gaps(obs)
			dlq, derr := p.dlqCount(ctx)
			switch {
			case derr != nil:
				last = derr
			case exact(gaps) && dlq >= int64(len(e.refused)):
				return time.Since(start), gaps, nil
			case !exact(gaps):
				last = fmt.Errorf("not exact: %s", describe(gaps))
			default:
				last = fmt.Errorf("DLQ holds %d messages, want %d", dlq, len(e.refused))
			}
		}
		if dead != nil {
			if last != nil {
				dead = fmt.Errorf("%w; %w", dead, last)
			}
			last = dead
			break
		}
		sleep(ctx, 250*time.Millisecond)
	}
	if gaps == nil { // never observed: count everything as lost
		gaps = e.gaps(observation{})
	}
	return time.Since(start), gaps, fmt.Errorf("no exact totals %s after the traffic stopped: %w", limit, last)
}

func (p *pipeline) dlqCount(ctx context.Context) (int64, error) {
	ends, err := endOffsets(ctx, p.eng.broker, p.dlq)
	if err != nil {
		return 0, err
	}
	var n int64
	for _, end := range ends {
		n += end
	}
	return n, nil
}

// rawIDs compares the raw table with e id by id: countable events missing,
// identities that should not be there (refused or unknown), and identities
// stored more than once even through FINAL.
func (p *pipeline) rawIDs(ctx context.Context, e *expectation) (lost, extra, twice int, err error) {
	rows, err := p.conn.Query(ctx, "SELECT tenant_id, id FROM usage_events FINAL")
	if err != nil {
		return 0, 0, 0, fmt.Errorf("raw ids: %w", err)
	}
	defer rows.Close()
	seen := make(map[string]bool, len(e.ids))
	for rows.Next() {
		var tenant, id string
		if err := rows.Scan(&tenant, &id); err != nil {
			return 0, 0, 0, fmt.Errorf("raw ids: %w", err)
		}
		k := tenant + "/" + id
		switch {
		case seen[k]:
			twice++
		case !e.ids[k]:
			extra++
		}
		seen[k] = true
	}
	for k := range e.ids {
		if !seen[k] {
			lost++
		}
	}
	return lost, extra, twice, rows.Err()
}

// checkDLQ checks that every refused message is in the DLQ exactly once
// with its tag, and that nothing else is.
func (p *pipeline) checkDLQ(ctx context.Context, e *expectation) []error {
	msgs, err := readAll(ctx, p.eng.broker, p.dlq)
	if err != nil {
		return []error{err}
	}
	tags := map[string][]string{}
	for _, m := range msgs {
		var w wireEvent
		_ = json.Unmarshal(m.Value, &w) // original bytes: the suite only publishes valid JSON
		tags[w.ID] = append(tags[w.ID], testenv.Headers(m)[schemas.HeaderError])
	}
	var errs []error
	wrong := map[string]int{}
	for id, want := range e.refused {
		got := tags[id]
		switch {
		case len(got) == 0:
			wrong["missing "+want]++
		case len(got) > 1:
			wrong[fmt.Sprintf("%d times %s", len(got), want)]++
		case got[0] != want:
			wrong[fmt.Sprintf("%s instead of %s", got[0], want)]++
		}
	}
	for id, got := range tags {
		if _, ok := e.refused[id]; !ok {
			wrong["unexpected "+strings.Join(got, ",")]++
		}
	}
	for what, n := range wrong {
		errs = append(errs, fmt.Errorf("DLQ: %d refused events %s", n, what))
	}
	sort.Slice(errs, func(i, j int) bool { return errs[i].Error() < errs[j].Error() })
	return errs
}

// quotaFollower keeps the latest QuotaState per key of the quota topic, as
// a quota cache in an application does, reading every partition from the
// start and surviving broker restarts.
type quotaFollower struct {
	mu     sync.Mutex
	latest map[string]schemas.QuotaState
	bad    int // messages that are not a valid QuotaState
}

func followQuota(ctx context.Context, wg *sync.WaitGroup, broker, topic string) *quotaFollower {
	f := &quotaFollower{latest: map[string]schemas.QuotaState{}}
	for part := range partitions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f.follow(ctx, broker, topic, part)
		}()
	}
	return f
}

func (f *quotaFollower) follow(ctx context.Context, broker, topic string, part int) {
	next := kafka.FirstOffset
	for ctx.Err() == nil {
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{broker}, Topic: topic, Partition: part, MaxWait: 100 * time.Millisecond})
		if err := r.SetOffset(next); err == nil {
			for {
				m, err := r.ReadMessage(ctx)
				if err != nil {
					break
				}
				next = m.Offset + 1
				qs, err := schemas.DecodeQuotaState(m.Value)
				f.mu.Lock()
				if err != nil {
					f.bad++
				} else {
					f.latest[string(m.Key)] = qs
				}
				f.mu.Unlock()
			}
		}
		_ = r.Close()
		sleep(ctx, 200*time.Millisecond)
	}
}

// totals sums the latest usage per tenant and meter over their periods.
func (f *quotaFollower) totals() map[key]tally {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[key]tally{}
	for _, qs := range f.latest {
		k := key{qs.TenantID, qs.FeatureType}
		t := out[k]
		t.sum = t.sum.Add(qs.Usage)
		out[k] = t
	}
	return out
}

func (f *quotaFollower) invalid() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.bad
}

// seconds formats a duration for the report.
func seconds(d time.Duration) string {
	if d <= 0 {
		return "-"
	}
	return strconv.FormatFloat(d.Seconds(), 'f', 1, 64)
}
