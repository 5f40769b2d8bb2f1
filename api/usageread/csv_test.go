package usageread

import (
	"bytes"
	"encoding/csv"
	"slices"
	"testing"
	"time"
)

// TestWriteCSVNeutralisesFormulas: a group (a user id or metadata value,
// tenant text) that a spreadsheet would read as a formula gets a leading
// single quote (OWASP CSV injection); numbers and our own columns are left
// as they are.
func TestWriteCSVNeutralisesFormulas(t *testing.T) {
	w := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	groups := []struct{ in, want string }{
		{`=HYPERLINK("http://x.invalid","y")`, `'=HYPERLINK("http://x.invalid","y")`},
		{"+1+2", "'+1+2"},
		{"-2+3+cmd|' /C calc'!A0", "'-2+3+cmd|' /C calc'!A0"},
		{"@SUM(A1)", "'@SUM(A1)"},
		{"\t=1", "'\t=1"},
		{"\r=1", "'\r=1"},
		{"u1", "u1"},
		{"a=1", "a=1"}, // only the first character makes a formula
		{"'quoted", "'quoted"},
		{"", ""},
	}
	var rows []Row
	for _, g := range groups {
		rows = append(rows, Row{Window: w, Meter: "api_calls", Aggregation: "sum", Group: g.in, Value: "-1.5", Events: 3})
	}
	var buf bytes.Buffer
	if err := WriteCSV(&buf, rows, true); err != nil {
		t.Fatal(err)
	}
	got, err := csv.NewReader(&buf).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(groups)+1 || !slices.Equal(got[0], CSVHeader) {
		t.Fatalf("csv: %q", got)
	}
	for i, g := range groups {
		want := []string{"2026-11-01T00:00:00Z", "api_calls", "sum", g.want, "-1.5", "3"}
		if !slices.Equal(got[i+1], want) {
			t.Errorf("group %q: got %q, want %q", g.in, got[i+1], want)
		}
	}
}
