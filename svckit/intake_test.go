package svckit

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/usagemeter/usagemeter/schemas"
)

// Every shared vector gets the same verdict through Intake as through the
// plain validator when it is routed right; routing faults add their tags.
func TestIntakeAgreesWithVectors(t *testing.T) {
	vectors, err := schemas.TestVectors()
	if err != nil {
		t.Fatal(err)
	}
	in := NewIntake()
	for _, v := range vectors {
		var probe struct {
			TenantID string `json:"tenant_id"`
		}
		_ = json.Unmarshal(v.Bytes(), &probe)
		m := kafka.Message{Key: []byte(probe.TenantID), Value: v.Bytes(), Partition: schemas.PartitionFor(probe.TenantID, 4), Time: time.Now()}
		_, err := in.Decode(m, 4)
		got := ""
		var ve *schemas.ValidationError
		if errors.As(err, &ve) {
			got = ve.Tag()
		} else if err != nil {
			got = "malformed_json"
		}
		if v.Valid() && err != nil {
			t.Errorf("%s: valid vector refused: %v", v.Name, err)
		}
		if !v.Valid() && got != v.Expect && probe.TenantID != "" {
			t.Errorf("%s: tag %q, want %q", v.Name, got, v.Expect)
		}
	}
}

func TestIntakeRoutingAndRecordTime(t *testing.T) {
	in := NewIntake()
	ts := time.Date(2026, 11, 28, 10, 0, 0, 0, time.UTC)
	ev := []byte(`{"id":"e1","tenant_id":"acme","feature_type":"api_calls","quantity":"1","timestamp":"2026-11-28T10:00:00Z"}`)
	p := schemas.PartitionFor("acme", 4)
	cases := []struct {
		name string
		m    kafka.Message
		want schemas.Code
	}{
		{"right", kafka.Message{Key: []byte("acme"), Value: ev, Partition: p, Time: ts}, ""},
		{"keyless", kafka.Message{Value: ev, Partition: p, Time: ts}, schemas.CodeKeyMismatch},
		{"wrong key", kafka.Message{Key: []byte("other"), Value: ev, Partition: p, Time: ts}, schemas.CodeKeyMismatch},
		{"wrong partition", kafka.Message{Key: []byte("acme"), Value: ev, Partition: (p + 1) % 4, Time: ts}, schemas.CodeWrongPartition},
		// Judged against the record's time, not the reader's clock: the
		// same record gets the same verdict whenever it is read.
		{"6 min after its record time", kafka.Message{Key: []byte("acme"), Value: ev, Partition: p, Time: ts.Add(-6 * time.Minute)}, schemas.CodeTimestampTooFarInFuture},
		{"4 min after its record time", kafka.Message{Key: []byte("acme"), Value: ev, Partition: p, Time: ts.Add(-4 * time.Minute)}, ""},
		{"no record time", kafka.Message{Key: []byte("acme"), Value: ev, Partition: p}, ""},
	}
	for _, c := range cases {
		_, err := in.Decode(c.m, 4)
		var ve *schemas.ValidationError
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.want != "" && (!errors.As(err, &ve) || ve.Code != c.want):
			t.Errorf("%s: got %v, want %s", c.name, err, c.want)
		}
	}
}
