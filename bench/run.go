package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"slices"
	"sort"
	"strings"
	"time"
)

// Options configures a harness run. The zero value is the full run.
type Options struct {
	// Binary is the tunnel binary to run as server and client. Default:
	// built from TunnelPackage by BuildTunnel, into ProfileDir (kept there
	// beside the profiles, for go tool pprof) or else into a temporary
	// directory removed when Run returns.
	Binary string
	// Duration of each load run. Default 5s.
	Duration time.Duration
	// Runs is how many times each measurement is repeated; the run with the
	// median throughput is reported. Default 3.
	Runs int
	// BulkSize is the size of each bulk transfer. Default 1 GiB.
	BulkSize int64
	// IdleConns is how many idle keep-alive connections are held open.
	// Default 1000.
	IdleConns int
	// Scenarios selects scenarios by name; empty runs all.
	Scenarios []string
	// ProfileDir, if set, makes the server and client write CPU and
	// allocation profiles there.
	ProfileDir string
	// Progress receives a line per measurement while the run goes on.
	Progress io.Writer
	// LogDir, if set, receives server.log and client.log.
	LogDir string
	// TunnelEnv is added to the server's and client's environment, such
	// as GOGC=200, to try runtime settings.
	TunnelEnv []string
}

// Quick returns options for a spot check that finishes in under a minute.
func Quick() Options {
	return Options{Duration: time.Second, Runs: 1, BulkSize: 128 << 20, IdleConns: 200}
}

func (o *Options) defaults() error {
	if o.Duration <= 0 {
		o.Duration = 5 * time.Second
	}
	if o.Runs <= 0 {
		o.Runs = 3
	}
	if o.BulkSize <= 0 {
		o.BulkSize = 1 << 30
	}
	if o.IdleConns <= 0 {
		o.IdleConns = 1000
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	for _, s := range o.Scenarios {
		if !slices.Contains(ScenarioNames, s) {
			return fmt.Errorf("unknown scenario %q (known: %s)", s, strings.Join(ScenarioNames, ", "))
		}
	}
	return nil
}

// ScenarioNames lists the scenarios in the order they run.
var ScenarioNames = []string{
	"h1-c1", "h1-c64", "h1-open50", "h1-open80", "h1-rate1000", "h2-mux64",
	"grpc-unary-c64", "grpc-stream-c64", "ws-echo-c64",
	"bulk-up", "bulk-down", "tcp-up", "tcp-down", "idle", "quic-echo", "quic-echo-c1", "quic-stream-echo", "quic-bulk",
}

// Row is one measurement: one scenario, one way of reaching the upstream.
type Row struct {
	Scenario string     `json:"scenario"`
	Target   string     `json:"target"` // direct, reverse, forward, quic
	Load     LoadResult `json:"load"`
	// MiBps is the transfer rate of bulk scenarios.
	MiBps float64 `json:"mib_per_s,omitempty"`
	// Ratio is throughput relative to direct (bulk: relative to raw QUIC
	// for quic-bulk's own row and to direct otherwise).
	Ratio float64 `json:"ratio,omitempty"`
	// AddedP50 and AddedP99 are the latency the tunnel adds over direct, µs.
	AddedP50 float64 `json:"added_p50_us,omitempty"`
	AddedP99 float64 `json:"added_p99_us,omitempty"`
	// CPU seconds per 1000 requests and peak RSS of each side.
	ServerCPUPer1k float64 `json:"server_cpu_s_per_1k,omitempty"`
	ClientCPUPer1k float64 `json:"client_cpu_s_per_1k,omitempty"`
	// HarnessCPUPer1k is the CPU seconds per 1000 requests of the harness
	// process itself: the load generator and the upstreams it serves (and
	// both ends of the raw quic-go rows). With the tunnel's two columns it
	// accounts for a closed-loop run's whole CPU.
	HarnessCPUPer1k float64 `json:"harness_cpu_s_per_1k,omitempty"`
	// IO is the read and write system calls per request of each process
	// (closed and open loops): TCP and eventfd, not UDP; see usage.
	IO            *IOPerRequest `json:"syscalls_per_request,omitempty"`
	ServerPeakRSS int64         `json:"server_peak_rss,omitempty"`
	ClientPeakRSS int64         `json:"client_peak_rss,omitempty"`
	// PerConnBytes is the memory one idle connection costs each side.
	ServerPerConn float64 `json:"server_bytes_per_idle_conn,omitempty"`
	ClientPerConn float64 `json:"client_bytes_per_idle_conn,omitempty"`
}

// IOPerRequest is the read and write system calls per request of the
// tunnel server, the tunnel client and the harness (load and upstream).
type IOPerRequest struct {
	Server  IOCalls `json:"server"`
	Client  IOCalls `json:"client"`
	Harness IOCalls `json:"harness"`
}

// IOCalls is a count of read and write system calls per request.
type IOCalls struct {
	Reads  float64 `json:"reads"`
	Writes float64 `json:"writes"`
}

// String is the counts as the progress lines print them.
func (c IOPerRequest) String() string {
	return fmt.Sprintf("server %.2f/%.2f client %.2f/%.2f harness %.2f/%.2f",
		c.Server.Reads, c.Server.Writes, c.Client.Reads, c.Client.Writes, c.Harness.Reads, c.Harness.Writes)
}

// ioPerRequest divides the server, client and harness usage by requests.
func ioPerRequest(u []usage, requests int64) IOPerRequest {
	per := func(x usage) IOCalls {
		if requests <= 0 {
			return IOCalls{}
		}
		return IOCalls{float64(x.Reads) / float64(requests), float64(x.Writes) / float64(requests)}
	}
	return IOPerRequest{Server: per(u[0]), Client: per(u[1]), Harness: per(u[2])}
}

// Report is a whole harness run.
type Report struct {
	Started  time.Time `json:"started"`
	Command  string    `json:"command"`
	Machine  Machine   `json:"machine"`
	Options  string    `json:"options"`
	Rows     []Row     `json:"rows"`
	Bars     []Bar     `json:"bars"`
	Duration float64   `json:"duration_s"`
}

// Run runs the harness.
func Run(ctx context.Context, o Options) (*Report, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	rep := &Report{Started: time.Now(), Machine: readMachine(),
		Options: fmt.Sprintf("duration=%v runs=%d bulk=%dMiB idle=%d tunnel-env=%v", o.Duration, o.Runs, o.BulkSize>>20, o.IdleConns, o.TunnelEnv)}
	want := func(name string) bool { return len(o.Scenarios) == 0 || slices.Contains(o.Scenarios, name) }
	say := func(format string, args ...any) { fmt.Fprintf(o.Progress, format+"\n", args...) }

	if o.Binary == "" {
		dir := o.ProfileDir
		if dir == "" {
			tmp, err := os.MkdirTemp("", "qtunnel-bench-bin-")
			if err != nil {
				return nil, err
			}
			defer os.RemoveAll(tmp)
			dir = tmp
		}
		say("building the tunnel binary: go build %s", TunnelPackage)
		bin, err := BuildTunnel(ctx, dir)
		if err != nil {
			return nil, err
		}
		o.Binary = bin
	}
	e, err := startEnv(ctx, o.Binary, o.ProfileDir, o.TunnelEnv)
	if err != nil {
		return nil, err
	}
	defer func() {
		if cerr := e.close(); cerr != nil {
			say("stopping the tunnel: %v", cerr)
		}
		if o.LogDir != "" {
			e.writeLogs(o.LogDir)
		}
	}()
	spid, cpid := e.pids()
	m := newMeter(spid, cpid, os.Getpid())
	targets := e.targets()

	// measure runs one load o.Runs times on every target, interleaved (direct,
	// reverse, forward, direct, ...) so that drift of the machine's speed hits
	// all targets alike. Each target reports its median run; the ratio to
	// direct is the median of the per-round ratios.
	type run struct {
		res LoadResult
		use []usage
	}
	measureWith := func(scenario string, ts []target, one func(t target) (LoadResult, error)) []Row {
		runs := make([][]run, len(ts))
		for i := range o.Runs {
			for ti, t := range ts {
				runtime.GC() // start each run with the harness's own heap settled
				m.start()
				res, err := one(t)
				if err != nil {
					res.Errors, res.FirstError = res.Errors+1, err.Error()
				}
				u := m.stop()
				runs[ti] = append(runs[ti], run{res, u})
				say("  %-12s %-8s run %d/%d: %8.0f req/s  p50 %6.0fµs  p99 %6.0fµs  p99.9 %6.0fµs  errors %d  reads/writes per request: %v %s",
					scenario, t.Name, i+1, o.Runs, res.RPS, res.P50, res.P99, res.P999, res.Errors, ioPerRequest(u, res.Requests), res.FirstError)
			}
		}
		rows := make([]Row, len(ts))
		for ti, t := range ts {
			rs := slices.Clone(runs[ti])
			sort.Slice(rs, func(i, j int) bool { return rs[i].res.RPS < rs[j].res.RPS })
			mid := rs[len(rs)/2]
			row := Row{Scenario: scenario, Target: t.Name, Load: mid.res}
			if k := float64(mid.res.Requests) / 1000; k > 0 {
				row.HarnessCPUPer1k = mid.use[2].CPU.Seconds() / k
				calls := ioPerRequest(mid.use, mid.res.Requests)
				row.IO = &calls
				if t.Name != "direct" {
					row.ServerCPUPer1k = mid.use[0].CPU.Seconds() / k
					row.ClientCPUPer1k = mid.use[1].CPU.Seconds() / k
				}
			}
			if t.Name != "direct" {
				row.ServerPeakRSS, row.ClientPeakRSS = mid.use[0].PeakRSS, mid.use[1].PeakRSS
			}
			if ts[0].Name == "direct" && t.Name != "direct" {
				var ratios, p50s, p99s []float64
				for i := range runs[ti] {
					d, x := runs[0][i].res, runs[ti][i].res
					if d.RPS > 0 {
						ratios = append(ratios, x.RPS/d.RPS)
					}
					p50s = append(p50s, x.P50-d.P50)
					p99s = append(p99s, x.P99-d.P99)
				}
				if len(ratios) > 0 {
					row.Ratio = median(ratios)
				}
				row.AddedP50, row.AddedP99 = median(p50s), median(p99s)
			}
			rows[ti] = row
		}
		return rows
	}
	measure := func(scenario string, ts []target, l Load) []Row {
		return measureWith(scenario, ts, func(t target) (LoadResult, error) {
			l.URL, l.Host = t.Base+"/1k", t.Host
			return l.Run(ctx), nil
		})
	}
	closed := func(name string, l Load) {
		if !want(name) {
			return
		}
		say("%s: %s", name, describe(l, o))
		rep.Rows = append(rep.Rows, measure(name, targets, l)...)
	}

	closed("h1-c1", Load{Conns: 1, Duration: o.Duration})
	closed("h1-c64", Load{Conns: 64, Duration: o.Duration})
	if want("h1-open50") || want("h1-open80") {
		maxRate := rep.tunnelMax("h1-c64")
		if maxRate == 0 {
			say("calibrating the tunnel's maximum (h1-c64 was not selected)")
			for _, r := range measure("calibrate", targets[1:], Load{Conns: 64, Duration: o.Duration}) {
				if maxRate == 0 || r.Load.RPS < maxRate {
					maxRate = r.Load.RPS
				}
			}
		}
		closed("h1-open50", Load{Conns: 64, Rate: 0.5 * maxRate, Duration: o.Duration})
		closed("h1-open80", Load{Conns: 64, Rate: 0.8 * maxRate, Duration: o.Duration})
	}
	closed("h1-rate1000", Load{Conns: 64, Rate: 1000, Duration: o.Duration})
	closed("h2-mux64", Load{Conns: 64, HTTP2: true, Duration: o.Duration})
	for _, p := range []struct {
		name, what string
		ts         []target
		run        func(context.Context, target, int, time.Duration) (LoadResult, error)
	}{
		{"grpc-unary-c64", "gRPC unary calls, 1 KiB each way, 64 at a time on one connection", e.grpcTargets(), grpcUnary},
		{"grpc-stream-c64", "gRPC bidirectional streams, 64 on one connection, 1 KiB ping-pong", e.grpcTargets(), grpcStream},
		{"ws-echo-c64", "WebSocket, 64 connections, 1 KiB message echoed", targets, wsEchoLoad},
	} {
		if !want(p.name) {
			continue
		}
		say("%s: %s, %v x %d", p.name, p.what, o.Duration, o.Runs)
		rep.Rows = append(rep.Rows, measureWith(p.name, p.ts, func(t target) (LoadResult, error) {
			return p.run(ctx, t, 64, o.Duration)
		})...)
	}

	var quic *rawQUIC
	if want("quic-echo") || want("quic-echo-c1") || want("quic-stream-echo") || want("quic-bulk") || want("bulk-up") || want("bulk-down") {
		if quic, err = startRawQUIC(ctx); err != nil {
			return nil, fmt.Errorf("raw QUIC ceiling: %w", err)
		}
		defer quic.close()
		if rcv, snd, err := quic.socketBuffers(); err == nil {
			rep.Machine.QUICRcvBuf, rep.Machine.QUICSndBuf = rcv, snd
		}
	}
	// transfers runs one transfer o.Runs times and returns a row with the
	// median MiB/s, and the usage of the first run.
	transfers := func(scenario, target string, one func() (float64, error)) (Row, []usage, error) {
		var rates []float64
		var first []usage
		for i := range o.Runs {
			m.start()
			r, err := one()
			if u := m.stop(); i == 0 {
				first = u
			}
			if err != nil {
				return Row{}, nil, fmt.Errorf("%s %s: %w", scenario, target, err)
			}
			say("  %-12s %-8s run %d/%d: %8.1f MiB/s", scenario, target, i+1, o.Runs, r)
			rates = append(rates, r)
		}
		return Row{Scenario: scenario, Target: target, MiBps: median(rates)}, first, nil
	}
	var quicBulk float64
	if want("quic-bulk") || want("bulk-up") || want("bulk-down") {
		say("quic-bulk: %d MiB on one raw quic-go stream, echoed", o.BulkSize>>20)
		row, _, err := transfers("quic-bulk", "quic", func() (float64, error) { return quic.bulk(ctx, o.BulkSize) })
		if err != nil {
			return nil, err
		}
		quicBulk = row.MiBps
		rep.Rows = append(rep.Rows, row)
	}
	for _, up := range []bool{true, false} {
		name := map[bool]string{true: "bulk-up", false: "bulk-down"}[up]
		if !want(name) {
			continue
		}
		say("%s: %d MiB in one request", name, o.BulkSize>>20)
		for _, t := range targets {
			row, use, err := transfers(name, t.Name, func() (float64, error) { return Transfer(ctx, t.Base, t.Host, o.BulkSize, up) })
			if err != nil {
				return nil, err
			}
			if t.Name != "direct" {
				row.ServerPeakRSS, row.ClientPeakRSS = use[0].PeakRSS, use[1].PeakRSS
				if quicBulk > 0 {
					row.Ratio = row.MiBps / quicBulk
				}
			}
			rep.Rows = append(rep.Rows, row)
		}
	}
	for _, up := range []bool{true, false} {
		name := map[bool]string{true: "tcp-up", false: "tcp-down"}[up]
		if !want(name) {
			continue
		}
		say("%s: %d MiB over one TCP connection (rules of protocol tcp)", name, o.BulkSize>>20)
		for _, t := range e.tcpTargets() {
			row, _, err := transfers(name, t.Name, func() (float64, error) { return tcpTransfer(ctx, t.Base, o.BulkSize, up) })
			if err != nil {
				return nil, err
			}
			if d := rep.find(name, "direct"); d != nil && t.Name != "direct" && d.MiBps > 0 {
				row.Ratio = row.MiBps / d.MiBps
			}
			rep.Rows = append(rep.Rows, row)
		}
	}
	if want("idle") {
		say("idle: %d keep-alive connections held open through each tunnel", o.IdleConns)
		for _, t := range targets[1:] {
			row, err := idleConns(ctx, t, o.IdleConns, spid, cpid)
			if err != nil {
				return nil, fmt.Errorf("idle %s: %w", t.Name, err)
			}
			say("  idle         %-8s server +%.1f KiB/conn, client +%.1f KiB/conn", t.Name, row.ServerPerConn/1024, row.ClientPerConn/1024)
			rep.Rows = append(rep.Rows, row)
		}
	}
	for _, q := range []struct {
		name    string
		workers int
		vs      string
		echo    func(ctx context.Context, workers int, d time.Duration) LoadResult
		what    string
	}{
		{"quic-echo", 64, "h1-c64", quic.echo, "one raw quic-go stream per 1 KiB echo"},
		{"quic-echo-c1", 1, "h1-c1", quic.echo, "one raw quic-go stream per 1 KiB echo"},
		{"quic-stream-echo", 64, "grpc-stream-c64", quic.streamEcho, "1 KiB echoes on one long-lived raw quic-go stream each"},
	} {
		if !want(q.name) {
			continue
		}
		say("%s: %d workers, %s", q.name, q.workers, q.what)
		type echoRun struct {
			res LoadResult
			cpu time.Duration
		}
		var rs []echoRun
		for i := range o.Runs {
			m.start()
			r := q.echo(ctx, q.workers, o.Duration)
			rs = append(rs, echoRun{r, m.stop()[2].CPU})
			say("  %-12s quic     run %d/%d: %8.0f req/s  p50 %6.0fµs  p99 %6.0fµs", q.name, i+1, o.Runs, r.RPS, r.P50, r.P99)
		}
		sort.Slice(rs, func(i, j int) bool { return rs[i].res.RPS < rs[j].res.RPS })
		mid := rs[len(rs)/2]
		row := Row{Scenario: q.name, Target: "quic", Load: mid.res}
		if k := float64(mid.res.Requests) / 1000; k > 0 {
			row.HarnessCPUPer1k = mid.cpu.Seconds() / k
		}
		if d := rep.find(q.vs, "direct"); d != nil && d.Load.RPS > 0 {
			row.Ratio = row.Load.RPS / d.Load.RPS
			row.AddedP50 = row.Load.P50 - d.Load.P50
			row.AddedP99 = row.Load.P99 - d.Load.P99
		}
		rep.Rows = append(rep.Rows, row)
	}
	rep.Bars = checkBars(rep)
	rep.Duration = time.Since(rep.Started).Seconds()
	return rep, nil
}

func describe(l Load, o Options) string {
	mode := "closed loop"
	if l.Rate > 0 {
		mode = fmt.Sprintf("open loop at %.0f req/s", l.Rate)
	}
	proto := "HTTP/1.1"
	if l.HTTP2 {
		proto = "HTTP/2 (h2c)"
	}
	return fmt.Sprintf("%s 1 KiB responses, %d connections, %s, %v x %d", proto, l.Conns, mode, l.Duration, o.Runs)
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

func (r *Report) find(scenario, target string) *Row {
	for i := range r.Rows {
		if r.Rows[i].Scenario == scenario && r.Rows[i].Target == target {
			return &r.Rows[i]
		}
	}
	return nil
}

// tunnelMax is the lower of the two tunnels' throughputs in a scenario.
func (r *Report) tunnelMax(scenario string) float64 {
	a, b := r.find(scenario, "reverse"), r.find(scenario, "forward")
	if a == nil || b == nil {
		return 0
	}
	return min(a.Load.RPS, b.Load.RPS)
}

// idleConns opens n keep-alive connections through t, each used for one
// request and then left idle, and reports what they cost each side.
func idleConns(ctx context.Context, t target, n, spid, cpid int) (Row, error) {
	s, c := proc{spid}, proc{cpid}
	s0, _ := s.rss()
	c0, _ := c.rss()
	var conns []net.Conn
	defer func() {
		for _, cn := range conns {
			cn.Close()
		}
	}()
	addr := strings.TrimPrefix(t.Base, "http://")
	host := t.Host
	if host == "" {
		host = addr
	}
	req := []byte("GET /1k HTTP/1.1\r\nHost: " + host + "\r\n\r\n")
	for range n {
		cn, err := (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, "tcp", addr)
		if err != nil {
			return Row{}, err
		}
		conns = append(conns, cn)
		if _, err := cn.Write(req); err != nil {
			return Row{}, err
		}
		_ = cn.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReaderSize(cn, 4096), nil)
		if err != nil {
			return Row{}, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		_ = cn.SetReadDeadline(time.Time{})
	}
	// Let the runtimes settle their heaps before reading resident memory.
	settle := time.NewTimer(500 * time.Millisecond)
	select {
	case <-settle.C:
	case <-ctx.Done():
		settle.Stop()
		return Row{}, ctx.Err()
	}
	s1, _ := s.rss()
	c1, _ := c.rss()
	return Row{Scenario: "idle", Target: t.Name,
		ServerPerConn: float64(s1-s0) / float64(n), ClientPerConn: float64(c1-c0) / float64(n),
		ServerPeakRSS: s1, ClientPeakRSS: c1}, nil
}
