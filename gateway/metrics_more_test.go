package gateway_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/config"
	"github.com/qtunnel/qtunnel/gateway"
	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/rules"
	"github.com/qtunnel/qtunnel/stages/decode"
)

// heldUpstream counts the connections it accepts, as net/http sees them,
// and keeps each /hold request until release gets a value (or is closed).
type heldUpstream struct {
	*httptest.Server
	conns   atomic.Int32
	held    chan struct{}
	release chan struct{}
}

func newHeldUpstream(t *testing.T) *heldUpstream {
	t.Helper()
	u := &heldUpstream{held: make(chan struct{}, 16), release: make(chan struct{}, 16)}
	u.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if r.URL.Path == "/hold" {
			u.held <- struct{}{}
			select {
			case <-u.release:
			case <-r.Context().Done():
			}
		}
		_, _ = w.Write([]byte("ok"))
	}))
	u.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			u.conns.Add(1)
		}
	}
	u.Start()
	t.Cleanup(u.Close)
	return u
}

// holdOne sends a /hold request in the background and returns once the
// upstream holds it; the returned channel gets the answer's status once
// the upstream is released.
func (u *heldUpstream) holdOne(t *testing.T, hc *http.Client, url, host string) <-chan int {
	t.Helper()
	status := make(chan int, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		req.Host = host
		resp, err := hc.Do(req)
		if err != nil {
			status <- 0
			return
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		status <- resp.StatusCode
	}()
	select {
	case <-u.held:
	case <-time.After(10 * time.Second):
		t.Fatal("the upstream got no /hold request within 10s")
	}
	return status
}

// TestMetricsPoolsAndStreams checks the egress pool and stream gauges of
// both sides against what the upstreams saw: after sequential requests
// over keep-alive, dials_total is the connections each upstream accepted
// (the warm ones: requests reuse them), all idle; while the upstream holds
// a request, one stream is open on each side and one pool connection is
// active on the egress side; after it, none.
func TestMetricsPoolsAndStreams(t *testing.T) {
	t.Parallel()
	revUp, fwdUp := newHeldUpstream(t), newHeldUpstream(t)
	p := startPair(t, pairOpts{
		rules: []rules.Rule{
			reverseRule("rev", appHost, revUp.URL),
			forwardRule("fwd", "127.0.0.1:0", fwdUp.URL),
		},
		serverMutate: func(c *config.Server) { withAdmin(&c.Common) },
		clientMutate: func(c *config.Client) { withAdmin(&c.Common) },
	})
	srvAdmin, cliAdmin := p.Server.AdminAddr(), p.Client.AdminAddr()
	hc := h1Client(t)
	fwd := p.forwardURL(t, "127.0.0.1:0", "")
	const n = 10
	for range n {
		resp, body := get(t, hc, p.publicURL("/ok"), appHost)
		require.Equal(t, http.StatusOK, resp.StatusCode, body)
		resp, body = get(t, hc, fwd+"/ok", "")
		require.Equal(t, http.StatusOK, resp.StatusCode, body)
	}
	revConns, fwdConns := float64(revUp.conns.Load()), float64(fwdUp.conns.Load())
	require.Positive(t, revConns)
	require.Positive(t, fwdConns)
	t.Logf("%d requests each way; upstream connections: reverse %v, forward %v", n, revConns, fwdConns)

	// The pools are the egress sides': the client's for reverse rules, the
	// server's for forward rules.
	rev, fwdRule := lbl("rule", "rev"), lbl("rule", "fwd")
	idleAll := func(mfsSide string, addr net.Addr, rule map[string]string, conns float64) map[string]*dto.MetricFamily {
		return settle(t, mfsSide, addr, []want{
			{"qtunnel_egress_pool_dials_total", rule, conns},
			{"qtunnel_egress_pool_idle", rule, conns},
			{"qtunnel_egress_pool_active", rule, 0},
			{"qtunnel_tunnel_streams_active", nil, 0},
		})
	}
	cmfs := idleAll("client", cliAdmin, rev, revConns)
	smfs := idleAll("server", srvAdmin, fwdRule, fwdConns)
	require.Len(t, cmfs["qtunnel_egress_pool_dials_total"].GetMetric()[0].GetLabel(), 1, "the rule is the only label")
	require.Zero(t, sum(cmfs, "qtunnel_egress_pool_dials_total", fwdRule), "the client does not dial forward rules' upstreams")
	require.Zero(t, sum(smfs, "qtunnel_egress_pool_dials_total", rev), "the server does not dial reverse rules' upstreams")
	require.Len(t, smfs["qtunnel_egress_pool_dials_total"].GetMetric(), 1)
	require.Len(t, cmfs["qtunnel_egress_pool_dials_total"].GetMetric(), 1)

	// A reverse request held by its upstream: a stream open on each side,
	// a pool connection in use on the client.
	done := revUp.holdOne(t, hc, p.publicURL("/hold"), appHost)
	settle(t, "server", srvAdmin, []want{{"qtunnel_tunnel_streams_active", nil, 1}})
	settle(t, "client", cliAdmin, []want{
		{"qtunnel_tunnel_streams_active", nil, 1},
		{"qtunnel_egress_pool_active", rev, 1},
		{"qtunnel_egress_pool_idle", rev, revConns - 1},
		{"qtunnel_egress_pool_dials_total", rev, revConns},
	})
	revUp.release <- struct{}{}
	require.Equal(t, http.StatusOK, <-done)
	idleAll("client", cliAdmin, rev, revConns)
	settle(t, "server", srvAdmin, []want{{"qtunnel_tunnel_streams_active", nil, 0}})

	// The same the other way.
	done = fwdUp.holdOne(t, hc, fwd+"/hold", "")
	settle(t, "client", cliAdmin, []want{{"qtunnel_tunnel_streams_active", nil, 1}})
	settle(t, "server", srvAdmin, []want{
		{"qtunnel_tunnel_streams_active", nil, 1},
		{"qtunnel_egress_pool_active", fwdRule, 1},
		{"qtunnel_egress_pool_idle", fwdRule, fwdConns - 1},
	})
	fwdUp.release <- struct{}{}
	require.Equal(t, http.StatusOK, <-done)
	idleAll("server", srvAdmin, fwdRule, fwdConns)
	settle(t, "client", cliAdmin, []want{{"qtunnel_tunnel_streams_active", nil, 0}})
	require.EqualValues(t, revConns, revUp.conns.Load(), "held requests rode kept connections")
	require.EqualValues(t, fwdConns, fwdUp.conns.Load())

	// A rule removed: its pool series go.
	_, err := p.Server.Rules().Delete("rev")
	require.NoError(t, err)
	version := p.Server.Rules().Table().Version()
	eventually(t, 10*time.Second, func() bool { return p.Client.AppliedVersion() == version }, "client applies the removal")
	require.NotContains(t, scrapeMetrics(t, cliAdmin), "qtunnel_egress_pool_dials_total")
}

// TestMetricsRefusedStreamIsOverload: a stream refused because every
// worker of the client is busy is counted as an overload error on the
// client (the refusing side), as well as on the server that answered 503.
func TestMetricsRefusedStreamIsOverload(t *testing.T) {
	t.Parallel()
	up := newHeldUpstream(t)
	p := startPair(t, pairOpts{
		rules:        []rules.Rule{reverseRule("rev", appHost, up.URL)},
		serverMutate: func(c *config.Server) { withAdmin(&c.Common) },
		clientMutate: func(c *config.Client) {
			withAdmin(&c.Common)
			// One worker, while the server may open more streams: the
			// second at once is refused by the worker pool.
			c.Limits.MaxConcurrentStreams = 1
			c.QUIC.MaxStreams = 8
		},
	})
	hc := h1Client(t)
	done := up.holdOne(t, hc, p.publicURL("/hold"), appHost)
	resp, body := get(t, hc, p.publicURL("/ok"), appHost)
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, body)
	require.NotEmpty(t, resp.Header.Get("Retry-After"))
	settle(t, "client", p.Client.AdminAddr(), []want{
		{"qtunnel_errors_total", lbl("side", "egress", "kind", "overload"), 1},
		{"qtunnel_errors_total", nil, 1},
		{"qtunnel_tunnel_streams_active", nil, 1}, // the held one; the refused one never counted
	})
	settle(t, "server", p.Server.AdminAddr(), []want{
		{"qtunnel_errors_total", lbl("side", "ingress", "kind", "overload"), 1},
		{"qtunnel_tunnel_streams_active", nil, 1},
	})
	up.release <- struct{}{}
	require.Equal(t, http.StatusOK, <-done)
	settle(t, "client", p.Client.AdminAddr(), []want{{"qtunnel_tunnel_streams_active", nil, 0}})
	settle(t, "server", p.Server.AdminAddr(), []want{{"qtunnel_tunnel_streams_active", nil, 0}})
}

// TestMetricsStagePanicIsInternal: a panic in a stage of the egress chain
// is recovered by the stream server, which resets the stream (the user
// gets a 502 at once) and counts an internal error on that side; its
// stream is no longer counted open nor its request in flight.
func TestMetricsStagePanicIsInternal(t *testing.T) {
	t.Parallel()
	up := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) }))
	panicker := pipeline.StageFunc(func(ctx context.Context, x *pipeline.Exchange, next pipeline.Handler) error {
		if x.Head.Path == "/panic" {
			panic("test: a stage panics")
		}
		return next.Handle(ctx, x)
	})
	p := startPair(t, pairOpts{
		rules:        []rules.Rule{reverseRule("rev", appHost, up.URL)},
		serverMutate: func(c *config.Server) { withAdmin(&c.Common) },
		clientMutate: func(c *config.Client) { withAdmin(&c.Common) },
		// Right after decode, which reads the path from the stream.
		clientOpts: []gateway.Option{gateway.WithEgressEdits(pipeline.After(decode.Name, pipeline.Name("panicker", panicker)))},
	})
	hc := h1Client(t)
	// The panicking side resets the stream: the user gets a 502 for it,
	// not a 504 once the request timeout has given up on the answer.
	resp, body := get(t, hc, p.publicURL("/panic"), appHost)
	require.Equal(t, http.StatusBadGateway, resp.StatusCode, body)
	resp, body = get(t, hc, p.publicURL("/ok"), appHost)
	require.Equal(t, http.StatusOK, resp.StatusCode, body)
	settle(t, "client", p.Client.AdminAddr(), []want{
		{"qtunnel_errors_total", lbl("side", "egress", "kind", "internal"), 1},
		{"qtunnel_errors_total", nil, 1},
		{"qtunnel_tunnel_streams_active", nil, 0},
		{"qtunnel_requests_in_flight", lbl("side", "egress"), 0}, // the panic did not leave it raised
	})
	settle(t, "server", p.Server.AdminAddr(), []want{{"qtunnel_tunnel_streams_active", nil, 0}})
}
