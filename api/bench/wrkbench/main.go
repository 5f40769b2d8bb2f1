// Command wrkbench measures usage-api's POST /v1/check under wrk beside the
// floor this machine gives any Go HTTP server: a bare net/http handler that
// reads the same request body and writes the same answer (status, headers
// and body bytes captured from usage-api), with usage-api's server
// timeouts. Both are driven by the same wrk command (same script, -c, -t,
// duration), interleaved in pairs, and each run's figures are printed and
// appended as one JSON record.
//
//	wrkbench --api 127.0.0.1:9479 --api-pid PID [--pairs 3] [--out .cache/bench/api.jsonl]
//	         [--batch-script api/bench/batch.lua]   # a third row: /v1/check/batch, 10 checks a call
//	wrkbench floor --addr 127.0.0.1:9478 --answer FILE   # the floor alone (wrkbench starts it)
//	wrkbench --table .cache/bench/api.jsonl              # the README's table from the records
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "topics" {
		if err := topicsMain(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "wrkbench topics:", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) > 1 && os.Args[1] == "floor" {
		if err := floorMain(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "wrkbench floor:", err)
			os.Exit(1)
		}
		return
	}
	if err := runMain(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "wrkbench:", err)
		os.Exit(1)
	}
}

// answer is what usage-api said to the first request: the floor writes it
// byte for byte, so both servers put the same bytes on the wire.
type answer struct {
	Status int                 `json:"status"`
	Header map[string][]string `json:"header"`
	Body   []byte              `json:"body"`
}

// Server timeouts: usage-api's defaults (api/cmd/usage-api, http.*).
func newServer(h http.Handler) *http.Server {
	return &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
		WriteTimeout: 30 * time.Second, IdleTimeout: 2 * time.Minute}
}

// floorMain serves the bare handler: read the body as usage-api does (a
// 16 KiB MaxBytesReader, io.ReadAll), write the captured answer.
func floorMain(args []string) error {
	fs := flag.NewFlagSet("floor", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:9478", "listen address")
	path := fs.String("answer", "", "JSON file with the answer to write (status, header, body)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	raw, err := os.ReadFile(*path)
	if err != nil {
		return fmt.Errorf("answer: %w", err)
	}
	var a answer
	if err := json.Unmarshal(raw, &a); err != nil {
		return fmt.Errorf("answer %s: %w", *path, err)
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	return newServer(floorHandler(a)).Serve(ln)
}

// floorHandler reads the body and writes a, nothing else.
func floorHandler(a answer) http.Handler {
	a.Header["Content-Length"] = []string{strconv.Itoa(len(a.Body))}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 16<<10)); err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		wh := w.Header()
		for k, v := range a.Header {
			wh[k] = v
		}
		w.WriteHeader(a.Status)
		_, _ = w.Write(a.Body)
	})
}

// record is one wrk run against one server.
type record struct {
	Time        string  `json:"time"`
	Commit      string  `json:"commit,omitempty"`
	Label       string  `json:"label,omitempty"`
	Server      string  `json:"server"` // usage-api | floor | usage-api batch
	Pair        int     `json:"pair"`
	Wrk         string  `json:"wrk"`
	AnswerBytes int     `json:"answer_bytes"`
	Requests    int64   `json:"requests"`
	ReqPerSec   float64 `json:"req_per_s"`
	// ChecksPerReq: decisions per request (1; the batch size for batches).
	ChecksPerReq int     `json:"checks_per_req"`
	ChecksPerSec float64 `json:"checks_per_s"`
	P50ms        float64 `json:"p50_ms"`
	P90ms        float64 `json:"p90_ms"`
	P99ms        float64 `json:"p99_ms"`
	P999ms       float64 `json:"p999_ms"`
	MaxMs        float64 `json:"max_ms"`
	// Errors: socket errors and non-2xx answers; a run with any is no figure.
	Errors int64 `json:"errors"`
	// CPUusPerReq: the server process's utime+stime over the run, per
	// request: less sensitive to the machine's load than latencies.
	CPUusPerReq   float64 `json:"server_cpu_us_per_req"`
	CPUusPerCheck float64 `json:"server_cpu_us_per_check"`
	LoadStart     float64 `json:"load_start"`
	LoadEnd       float64 `json:"load_end"`
}

type wrkOut struct {
	Requests   int64 `json:"requests"`
	DurationUS int64 `json:"duration_us"`
	Errors     struct {
		Connect, Read, Write, Status, Timeout int64
	} `json:"errors"`
	Latency struct {
		P50  int64 `json:"p50"`
		P90  int64 `json:"p90"`
		P99  int64 `json:"p99"`
		P999 int64 `json:"p999"`
		Max  int64 `json:"max"`
	} `json:"latency_us"`
}

func runMain(args []string) error {
	fs := flag.NewFlagSet("wrkbench", flag.ContinueOnError)
	api := fs.String("api", "127.0.0.1:9479", "usage-api's address (already running, cache fresh)")
	apiPID := fs.Int("api-pid", 0, "usage-api's pid, for its CPU per request (0: not measured)")
	floorAddr := fs.String("floor-addr", "127.0.0.1:9478", "where the floor listens")
	pairs := fs.Int("pairs", 3, "usage-api / floor pairs, interleaved (the order alternates)")
	duration := fs.String("duration", "10s", "wrk -d")
	conns := fs.Int("connections", 28, "wrk -c")
	threads := fs.Int("threads", 1, "wrk -t")
	script := fs.String("script", "api/bench/check.lua", "wrk -s (its done() prints the WRKJSON line)")
	path := fs.String("path", "/v1/check", "the URL path both servers are sent")
	out := fs.String("out", ".cache/bench/api.jsonl", "JSON records are appended here")
	label := fs.String("label", "", "a label kept in the records (e.g. before, after)")
	table := fs.String("table", "", "print the markdown table of the records in this file and exit")
	since := fs.String("since", "", "with --table: only records at or after this RFC 3339 UTC time")
	batchScript := fs.String("batch-script", "", "wrk -s for a third row, usage-api's /v1/check/batch (empty: none)")
	batchPath := fs.String("batch-path", "/v1/check/batch", "the URL path of the batch row")
	batchSize := fs.Int("batch-size", 10, "checks per call of --batch-script")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *table != "" {
		return printTable(*table, *since)
	}
	a, err := capture(*api, *path)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "wrkbench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	af := filepath.Join(dir, "answer.json")
	raw, _ := json.Marshal(a)
	if err := os.WriteFile(af, raw, 0o600); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	floor := exec.Command(self, "floor", "--addr", *floorAddr, "--answer", af)
	floor.Stderr = os.Stderr
	if err := floor.Start(); err != nil {
		return err
	}
	defer func() { _ = floor.Process.Kill(); _ = floor.Wait() }()
	if err := waitListening(*floorAddr); err != nil {
		return err
	}
	commit, _ := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	if err := os.MkdirAll(filepath.Dir(*out), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(*out, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	type target struct {
		name, addr, script, path string
		pid, checks              int
	}
	targets := []target{{"usage-api", *api, *script, *path, *apiPID, 1}, {"floor", *floorAddr, *script, *path, floor.Process.Pid, 1}}
	if *batchScript != "" {
		targets = append(targets, target{"usage-api batch", *api, *batchScript, *batchPath, *apiPID, *batchSize})
	}
	all := map[string][]record{}
	defer func() { summarize(targets[0].name, all) }()
	fmt.Printf("%-15s %4s %9s %9s %8s %8s %8s %8s %8s %6s %10s %5s\n", "server", "pair", "req/s", "checks/s", "p50 ms", "p90 ms", "p99 ms", "p99.9", "max ms", "errors", "cpu us/req", "load")
	for i := 0; i < *pairs; i++ {
		order := slices.Clone(targets)
		if i%2 == 1 { // ABBA: drift in the machine's load falls on all
			slices.Reverse(order)
		}
		p99 := map[string]float64{}
		for _, t := range order {
			argv := []string{"-t" + strconv.Itoa(*threads), "-c" + strconv.Itoa(*conns), "-d" + *duration, "-s", t.script, "http://" + t.addr + t.path}
			r, err := runWrk(argv, t.pid)
			if err != nil {
				return fmt.Errorf("%s: %w", t.name, err)
			}
			r.Time, r.Commit, r.Label, r.Server, r.Pair, r.AnswerBytes = time.Now().UTC().Format(time.RFC3339), strings.TrimSpace(string(commit)), *label, t.name, i+1, len(a.Body)
			r.Wrk = "wrk " + strings.Join(argv[:len(argv)-1], " ")
			r.ChecksPerReq, r.ChecksPerSec, r.CPUusPerCheck = t.checks, r.ReqPerSec*float64(t.checks), r.CPUusPerReq/float64(t.checks)
			fmt.Printf("%-15s %4d %9.0f %9.0f %8.2f %8.2f %8.2f %8.2f %8.2f %6d %10.1f %5.2f\n", r.Server, r.Pair, r.ReqPerSec, r.ChecksPerSec, r.P50ms, r.P90ms, r.P99ms, r.P999ms, r.MaxMs, r.Errors, r.CPUusPerReq, r.LoadStart)
			line, _ := json.Marshal(r)
			if _, err := f.Write(append(line, '\n')); err != nil {
				return err
			}
			p99[t.name] = r.P99ms
			all[t.name] = append(all[t.name], r)
		}
		fmt.Printf("pair %d: p99 / floor p99: usage-api %.2f", i+1, p99["usage-api"]/p99["floor"])
		if *batchScript != "" {
			fmt.Printf(", usage-api batch (per call of %d checks) %.2f", *batchSize, p99["usage-api batch"]/p99["floor"])
		}
		fmt.Println()
	}
	return nil
}

// summarize prints, per server, the median and range over the runs of
// p99 and CPU per request, and the median of the per-pair p99 ratios to
// the floor: one run's p99 on a shared machine is one sample of its
// stalls.
func summarize(first string, all map[string][]record) {
	floor := all["floor"]
	for _, name := range []string{first, "floor", "usage-api batch"} {
		rs := all[name]
		if len(rs) == 0 {
			continue
		}
		p99s, cpus, ratios := make([]float64, len(rs)), make([]float64, len(rs)), []float64{}
		for i, r := range rs {
			r := r
			p99s[i], cpus[i] = r.P99ms, r.CPUusPerReq
			if f, ok := nearest(r, floor); ok && name != "floor" && f.P99ms > 0 {
				ratios = append(ratios, r.P99ms/f.P99ms)
			}
		}
		fmt.Printf("%-15s p99 ms median %.2f (%.2f-%.2f), server CPU us/req median %.1f (%.1f-%.1f)", name,
			median(p99s), slices.Min(p99s), slices.Max(p99s), median(cpus), slices.Min(cpus), slices.Max(cpus))
		if len(ratios) > 0 {
			fmt.Printf(", p99 / the floor's in the same pair: median %.2f (%.2f-%.2f)", median(ratios), slices.Min(ratios), slices.Max(ratios))
		}
		fmt.Println()
	}
}

// nearest is the floor's run closest in time to r: its pair.
func nearest(r record, floor []record) (record, bool) {
	t, _ := time.Parse(time.RFC3339, r.Time)
	var best record
	bestD := time.Duration(-1)
	for _, f := range floor {
		ft, _ := time.Parse(time.RFC3339, f.Time)
		if d := max(ft.Sub(t), t.Sub(ft)); bestD < 0 || d < bestD {
			best, bestD = f, d
		}
	}
	return best, bestD >= 0
}

func median(v []float64) float64 {
	s := slices.Sorted(slices.Values(v))
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// capture sends one /v1/check as the script does and keeps the answer; it
// waits (up to 20 s) for a fresh decision, as a stale one is no figure.
func capture(addr, path string) (answer, error) {
	body := `{"tenant_id":"tenant-01","feature_type":"api_calls","quantity":"1"}`
	var last string
	for range 100 {
		req, _ := http.NewRequest(http.MethodPost, "http://"+addr+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer demo-admin-key")
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && bytes.Contains(b, []byte(`"stale":false`)) {
				h := resp.Header.Clone()
				for _, k := range []string{"Date", "Content-Length", "Connection", "Keep-Alive", "Transfer-Encoding"} {
					delete(h, k) // the server writes these itself (hop by hop)
				}
				return answer{Status: resp.StatusCode, Header: h, Body: b}, nil
			}
			last = resp.Status + " " + string(b)
		} else {
			last = err.Error()
		}
		time.Sleep(200 * time.Millisecond)
	}
	return answer{}, fmt.Errorf("usage-api at %s gave no fresh 200 within 20 s: %s", addr, last)
}

func waitListening(addr string) error {
	for range 100 {
		if c, err := net.Dial("tcp", addr); err == nil {
			return c.Close()
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("the floor did not listen on %s", addr)
}

func runWrk(argv []string, pid int) (record, error) {
	var r record
	r.LoadStart = loadavg()
	cpu0, _ := procCPU(pid)
	cmd := exec.CommandContext(context.Background(), "wrk", argv...)
	var stdout bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		return r, fmt.Errorf("wrk %s: %w", strings.Join(argv, " "), err)
	}
	cpu1, cpuErr := procCPU(pid)
	r.LoadEnd = loadavg()
	var w wrkOut
	found := false
	sc := bufio.NewScanner(&stdout)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "WRKJSON "); ok {
			if err := json.Unmarshal([]byte(rest), &w); err != nil {
				return r, fmt.Errorf("wrk's done() line: %w", err)
			}
			found = true
		}
	}
	if !found {
		return r, errors.New("wrk printed no WRKJSON line: the script needs the done() of api/bench/check.lua")
	}
	ms := func(us int64) float64 { return float64(us) / 1000 }
	r.Requests = w.Requests
	r.ReqPerSec = float64(w.Requests) / (float64(w.DurationUS) / 1e6)
	r.P50ms, r.P90ms, r.P99ms, r.P999ms, r.MaxMs = ms(w.Latency.P50), ms(w.Latency.P90), ms(w.Latency.P99), ms(w.Latency.P999), ms(w.Latency.Max)
	e := w.Errors
	r.Errors = e.Connect + e.Read + e.Write + e.Status + e.Timeout
	if pid > 0 && cpuErr == nil && w.Requests > 0 {
		r.CPUusPerReq = (cpu1 - cpu0).Seconds() * 1e6 / float64(w.Requests)
	}
	return r, nil
}

// procCPU is a process's utime+stime from /proc/<pid>/stat.
func procCPU(pid int) (time.Duration, error) {
	if pid <= 0 {
		return 0, errors.New("no pid")
	}
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command name (which may hold spaces), from its ')'.
	s := string(raw)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: short", pid)
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	const hz = 100 // USER_HZ on Linux
	return time.Duration(u+st) * time.Second / hz, nil
}

func loadavg() float64 {
	raw, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(raw))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

// printTable prints the records as the README's table: one row per run.
func printTable(path, since string) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	byLabel := map[string]map[string][]record{}
	var labels []string
	fmt.Println("| time (UTC) | label | pair | server | req/s | checks/s | p50 ms | p90 ms | p99 ms | max ms | server CPU µs per request (per check) | errors | load (1 min) |")
	fmt.Println("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
	for _, line := range bytes.Split(bytes.TrimSpace(raw), []byte("\n")) {
		var r record
		if err := json.Unmarshal(line, &r); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if r.Time < since { // RFC 3339 UTC times sort as text
			continue
		}
		if r.ChecksPerReq == 0 { // records before the batch row
			r.ChecksPerReq, r.ChecksPerSec, r.CPUusPerCheck = 1, r.ReqPerSec, r.CPUusPerReq
		}
		fmt.Printf("| %s | %s | %d | %s | %.0f | %.0f | %.2f | %.2f | %.2f | %.2f | %.1f (%.1f) | %d | %.1f → %.1f |\n", strings.Replace(r.Time[:19], "T", " ", 1), r.Label, r.Pair, r.Server,
			r.ReqPerSec, r.ChecksPerSec, r.P50ms, r.P90ms, r.P99ms, r.MaxMs, r.CPUusPerReq, r.CPUusPerCheck, r.Errors, r.LoadStart, r.LoadEnd)
		if byLabel[r.Label] == nil {
			labels = append(labels, r.Label)
			byLabel[r.Label] = map[string][]record{}
		}
		byLabel[r.Label][r.Server] = append(byLabel[r.Label][r.Server], r)
	}
	for _, l := range labels {
		fmt.Printf("\n%s:\n", l)
		summarize("usage-api", byLabel[l])
	}
	return nil
}
