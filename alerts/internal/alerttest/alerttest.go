// Package alerttest holds what the alerts tests share: quota states to
// publish and a reader of the whole alert topic.
package alerttest

import (
	"context"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/shopspring/decimal"

	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/testenv"
)

// State returns a valid quota state of the current calendar month.
func State(tenant, meter, plan, usage, limit string) schemas.QuotaState {
	now := time.Now().UTC()
	start := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)
	u, l := decimal.RequireFromString(usage), decimal.RequireFromString(limit)
	s := schemas.QuotaState{TenantID: tenant, FeatureType: meter, Period: start.Format("2006-01"), Plan: plan,
		Usage: u, Limit: l, Remaining: decimal.Max(l.Sub(u), decimal.Zero), OverageUsed: decimal.Max(u.Sub(l), decimal.Zero),
		Level: "ok", PeriodStart: start, PeriodEnd: start.AddDate(0, 1, 0), SourceOffsets: map[int32]int64{0: 1},
		UpdatedAt: now}
	if l.IsNegative() {
		s.Remaining, s.OverageUsed = l, decimal.Zero
	} else if l.IsPositive() {
		s.Percentage = u.Mul(decimal.NewFromInt(100)).Div(l).Truncate(2)
	}
	return s
}

// PublishStates writes states to topic keyed as the aggregator does.
func PublishStates(t testing.TB, broker, topic string, states ...schemas.QuotaState) {
	t.Helper()
	w := &kafka.Writer{Addr: kafka.TCP(broker), Topic: topic, Balancer: &kafka.Murmur2Balancer{},
		RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond}
	defer w.Close()
	for _, s := range states {
		if err := s.Validate(); err != nil {
			t.Fatalf("state %s: %v", s.Key(), err)
		}
		// One write per state keeps their order within a key.
		if err := w.WriteMessages(context.Background(), kafka.Message{Key: []byte(s.Key()), Value: s.AppendJSON(nil)}); err != nil {
			t.Fatalf("publish state: %v", err)
		}
	}
}

// ReadAlerts reads every message on topic (n partitions) up to its end
// offsets now, decoding each; a message that is not a valid alert fails.
func ReadAlerts(t testing.TB, broker, topic string, n int) []schemas.UsageAlert {
	t.Helper()
	ends := testenv.EndOffsets(t, broker, topic, n)
	var out []schemas.UsageAlert
	for p, end := range ends {
		if end == 0 {
			continue
		}
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{broker}, Topic: topic, Partition: p, MaxWait: 100 * time.Millisecond})
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		for {
			m, err := r.FetchMessage(ctx)
			if err != nil {
				t.Fatalf("read %s/%d: %v", topic, p, err)
			}
			a, err := schemas.DecodeUsageAlert(m.Value)
			if err != nil {
				t.Fatalf("%s/%d@%d is not an alert: %v", topic, p, m.Offset, err)
			}
			if string(m.Key) != a.AlertID {
				t.Fatalf("key %q is not the alert id %s", m.Key, a.AlertID)
			}
			out = append(out, a)
			if m.Offset+1 >= end {
				break
			}
		}
		cancel()
		_ = r.Close()
	}
	return out
}

// Lines returns tenant:kind:threshold of each alert, with how often each
// appears.
func Lines(as []schemas.UsageAlert) map[string]int {
	out := map[string]int{}
	for _, a := range as {
		out[a.TenantID+":"+a.FeatureType+":"+a.Kind+":"+a.Threshold.String()]++
	}
	return out
}
