package gateway_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/config"
	"github.com/qtunnel/qtunnel/gateway"
	"github.com/qtunnel/qtunnel/internal/e2etest"
	"github.com/qtunnel/qtunnel/rules"
)

// Issue 7 (observability) acceptance: what an operator sees on /metrics and
// /readyz of both sides, and that info logs stay quiet under traffic.

// metricFamilies are every family metrics.New registers under the qtunnel
// namespace (the metrics package pins their number at 27).
var metricFamilies = []string{
	"qtunnel_info",
	"qtunnel_requests_total",
	"qtunnel_request_duration_seconds",
	"qtunnel_requests_in_flight",
	"qtunnel_errors_total",
	"qtunnel_bytes_received_total",
	"qtunnel_bytes_sent_total",
	"qtunnel_stage_rejects_total",
	"qtunnel_breaker_state",
	"qtunnel_egress_pool_idle",
	"qtunnel_egress_pool_active",
	"qtunnel_egress_pool_dials_total",
	"qtunnel_config_applies_total",
	"qtunnel_tunnel_connections",
	"qtunnel_tunnel_streams_active",
	"qtunnel_config_version",
	"qtunnel_config_apply_duration_seconds",
	"qtunnel_reconnects_total",
	"qtunnel_rule_updates_sent_total",
	"qtunnel_sessions",
	"qtunnel_quic_smoothed_rtt_seconds",
	"qtunnel_quic_packets_lost",
	"qtunnel_quic_congestion_window_bytes",
	"qtunnel_quic_bytes_sent_total",
	"qtunnel_quic_bytes_received_total",
	"qtunnel_auth_failures_total",
	"qtunnel_auth_refused_total",
	"qtunnel_ingress_abuse_total",
}

// withAdmin turns the admin listener on, on a loopback port of the
// system's choosing.
func withAdmin(c *config.Common) { c.Admin.Listen = "127.0.0.1:0" }

// adminClient keeps no connection open between requests: an admin
// listener shut down by a test leaves no client goroutine behind.
var adminClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}

// adminGet fetches path from an admin listener.
func adminGet(t *testing.T, addr net.Addr, path string) (int, string) {
	t.Helper()
	require.NotNil(t, addr, "admin listener not started")
	resp, err := adminClient.Get("http://" + addr.String() + path)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(b)
}

// scrapeMetrics reads /metrics of an admin listener in the text format.
func scrapeMetrics(t *testing.T, addr net.Addr) map[string]*dto.MetricFamily {
	t.Helper()
	status, body := adminGet(t, addr, "/metrics")
	require.Equal(t, http.StatusOK, status, body)
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(strings.NewReader(body))
	require.NoError(t, err)
	return mfs
}

// sample is the value of a counter or gauge, or the sample count of a
// histogram.
func sample(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Histogram != nil:
		return float64(m.Histogram.GetSampleCount())
	case m.Untyped != nil:
		return m.Untyped.GetValue()
	}
	return 0
}

// sum adds up the samples of family name whose labels include every pair
// of match (other labels, such as protocol, may be anything).
func sum(mfs map[string]*dto.MetricFamily, name string, match map[string]string) float64 {
	var total float64
	for _, m := range mfs[name].GetMetric() {
		have := map[string]string{}
		for _, lp := range m.GetLabel() {
			have[lp.GetName()] = lp.GetValue()
		}
		ok := true
		for k, v := range match {
			if have[k] != v {
				ok = false
				break
			}
		}
		if ok {
			total += sample(m)
		}
	}
	return total
}

// want is one expected sum: family, labels to match, value.
type want struct {
	name  string
	match map[string]string
	value float64
}

func (w want) String() string { return fmt.Sprintf("%s%v = %v", w.name, w.match, w.value) }

// mismatches lists the expectations mfs does not meet.
func mismatches(mfs map[string]*dto.MetricFamily, wants []want) []string {
	var bad []string
	for _, w := range wants {
		if got := sum(mfs, w.name, w.match); got != w.value {
			bad = append(bad, fmt.Sprintf("%s, got %v", w, got))
		}
	}
	return bad
}

// settle scrapes addr until every expectation holds, or fails after 30s
// with what was still off: the observe stage counts an exchange when its
// chain returns, which may be just after the user got the answer.
func settle(t *testing.T, side string, addr net.Addr, wants []want) map[string]*dto.MetricFamily {
	t.Helper()
	deadline := time.NewTimer(30 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		mfs := scrapeMetrics(t, addr)
		bad := mismatches(mfs, wants)
		if len(bad) == 0 {
			return mfs
		}
		select {
		case <-deadline.C:
			t.Fatalf("%s /metrics did not settle within 30s:\n  %s", side, strings.Join(bad, "\n  "))
		case <-tick.C:
		}
	}
}

func lbl(kv ...string) map[string]string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

// TestObservabilityMetricsBothSides drives known traffic through both
// tunnels and checks the exact counts each side's /metrics reports.
func TestObservabilityMetricsBothSides(t *testing.T) {
	t.Parallel()
	okBody := bytes.Repeat([]byte("o"), 1000)
	fwdBody := bytes.Repeat([]byte("f"), 2000)
	missingBody := []byte("nothing here\n") // 13 bytes
	up := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		var body []byte
		status := http.StatusOK
		switch r.URL.Path {
		case "/ok":
			body = okBody
		case "/fwd":
			body = fwdBody
		default:
			body, status = missingBody, http.StatusNotFound
		}
		w.Header().Set("Content-Length", fmt.Sprint(len(body)))
		w.WriteHeader(status)
		_, _ = w.Write(body)
	}))
	const downHost = "down.test"
	p := startPair(t, pairOpts{
		rules: []rules.Rule{
			reverseRule("rev", appHost, up.URL),
			reverseRule("down", downHost, "http://"+closedPort(t)),
			forwardRule("fwd", "127.0.0.1:0", up.URL),
		},
		serverMutate: func(c *config.Server) { withAdmin(&c.Common) },
		clientMutate: func(c *config.Client) { withAdmin(&c.Common) },
	})
	// A change after the first sync, so that the version is not the first
	// one and the client's second apply is a delta.
	_, err := p.Server.Rules().Put(reverseRule("extra", "extra.test", up.URL))
	require.NoError(t, err)
	version := p.Server.Rules().Table().Version()
	require.Greater(t, version, uint64(1))
	eventually(t, 10*time.Second, func() bool { return p.Client.AppliedVersion() == version }, "client applies the new version")

	hc := h1Client(t)
	send := func(method, url, host string, body []byte) (int, string) {
		t.Helper()
		resp, b := do(t, hc, newRequest(t, method, url, host, bytes.NewReader(body)))
		return resp.StatusCode, b
	}
	const (
		revOK, revMissing, fwdOK, noRoute = 7, 3, 5, 2
		revReq, fwdReq                    = 300, 500 // request body sizes
	)
	revBody, fwdReqBody := bytes.Repeat([]byte("r"), revReq), bytes.Repeat([]byte("q"), fwdReq)
	for range revOK {
		status, body := send(http.MethodPost, p.publicURL("/ok"), appHost, revBody)
		require.Equal(t, http.StatusOK, status, body)
		require.Equal(t, string(okBody), body)
	}
	for range revMissing {
		status, body := send(http.MethodGet, p.publicURL("/missing"), appHost, nil)
		require.Equal(t, http.StatusNotFound, status, body)
		require.Equal(t, string(missingBody), body)
	}
	for range fwdOK {
		status, body := send(http.MethodPost, p.forwardURL(t, "127.0.0.1:0", "/fwd"), "", fwdReqBody)
		require.Equal(t, http.StatusOK, status, body)
		require.Equal(t, string(fwdBody), body)
	}
	for range noRoute {
		status, body := send(http.MethodGet, p.publicURL("/"), "nowhere.test", nil)
		require.Equal(t, http.StatusNotFound, status, body)
	}
	// The upstream of "down" refuses connections: five 502s open its
	// breaker (five consecutive failures, the default), the sixth request
	// is refused by the breaker with 503.
	var downStatuses []int
	for range 6 {
		status, _ := send(http.MethodGet, p.publicURL("/"), downHost, nil)
		downStatuses = append(downStatuses, status)
	}
	require.Equal(t, []int{502, 502, 502, 502, 502, 503}, downStatuses)

	// Body bytes only: the metric counts bodies, not heads or frames.
	revIn, revOut := float64(revOK*revReq), float64(revOK*len(okBody)+revMissing*len(missingBody))
	fwdIn, fwdOut := float64(fwdOK*fwdReq), float64(fwdOK*len(fwdBody))

	// What both sides count of the traffic that crossed both: revSide is
	// the side the reverse rule's requests cross on this process, fwdSide
	// the forward rule's.
	traffic := func(revSide, fwdSide string) []want {
		return []want{
			{"qtunnel_requests_total", lbl("rule", "rev", "direction", "reverse", "side", revSide, "code_class", "2xx"), revOK},
			{"qtunnel_requests_total", lbl("rule", "rev", "direction", "reverse", "side", revSide, "code_class", "4xx"), revMissing},
			{"qtunnel_requests_total", lbl("rule", "rev"), revOK + revMissing},
			{"qtunnel_requests_total", lbl("rule", "fwd", "direction", "forward", "side", fwdSide, "code_class", "2xx"), fwdOK},
			{"qtunnel_requests_total", lbl("rule", "fwd"), fwdOK},
			{"qtunnel_request_duration_seconds", lbl("rule", "rev", "side", revSide), revOK + revMissing},
			{"qtunnel_request_duration_seconds", lbl("rule", "fwd", "side", fwdSide), fwdOK},
			{"qtunnel_bytes_received_total", lbl("rule", "rev", "direction", "reverse", "side", revSide), revIn},
			{"qtunnel_bytes_sent_total", lbl("rule", "rev", "direction", "reverse", "side", revSide), revOut},
			{"qtunnel_bytes_received_total", lbl("rule", "fwd", "direction", "forward", "side", fwdSide), fwdIn},
			{"qtunnel_bytes_sent_total", lbl("rule", "fwd", "direction", "forward", "side", fwdSide), fwdOut},
			{"qtunnel_bytes_received_total", nil, revIn + fwdIn},
			{"qtunnel_bytes_sent_total", nil, revOut + fwdOut},
			{"qtunnel_requests_in_flight", nil, 0},
		}
	}
	server := append(traffic("ingress", "egress"), []want{
		{"qtunnel_requests_total", lbl("rule", "none", "direction", "none", "side", "ingress", "code_class", "4xx"), noRoute},
		{"qtunnel_requests_total", lbl("rule", "down", "side", "ingress", "code_class", "5xx"), 6},
		{"qtunnel_requests_total", nil, revOK + revMissing + fwdOK + noRoute + 6},
		// The route stage refused the unknown host; the far side's ERROR
		// frames are upstream errors here, the breaker's 503 overload.
		{"qtunnel_stage_rejects_total", lbl("stage", "route", "reason", "404"), noRoute},
		{"qtunnel_stage_rejects_total", nil, noRoute},
		{"qtunnel_errors_total", lbl("side", "ingress", "kind", "rejected"), noRoute},
		{"qtunnel_errors_total", lbl("side", "ingress", "kind", "upstream"), 5},
		{"qtunnel_errors_total", lbl("side", "ingress", "kind", "overload"), 1},
		{"qtunnel_errors_total", nil, noRoute + 6},
		{"qtunnel_config_version", nil, float64(version)},
		{"qtunnel_config_applies_total", lbl("result", "ok"), 2}, // the start, the Put
		{"qtunnel_config_applies_total", lbl("result", "failed"), 0},
		{"qtunnel_config_apply_duration_seconds", nil, 2},
		{"qtunnel_tunnel_connections", nil, 1},
		{"qtunnel_tunnel_streams_active", nil, 0},
		{"qtunnel_sessions", nil, 1},
		{"qtunnel_reconnects_total", nil, 0},
		{"qtunnel_rule_updates_sent_total", nil, 2}, // the snapshot, the Put's delta
		{"qtunnel_info", lbl("role", "server"), 1},
	}...)
	client := append(traffic("egress", "ingress"), []want{
		{"qtunnel_requests_total", lbl("rule", "down", "side", "egress", "code_class", "5xx"), 6},
		{"qtunnel_requests_total", nil, revOK + revMissing + fwdOK + 6},
		{"qtunnel_stage_rejects_total", lbl("stage", "egress", "reason", "502"), 5},
		{"qtunnel_stage_rejects_total", lbl("stage", "breaker", "reason", "503"), 1},
		{"qtunnel_stage_rejects_total", nil, 6},
		{"qtunnel_errors_total", lbl("side", "egress", "kind", "rejected"), 5},
		{"qtunnel_errors_total", lbl("side", "egress", "kind", "overload"), 1},
		{"qtunnel_errors_total", nil, 6},
		{"qtunnel_breaker_state", lbl("upstream_rule", "down"), 2},
		{"qtunnel_config_version", nil, float64(version)},
		{"qtunnel_config_applies_total", lbl("result", "ok"), 2}, // the snapshot, the delta
		{"qtunnel_config_applies_total", lbl("result", "failed"), 0},
		{"qtunnel_config_apply_duration_seconds", nil, 2},
		{"qtunnel_tunnel_connections", nil, 1},
		{"qtunnel_tunnel_streams_active", nil, 0},
		{"qtunnel_reconnects_total", nil, 0},
		{"qtunnel_info", lbl("role", "client"), 1},
	}...)
	smfs := settle(t, "server", p.Server.AdminAddr(), server)
	cmfs := settle(t, "client", p.Client.AdminAddr(), client)
	// The wire carries at least the bodies: the server sends the reverse
	// requests' and the forward answers', the client the others.
	for _, c := range []struct {
		side         string
		mfs          map[string]*dto.MetricFamily
		sent, recved float64
	}{{"server", smfs, revIn + fwdOut, revOut + fwdIn}, {"client", cmfs, revOut + fwdIn, revIn + fwdOut}} {
		for _, name := range []string{"qtunnel_quic_smoothed_rtt_seconds", "qtunnel_quic_packets_lost",
			"qtunnel_quic_congestion_window_bytes", "qtunnel_quic_bytes_sent_total", "qtunnel_quic_bytes_received_total"} {
			ms := c.mfs[name].GetMetric()
			require.Len(t, ms, 1, "%s: %s: one series, the one connection", c.side, name)
			require.Len(t, ms[0].GetLabel(), 1, "%s: %s", c.side, name)
			require.Equal(t, "client", ms[0].GetLabel()[0].GetName(), "%s: %s", c.side, name)
			require.Equal(t, clientID, ms[0].GetLabel()[0].GetValue(), "%s: %s", c.side, name)
		}
		require.Greater(t, sum(c.mfs, "qtunnel_quic_smoothed_rtt_seconds", nil), 0.0, c.side)
		require.Greater(t, sum(c.mfs, "qtunnel_quic_congestion_window_bytes", nil), 0.0, c.side)
		require.Greater(t, sum(c.mfs, "qtunnel_quic_bytes_sent_total", nil), c.sent, c.side)
		require.Greater(t, sum(c.mfs, "qtunnel_quic_bytes_received_total", nil), c.recved, c.side)
		require.Contains(t, c.mfs, "go_goroutines", c.side)
	}

	// Every family is exported, except the one no event of this test sets:
	// the server's breaker never changed state (it only guards the forward
	// rule's upstream, which answered). The egress pools report the rules
	// each side serves as the egress side (gateway/metrics_more_test.go
	// checks their counts).
	for _, c := range []struct {
		side   string
		mfs    map[string]*dto.MetricFamily
		absent []string
	}{
		{"server", smfs, []string{"qtunnel_breaker_state"}},
		{"client", cmfs, []string{"qtunnel_rule_updates_sent_total"}}, // a server sends them
	} {
		var missing, unexpected []string
		for _, name := range metricFamilies {
			_, ok := c.mfs[name]
			switch {
			case !ok && !slices.Contains(c.absent, name):
				missing = append(missing, name)
			case ok && slices.Contains(c.absent, name):
				unexpected = append(unexpected, name)
			}
		}
		require.Empty(t, missing, "%s: families missing from /metrics", c.side)
		require.Empty(t, unexpected, "%s: families now exported: update this test and docs/OPERATIONS.md", c.side)
		for name := range c.mfs {
			if strings.HasPrefix(name, "qtunnel_") {
				require.Contains(t, metricFamilies, name, "%s: family not listed here", c.side)
			}
		}
	}
	t.Logf("server: %s", strings.Join(summary(smfs), "; "))
	t.Logf("client: %s", strings.Join(summary(cmfs), "; "))

	// A removed rule's series go from both sides; the others stay.
	_, err = p.Server.Rules().Delete("down")
	require.NoError(t, err)
	version = p.Server.Rules().Table().Version()
	for _, side := range []struct {
		name string
		addr net.Addr
	}{{"server", p.Server.AdminAddr()}, {"client", p.Client.AdminAddr()}} {
		// The version is recorded once the removal is applied, after the
		// series are forgotten.
		mfs := settle(t, side.name, side.addr, []want{
			{"qtunnel_config_version", nil, float64(version)},
			{"qtunnel_requests_total", lbl("rule", "rev"), revOK + revMissing},
		})
		for name, mf := range mfs {
			for _, m := range mf.GetMetric() {
				for _, lp := range m.GetLabel() {
					require.False(t, (lp.GetName() == "rule" || lp.GetName() == "upstream_rule") && lp.GetValue() == "down",
						"%s: %s still has a series of the removed rule", side.name, name)
				}
			}
		}
	}
}

// summary renders the request, byte and error counts of a scrape for the
// test log.
func summary(mfs map[string]*dto.MetricFamily) []string {
	var out []string
	for _, name := range []string{"qtunnel_requests_total", "qtunnel_bytes_received_total", "qtunnel_bytes_sent_total",
		"qtunnel_errors_total", "qtunnel_stage_rejects_total", "qtunnel_config_version", "qtunnel_tunnel_connections"} {
		for _, m := range mfs[name].GetMetric() {
			if v := sample(m); v != 0 || name == "qtunnel_tunnel_connections" {
				var ls []string
				for _, lp := range m.GetLabel() {
					ls = append(ls, lp.GetName()+"="+lp.GetValue())
				}
				out = append(out, fmt.Sprintf("%s{%s} %v", strings.TrimPrefix(name, "qtunnel_"), strings.Join(ls, ","), v))
			}
		}
	}
	return out
}

// freeUDPAddr returns a loopback UDP address nothing listens on, for a
// server that starts later.
// runningClient is a client whose Run is in a goroutine.
type runningClient struct {
	*gateway.Client
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

func runClient(t *testing.T, cc config.Client, opts ...gateway.Option) *runningClient {
	t.Helper()
	cc.SetDefaults()
	require.NoError(t, cc.Validate())
	cl, err := gateway.NewClient(cc, append([]gateway.Option{gateway.WithLogger(testLogger(t))}, opts...)...)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	rc := &runningClient{Client: cl, cancel: cancel, done: make(chan error, 1)}
	go func() { rc.done <- cl.Run(ctx) }()
	t.Cleanup(func() { rc.stop(t) })
	return rc
}

// stop cancels the client and checks that it stopped cleanly.
func (rc *runningClient) stop(t *testing.T) {
	rc.once.Do(func() {
		rc.cancel()
		select {
		case err := <-rc.done:
			require.NoError(t, err, "client stops cleanly")
		case <-time.After(15 * time.Second):
			t.Fatal("client still running 15s after cancel")
		}
	})
}

// adminAddr waits for the client's admin listener, which Run starts.
func (rc *runningClient) adminAddr(t *testing.T) net.Addr {
	t.Helper()
	eventually(t, 10*time.Second, func() bool { return rc.AdminAddr() != nil }, "client admin listener starts")
	return rc.AdminAddr()
}

// readyz waits until /readyz at addr answers status, and returns the body.
func readyz(t *testing.T, side string, addr net.Addr, status int) string {
	t.Helper()
	var got int
	var body string
	eventually(t, 10*time.Second, func() bool {
		got, body = adminGet(t, addr, "/readyz")
		return got == status
	}, fmt.Sprintf("%s /readyz answers %d (last: %d %q)", side, status, got, body))
	return strings.TrimSpace(body)
}

// TestObservabilityReadyz follows both sides' /readyz through a client's
// start before the server, the server's start, the client leaving, a new
// client, and the server stopping.
//
// Client: ready once connected with its first rules applied; not ready
// while the tunnel is down. Server: ready while serving with at least one
// client connected (reverse rules answer nothing without one).
func TestObservabilityReadyz(t *testing.T) {
	t.Parallel()
	up := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) }))
	sc := serverConfig([]rules.Rule{reverseRule("rev", appHost, up.URL)})
	sc.Listen = e2etest.FreeAddr(t, "udp")
	withAdmin(&sc.Common)
	sc.SetDefaults()
	require.NoError(t, sc.Validate())
	srv, err := gateway.NewServer(sc, gateway.WithLogger(testLogger(t)))
	require.NoError(t, err)
	cc := clientConfig(sc.Listen, srv.Pin())
	withAdmin(&cc.Common)

	// 1. The server is not up: the client is not ready.
	c1 := runClient(t, cc)
	c1Admin := c1.adminAddr(t)
	status, body := adminGet(t, c1Admin, "/readyz")
	require.Equal(t, http.StatusServiceUnavailable, status)
	require.Contains(t, body, "not connected")
	require.Zero(t, c1.AppliedVersion())
	status, _ = adminGet(t, c1Admin, "/healthz")
	require.Equal(t, http.StatusOK, status, "live while not ready")

	// 2. The server starts; the client connects and applies its rules.
	require.NoError(t, srv.Start(context.Background()))
	var stopped bool
	stopServer := func() {
		if stopped {
			return
		}
		stopped = true
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		require.NoError(t, srv.Shutdown(ctx))
	}
	t.Cleanup(stopServer)
	srvAdmin := srv.AdminAddr()
	require.Equal(t, "ready", readyz(t, "client", c1Admin, http.StatusOK))
	require.NotZero(t, c1.AppliedVersion(), "ready means rules applied")
	require.Equal(t, "ready", readyz(t, "server", srvAdmin, http.StatusOK))

	// 3. The only client leaves: the server is not ready.
	c1.stop(t)
	require.Contains(t, readyz(t, "server", srvAdmin, http.StatusServiceUnavailable), "no client is connected")

	// 4. A client connects again: both ready.
	c2 := runClient(t, cc)
	c2Admin := c2.adminAddr(t)
	readyz(t, "client", c2Admin, http.StatusOK)
	readyz(t, "server", srvAdmin, http.StatusOK)

	// 5. The server stops: the tunnel is down, the client is not ready
	// (and still live).
	stopServer()
	require.Contains(t, readyz(t, "client", c2Admin, http.StatusServiceUnavailable), "not connected")
	status, _ = adminGet(t, c2Admin, "/healthz")
	require.Equal(t, http.StatusOK, status)
	c2.stop(t)
}

// TestObservabilityQuietLogs proxies 10,000 requests, half through each
// tunnel, one in ten of them answered 404 (by the upstream, or by the
// server's route stage for an unknown host), with both sides logging at
// info, and checks that not one record is written while they run (S8):
// requests, failed ones included, are logged at debug only.
func TestObservabilityQuietLogs(t *testing.T) {
	t.Parallel()
	const (
		total   = 10000
		workers = 32
	)
	up := upstream(t, okOrMissing)
	srvLog, cliLog := newRecordKeeper(slog.LevelInfo), newRecordKeeper(slog.LevelInfo)
	p := startPair(t, pairOpts{
		rules: []rules.Rule{
			reverseRule("rev", appHost, up.URL),
			forwardRule("fwd", "127.0.0.1:0", up.URL),
		},
		serverMutate: func(c *config.Server) { c.Log.Level = "info" },
		clientMutate: func(c *config.Client) { c.Log.Level = "info" },
		serverOpts:   []gateway.Option{gateway.WithLogger(slog.New(srvLog))},
		clientOpts:   []gateway.Option{gateway.WithLogger(slog.New(cliLog))},
	})
	// Start-up is logged, and ends on the server when the client reports
	// its rules applied, which may be after the client is ready.
	eventually(t, 10*time.Second, func() bool { return srvLog.has("client applied rules") }, "server logs the client's first apply")
	require.True(t, cliLog.has("rules applied"))
	srvBefore, cliBefore := len(srvLog.records()), len(cliLog.records())

	tr := &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: workers, MaxConnsPerHost: workers}
	t.Cleanup(tr.CloseIdleConnections)
	hc := &http.Client{Transport: tr, Timeout: 60 * time.Second}
	bases := []struct{ url, host string }{
		{p.publicURL(""), appHost},
		{p.forwardURL(t, "127.0.0.1:0", ""), ""},
	}
	jobs := make(chan int)
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	start := time.Now()
	for w := range workers {
		base := bases[w%2] // 16 workers each way
		wg.Go(func() {
			for i := range jobs {
				url, host, want := base.url+"/q", base.host, http.StatusOK
				switch i % 20 {
				case 0: // the upstream's own 404
					url, want = base.url+"/missing", http.StatusNotFound
				case 10: // a 404 from route on the server (reverse), or the upstream's (forward)
					if host != "" {
						host, want = "nowhere.test", http.StatusNotFound
					} else {
						url, want = base.url+"/missing", http.StatusNotFound
					}
				}
				req, err := http.NewRequest(http.MethodGet, url, nil)
				if err == nil {
					req.Host = host
					var resp *http.Response
					if resp, err = hc.Do(req); err == nil {
						_, err = io.Copy(io.Discard, resp.Body)
						_ = resp.Body.Close()
						if err == nil && resp.StatusCode != want {
							err = fmt.Errorf("%s (host %q): status %d, want %d", url, host, resp.StatusCode, want)
						}
					}
				}
				if err != nil {
					select {
					case errs <- err:
					default:
					}
				}
			}
		})
	}
	for i := range total {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	took := time.Since(start)
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	t.Logf("%d requests (%d each way) with %d workers in %v", total, total/2, workers, took.Round(time.Millisecond))

	srvRecs, cliRecs := srvLog.records()[srvBefore:], cliLog.records()[cliBefore:]
	require.Empty(t, srvRecs, "server logged at info or above during the traffic")
	require.Empty(t, cliRecs, "client logged at info or above during the traffic")
	t.Logf("records at start-up (not counted): server %d, client %d", srvBefore, cliBefore)
}

// TestObservabilityQuietAcrossFullSyncs: a periodic full sync that changes
// nothing is not a state change, so it is logged at debug on both sides,
// not at info.
func TestObservabilityQuietAcrossFullSyncs(t *testing.T) {
	t.Parallel()
	up := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	srvLog, cliLog := newRecordKeeper(slog.LevelDebug), newRecordKeeper(slog.LevelDebug)
	startPair(t, pairOpts{
		rules:        []rules.Rule{reverseRule("rev", appHost, up.URL)},
		serverMutate: func(c *config.Server) { c.Sync.FullSyncInterval = 50 * time.Millisecond },
		serverOpts:   []gateway.Option{gateway.WithLogger(slog.New(srvLog))},
		clientOpts:   []gateway.Option{gateway.WithLogger(slog.New(cliLog))},
	})
	eventually(t, 10*time.Second, func() bool { return srvLog.has("client applied rules") }, "server logs the client's first apply")
	info := func(h *recordKeeper) []logRecord {
		var out []logRecord
		for _, r := range h.records() {
			if r.level >= slog.LevelInfo {
				out = append(out, r)
			}
		}
		return out
	}
	srvBefore, cliBefore := len(info(srvLog)), len(info(cliLog))
	syncs := func() int {
		n := 0
		for _, r := range cliLog.records() {
			if r.level == slog.LevelDebug && r.msg == "rules applied" {
				n++
			}
		}
		return n
	}
	eventually(t, 10*time.Second, func() bool { return syncs() >= 3 }, "three full syncs re-apply the same rules")
	require.Empty(t, info(srvLog)[srvBefore:], "server records at info or above during full syncs")
	require.Empty(t, info(cliLog)[cliBefore:], "client records at info or above during full syncs")
}
