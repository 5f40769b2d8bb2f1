package migrations

import (
	"strings"
	"testing"
)

func TestAllOrderedAndSingleStatement(t *testing.T) {
	ms, err := All()
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) < 2 || ms[0].Version != 1 || ms[0].Name != "usage_events" {
		t.Fatalf("unexpected migrations: %+v", ms)
	}
	for i, m := range ms {
		if i > 0 && m.Version <= ms[i-1].Version {
			t.Errorf("%04d not after %04d", m.Version, ms[i-1].Version)
		}
		// clickhouse-go executes one statement per call.
		var code []string
		for _, line := range strings.Split(m.SQL, "\n") {
			if !strings.HasPrefix(strings.TrimSpace(line), "--") {
				code = append(code, line)
			}
		}
		if strings.Contains(strings.TrimSuffix(strings.Join(code, "\n"), ";"), ";") {
			t.Errorf("%04d_%s holds more than one statement", m.Version, m.Name)
		}
		for _, banned := range []string{"DateTime64", "LowCardinality", " TTL ", "CODEC(", "Map("} {
			if strings.Contains(m.SQL, banned) {
				t.Errorf("%04d_%s uses %s, which ClickHouse 18.16 lacks", m.Version, m.Name, banned)
			}
		}
	}
}

func TestCreateDatabaseSQL(t *testing.T) {
	if q, err := CreateDatabaseSQL("usage_test_1"); err != nil || q != "CREATE DATABASE IF NOT EXISTS `usage_test_1`" {
		t.Fatalf("%q %v", q, err)
	}
	for _, bad := range []string{"", "a`b", "x; DROP TABLE y", "1abc", strings.Repeat("a", 65)} {
		if _, err := CreateDatabaseSQL(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
