package svckit

import (
	"errors"
	"strconv"

	"github.com/segmentio/kafka-go"

	"github.com/usagemeter/usagemeter/schemas"
)

// Headers of a re-routed copy. The copy keeps every header of the original
// and adds these, so an operator can find the original and the publisher to
// fix.
const (
	// HeaderReroutedFrom is "<topic>/<partition>/<offset>" of the original.
	HeaderReroutedFrom = "usage.rerouted.from"
	// HeaderReroutedReason is the routing tag the original broke:
	// key_mismatch (no key or another key) or wrong_partition.
	HeaderReroutedReason = "usage.rerouted.reason"
	// HeaderPublisher is an optional header a publisher may set (its
	// client.id, service name, ...): Kafka records do not carry the
	// producer's client id, so this is the only way a consumer can say who
	// published a misrouted event. The consumer uses it as a metric label.
	HeaderPublisher = "usage.publisher"
)

// Misrouted reports whether err, from Intake.Decode, says only that the
// record breaks the routing rule: the event itself is valid (Decode
// validates before it checks routing), so it can be re-routed instead of
// refused.
func Misrouted(err error) (schemas.Code, bool) {
	var ve *schemas.ValidationError
	if !errors.As(err, &ve) {
		return "", false
	}
	if ve.Code == schemas.CodeKeyMismatch || ve.Code == schemas.CodeWrongPartition {
		return ve.Code, true
	}
	return "", false
}

// Reroute returns the copy of the misrouted record m that the routing rule
// accepts: the same value bytes (so the same id), keyed by tenantID, for the
// same topic, with m's headers plus HeaderReroutedFrom and
// HeaderReroutedReason. Write it with a RoutingBalancer: kafka-go's Writer
// ignores Message.Partition. Its Time is m's record time, so a reader that
// takes the time kafka-go reports judges the copy as it judged the
// original; on a LogAppendTime topic the broker's time of the copy is later
// than the original's, so the copy is never judged "more in the future"
// than the original was.
func Reroute(m kafka.Message, tenantID string, reason schemas.Code) kafka.Message {
	headers := append(append(make([]kafka.Header, 0, len(m.Headers)+2), m.Headers...),
		kafka.Header{Key: HeaderReroutedFrom, Value: []byte(m.Topic + "/" + strconv.Itoa(m.Partition) + "/" + strconv.FormatInt(m.Offset, 10))},
		kafka.Header{Key: HeaderReroutedReason, Value: []byte(reason)})
	return kafka.Message{Key: []byte(tenantID), Value: m.Value, Headers: headers, Time: m.Time}
}

// Rerouted reports whether m is a copy that Reroute made.
func Rerouted(m kafka.Message) bool {
	for _, h := range m.Headers {
		if h.Key == HeaderReroutedFrom {
			return true
		}
	}
	return false
}

// RoutingBalancer puts a message on the partition the routing rule names
// for its key (schemas.PartitionFor over Partitions), whatever partition
// list the writer's cached metadata holds, so the writer and the readers
// use one partition count: the one the service pinned (see
// PartitionWatcher).
type RoutingBalancer struct{ Partitions func() int }

// Balance implements kafka.Balancer.
func (b RoutingBalancer) Balance(m kafka.Message, _ ...int) int {
	return schemas.PartitionFor(string(m.Key), b.Partitions())
}
