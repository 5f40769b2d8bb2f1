package faults

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/shopspring/decimal"

	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/testenv"
)

// midStream is how long traffic flows before a fault: random, so that
// the kill lands anywhere in a batch, a flush or a checkpoint.
func midStream() time.Duration {
	return 1500*time.Millisecond + rand.N(1500*time.Millisecond)
}

// killConsumer SIGKILLs usage-consumer n times, each time starting a new
// one at once, as a supervisor would.
func killConsumer(n int) func(*testing.T, *run) error {
	return func(_ *testing.T, c *run) error {
		for i := range n {
			time.Sleep(midStream())
			from := time.Now()
			c.p.consumer.kill()
			c.p.startConsumer()
			if err := c.recovered(from, sessionTimeout+catchUp, fmt.Sprintf("consumer SIGKILL %d of %d", i+1, n)); err != nil {
				return err
			}
		}
		return nil
	}
}

// killAggregator SIGKILLs usage-aggregator n times and starts a
// replacement at once; the replacement waits out the dead member's
// session and must then catch up.
func killAggregator(n int) func(*testing.T, *run) error {
	return func(_ *testing.T, c *run) error {
		for i := range n {
			time.Sleep(midStream())
			from := time.Now()
			c.p.aggregators[len(c.p.aggregators)-1].kill()
			c.p.startAggregator()
			if err := c.recovered(from, sessionTimeout+catchUp, fmt.Sprintf("aggregator SIGKILL %d of %d", i+1, n)); err != nil {
				return err
			}
		}
		return nil
	}
}

// killOneOfTwo SIGKILLs the first of two aggregator members, without a
// replacement: the survivor must take over its partitions.
func killOneOfTwo(_ *testing.T, c *run) error {
	time.Sleep(midStream())
	from := time.Now()
	c.p.aggregators[0].kill()
	return c.recovered(from, sessionTimeout+catchUp, "one of two aggregators SIGKILLed")
}

func ownKafka(t *testing.T, shared engines) (engines, restarter) {
	k := testenv.StartKafka(t)
	return engines{broker: k.Addr, clickhouse: shared.clickhouse}, k
}

func ownClickHouse(t *testing.T, shared engines) (engines, restarter) {
	ch := testenv.StartClickHouse(t)
	return engines{broker: shared.broker, clickhouse: ch.Addr}, ch
}

// restartEngine stops the case's own engine (SIGTERM, data kept), keeps
// it down for `down` while both services and the traffic keep going, then
// starts it again; recovery counts from the moment it answers again. A
// fixed outage makes the case deterministic: how long a restart takes
// varies from 3 to 18 s on two cores.
func restartEngine(what string, down time.Duration) func(*testing.T, *run) error {
	return func(t *testing.T, c *run) error {
		time.Sleep(midStream())
		stop := time.Now()
		c.engine.Stop()
		stopped := time.Now()
		time.Sleep(down)
		c.engine.Start()
		t.Logf("%s: stopping took %s s, down for %s s", what, seconds(stopped.Sub(stop)), seconds(time.Since(stopped)))
		return c.recovered(time.Now(), 60*time.Second, what+" restart")
	}
}

// misroutedPublishers publishes, next to the SDK traffic, events from a
// keyless publisher (round robin), a publisher keying by another tenant,
// and kcat with librdkafka's default partitioner (CRC32), which puts half
// of the tenants on another partition than murmur2. The consumer re-routes
// them to their tenants' partitions; the one reading them SIGKILLs itself
// after its first re-publish and before that batch's commit
// (USAGEMETER_FAULT_POINT=after-reroute), so its replacement re-reads the
// originals and re-publishes them again: every event still counts once.
func misroutedPublishers(_ *testing.T, c *run) error {
	time.Sleep(midStream())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tenantSet := allTenants()
	var keyless, wrongKey []kafka.Message
	for i := range 300 {
		ev := c.load.event(tenantSet[i%len(tenantSet)])
		keyless = append(keyless, kafka.Message{Value: ev.AppendJSON(nil)})
		ev = c.load.event(tenantSet[i%len(tenantSet)])
		other := tenantSet[(i+1)%len(tenantSet)]
		wrongKey = append(wrongKey, kafka.Message{Key: []byte(other), Value: ev.AppendJSON(nil)})
	}
	var kcatEvents []schemas.UsageEvent
	for _, tenant := range tenantSet {
		for range 50 {
			kcatEvents = append(kcatEvents, c.load.event(tenant))
		}
	}
	// A clean hand-over (SIGTERM leaves the group) to a consumer that dies
	// at the fault point, so the fault hits the misrouted events, not a
	// session timeout.
	c.p.consumer.stop(15 * time.Second)
	doomed := c.p.startConsumer("USAGEMETER_FAULT_POINT=after-reroute")
	doomed.signalled.Store(true) // its SIGKILL is the fault, not a failure
	from := time.Now()
	if err := writeRaw(ctx, c.p.eng.broker, c.p.topic, &kafka.RoundRobin{}, keyless); err != nil {
		return err
	}
	time.Sleep(300 * time.Millisecond)
	if err := writeRaw(ctx, c.p.eng.broker, c.p.topic, kafka.Murmur2Balancer{}, wrongKey); err != nil {
		return err
	}
	time.Sleep(300 * time.Millisecond)
	if err := publishKcat(ctx, c.p.eng.broker, c.p.topic, kcatEvents); err != nil {
		return err
	}
	select {
	case <-doomed.done:
	case <-ctx.Done():
		return fmt.Errorf("the consumer with the fault point never re-routed anything")
	}
	killed := time.Now()
	c.p.startConsumer()
	if err := c.recovered(from, time.Since(from)+sessionTimeout+catchUp, "misrouted publishers, consumer SIGKILL between re-publish and commit"); err != nil {
		return err
	}
	// The fault landed where it should: some copies were written twice
	// (before the kill and after it), and none of a correctly routed event.
	msgs, err := readAll(ctx, c.p.eng.broker, c.p.topic)
	if err != nil {
		return err
	}
	copies := map[string]int{}
	for _, m := range msgs {
		if _, ok := testenv.Headers(m)["usage.rerouted.from"]; ok {
			var w wireEvent
			_ = json.Unmarshal(m.Value, &w)
			copies[w.TenantID+"/"+w.ID]++
		}
	}
	twice := 0
	for _, n := range copies {
		if n > 1 {
			twice++
		}
	}
	c.p.t.Logf("consumer SIGKILLed itself %s s after the misrouted traffic began; %d events re-routed, %d of them twice",
		seconds(killed.Sub(from)), len(copies), twice)
	if twice == 0 {
		return fmt.Errorf("no event was re-routed twice: the SIGKILL did not land between a re-publish and its commit")
	}
	return nil
}

// republish is a caller retrying: every fifth SDK batch goes out twice
// (dupEvery), and around a consumer SIGKILL the last 2000 acknowledged
// events and the first 2000 are published again with their ids.
func republish(_ *testing.T, c *run) error {
	time.Sleep(midStream())
	n := c.load.ackedCount()
	from := time.Now()
	c.p.consumer.kill()
	if err := c.load.publish(c.load.ackedSlice(n-2000, n)); err != nil {
		return err
	}
	c.p.startConsumer()
	if err := c.load.publish(c.load.ackedSlice(0, 2000)); err != nil {
		return err
	}
	return c.recovered(from, sessionTimeout+catchUp, "consumer SIGKILL with republished events")
}

// overflow publishes, keyed and partitioned correctly but bypassing the
// SDK's validation, six events of 29 nines for tenant whale, in two
// bursts so that several fall in one aggregate row: two of them overflow
// Decimal(38, 9). The design refuses them (invalid_quantity, a cap of 18
// integer digits); whale's other events and every other tenant count on.
func overflow(_ *testing.T, c *run) error {
	time.Sleep(midStream())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	huge := decimal.RequireFromString("99999999999999999999999999999")
	var msgs []kafka.Message
	for range 6 {
		ev := c.load.event("whale")
		ev.Quantity = huge
		msgs = append(msgs, kafka.Message{Key: []byte(ev.TenantID), Value: ev.AppendJSON(nil)})
	}
	from := time.Now()
	if err := writeRaw(ctx, c.p.eng.broker, c.p.topic, kafka.Murmur2Balancer{}, msgs[:3]); err != nil {
		return err
	}
	time.Sleep(300 * time.Millisecond)
	if err := writeRaw(ctx, c.p.eng.broker, c.p.topic, kafka.Murmur2Balancer{}, msgs[3:]); err != nil {
		return err
	}
	return c.recovered(from, 30*time.Second, "overflow attempt")
}

// sentAtHeader carries, on a message the suite stamps itself, the suite's
// clock when it sent it: the broker appends the record later, so an event
// more than 5 minutes after it is more than 5 minutes after its broker
// time too (check_test.go refuses it in the independent count).
const sentAtHeader = "faults.sent_at"

// skewedHost publishes, next to the SDK traffic, 600 events from a host
// whose clock is 2 h ahead: the records' CreateTime and the events'
// timestamps are both 2 h ahead, keyed and partitioned right, for the
// tenants of acme's partition. The events topic is LogAppendTime, as the
// services create it, so both services judge them by the broker's clock
// and refuse them as timestamp_too_far_in_future (kafka-go reports the
// CreateTime, which would accept them); the SDK traffic of every tenant of
// that partition, before and after, counts exactly, in every window.
func skewedHost(_ *testing.T, c *run) error {
	time.Sleep(midStream())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	part := murmur2Partition("acme")
	var neighbours []string
	for _, tenant := range allTenants() {
		if murmur2Partition(tenant) == part {
			neighbours = append(neighbours, tenant)
		}
	}
	from := time.Now()
	for burst := range 3 {
		var msgs []kafka.Message
		for i := range 200 {
			ev := c.load.event(neighbours[(burst*200+i)%len(neighbours)])
			sent := time.Now().UTC()
			ev.Timestamp = sent.Add(2 * time.Hour)
			msgs = append(msgs, kafka.Message{Key: []byte(ev.TenantID), Value: ev.AppendJSON(nil), Time: ev.Timestamp,
				Headers: []kafka.Header{{Key: sentAtHeader, Value: []byte(sent.Format(time.RFC3339Nano))}}})
		}
		if err := writeRaw(ctx, c.p.eng.broker, c.p.topic, kafka.Murmur2Balancer{}, msgs); err != nil {
			return err
		}
		time.Sleep(300 * time.Millisecond)
	}
	return c.recovered(from, 30*time.Second, fmt.Sprintf("host 2 h ahead publishing for %v", neighbours))
}
