package loadgen

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clockTicks is Linux's USER_HZ, the unit of /proc/PID/stat CPU times. It is
// 100 on every Linux architecture Go supports.
const clockTicks = 100

// errNoProc is returned off Linux, where /proc is not there to read.
var errNoProc = errors.New("/proc is not available")

// procSample is a process's memory and CPU at one moment.
type procSample struct {
	RSS     int64         // resident set, bytes
	CPU     time.Duration // user + system time so far
	Threads int
}

// sampleProc reads /proc/PID/status and /proc/PID/stat.
func sampleProc(pid int) (procSample, error) {
	var s procSample
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		if os.IsNotExist(err) {
			if _, statErr := os.Stat("/proc/self"); statErr != nil {
				return s, errNoProc
			}
		}
		return s, fmt.Errorf("read process %d: %w", pid, err)
	}
	for line := range strings.Lines(string(status)) {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "VmRSS:":
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			s.RSS = kb << 10
		case "Threads:":
			s.Threads, _ = strconv.Atoi(f[1])
		}
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s, fmt.Errorf("read process %d: %w", pid, err)
	}
	// The command name (field 2) may hold spaces; fields count from after
	// its closing parenthesis. utime and stime are fields 14 and 15.
	rest := stat[bytes.LastIndexByte(stat, ')')+1:]
	f := strings.Fields(string(rest))
	if len(f) < 13 {
		return s, fmt.Errorf("process %d: short /proc stat line", pid)
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	s.CPU = time.Duration(ut+st) * time.Second / clockTicks
	return s, nil
}

// selfCPU is the CPU time this process used so far.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// machineCPU is the machine's busy and total CPU time so far, from the first
// line of /proc/stat.
type machineCPU struct{ busy, total time.Duration }

func sampleMachine() (machineCPU, error) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return machineCPU{}, errNoProc
	}
	defer f.Close()
	line, err := bufio.NewReader(f).ReadString('\n')
	if err != nil {
		return machineCPU{}, fmt.Errorf("read /proc/stat: %w", err)
	}
	fields := strings.Fields(line)
	if len(fields) < 5 || fields[0] != "cpu" {
		return machineCPU{}, errors.New("read /proc/stat: unexpected first line")
	}
	var m machineCPU
	for i, v := range fields[1:] {
		n, _ := strconv.ParseInt(v, 10, 64)
		d := time.Duration(n) * time.Second / clockTicks
		m.total += d
		if i != 3 && i != 4 { // idle, iowait
			m.busy += d
		}
	}
	return m, nil
}

// metrics is one scrape of a Prometheus text endpoint: every sample by its
// full name with labels, as written.
type metrics map[string]float64

func scrapeMetrics(ctx context.Context, url string) (metrics, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", url, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape %s: status %d", url, resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", url, err)
	}
	m := metrics{}
	for line := range strings.Lines(string(body)) {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		m[line[:i]] = v
	}
	return m, nil
}

// serverMetrics are the backend figures a run reports, as differences over
// the run (or, for gauges, the value at the end).
func serverMetrics(before, after metrics) map[string]float64 {
	d := func(name string) float64 { return after[name] - before[name] }
	mean := func(base string) float64 {
		n := d(base + "_count")
		if n == 0 {
			return 0
		}
		return round3(d(base+"_sum") / n)
	}
	out := map[string]float64{
		"commits":                      d(`spaceport_commits_total{result="ok"}`),
		"commit_errors":                d(`spaceport_commits_total{result="error"}`),
		"mutations_ok":                 d(`spaceport_mutations_total{result="ok"}`),
		"mutations_failed":             d(`spaceport_mutations_total{result="error"}`) + d(`spaceport_mutations_total{result="unknown"}`),
		"batch_mutations_mean":         mean("spaceport_batch_mutations"),
		"batch_ms_mean":                round3(mean("spaceport_batch_seconds") * 1000),
		"push_queue_wait_ms_mean":      round3(mean("spaceport_push_queue_wait_seconds") * 1000),
		"group_commits":                d("spaceport_group_commit_spaces_count"),
		"group_commit_spaces_mean":     mean("spaceport_group_commit_spaces"),
		"group_commit_ms_mean":         round3(mean("spaceport_group_commit_seconds") * 1000),
		"pokes":                        d("spaceport_pokes_total"),
		"poke_bytes_mean":              mean("spaceport_poke_bytes"),
		"sent_bytes":                   d("spaceport_sent_bytes_total"),
		"space_loads":                  d("spaceport_space_load_seconds_count"),
		"space_load_ms_mean":           round3(mean("spaceport_space_load_seconds") * 1000),
		"connections_at_end":           after["spaceport_connections"],
		"go_heap_inuse_bytes_at_end":   after["go_memstats_heap_inuse_bytes"],
		"go_heap_inuse_bytes_delta":    d("go_memstats_heap_inuse_bytes"),
		"go_goroutines_at_end":         after["go_goroutines"],
		"process_resident_bytes_delta": d("process_resident_memory_bytes"),
	}
	for k, v := range after {
		if strings.HasPrefix(k, "spaceport_connection_closes_total{") {
			if dv := v - before[k]; dv != 0 {
				out["closes"+strings.TrimPrefix(k, "spaceport_connection_closes_total")] = dv
			}
		}
	}
	return out
}
