package main

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// clockTicks is USER_HZ, the unit of utime/stime in /proc/<pid>/stat: 100
// on every Linux architecture Go supports.
const clockTicks = 100

// procCPU returns the user+system CPU time a process has used so far, from
// /proc/<pid>/stat (fields 14 and 15; field 2, the command, may hold
// spaces, so fields are counted after its closing parenthesis).
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("read stat of pid %d: %w", pid, err)
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("pid %d: unexpected stat %q", pid, b)
	}
	f := strings.Fields(string(b[i+1:]))
	// After ")": state is field 3, so utime (14) is f[11], stime (15) f[12].
	if len(f) < 13 {
		return 0, fmt.Errorf("pid %d: short stat %q", pid, b)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("pid %d: bad utime/stime in %q", pid, b)
	}
	return time.Duration(ut+st) * time.Second / clockTicks, nil
}

// procRSS returns a process's resident set size in bytes (VmRSS).
func procRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("read status of pid %d: %w", pid, err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("pid %d: VmRSS %q: %w", pid, v, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("pid %d: no VmRSS", pid)
}

// selfCPU is getrusage(RUSAGE_SELF): this process, the publisher.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// watched is one process whose CPU and RSS a phase records.
type watched struct {
	Name string
	Pid  int // 0: this process
	Note string
}

// ProcFigures is what a phase measured of one process.
type ProcFigures struct {
	Pid            int     `json:"pid"`
	Note           string  `json:"note,omitempty"`
	CPUSeconds     float64 `json:"cpu_s"`
	CPUUsPerEvent  float64 `json:"cpu_us_per_event"`
	RSSMaxMB       float64 `json:"rss_max_mb"`
	RSSEndMB       float64 `json:"rss_end_mb"`
	MeasureFailure string  `json:"error,omitempty"`
}

// meter samples the RSS of processes every 200 ms and takes their CPU at
// start and stop.
type meter struct {
	procs []watched
	cpu0  []time.Duration
	mu    sync.Mutex
	rss   []int64
	stop  chan struct{}
	done  chan struct{}
}

func startMeter(procs []watched) *meter {
	m := &meter{procs: procs, cpu0: make([]time.Duration, len(procs)), rss: make([]int64, len(procs)),
		stop: make(chan struct{}), done: make(chan struct{})}
	for i, p := range procs {
		m.cpu0[i] = cpuOf(p.Pid)
	}
	m.sample()
	go func() {
		defer close(m.done)
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-m.stop:
				return
			case <-t.C:
				m.sample()
			}
		}
	}()
	return m
}

func cpuOf(pid int) time.Duration {
	if pid == 0 {
		return selfCPU()
	}
	d, _ := procCPU(pid)
	return d
}

func rssOf(pid int) int64 {
	if pid == 0 {
		pid = os.Getpid()
	}
	n, _ := procRSS(pid)
	return n
}

func (m *meter) sample() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, p := range m.procs {
		m.rss[i] = max(m.rss[i], rssOf(p.Pid))
	}
}

// finish returns each process's figures for events events.
func (m *meter) finish(events int) map[string]ProcFigures {
	close(m.stop)
	<-m.done
	m.sample()
	out := map[string]ProcFigures{}
	for i, p := range m.procs {
		f := ProcFigures{Pid: p.Pid, Note: p.Note}
		if p.Pid == 0 {
			f.Pid = os.Getpid()
		}
		if p.Pid != 0 {
			if _, err := procCPU(p.Pid); err != nil {
				f.MeasureFailure = err.Error()
			}
		}
		cpu := cpuOf(p.Pid) - m.cpu0[i]
		f.CPUSeconds = round(cpu.Seconds(), 2)
		if events > 0 {
			f.CPUUsPerEvent = round(float64(cpu.Microseconds())/float64(events), 2)
		}
		f.RSSMaxMB = round(float64(m.rss[i])/(1<<20), 1)
		f.RSSEndMB = round(float64(rssOf(p.Pid))/(1<<20), 1)
		out[p.Name] = f
	}
	return out
}

func round(v float64, digits int) float64 {
	p := 1.0
	for range digits {
		p *= 10
	}
	return float64(int64(v*p+0.5)) / p
}

// loadAvg returns the 1, 5 and 15 minute load averages.
func loadAvg() [3]float64 {
	var out [3]float64
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return out
	}
	f := strings.Fields(string(b))
	for i := 0; i < 3 && i < len(f); i++ {
		out[i], _ = strconv.ParseFloat(f[i], 64)
	}
	return out
}

// pidFromFile reads a pid file written by scripts/kafka.sh or clickhouse.sh.
func pidFromFile(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("pid file: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("pid file %s: %q is not a pid", path, b)
	}
	return pid, nil
}
