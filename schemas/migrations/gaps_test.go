package migrations

import (
	"context"
	"slices"
	"strings"
	"testing"
)

// recordingConn pretends some versions are applied and records what runs.
type recordingConn struct {
	applied map[uint32]string // version -> checksum
	ran     []string
}

func (c *recordingConn) Exec(_ context.Context, query string, args ...any) error {
	if strings.HasPrefix(query, "INSERT INTO schema_migrations") {
		c.applied[args[0].(uint32)] = args[2].(string)
	}
	c.ran = append(c.ran, query)
	return nil
}

func (c *recordingConn) Select(_ context.Context, dest any, _ string, _ ...any) error {
	rows := dest.(*[]applied)
	for v, sum := range c.applied {
		*rows = append(*rows, applied{Version: v, Checksum: sum})
	}
	return nil
}

// Components number their migrations in reserved ranges (billing-sync uses
// 0010 and up), so numbers may have gaps, and a lower number may arrive
// after a higher one was applied: both must apply, each exactly once.
func TestGapsAndLateLowerNumbers(t *testing.T) {
	ms, err := All()
	if err != nil {
		t.Fatal(err)
	}
	var versions []uint32
	for _, m := range ms {
		versions = append(versions, m.Version)
	}
	if !slices.Contains(versions, 10) {
		t.Fatalf("0010 not embedded: %v", versions)
	}
	// Everything applied except the lowest one above 1: it arrives late.
	conn := &recordingConn{applied: map[uint32]string{}}
	var late Migration
	for _, m := range ms {
		if m.Version != 1 && late.Version == 0 {
			late = m
			continue
		}
		conn.applied[m.Version] = m.Checksum
	}
	ran, err := Apply(context.Background(), conn)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ran, []uint32{late.Version}) {
		t.Fatalf("applied %v, want only the late %04d", ran, late.Version)
	}
	if ran, err = Apply(context.Background(), conn); err != nil || len(ran) != 0 {
		t.Fatalf("second Apply ran %v (%v), want nothing", ran, err)
	}
}
