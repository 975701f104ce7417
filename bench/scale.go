package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/qtunnel/qtunnel/config"
	"github.com/qtunnel/qtunnel/control"
	"github.com/qtunnel/qtunnel/gateway"
	"github.com/qtunnel/qtunnel/transport"
)

// ScaleOptions sets a run of the scale harness: one server process, many
// clients in this process.
type ScaleOptions struct {
	// Binary is the tunnel binary to run as the server (required: see
	// BuildTunnel).
	Binary string
	// Clients are the numbers of clients to measure, one run each.
	Clients []int
	// Idle is how long the idle CPU is measured. Default 10s.
	Idle time.Duration
	// Progress receives a line per step.
	Progress io.Writer
}

// ScaleRow is one run: n clients, one reverse rule each.
type ScaleRow struct {
	Clients int `json:"clients"`
	// ConnectSeconds is from starting every client at once to the last
	// one having its rules; GaveUp counts clients that stopped trying.
	ConnectSeconds float64 `json:"connect_s"`
	GaveUp         int     `json:"gave_up"`
	// ServerRSS is the server's resident memory with every client
	// connected, idle; PerClient is what it grew by per client over the
	// server with none.
	ServerRSS int64   `json:"server_rss"`
	PerClient float64 `json:"server_bytes_per_client"`
	// IdleCPUPer1000 is the server's CPU, in percent of one core, per
	// 1000 idle clients (every client connected, no requests).
	IdleCPUPer1000 float64 `json:"idle_cpu_pct_per_1000_clients"`
	// IdlePacketsPerClient is the UDP datagrams per second per client,
	// both ways, while idle (this machine's counters: run nothing else).
	IdlePacketsPerClient float64 `json:"idle_packets_per_s_per_client"`
	// ChangeMillis is from a one-rule change through the admin API to its
	// client having applied it; UpdatesSent is how many deltas the server
	// sent meanwhile (the periodic full syncs' snapshots are not counted).
	ChangeMillis float64 `json:"change_ms"`
	UpdatesSent  float64 `json:"updates_sent"`
}

// Scale connects each number of clients of o to a fresh server process and
// measures it (ScaleRow).
func Scale(ctx context.Context, o ScaleOptions) ([]ScaleRow, error) {
	if o.Binary == "" {
		return nil, errors.New("scale: no tunnel binary")
	}
	if o.Idle <= 0 {
		o.Idle = 10 * time.Second
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	var rows []ScaleRow
	for _, n := range o.Clients {
		row, err := scaleRun(ctx, o, n)
		if err != nil {
			return rows, fmt.Errorf("%d clients: %w", n, err)
		}
		fmt.Fprintf(o.Progress, "  clients %6d  connected in %.1fs (%d gave up)  server RSS %d MiB, %.1f KiB/client  idle CPU %.2f%% per 1000, %.2f packets/s per client  change applied in %.0f ms, %v update(s) sent\n",
			n, row.ConnectSeconds, row.GaveUp, row.ServerRSS>>20, row.PerClient/1024, row.IdleCPUPer1000, row.IdlePacketsPerClient, row.ChangeMillis, row.UpdatesSent)
		rows = append(rows, row)
	}
	return rows, nil
}

const (
	scaleAdminToken = "scale-admin-token"
	scaleHost       = "scale.test"
)

func scaleRun(ctx context.Context, o ScaleOptions, n int) (ScaleRow, error) {
	row := ScaleRow{Clients: n}
	dir, err := os.MkdirTemp("", "qtunnel-scale-")
	if err != nil {
		return row, err
	}
	defer os.RemoveAll(dir)
	tunnel, err := freeAddr("udp")
	if err != nil {
		return row, err
	}
	public, err := freeAddr("tcp")
	if err != nil {
		return row, err
	}
	adminAddr, err := freeAddr("tcp")
	if err != nil {
		return row, err
	}
	cert, err := transport.SelfSigned("127.0.0.1")
	if err != nil {
		return row, err
	}
	pin, _ := transport.CertificatePin(cert)
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := transport.WritePEM(cert, certFile, keyFile); err != nil {
		return row, err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "listen: %q\npublic_http: %q\ntls: {cert_file: %q, key_file: %q}\nadmin: {listen: %q, token: %q}\nlog: {level: warn}\n",
		tunnel, public, certFile, keyFile, adminAddr, scaleAdminToken)
	b.WriteString("clients:\n")
	for i := range n {
		fmt.Fprintf(&b, "  - {id: c%d, token_sha256: %s}\n", i, control.HashToken(scaleToken(i)))
	}
	b.WriteString("rules:\n")
	for i := range n {
		fmt.Fprintf(&b, "  - {id: r%d, client: c%d, direction: reverse, host: c%d.%s, upstream: \"http://127.0.0.1:9\"}\n", i, i, i, scaleHost)
	}
	conf := filepath.Join(dir, "server.yaml")
	if err := os.WriteFile(conf, []byte(b.String()), 0o600); err != nil {
		return row, err
	}
	srv := exec.Command(o.Binary, "server", "-config", conf)
	logs := lockedBuffer{mu: &sync.Mutex{}, b: new(bytes.Buffer)}
	srv.Stdout, srv.Stderr = logs, logs
	srv.Env = append(os.Environ(), "QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING=true")
	if err := srv.Start(); err != nil {
		return row, err
	}
	defer func() {
		_ = srv.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = srv.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = srv.Process.Kill()
			<-done
		}
	}()
	admin := func(method, path, body string) (*http.Response, error) {
		req, err := http.NewRequestWithContext(ctx, method, "http://"+adminAddr+path, strings.NewReader(body))
		if err != nil {
			return nil, err
		}
		req.Header.Set("Authorization", "Bearer "+scaleAdminToken)
		return http.DefaultClient.Do(req)
	}
	if err := waitFor(ctx, 60*time.Second, func() bool {
		resp, err := admin(http.MethodGet, "/healthz", "")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}); err != nil {
		return row, fmt.Errorf("server not up: %w\n%s", err, logs.b.String())
	}
	sp := proc{srv.Process.Pid}
	base, err := sp.rss()
	if err != nil {
		return row, err
	}

	// Every client at once, as after a server restart.
	fmt.Fprintf(o.Progress, "  clients %6d  connecting...\n", n)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	clients := make([]*gateway.Client, n)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	quiet := slog.New(slog.DiscardHandler)
	start := time.Now()
	for i := range n {
		cc := config.Client{ID: fmt.Sprintf("c%d", i), Token: scaleToken(i), Server: tunnel, ServerPin: pin}
		cc.Log.Level = "error"
		c, err := gateway.NewClient(cc, gateway.WithLogger(quiet))
		if err != nil {
			return row, err
		}
		clients[i] = c
		wg.Go(func() {
			if err := c.Run(ctx); err != nil && ctx.Err() == nil {
				errs <- err
			}
		})
	}
	for i, c := range clients {
		select {
		case <-c.Ready():
		case err := <-errs:
			return row, fmt.Errorf("client gave up: %w", err)
		case <-time.After(5 * time.Minute):
			return row, fmt.Errorf("client %d not connected after 5 minutes", i)
		case <-ctx.Done():
			return row, ctx.Err()
		}
	}
	row.ConnectSeconds = time.Since(start).Seconds()
	row.GaveUp = len(errs)

	// Idle: every client connected, no requests.
	if err := sleepCtx(ctx, 2*time.Second); err != nil {
		return row, err
	}
	c0, _ := sp.cpu()
	u0 := udpDatagrams()
	if err := sleepCtx(ctx, o.Idle); err != nil {
		return row, err
	}
	c1, _ := sp.cpu()
	row.IdlePacketsPerClient = float64(udpDatagrams()-u0) / o.Idle.Seconds() / float64(n)
	row.IdleCPUPer1000 = 100 * (c1 - c0).Seconds() / o.Idle.Seconds() * 1000 / float64(n)
	if row.ServerRSS, err = sp.rss(); err != nil {
		return row, err
	}
	row.PerClient = float64(row.ServerRSS-base) / float64(n)

	// One rule changes: how long until its client has it, and how many
	// updates were sent for it.
	sent := func() float64 {
		resp, err := admin(http.MethodGet, "/metrics", "")
		if err != nil {
			return -1
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var total float64
		for line := range strings.SplitSeq(string(b), "\n") {
			if strings.HasPrefix(line, `qtunnel_rule_updates_sent_total{kind="delta"}`) {
				var v float64
				if _, err := fmt.Sscanf(line[strings.LastIndexByte(line, ' ')+1:], "%g", &v); err == nil {
					total += v
				}
			}
		}
		return total
	}
	target := n / 2
	s0 := sent()
	t0 := time.Now()
	resp, err := admin(http.MethodPut, fmt.Sprintf("/rules/r%d", target),
		fmt.Sprintf(`{"id":"r%d","client":"c%d","direction":"reverse","host":"c%d.%s","path_prefix":"/changed","upstream":"http://127.0.0.1:9"}`, target, target, target, scaleHost))
	if err != nil {
		return row, err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return row, fmt.Errorf("rule change: %s", resp.Status)
	}
	if err := waitFor(ctx, time.Minute, func() bool {
		r := clients[target].Rules().ByID(fmt.Sprintf("r%d", target))
		return r != nil && r.PathPrefix == "/changed"
	}); err != nil {
		return row, fmt.Errorf("the change did not reach its client: %w", err)
	}
	row.ChangeMillis = float64(time.Since(t0).Microseconds()) / 1000
	row.UpdatesSent = sent() - s0
	return row, nil
}

// udpDatagrams is the machine's UDP datagrams sent so far (/proc/net/snmp
// and snmp6): on loopback, each one is also received once.
func udpDatagrams() int64 {
	var total int64
	for _, f := range []string{"/proc/net/snmp", "/proc/net/snmp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		lines := strings.Split(string(b), "\n")
		for i, l := range lines {
			if strings.HasPrefix(l, "Udp6OutDatagrams") {
				var v int64
				fmt.Sscanf(strings.TrimSpace(strings.TrimPrefix(l, "Udp6OutDatagrams")), "%d", &v)
				total += v
			}
			if strings.HasPrefix(l, "Udp: InDatagrams") && i+1 < len(lines) {
				head, vals := strings.Fields(l), strings.Fields(lines[i+1])
				for j, h := range head {
					if h == "OutDatagrams" && j < len(vals) {
						var v int64
						fmt.Sscanf(vals[j], "%d", &v)
						total += v
					}
				}
			}
		}
	}
	return total
}

func scaleToken(i int) string { return fmt.Sprintf("scale-token-%d", i) }

// waitFor polls cond every 2 ms until it holds, ctx ends or d passes.
func waitFor(ctx context.Context, d time.Duration, cond func() bool) error {
	deadline := time.Now().Add(d)
	t := time.NewTicker(2 * time.Millisecond)
	defer t.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %v", d)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
