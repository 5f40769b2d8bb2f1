package service

import (
	"strings"
	"testing"
	"time"
)

func TestRetentionGap(t *testing.T) {
	for _, c := range []struct{ ckpt, first, want int64 }{
		{-1, 0, 0},   // new group
		{-1, 500, 0}, // new group on a topic whose head was deleted: starts at the first offset by design
		{99, 100, 0}, // resumes exactly at the first offset
		{99, 50, 0},  // the head is still there
		{99, 130, 30},
	} {
		if got := retentionGap(c.ckpt, c.first); got != c.want {
			t.Errorf("checkpoint %d, first offset %d: gap %d, want %d", c.ckpt, c.first, got, c.want)
		}
	}
}

func TestConfigNamesTheBadKey(t *testing.T) {
	c := DefaultConfig()
	c.SessionTimeout = time.Second
	c.OnRetentionGap = "ignore"
	err := c.Validate()
	if err == nil || !strings.Contains(err.Error(), "aggregator.session_timeout") || !strings.Contains(err.Error(), "aggregator.on_retention_gap") {
		t.Fatalf("Validate: %v", err)
	}
}
