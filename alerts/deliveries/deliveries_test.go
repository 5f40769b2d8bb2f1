package deliveries

import (
	"strings"
	"testing"
)

// The SQL is parameterised: ids and endpoints never reach the text.
func TestQueriesAreParameterised(t *testing.T) {
	hostile := `x' OR 1=1 --`
	sql, args := deliveredQuery{AlertID: hostile, Endpoint: hostile}.toSQL()
	if strings.Contains(sql, hostile) || len(args) != 3 || args[0] != hostile || args[2] != OK {
		t.Fatalf("%s %v", sql, args)
	}
	ins, _ := insertQuery{}.toSQL()
	if strings.Count(ins, ",")+1 != 13 {
		t.Fatalf("insert names %d columns, want 13: %s", strings.Count(ins, ",")+1, ins)
	}
}
