package examples

import (
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/testenv"
)

// TestExamplesPublishOne runs the README's command of each example,
// `TENANT FEATURE QUANTITY`, against the real broker: the event arrives
// keyed by its tenant, valid for the Go decoder, with a UUIDv7 id, the
// quantity as the exact decimal string given and the publisher header; and
// a quantity the contract refuses is refused by the example, naming the
// field, with nothing sent.
func TestExamplesPublishOne(t *testing.T) {
	t.Parallel() // each on its own topics, database or broker
	exs := examples(t)
	broker := testenv.Kafka(t)
	topic := testenv.Name("examples_one")
	testenv.CreateTopic(t, broker, topic, partitions)
	env := []string{"KAFKA_BROKERS=" + broker, "USAGE_TOPIC=" + topic}
	parallelExamples(exs, func(ex example) {
		if _, err := ex.run(t, env, "acme", "ai_generation", "1e3"); err == nil || !strings.Contains(err.Error(), "quantity") {
			t.Errorf("%s published a quantity of 1e3 (a string with an exponent), or did not name the field: %v", ex.name, err)
		}
		if _, err := ex.run(t, env, "acme", "ai_generation", "1234567890.123456789"); err != nil {
			t.Error(err)
		}
	})
	dec := schemas.NewValidator()
	seen := map[string]bool{}
	for _, m := range testenv.ReadN(t, broker, topic, len(exs)) {
		ev, err := dec.Decode(m.Value)
		if err != nil {
			t.Errorf("invalid event %s: %v", m.Value, err)
			continue
		}
		pub := testenv.Headers(m)["usage.publisher"]
		seen[pub] = true
		id, err := uuid.Parse(ev.ID)
		switch {
		case err != nil || id.Version() != 7 || id.Variant() != uuid.RFC4122:
			t.Errorf("%s: id %q is not a UUIDv7 (%v)", pub, ev.ID, err)
		case string(m.Key) != "acme" || ev.TenantID != "acme" || ev.FeatureType != "ai_generation":
			t.Errorf("%s: key %q, event %+v", pub, m.Key, ev)
		case !strings.Contains(string(m.Value), `"quantity":"1234567890.123456789"`):
			t.Errorf("%s: quantity not the exact decimal string given: %s", pub, m.Value)
		case m.Partition != schemas.PartitionFor("acme", partitions) && pub != "usagemeter-example-python":
			t.Errorf("%s: on partition %d, not murmur2's %d", pub, m.Partition, schemas.PartitionFor("acme", partitions))
		}
	}
	for _, ex := range exs {
		if !seen["usagemeter-example-"+ex.name] {
			t.Errorf("nothing from %s", ex.name)
		}
	}
	// Only those three: the refused events were not sent.
	var total int64
	for _, end := range testenv.EndOffsets(t, broker, topic, partitions) {
		total += end
	}
	if total != int64(len(exs)) {
		t.Errorf("%d records in the topic, want %d", total, len(exs))
	}
}
