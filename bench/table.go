package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
)

// printTable renders the records of a results file as the README's
// markdown table: one row per record at or after since (RFC 3339, "" for
// all), in file order. A run that failed is a row saying how.
func printTable(path, since string, w io.Writer) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("results: %w", err)
	}
	defer f.Close()
	fmt.Fprintln(w, "| run (UTC) | what | events / tenants | events/s | CPU µs/event: consumer / aggregator / ClickHouse (work total) | broker, publisher µs/event | RSS max MB: consumer / aggregator / ClickHouse | freshness p50 / p99 at 10k/s (to a quota cache decision) | exact after duplicates and a server restart | load avg (1 min) start → end |")
	fmt.Fprintln(w, "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var r Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return fmt.Errorf("results line %q: %w", sc.Text(), err)
		}
		if r.Time < since { // RFC 3339 UTC times sort as text
			continue
		}
		if r.Error != "" {
			fmt.Fprintf(w, "| %s | %s | %d / %d | did not finish: %s | | | | | | %.1f → %.1f |\n",
				strings.TrimSuffix(strings.Replace(r.Time, "T", " ", 1), "Z"), r.Mode, r.Events, r.Tenants,
				strings.ReplaceAll(r.Error, "|", "/"), r.LoadStart[0], r.LoadEnd[0])
			continue
		}
		p := r.Processes
		what := map[string]string{"pipeline": "ours: SDK → Kafka → usage-consumer + usage-aggregator → ClickHouse + quota state",
			"chkafka": "ClickHouse `Kafka` engine → MVs → ReplacingMergeTree + SummingMergeTree"}[r.Mode]
		cpu := fmt.Sprintf("%s / %s / %.2f (%.2f)", opt(p, "usage-consumer", true), opt(p, "usage-aggregator", true),
			p["clickhouse-server"].CPUUsPerEvent, r.CPUPerEvent)
		rss := fmt.Sprintf("%s / %s / %.0f", opt(p, "usage-consumer", false), opt(p, "usage-aggregator", false), p["clickhouse-server"].RSSMaxMB)
		fresh := "–"
		if r.Freshness != nil {
			fresh = fmt.Sprintf("%.0f / %.0f ms", r.Freshness.P50ms, r.Freshness.P99ms)
		}
		rate := fmt.Sprintf("%.0fk", r.EventsPerS/1000)
		if pub, ok := r.Phases["published"]; ok {
			rate += fmt.Sprintf(" (%.2f s; last publish at %.2f s)", r.Seconds, pub)
		}
		fmt.Fprintf(w, "| %s | %s | %d / %d | %s | %s | %.2f, %.2f | %s | %s | %s | %.1f → %.1f |\n",
			strings.TrimSuffix(strings.Replace(r.Time, "T", " ", 1), "Z"), what, r.Events, r.Tenants, rate, cpu,
			p["kafka broker"].CPUUsPerEvent, p["publisher (SDK, this process)"].CPUUsPerEvent, rss, fresh, exactness(r.Exactness),
			r.LoadStart[0], r.LoadEnd[0])
	}
	return sc.Err()
}

func opt(p map[string]ProcFigures, name string, cpu bool) string {
	f, ok := p[name]
	switch {
	case !ok:
		return "–"
	case cpu:
		return fmt.Sprintf("%.2f", f.CPUUsPerEvent)
	default:
		return fmt.Sprintf("%.0f", f.RSSMaxMB)
	}
}

// exactness summarises the checks: the ones that failed, or "yes".
func exactness(cs []Check) string {
	if len(cs) == 0 {
		return "not checked"
	}
	var bad []string
	for _, c := range cs {
		if !c.Exact {
			bad = append(bad, fmt.Sprintf("%s after %s: %s instead of %s", c.What, c.After, c.Got, c.Expected))
		}
	}
	if len(bad) == 0 {
		return fmt.Sprintf("yes (%d checks)", len(cs))
	}
	if len(bad) > 2 {
		bad = append(bad[:2], fmt.Sprintf("%d more", len(bad)-2))
	}
	return "**no**: " + strings.Join(bad, "; ")
}
