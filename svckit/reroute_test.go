package svckit

import (
	"fmt"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/usagemeter/usagemeter/schemas"
)

// The copy keeps the bytes and the original's headers, is keyed by the
// tenant and says where it came from; routing faults are told apart from
// content faults.
func TestRerouteAndMisrouted(t *testing.T) {
	in := NewIntake()
	ev := []byte(`{"id":"e1","tenant_id":"acme","feature_type":"api_calls","quantity":"1","timestamp":"2026-11-28T10:00:00Z"}`)
	orig := kafka.Message{Topic: "usage.events", Partition: 3, Offset: 42, Value: ev, Time: time.Date(2026, 11, 28, 10, 0, 1, 0, time.UTC),
		Headers: []kafka.Header{{Key: HeaderPublisher, Value: []byte("billing-worker")}}}
	e, err := in.Decode(orig, 4)
	reason, ok := Misrouted(err)
	if !ok || reason != schemas.CodeKeyMismatch {
		t.Fatalf("keyless: %v, %v", reason, err)
	}
	c := Reroute(orig, e.TenantID, reason)
	h := map[string]string{}
	for _, x := range c.Headers {
		h[x.Key] = string(x.Value)
	}
	if string(c.Key) != "acme" || string(c.Value) != string(ev) || !c.Time.Equal(orig.Time) || c.Topic != "" ||
		h[HeaderReroutedFrom] != "usage.events/3/42" || h[HeaderReroutedReason] != "key_mismatch" || h[HeaderPublisher] != "billing-worker" || !Rerouted(c) || Rerouted(orig) {
		t.Fatalf("copy %+v, headers %v", c, h)
	}
	bad := orig
	bad.Value = []byte(`{"id":"e1","tenant_id":"acme"}`)
	if _, err := in.Decode(bad, 4); err == nil {
		t.Fatal("an invalid event passed")
	} else if _, ok := Misrouted(err); ok {
		t.Fatalf("an invalid event counted as misrouted: %v", err)
	}
}

// RoutingBalancer puts a key where the Java client, franz-go and kafka-go's
// Murmur2Balancer do (an implementation independent of schemas').
func TestRoutingBalancerIsJavasMurmur2(t *testing.T) {
	for _, n := range []int{1, 3, 4, 12} {
		all := make([]int, n)
		for i := range all {
			all[i] = i
		}
		b := RoutingBalancer{Partitions: func() int { return n }}
		for i := range 500 {
			m := kafka.Message{Key: []byte(fmt.Sprintf("tenant-%d", i))}
			if got, want := b.Balance(m, all...), (kafka.Murmur2Balancer{Consistent: true}).Balance(m, all...); got != want {
				t.Fatalf("%s of %d partitions: %d, Murmur2Balancer %d", m.Key, n, got, want)
			}
		}
	}
}
