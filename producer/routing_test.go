package producer

import (
	"fmt"
	"testing"

	"github.com/segmentio/kafka-go"

	"github.com/usagemeter/usagemeter/schemas"
)

// The consumer and the aggregator refuse events that are not on
// schemas.PartitionFor(tenant); the SDK's balancer must agree for every
// key and partition count, or the SDK's own events would be refused.
func TestSDKPartitionerMatchesRoutingRule(t *testing.T) {
	keys := []string{"", "a", "ab", "abc", "abcd", "acme", "tenant-0001", "Ünïcödé", "x:y@z.example", string(make([]byte, 128))}
	for i := range 2000 {
		keys = append(keys, fmt.Sprintf("tenant-%d", i))
	}
	for _, n := range []int{1, 2, 3, 4, 7, 12, 64} {
		parts := make([]int, n)
		for i := range parts {
			parts[i] = i
		}
		for _, k := range keys {
			got := kafka.Murmur2Balancer{}.Balance(kafka.Message{Key: []byte(k)}, parts...)
			if want := schemas.PartitionFor(k, n); got != want {
				t.Fatalf("key %q, %d partitions: SDK balancer %d, routing rule %d", k, n, got, want)
			}
			if err := schemas.CheckRouting([]byte(k), k, got, n); err != nil {
				t.Fatalf("key %q: %v", k, err)
			}
		}
	}
}
