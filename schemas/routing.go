package schemas

import "fmt"

// Routing rule of usage.events: the Kafka key is the event's tenant_id and
// the partition is Murmur2(tenant_id) mod the partition count, the Java
// client's (and the SDK's) default. The aggregator's exactly-once model
// needs every event of a tenant on one partition, so the consumer and the
// aggregator refuse, with the same tag, what breaks the rule: a keyless
// publisher, a wrong key, or another partitioner (librdkafka's default is
// CRC32). Refusing is loud and exact; counting such events would be silent
// and wrong (see aggregator/README.md).
const (
	CodeKeyMismatch    Code = "key_mismatch"
	CodeWrongPartition Code = "wrong_partition"
)

// PartitionFor is the partition the rule gives a tenant: Kafka's murmur2,
// made positive, mod partitions (as Java's Utils.toPositive(murmur2(key))).
func PartitionFor(tenantID string, partitions int) int {
	return int(murmur2(tenantID) & 0x7fffffff % uint32(partitions))
}

// CheckRouting reports how a record read from (partition of partitions)
// with key breaks the routing rule for tenantID, or nil.
func CheckRouting(key []byte, tenantID string, partition, partitions int) error {
	if string(key) != tenantID {
		if key == nil {
			return &ValidationError{Code: CodeKeyMismatch, Reason: fmt.Sprintf("the Kafka key is missing; it must be the tenant_id %q", tenantID)}
		}
		return &ValidationError{Code: CodeKeyMismatch, Reason: fmt.Sprintf("the Kafka key %q is not the tenant_id %q", clip(key), tenantID)}
	}
	if partitions > 0 {
		if want := PartitionFor(tenantID, partitions); partition != want {
			return &ValidationError{Code: CodeWrongPartition, Reason: fmt.Sprintf(
				"tenant %q belongs on partition %d of %d (murmur2 of the key), not %d: use the Murmur2 partitioner (librdkafka: partitioner=murmur2_random)",
				tenantID, want, partitions, partition)}
		}
	}
	return nil
}

// clip keeps an error message short whatever the key.
func clip(b []byte) string {
	if len(b) > 64 {
		return string(b[:64]) + "..."
	}
	return string(b)
}

// murmur2 is Kafka's murmur2 (seed 0x9747b28c), as in the Java client.
func murmur2(s string) uint32 {
	const (
		seed uint32 = 0x9747b28c
		m    uint32 = 0x5bd1e995
		r           = 24
	)
	n := len(s)
	h := seed ^ uint32(n)
	for i := 0; i+4 <= n; i += 4 {
		k := uint32(s[i]) | uint32(s[i+1])<<8 | uint32(s[i+2])<<16 | uint32(s[i+3])<<24
		k *= m
		k ^= k >> r
		k *= m
		h *= m
		h ^= k
	}
	tail := n &^ 3
	switch n & 3 {
	case 3:
		h ^= uint32(s[tail+2]) << 16
		fallthrough
	case 2:
		h ^= uint32(s[tail+1]) << 8
		fallthrough
	case 1:
		h ^= uint32(s[tail])
		h *= m
	}
	h ^= h >> 13
	h *= m
	h ^= h >> 15
	return h
}
