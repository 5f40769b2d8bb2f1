package aggstore

import (
	"strings"
	"testing"
	"time"

	"github.com/usagemeter/usagemeter/aggregator/state"
)

type toSQLer interface{ toSQL() (string, []any) }

func TestQueriesAreParameterised(t *testing.T) {
	from := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	key := state.Key{Tenant: "a'; DROP TABLE x --", Meter: "m", Subject: "s", Grain: state.Hour, Start: from.Unix()}
	for _, c := range []struct {
		q    toSQLer
		want []string
	}{
		{rowsQuery{Grain: state.Hour, Key: &key}, []string{"FROM usage_1h FINAL", "tenant_id = ?", "window_start = ?"}},
		{rowsQuery{Grain: state.Period, Since: from, Partitions: []int32{1, 3}}, []string{"FROM usage_period FINAL", "period_end > ?", "has(?, source_partition)"}},
		{rowsQuery{Grain: state.Minute, Since: from, Partitions: []int32{0}}, []string{"FROM usage_1m FINAL", "window_start > ?", "has(?, source_partition)"}},
		{rangeQuery{Grain: state.Day, From: from, To: from.AddDate(0, 1, 0)}, []string{"FROM usage_1d FINAL", "window_start >= ? AND window_start < ?"}},
		{rangeQuery{Grain: state.Period, From: from, To: from.AddDate(0, 1, 0)}, []string{"period_start < ? AND period_end > ?"}},
		{checkpointsQuery{"g", "t"}, []string{"FROM aggregator_checkpoints FINAL", "consumer_group = ? AND topic = ?"}},
	} {
		sql, args := c.q.toSQL()
		if strings.Count(sql, "?") != len(args) {
			t.Errorf("%d placeholders, %d args:\n%s", strings.Count(sql, "?"), len(args), sql)
		}
		if strings.Contains(sql, "DROP") {
			t.Errorf("user input in SQL text:\n%s", sql)
		}
		for _, w := range c.want {
			if !strings.Contains(sql, w) {
				t.Errorf("missing %q in:\n%s", w, sql)
			}
		}
	}
}

// A late flush by a partition's previous owner must lose to the new
// owner's row in FINAL, whatever the clocks; reconcile's repair must win
// over the row it replaces and lose to the aggregator's next write.
func TestVersionsFollowTheData(t *testing.T) {
	stored := &state.Row{Offset: 100, Version: RowVersion(&state.Row{Offset: 100})}
	oldOwnerLate := RowVersion(&state.Row{Offset: 120, Version: stored.Version})
	newOwner := RowVersion(&state.Row{Offset: 150, Version: stored.Version})
	if oldOwnerLate >= newOwner {
		t.Fatalf("old owner's late write (offset 120) version %d >= new owner's (offset 150) %d", oldOwnerLate, newOwner)
	}
	repair := RepairVersion(&state.Row{Offset: 150, Version: newOwner})
	if repair <= newOwner {
		t.Fatalf("repair version %d <= the row it replaces %d", repair, newOwner)
	}
	next := RowVersion(&state.Row{Offset: 151, Version: repair})
	if next <= repair {
		t.Fatalf("aggregator write after a repair: version %d <= repair %d", next, repair)
	}
	// A tenant moved to another partition (lower offsets) still moves forward.
	moved := RowVersion(&state.Row{Offset: 3, Version: next})
	if moved <= next {
		t.Fatalf("row fed from a new partition: version %d <= %d", moved, next)
	}
}
