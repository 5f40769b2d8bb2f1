package quota_test

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/shopspring/decimal"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/usagemeter/usagemeter/quota"
	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/schemas/plans"
	"github.com/usagemeter/usagemeter/testenv"
)

// TestGrantWithRealAggregator: a FREE tenant at its limit gets 402; after a
// one-off grant of +10 for this period (an assignment record, as the admin
// page publishes it) a second, independent cache sees the limit 60 within a
// second, the app serves exactly 10 more and then 402 again, the real
// aggregator's published state carries limit 60, and a cache living in the
// next period sees the plan's 50.
func TestGrantWithRealAggregator(t *testing.T) {
	broker := testenv.Kafka(t)
	tp := newTopics(t, broker)
	startAggregator(t, tp)
	c := startCache(t, tp, zaptest.NewLogger(t), nil)
	other := startCache(t, tp, zap.NewNop(), nil)
	a := newApp(t, c, newPublisher(t, tp), "ai_generation")
	ctx := context.Background()
	const tenant = "grant-free"

	for i := 1; i <= 50; i++ {
		if res, _ := a.call(t, tenant, ""); res.StatusCode != 200 {
			t.Fatalf("request %d: %s", i, res.Status)
		}
	}
	if res, _ := a.call(t, tenant, ""); res.StatusCode != http.StatusPaymentRequired {
		t.Fatalf("51st before the grant: %s", res.Status)
	}
	testenv.Eventually(t, 30*time.Second, "aggregated usage 50", func() (bool, error) {
		d := c.Peek(ctx, tenant, "ai_generation")
		return d.Usage.Cmp(quota.Units(50)) == 0 && d.Pending.IsZero(), fmt.Errorf("%+v", d)
	})

	now := time.Now().UTC()
	period := plans.PeriodOf(plans.Quota{Period: plans.CalendarMonth}, 0, now)
	grant := &plans.Assignment{Plan: "FREE", Version: now.Unix(), Grants: &plans.Grants{List: []plans.Grant{
		{Meter: "ai_generation", Period: period.ID, Amount: decimal.NewFromInt(10)}}}}
	k, v := plans.AssignmentRecord(tenant, grant)
	produce(t, broker, tp.assign, 0, k, v)
	sent := time.Now()
	for other.Peek(ctx, tenant, "ai_generation").Limit.Cmp(quota.Units(60)) != 0 {
		if time.Since(sent) > time.Second {
			t.Fatalf("the other cache's limit a second after the grant: %+v", other.Peek(ctx, tenant, "ai_generation"))
		}
		time.Sleep(10 * time.Millisecond)
	}
	testenv.Eventually(t, 5*time.Second, "the app's cache sees the grant", func() (bool, error) {
		return c.Peek(ctx, tenant, "ai_generation").Limit.Cmp(quota.Units(60)) == 0, nil
	})

	served := 0
	for i := 0; i < 11; i++ {
		res, body := a.call(t, tenant, "")
		if res.StatusCode == 200 {
			served++
			continue
		}
		q, _ := body["quota"].(map[string]any)
		if res.StatusCode != http.StatusPaymentRequired || q["limit"] != "60" {
			t.Fatalf("after %d granted: %s %v", served, res.Status, body)
		}
	}
	if served != 10 {
		t.Fatalf("served %d after a grant of 10, want exactly 10", served)
	}

	// The aggregator's own state: limit 60, at_limit, nothing remaining.
	testenv.Eventually(t, 30*time.Second, "the aggregator publishes usage 60 of 60", func() (bool, error) {
		s, err := newestState(ctx, broker, tp.state, schemas.QuotaStateKey(tenant, "ai_generation", period.ID))
		if err != nil || s == nil {
			return false, err
		}
		ok := s.Usage.Equal(decimal.NewFromInt(60)) && s.Limit.Equal(decimal.NewFromInt(60)) &&
			s.Remaining.IsZero() && s.Level == plans.LevelAtLimit
		return ok, fmt.Errorf("state usage %s limit %s remaining %s level %s", s.Usage, s.Limit, s.Remaining, s.Level)
	})

	// The grant is this period's only: a cache in the next period has 50.
	next := time.Date(period.End.Year(), period.End.Month(), 1, 0, 0, 5, 0, time.UTC)
	nc := startCache(t, tp, zap.NewNop(), nil, quota.WithClock(func() time.Time { return next }))
	if d := nc.Peek(ctx, tenant, "ai_generation"); d.Limit.Cmp(quota.Units(50)) != 0 || d.Period == period.ID {
		t.Fatalf("next period: %+v", d)
	}
}

// newestState reads the quota-state topic to its end and returns the last
// state whose key is key (nil when none).
func newestState(ctx context.Context, broker, topic, key string) (*schemas.QuotaState, error) {
	var out *schemas.QuotaState
	for p := 0; p < 4; p++ {
		conn, err := kafka.DialLeader(ctx, "tcp", broker, topic, p)
		if err != nil {
			return nil, err
		}
		end, err := conn.ReadLastOffset()
		if err == nil {
			_, err = conn.Seek(0, kafka.SeekAbsolute)
		}
		for off := int64(0); err == nil && off < end; {
			_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			var m kafka.Message
			if m, err = conn.ReadMessage(10 << 20); err == nil {
				off = m.Offset + 1
				if string(m.Key) == key && len(m.Value) > 0 {
					s, derr := schemas.DecodeQuotaState(m.Value)
					if derr != nil {
						err = derr
					} else {
						out = &s
					}
				}
			}
		}
		conn.Close()
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}
