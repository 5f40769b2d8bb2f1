package faults

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/usagemeter/usagemeter/testenv"
)

// eventsPerSecond is the SDK traffic of every case: enough that every
// fault lands mid-batch on every partition, little enough that the two
// cores also run the broker, ClickHouse and both services.
const eventsPerSecond = 1000

// faultCase is one row of the report.
type faultCase struct {
	name string
	// engines returns the engines the case runs on: the shared private
	// ones, or its own when it restarts one.
	engines func(t *testing.T, shared engines) (engines, restarter)
	// aggregators is the number of usage-aggregator members (default 1).
	aggregators int
	// tenants of the SDK traffic (default allTenants).
	tenants []string
	// dupEvery republishes every n-th SDK batch at once (0: never).
	dupEvery int
	// inject runs the faults while traffic flows, measuring the recovery
	// from each with run.recovered; an error ends the fault sequence (the
	// exact-totals check still runs).
	inject func(t *testing.T, c *run) error
}

// restarter stops and starts an engine the case owns.
type restarter interface {
	Stop()
	Start()
}

// run is one case in progress.
type run struct {
	p          *pipeline
	load       *load
	engine     restarter // the engine the case owns, if any
	q          *quotaFollower
	faults     int
	recoveries []time.Duration // of the faults recovered from
}

// recovered waits until both services have caught up after a fault at
// from, records the time and fails when it is over limit.
func (c *run) recovered(from time.Time, limit time.Duration, what string) error {
	d, err := c.p.waitCaughtUp(from, limit)
	c.faults++
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	c.recoveries = append(c.recoveries, d)
	c.p.t.Logf("%s: caught up in %s", what, seconds(d))
	return nil
}

// result is what the report says about one case.
type result struct {
	name          string
	faults        int
	messages      int // in usage.events: SDK events, retries and refused ones
	counted       int // distinct countable events
	refused       int
	rawRows       int
	lost, double  int64 // the worst sink
	exact         bool  // every sink equal to the independent count to the last digit
	recover       time.Duration
	converge      time.Duration
	pass          bool
	failedBecause string
}

func (r result) line() string {
	verdict := "PASS"
	if !r.pass {
		verdict = "FAIL: " + r.failedBecause
	}
	ex := "exact"
	if !r.exact {
		ex = "NOT exact"
	}
	return fmt.Sprintf("%s: %d faults, %d messages in, %d events counted, %d refused, %d raw rows out, lost %d, double counted %d, totals %s, recover %s s, converge %s s: %s",
		r.name, r.faults, r.messages, r.counted, r.refused, r.rawRows, r.lost, r.double, ex, seconds(r.recover), seconds(r.converge), verdict)
}

func table(results []result) string {
	var b strings.Builder
	b.WriteString("| case | faults | messages in | events counted | refused to DLQ | raw rows out | lost | double counted | raw + 4 aggregates + quota | recover (s, slowest fault) | converge (s, after traffic) | result |\n")
	b.WriteString("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- |\n")
	for _, r := range results {
		ex, verdict := "exact", "pass"
		if !r.exact {
			ex = "**not exact**"
		}
		if !r.pass {
			verdict = "**fail**: " + strings.ReplaceAll(clip(r.failedBecause, 200), "|", "/")
		}
		fmt.Fprintf(&b, "| %s | %d | %d | %d | %d | %d | %d | %d | %s | %s | %s | %s |\n", r.name, r.faults, r.messages,
			r.counted, r.refused, r.rawRows, r.lost, r.double, ex, seconds(r.recover), seconds(r.converge), verdict)
	}
	return b.String()
}

// TestFaults runs every case in turn against one private broker and one
// private ClickHouse server (cases that restart an engine get their own),
// prints one summary line per case and the results table, and writes the
// table to $USAGE_FAULTS_RESULTS when it is set.
func TestFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("fault suite skipped in -short mode")
	}
	start := time.Now()
	bins := buildBinaries(t)
	shared := engines{broker: testenv.StartKafka(t).Addr, clickhouse: testenv.StartClickHouse(t).Addr}
	t.Logf("binaries built and engines started in %s", seconds(time.Since(start)))
	var results []result
	for _, fc := range cases() {
		t.Run(fc.name, func(t *testing.T) {
			r := result{name: fc.name}
			defer func() {
				r.pass = !t.Failed()
				t.Log(r.line())
				results = append(results, r)
			}()
			runCase(t, fc, bins, shared, &r)
		})
	}
	out := table(results)
	t.Logf("fault suite, %s in all:\n%s", seconds(time.Since(start)), out)
	if path := os.Getenv("USAGE_FAULTS_RESULTS"); path != "" {
		if err := os.WriteFile(path, []byte(out), 0o644); err != nil {
			t.Error(err)
		}
	}
}

func runCase(t *testing.T, fc faultCase, bins binaries, shared engines, r *result) {
	eng, own := shared, restarter(nil)
	if fc.engines != nil {
		eng, own = fc.engines(t, shared)
	}
	p := newPipeline(t, bins, eng)
	defer func() {
		if t.Failed() {
			p.logProblems()
		}
	}()
	p.startConsumer()
	for range max(1, fc.aggregators) {
		p.startAggregator()
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	q := followQuota(ctx, &wg, eng.broker, p.quota)
	t.Cleanup(func() { cancel(); wg.Wait() })

	tenantSet := fc.tenants
	if tenantSet == nil {
		tenantSet = allTenants()
	}
	l, err := newLoad(eng.broker, p.topic, p.db, tenantSet, eventsPerSecond)
	if err != nil {
		t.Fatal(err)
	}
	l.dupEvery = fc.dupEvery
	l.start()
	loadStopped := false
	defer func() {
		if !loadStopped {
			_ = l.stop()
		}
	}()
	// Both services must have joined and caught up once before the first
	// fault, or the fault would hit a start-up instead.
	time.Sleep(time.Second)
	if _, err := p.waitCaughtUp(time.Now(), 60*time.Second); err != nil {
		t.Fatalf("start-up: %v", err)
	}
	c := &run{p: p, load: l, engine: own, q: q}
	injectErr := fc.inject(t, c)
	r.faults = c.faults
	for _, d := range c.recoveries {
		r.recover = max(r.recover, d)
	}
	if injectErr != nil {
		t.Error(injectErr)
		r.failedBecause = firstLine(injectErr.Error())
	}
	time.Sleep(time.Second) // traffic after the last recovery
	loadStopped = true
	if err := l.stop(); err != nil {
		t.Errorf("SDK traffic: %v", err)
	}
	finish(t, p, q, l, r, injectErr != nil)
}

// finish is the exact-totals check every case ends with.
func finish(t *testing.T, p *pipeline, q *quotaFollower, l *load, r *result, failedAlready bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	msgs, err := readAll(ctx, p.eng.broker, p.topic)
	if err != nil {
		t.Fatalf("read back usage.events: %v", err)
	}
	e, err := expect(msgs)
	if err != nil {
		t.Fatalf("independent count: %v", err)
	}
	r.messages, r.counted, r.refused = e.messages, len(e.ids), len(e.refused)
	for _, ev := range l.ackedSlice(0, l.ackedCount()) {
		if !e.ids[ev.TenantID+"/"+ev.ID] {
			t.Fatalf("acknowledged SDK event %s/%s is not in usage.events", ev.TenantID, ev.ID)
		}
	}
	limit := 60 * time.Second
	if failedAlready {
		limit = 15 * time.Second // a stuck service will not converge: report sooner
	}
	took, gaps, convErr := p.converge(e, q, limit)
	r.converge = took
	for _, g := range gaps {
		r.lost, r.double = max(r.lost, g.lost), max(r.double, g.double)
	}
	r.exact = convErr == nil
	if convErr != nil {
		t.Error(convErr)
		if r.failedBecause == "" {
			r.failedBecause = firstLine(convErr.Error())
		}
		r.converge = 0
	}
	lost, extra, twice, err := p.rawIDs(ctx, e)
	if err != nil {
		t.Error(err)
	}
	rows, _ := testenv.CountRows(ctx, p.conn, "FROM usage_events FINAL")
	r.rawRows = int(rows)
	r.lost, r.double = max(r.lost, int64(lost)), max(r.double, int64(extra+twice))
	if lost+extra+twice > 0 {
		t.Errorf("raw table by id: %d lost, %d counted but refused or unknown, %d stored twice", lost, extra, twice)
	}
	for _, err := range p.checkDLQ(ctx, e) {
		t.Error(err)
		if r.failedBecause == "" {
			r.failedBecause = err.Error()
		}
	}
	if n := q.invalid(); n > 0 {
		t.Errorf("%d quota-state messages are not valid QuotaStates", n)
	}
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

// cases are the fault cases of issue 6, in order, and one more.
func cases() []faultCase {
	return []faultCase{
		{name: "1 consumer SIGKILL x3", inject: killConsumer(3)},
		{name: "2 aggregator SIGKILL x3", inject: killAggregator(3)},
		{name: "3 two aggregators, one SIGKILLed", aggregators: 2, inject: killOneOfTwo},
		{name: "4 broker restart", engines: ownKafka, inject: restartEngine("broker", 12*time.Second)},
		{name: "5 ClickHouse restart", engines: ownClickHouse, inject: restartEngine("ClickHouse", 12*time.Second)},
		{name: "6 keyless, wrong key, kcat CRC32", inject: misroutedPublishers},
		{name: "7 producer retries + consumer SIGKILL", dupEvery: 5, inject: republish},
		{name: "8 quantity overflow attempt", tenants: append(allTenants(), "whale"), inject: overflow},
		// Beyond the list: a member that is not dead but frozen
		// (issue 6 item 7, versions from the writer's clock).
		{name: "9 aggregator frozen past its session, then resumed", aggregators: 2, inject: frozenMemberPublishesNothingStale},
		// Issue 13 item 4 (aggregator_cases_test.go).
		{name: "10 plan change while two aggregators run", aggregators: 2, inject: planChangeWithTwoMembers},
		// Issue 13 item 10 (cases_test.go).
		{name: "11 host 2 h ahead (record CreateTime), LogAppendTime topic", inject: skewedHost},
	}
}
