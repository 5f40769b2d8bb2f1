package faults

import (
	"context"
	"encoding/json"
	"errors"
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
	// tagFuture: more than 5 minutes after the broker appended it.
	tagFuture = "timestamp_too_far_in_future"
	// quantityIntDigits is the designed per-event cap: a quantity of 10^18
	// or more is refused, so that no sum of a row can overflow Decimal(38, 9).
	quantityIntDigits = 18
)

// key is one tenant's meter, or one window of it (window: "1m@<unix
// start>", "1h@...", "1d@...", "period@..."; empty for the whole meter).
type key struct{ tenant, meter, window string }

func (k key) String() string {
	if k.window == "" {
		return k.tenant + "/" + k.meter
	}
	return k.tenant + "/" + k.meter + "/" + k.window
}

// grains are the aggregate tables, the column holding a row's window start
// and how the independent count truncates an event time to it (UTC; the
// suite's plans are calendar months).
var grains = []struct {
	table, col, name string
	start            func(time.Time) time.Time
}{
	{"usage_1m", "window_start", "1m", func(t time.Time) time.Time { return t.Truncate(time.Minute) }},
	{"usage_1h", "window_start", "1h", func(t time.Time) time.Time { return t.Truncate(time.Hour) }},
	{"usage_1d", "window_start", "1d", func(t time.Time) time.Time {
		return time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
	}},
	{"usage_period", "period_start", "period", func(t time.Time) time.Time {
		return time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)
	}},
}

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
	// windows holds, per aggregate table, the countable events per
	// tenant, meter and window (key.window set).
	windows map[string]map[key]tally
	// onPartition lists, per tenant and meter, the events counted on the
	// tenant's own partition in offset order: what the aggregator reads.
	// A quota state that says it reflects offset o must equal their sum up
	// to o.
	onPartition map[key][]counted
}

// counted is one event the aggregator counts, where it read it.
type counted struct {
	partition int
	offset    int64
	at        time.Time
	quantity  decimal.Decimal
}

// wireEvent is the part of a UsageEvent the count needs, decoded with
// encoding/json rather than the services' decoder.
type wireEvent struct {
	ID          string          `json:"id"`
	TenantID    string          `json:"tenant_id"`
	FeatureType string          `json:"feature_type"`
	Quantity    json.RawMessage `json:"quantity"`
	Timestamp   time.Time       `json:"timestamp"`
}

func expect(msgs []kafka.Message) (*expectation, error) {
	e := &expectation{totals: map[key]tally{}, ids: map[string]bool{}, refused: map[string]string{},
		windows: map[string]map[key]tally{}, onPartition: map[key][]counted{}}
	for _, g := range grains {
		e.windows[g.table] = map[key]tally{}
	}
	limit := decimal.New(1, quantityIntDigits)
	// Messages in offset order per partition, so that "first" and "up to
	// offset o" mean what they mean to a reader of the partition.
	msgs = append([]kafka.Message(nil), msgs...)
	sort.SliceStable(msgs, func(i, j int) bool {
		if msgs[i].Partition != msgs[j].Partition {
			return msgs[i].Partition < msgs[j].Partition
		}
		return msgs[i].Offset < msgs[j].Offset
	})
	onOwn := map[string]bool{} // tenant/id already counted on its own partition
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
		case aheadOfSending(m, w.Timestamp):
			tag = tagFuture
		}
		if tag != "" {
			if prev, ok := e.refused[w.ID]; ok && prev != tag {
				return nil, fmt.Errorf("id %s refused twice with different tags: the suite publishes each refused id once", w.ID)
			}
			e.refused[w.ID] = tag
			continue
		}
		id := w.TenantID + "/" + w.ID
		k := key{tenant: w.TenantID, meter: w.FeatureType}
		if string(m.Key) == w.TenantID && m.Partition == murmur2Partition(w.TenantID) && !onOwn[id] {
			onOwn[id] = true
			e.onPartition[k] = append(e.onPartition[k], counted{partition: m.Partition, offset: m.Offset, at: w.Timestamp, quantity: q})
		}
		if e.ids[id] {
			continue // a retry: counted once
		}
		e.ids[id] = true
		add(e.totals, k, q)
		for _, g := range grains {
			add(e.windows[g.table], key{w.TenantID, w.FeatureType, g.name + "@" + strconv.FormatInt(g.start(w.Timestamp.UTC()).Unix(), 10)}, q)
		}
	}
	return e, nil
}

func add(m map[key]tally, k key, q decimal.Decimal) {
	t := m[k]
	t.events++
	t.sum = t.sum.Add(q)
	m[k] = t
}

// aheadOfSending reports whether an event the suite stamped with
// sentAtHeader is more than 5 minutes (the contract's skew) after the
// suite's clock when it sent it, which precedes the broker's append time.
func aheadOfSending(m kafka.Message, ts time.Time) bool {
	for _, h := range m.Headers {
		if h.Key == sentAtHeader {
			sent, err := time.Parse(time.RFC3339Nano, string(h.Value))
			return err == nil && ts.After(sent.Add(5*time.Minute))
		}
	}
	return false
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

// observation holds, per sink, the totals per tenant and meter (raw table,
// quota) or per tenant, meter and window (the aggregate tables).
type observation map[string]map[key]tally

// observe reads the raw table and the four aggregate tables through FINAL
// (each sums, over subjects, the full value of every row and the events
// folded into it, per window) and the quota follower's latest states.
func (p *pipeline) observe(ctx context.Context, q *quotaFollower) (observation, error) {
	obs := observation{"quota": q.totals()}
	queries := map[string]string{
		"usage_events": "SELECT tenant_id, feature_type, '', count(), toString(sum(quantity)) FROM usage_events FINAL GROUP BY tenant_id, feature_type",
	}
	for _, g := range grains {
		queries[g.table] = "SELECT tenant_id, feature_type, concat('" + g.name + "@', toString(toUnixTimestamp(" + g.col + "))), sum(events), toString(sum(value)) FROM " +
			g.table + " FINAL GROUP BY tenant_id, feature_type, " + g.col
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
		if err := rows.Scan(&k.tenant, &k.meter, &k.window, &n, &sum); err != nil {
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

// gap compares one sink with want. A quota state carries no event count,
// so only its sums are compared.
func gapOf(want, got map[key]tally, counts bool) gap {
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
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].String() < sorted[j].String() })
	var g gap
	for _, k := range sorted {
		want, have := want[k], got[k]
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

// gap compares a per-tenant-and-meter sink with the independent count.
func (e *expectation) gap(got map[key]tally, counts bool) gap { return gapOf(e.totals, got, counts) }

// gaps compares every sink: the raw table and the quota states per tenant
// and meter, the aggregate tables per tenant, meter and window.
func (e *expectation) gaps(obs observation) map[string]gap {
	out := map[string]gap{}
	for _, sink := range sinkNames() {
		if w, ok := e.windows[sink]; ok {
			out[sink] = gapOf(w, obs[sink], true)
		} else {
			out[sink] = e.gap(obs[sink], sink != "quota")
		}
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
				took := time.Since(start)
				if n, errs := e.checkStates(q.states()); len(errs) > 0 {
					return took, gaps, fmt.Errorf("of %d quota states published, some do not equal the independent count at their source offsets: %w", n, errors.Join(errs...))
				}
				return took, gaps, nil
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
	all    []published // every valid state, in each partition's order
	bad    int         // messages that are not a valid QuotaState
}

// published is one quota state as read from the topic: when its writer
// stamped it (CreateTime: the aggregator's clock, this machine's) and
// where it is.
type published struct {
	schemas.QuotaState
	at        time.Time
	partition int
	offset    int64
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
					f.all = append(f.all, published{QuotaState: qs, at: m.Time, partition: part, offset: m.Offset})
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
		k := key{tenant: qs.TenantID, meter: qs.FeatureType}
		t := out[k]
		t.sum = t.sum.Add(qs.Usage)
		out[k] = t
	}
	return out
}

// states returns every state read so far, per key in topic order.
func (f *quotaFollower) states() map[string][]published {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string][]published{}
	for _, p := range f.all {
		out[p.Key()] = append(out[p.Key()], p)
	}
	for _, ps := range out {
		sort.Slice(ps, func(i, j int) bool { return ps[i].offset < ps[j].offset })
	}
	return out
}

// usageAt is the independent count of what a state claims to reflect: the
// sum of the events of its tenant and meter in its period that the
// aggregator counts on partition p up to offset o, for every (p, o) of its
// source offsets.
func (e *expectation) usageAt(qs *schemas.QuotaState) decimal.Decimal {
	sum := decimal.Zero
	evs := e.onPartition[key{tenant: qs.TenantID, meter: qs.FeatureType}]
	for p, o := range qs.SourceOffsets {
		for _, c := range evs {
			if c.partition == int(p) && c.offset <= o && !c.at.Before(qs.PeriodStart) && c.at.Before(qs.PeriodEnd) {
				sum = sum.Add(c.quantity)
			}
		}
	}
	return sum
}

// checkStates checks every quota state published during the case: its
// usage must equal the independent count at the source offsets it claims
// (a state that says "up to offset o" and is wrong misleads a cache that
// orders states by offsets). It returns the number checked and the first
// few that differ.
func (e *expectation) checkStates(states map[string][]published) (int, []error) {
	n := 0
	var errs []error
	for _, ps := range states {
		for i := range ps {
			n++
			if want := e.usageAt(&ps[i].QuotaState); !ps[i].Usage.Equal(want) {
				if len(errs) < 5 {
					errs = append(errs, fmt.Errorf("quota state %s at %s/%d (source offsets %v): usage %s, the independent count at those offsets is %s",
						ps[i].Key(), ps[i].at.Format(time.RFC3339Nano), ps[i].offset, ps[i].SourceOffsets, ps[i].Usage, want))
				}
			}
		}
	}
	return n, errs
}

// regressions lists the states, published at or after from, that reflect
// fewer source events than a state of the same key published before them
// (at or after since): a cache that takes the newest state would go back
// to a lower usage. Every member owns its partitions throughout the window
// the caller chooses, so any regression in it is a stale publisher.
func regressions(states map[string][]published, since, from time.Time) []string {
	var out []string
	for k, ps := range states {
		high := map[int32]int64{}
		for _, p := range ps {
			if p.at.Before(since) {
				continue
			}
			for part, o := range p.SourceOffsets {
				if !p.at.Before(from) && o < high[part] {
					out = append(out, fmt.Sprintf("%s published at %s with source offset %d/%d after one with %d",
						k, p.at.Format("15:04:05.000"), part, o, high[part]))
				}
				high[part] = max(high[part], o)
			}
		}
	}
	sort.Strings(out)
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
