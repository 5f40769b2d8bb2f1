package schemas

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// QuotaPosition is the aggregator's promise about one partition of the
// events topic: every event at an offset up to AppliedThrough has been
// applied, and every quota state that reflects one of them has been
// published (acknowledged by the broker) on QuotaStateTopic before this
// record was written. The owner of the partition publishes it on the
// compacted topic QuotaPositionTopic, keyed by QuotaPositionKey, so the
// latest record per key is the partition's position.
//
// Quota caches use it to expire pending usage the states should have
// absorbed: an event the cache saw acknowledged at an offset the position
// covers is either in a state already or never will be (it went to the
// DLQ, was a duplicate id, was late). The JSON Schema in
// quota_position.schema.json (draft 2020-12) is the contract for readers in
// other languages; testdata/quota_position_vectors.json pins it down.
type QuotaPosition struct {
	Topic          string    `json:"topic"`           // the events topic, e.g. usage.events
	Partition      int32     `json:"partition"`       // a partition of Topic
	AppliedThrough int64     `json:"applied_through"` // the last offset applied (>= 0)
	PublishedAt    time.Time `json:"published_at"`    // the publishing member's clock: for humans only
	SchemaVersion  int       `json:"schema_version"`
}

// QuotaPositionTopic is the compacted topic positions are published to.
const QuotaPositionTopic = "usage.quota-positions"

// QuotaPositionSchemaVersion is the only version this package writes and reads.
const QuotaPositionSchemaVersion = 1

//go:embed quota_position.schema.json
var quotaPositionSchema string

//go:embed testdata/quota_position_vectors.json
var quotaPositionVectors []byte

// QuotaPositionJSONSchema returns quota_position.schema.json.
func QuotaPositionJSONSchema() []byte { return []byte(quotaPositionSchema) }

// QuotaPositionVector is one shared test vector: Message must decode to
// Want, or be refused with the tag Error.
type QuotaPositionVector struct {
	Name    string          `json:"name"`
	Message json.RawMessage `json:"message"`
	Want    *QuotaPosition  `json:"want,omitempty"`
	Error   string          `json:"error,omitempty"`
}

// QuotaPositionTestVectors returns the shared QuotaPosition test vectors.
func QuotaPositionTestVectors() ([]QuotaPositionVector, error) {
	var doc struct {
		Vectors []QuotaPositionVector `json:"vectors"`
	}
	if err := json.Unmarshal(quotaPositionVectors, &doc); err != nil {
		return nil, fmt.Errorf("parse quota position test vectors: %w", err)
	}
	return doc.Vectors, nil
}

// QuotaPositionKey is the record key of a partition's position.
func QuotaPositionKey(topic string, partition int32) string {
	return topic + "/" + strconv.FormatInt(int64(partition), 10)
}

// Key returns p's record key.
func (p *QuotaPosition) Key() string { return QuotaPositionKey(p.Topic, p.Partition) }

// Validate names the first field that breaks the contract.
func (p *QuotaPosition) Validate() error {
	switch {
	case p.Topic == "" || len(p.Topic) > 249 || strings.ContainsAny(p.Topic, "/ "):
		return &ValidationError{Code: CodeInvalidField, Field: "topic", Reason: fmt.Sprintf("%q is not a Kafka topic name", p.Topic)}
	case p.Partition < 0:
		return &ValidationError{Code: CodeInvalidField, Field: "partition", Reason: fmt.Sprintf("%d is negative", p.Partition)}
	case p.AppliedThrough < 0:
		return &ValidationError{Code: CodeInvalidField, Field: "applied_through", Reason: fmt.Sprintf("%d is negative", p.AppliedThrough)}
	case p.PublishedAt.IsZero():
		return &ValidationError{Code: CodeMissingField, Field: "published_at", Reason: "required"}
	case p.SchemaVersion != QuotaPositionSchemaVersion:
		return &ValidationError{Code: CodeUnsupportedSchemaVersion, Field: "schema_version",
			Reason: fmt.Sprintf("%d, this reader knows %d", p.SchemaVersion, QuotaPositionSchemaVersion)}
	}
	return nil
}

// AppendJSON appends p as one JSON object (times in UTC, RFC 3339 with
// nanoseconds).
func (p *QuotaPosition) AppendJSON(dst []byte) []byte {
	dst = append(dst, `{"topic":`...)
	dst = strconv.AppendQuote(dst, p.Topic)
	dst = append(dst, `,"partition":`...)
	dst = strconv.AppendInt(dst, int64(p.Partition), 10)
	dst = append(dst, `,"applied_through":`...)
	dst = strconv.AppendInt(dst, p.AppliedThrough, 10)
	dst = append(dst, `,"published_at":"`...)
	dst = p.PublishedAt.UTC().AppendFormat(dst, time.RFC3339Nano)
	dst = append(dst, `","schema_version":`...)
	dst = strconv.AppendInt(dst, int64(p.SchemaVersion), 10)
	return append(dst, '}')
}

// DecodeQuotaPosition parses and validates one record value of
// QuotaPositionTopic. Unknown and missing fields are refused, as are
// duplicate names; failures are *ValidationError.
func DecodeQuotaPosition(data []byte) (QuotaPosition, error) {
	if !json.Valid(data) {
		return QuotaPosition{}, &ValidationError{Code: CodeMalformedJSON, Reason: "not a JSON value"}
	}
	if err := checkStrictJSON(data); err != nil {
		return QuotaPosition{}, err
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return QuotaPosition{}, &ValidationError{Code: CodeMalformedJSON, Reason: err.Error()}
	}
	for _, f := range []string{"topic", "partition", "applied_through", "published_at", "schema_version"} {
		if _, ok := raw[f]; !ok {
			return QuotaPosition{}, &ValidationError{Code: CodeMissingField, Field: f, Reason: "required"}
		}
	}
	var p QuotaPosition
	d := json.NewDecoder(bytes.NewReader(data))
	d.DisallowUnknownFields()
	if err := d.Decode(&p); err != nil {
		if te, ok := err.(*json.UnmarshalTypeError); ok {
			return QuotaPosition{}, &ValidationError{Code: CodeInvalidType, Field: te.Field, Reason: err.Error()}
		}
		if s := err.Error(); strings.HasPrefix(s, "json: unknown field ") {
			field := strings.Trim(strings.TrimPrefix(s, "json: unknown field "), `"`)
			return QuotaPosition{}, &ValidationError{Code: CodeUnknownField, Field: field, Reason: "not in the contract"}
		}
		return QuotaPosition{}, &ValidationError{Code: CodeInvalidField, Field: "published_at", Reason: err.Error()}
	}
	p.PublishedAt = p.PublishedAt.UTC()
	if err := p.Validate(); err != nil {
		return QuotaPosition{}, err
	}
	return p, nil
}
