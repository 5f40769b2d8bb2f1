package service

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/shopspring/decimal"

	"github.com/usagemeter/usagemeter/schemas"
	"github.com/usagemeter/usagemeter/testenv"
)

// TestPositionsFollowTheirStates: every QuotaPosition the aggregator
// publishes is a true promise at the moment a reader sees it: the quota
// states already on the topic reflect every counted event of its partition
// up to applied_through, while traffic keeps keys dirty (coalescing) and
// duplicates and invalid records are applied but count nothing. At the
// end each partition's position reaches its last offset.
func TestPositionsFollowTheirStates(t *testing.T) {
	if testing.Short() {
		t.Skip("needs Kafka and ClickHouse")
	}
	e := setupEnv(t, true)
	e.startAggregator(nil)
	tenants := []string{"acme", "globex", "initech", "umbrella", "hooli", "stark"}
	now := time.Now().UTC()

	type seen struct {
		pos    schemas.QuotaPosition
		states map[string]map[string]any
	}
	var observed []seen
	done := make(chan struct{})
	obs := make(chan []seen, 1)
	go func() {
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{e.broker}, Topic: e.cfg.PositionTopic, Partition: 0, MaxWait: 20 * time.Millisecond})
		defer r.Close()
		var out []seen
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			m, err := r.ReadMessage(ctx)
			cancel()
			if err != nil {
				select {
				case <-done:
					obs <- out
					return
				default:
					continue
				}
			}
			p, err := schemas.DecodeQuotaPosition(m.Value)
			if err != nil {
				t.Errorf("position record %q: %v", m.Value, err)
				continue
			}
			st, _ := latestStates(t, e.broker, e.cfg.QuotaTopic)
			out = append(out, seen{p, st})
		}
	}()

	var ids []string
	for round := range 12 {
		var msgs []kafka.Message
		for i := range 40 {
			ev := schemas.UsageEvent{ID: schemas.NewID(), TenantID: tenants[(round+i)%len(tenants)], FeatureType: "api_calls",
				Quantity: decimal.NewFromInt(1), Timestamp: now, SchemaVersion: schemas.CurrentSchemaVersion}
			msgs = append(msgs, eventMsg(&ev))
			ids = append(ids, ev.ID)
			if i%10 == 0 && len(ids) > 5 { // a retry of an id already published: applied, counts nothing
				dup := ev
				dup.ID = ids[len(ids)-5]
				msgs = append(msgs, eventMsg(&dup))
			}
		}
		msgs = append(msgs, kafka.Message{Key: []byte("acme"), Value: []byte(`{"not":"an event"}`)})
		e.publish(msgs)
		time.Sleep(60 * time.Millisecond)
	}
	// Wait until every partition's position is at its last offset.
	ends := testenv.EndOffsets(t, e.broker, e.cfg.Topic, 4)
	testenv.Eventually(t, 30*time.Second, "positions at the end of every partition", func() (bool, error) {
		got := map[int32]int64{}
		for _, m := range testenv.ReadN(t, e.broker, e.cfg.PositionTopic, int(testenv.EndOffsets(t, e.broker, e.cfg.PositionTopic, 1)[0])) {
			p, err := schemas.DecodeQuotaPosition(m.Value)
			if err != nil {
				return false, err
			}
			got[p.Partition] = max(got[p.Partition], p.AppliedThrough)
		}
		for p, end := range ends {
			if end > 0 && got[int32(p)] != end-1 {
				return false, nil
			}
		}
		return true, nil
	})
	close(done)
	observed = <-obs

	// The independent count: each distinct id at or below an offset, per
	// tenant, from the records in the topic.
	type rec struct {
		tenant string
		offset int64
		id     string
		valid  bool
	}
	byPart := map[int32][]rec{}
	for p, end := range ends {
		if end == 0 {
			continue
		}
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{e.broker}, Topic: e.cfg.Topic, Partition: p, MaxWait: 50 * time.Millisecond})
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		for {
			m, err := r.ReadMessage(ctx)
			if err != nil {
				t.Fatal(err)
			}
			var v struct {
				ID       string `json:"id"`
				TenantID string `json:"tenant_id"`
			}
			valid := json.Unmarshal(m.Value, &v) == nil && v.TenantID != ""
			byPart[int32(p)] = append(byPart[int32(p)], rec{v.TenantID, m.Offset, v.ID, valid})
			if m.Offset+1 >= end {
				break
			}
		}
		cancel()
		r.Close()
	}
	if len(observed) == 0 {
		t.Fatal("no position was published")
	}
	checked := 0
	for _, o := range observed {
		want := map[string]int{}
		ids := map[string]bool{}
		for _, r := range byPart[o.pos.Partition] {
			if r.offset > o.pos.AppliedThrough || !r.valid || ids[r.id] {
				continue
			}
			ids[r.id] = true
			want[r.tenant]++
		}
		for tenant, n := range want {
			key := schemas.QuotaStateKey(tenant, "api_calls", now.Format("2006-01"))
			st := o.states[key]
			got := "none"
			if st != nil {
				got = fmt.Sprint(st["usage"])
			}
			if u, err := decimal.NewFromString(got); err != nil || u.LessThan(decimal.NewFromInt(int64(n))) {
				t.Errorf("position %d@%d seen while %s's state showed %s, want >= %d (its events up to that offset)",
					o.pos.Partition, o.pos.AppliedThrough, tenant, got, n)
			}
			checked++
		}
	}
	t.Logf("%d positions observed, %d tenant states checked against them", len(observed), checked)
}
