package bench

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// clockTicks is USER_HZ, the unit of the CPU times in /proc/<pid>/stat. It
// is 100 on every Linux platform Go supports.
const clockTicks = 100

// proc reads one process's CPU time and memory from /proc.
type proc struct{ pid int }

// cpu returns the process's user plus system CPU time.
func (p proc) cpu() (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command name, which is in parentheses and may
	// contain spaces: utime and stime are fields 14 and 15 of the line.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("unexpected /proc stat: %q", b)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("unexpected /proc stat: %q", b)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("unexpected /proc stat: %q", b)
	}
	return time.Duration(ut+st) * time.Second / clockTicks, nil
}

func (p proc) status(key string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, key+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", key, p.pid)
}

// rss returns the resident set size now.
func (p proc) rss() (int64, error) { return p.status("VmRSS") }

// peakRSS returns the peak resident set size since the last resetPeak.
func (p proc) peakRSS() (int64, error) { return p.status("VmHWM") }

// resetPeak starts a new peak RSS measurement (Linux: clear_refs 5).
func (p proc) resetPeak() error {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", p.pid), []byte("5"), 0)
}

// usage is the CPU and peak memory of one process over one measurement.
type usage struct {
	CPU     time.Duration
	PeakRSS int64
	// Reads and Writes count the process's read(2)- and write(2)-family
	// system calls (/proc/<pid>/io syscr, syscw): here its TCP reads and
	// writes, and the Go runtime's eventfd wake-ups. quic-go's UDP calls
	// (recvmmsg, sendmsg) are not among them.
	Reads, Writes int64
}

// io returns the process's read and write system call counts so far.
func (p proc) io() (r, w int64) {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/io", p.pid))
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "syscr: "); ok {
			r, _ = strconv.ParseInt(v, 10, 64)
		}
		if v, ok := strings.CutPrefix(line, "syscw: "); ok {
			w, _ = strconv.ParseInt(v, 10, 64)
		}
	}
	return
}

// meter measures a set of processes between start and stop.
type meter struct {
	procs  []proc
	cpu0   []time.Duration
	r0, w0 []int64
}

func newMeter(pids ...int) *meter {
	m := &meter{}
	for _, pid := range pids {
		m.procs = append(m.procs, proc{pid})
	}
	return m
}

func (m *meter) start() {
	m.cpu0 = m.cpu0[:0]
	m.r0, m.w0 = m.r0[:0], m.w0[:0]
	for _, p := range m.procs {
		r, w := p.io()
		m.r0, m.w0 = append(m.r0, r), append(m.w0, w)
		_ = p.resetPeak()
		c, _ := p.cpu()
		m.cpu0 = append(m.cpu0, c)
	}
}

func (m *meter) stop() []usage {
	out := make([]usage, len(m.procs))
	for i, p := range m.procs {
		c, _ := p.cpu()
		out[i].CPU = c - m.cpu0[i]
		r, w := p.io()
		out[i].Reads, out[i].Writes = r-m.r0[i], w-m.w0[i]
		out[i].PeakRSS, _ = p.peakRSS()
	}
	return out
}
