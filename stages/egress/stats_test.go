package egress_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/pipeline/pipelinetest"
	"github.com/qtunnel/qtunnel/rules"
	"github.com/qtunnel/qtunnel/stages/egress"
)

// poolStats is one row of Pool.Stats.
type poolStats struct {
	idle, active int
	dials        uint64
}

// statsOf returns what p.Stats reports, by rule, failing on a rule
// reported twice.
func statsOf(t *testing.T, p *egress.Pool) map[string]poolStats {
	t.Helper()
	out := map[string]poolStats{}
	p.Stats(func(rule string, idle, active int, dials uint64) {
		_, dup := out[rule]
		require.False(t, dup, "rule %q reported twice", rule)
		out[rule] = poolStats{idle, active, dials}
	})
	return out
}

// connCounter is an upstream whose connections are counted as the upstream
// sees them, and whose /hold requests wait until release is closed.
type connCounter struct {
	srv     *httptest.Server
	conns   atomic.Int32
	held    chan struct{}
	release chan struct{}
}

func newConnCounter(t *testing.T, h2c bool) *connCounter {
	t.Helper()
	u := &connCounter{held: make(chan struct{}, 16), release: make(chan struct{})}
	u.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			u.held <- struct{}{}
			<-u.release
		}
		_, _ = io.WriteString(w, "ok")
	}))
	u.srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			u.conns.Add(1)
		}
	}
	if h2c {
		var p http.Protocols
		p.SetHTTP1(true)
		p.SetUnencryptedHTTP2(true)
		u.srv.Config.Protocols = &p
	}
	u.srv.Start()
	t.Cleanup(u.srv.Close)
	t.Cleanup(func() {
		select {
		case <-u.release:
		default:
			close(u.release)
		}
	})
	return u
}

// TestPoolStatsHTTP1 follows one HTTP/1.1 upstream (the lean client)
// through warm-up, sequential requests over keep-alive and a request held
// by the upstream: the dials are the connections the upstream saw, a held
// request is one active connection.
func TestPoolStatsHTTP1(t *testing.T) {
	t.Parallel()
	up := newConnCounter(t, false)
	p := newPool(t, egress.PoolConfig{WarmConns: 2})
	u := newUpstreamStage(t, p)
	r := ruleFor(up.srv.URL)
	require.Empty(t, statsOf(t, p), "no rule used yet")

	p.Warm(context.Background(), []rules.Rule{*r}, rules.Reverse)
	require.Equal(t, map[string]poolStats{"svc": {idle: 2, active: 0, dials: 2}}, statsOf(t, p), "two warm connections")

	for i := range 10 {
		a, err := send(context.Background(), u, r, get(t, fmt.Sprintf("/n/%d", i)))
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, a.status)
	}
	require.Equal(t, map[string]poolStats{"svc": {idle: 2, active: 0, dials: 2}}, statsOf(t, p),
		"sequential requests ride the warm connections")
	require.EqualValues(t, 2, up.conns.Load(), "the upstream saw the warm connections only")

	done := make(chan error, 1)
	go func() {
		_, err := send(context.Background(), u, r, get(t, "/hold"))
		done <- err
	}()
	<-up.held
	require.Equal(t, map[string]poolStats{"svc": {idle: 1, active: 1, dials: 2}}, statsOf(t, p), "one request held")
	up.release <- struct{}{}
	require.NoError(t, <-done)
	require.Equal(t, map[string]poolStats{"svc": {idle: 2, active: 0, dials: 2}}, statsOf(t, p))

	// Three at once need a third connection.
	for range 3 {
		go func() {
			_, err := send(context.Background(), u, r, get(t, "/hold"))
			done <- err
		}()
	}
	for range 3 {
		<-up.held
	}
	require.Equal(t, map[string]poolStats{"svc": {idle: 0, active: 3, dials: 3}}, statsOf(t, p), "three requests held")
	close(up.release)
	for range 3 {
		require.NoError(t, <-done)
	}
	require.Equal(t, map[string]poolStats{"svc": {idle: 3, active: 0, dials: 3}}, statsOf(t, p))
	require.EqualValues(t, up.conns.Load(), statsOf(t, p)["svc"].dials, "dials = connections the upstream saw")

	// A second rule on the same upstream shares its connections; a rule
	// gone goes from the stats.
	other := ruleFor(up.srv.URL)
	other.ID = "other"
	_, err := send(context.Background(), u, other, get(t, "/"))
	require.NoError(t, err)
	require.Equal(t, map[string]poolStats{"svc": {3, 0, 3}, "other": {3, 0, 3}}, statsOf(t, p))
	p.Retain([]rules.Rule{*other})
	require.Equal(t, map[string]poolStats{"other": {3, 0, 3}}, statsOf(t, p))
	p.Close()
	require.Empty(t, statsOf(t, p))
}

// TestPoolStatsHTTP2 checks the bound used for net/http's Transport: one
// h2c connection carrying two requests is one active connection.
func TestPoolStatsHTTP2(t *testing.T) {
	t.Parallel()
	up := newConnCounter(t, true)
	p := newPool(t, egress.PoolConfig{WarmConns: -1})
	u := newUpstreamStage(t, p)
	r := ruleFor(up.srv.URL)
	r.UpstreamHTTP2 = true
	a, err := send(context.Background(), u, r, get(t, "/"))
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, a.status)
	require.Equal(t, map[string]poolStats{"svc": {idle: 1, active: 0, dials: 1}}, statsOf(t, p))

	done := make(chan error, 2)
	for range 2 {
		go func() {
			_, err := send(context.Background(), u, r, get(t, "/hold"))
			done <- err
		}()
	}
	<-up.held
	<-up.held
	require.Equal(t, map[string]poolStats{"svc": {idle: 0, active: 1, dials: 1}}, statsOf(t, p),
		"two requests on one connection")
	close(up.release)
	for range 2 {
		require.NoError(t, <-done)
	}
	require.Equal(t, map[string]poolStats{"svc": {idle: 1, active: 0, dials: 1}}, statsOf(t, p))
	require.EqualValues(t, 1, up.conns.Load())
}

// TestPoolStatsTCP counts a TCP rule's connections: one dial and one
// active connection per user connection, none idle.
func TestPoolStatsTCP(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				_, _ = io.Copy(io.Discard, c)
				_ = c.Close()
			}()
		}
	}()
	p := newPool(t, egress.PoolConfig{WarmConns: -1})
	u := newUpstreamStage(t, p)
	r := &rules.Rule{ID: "db", Client: "laptop", Direction: rules.Reverse, Protocol: rules.ProtoTCP,
		Listen: "127.0.0.1:0", Upstream: "tcp://" + ln.Addr().String()}
	for i := range 2 {
		x := pipeline.Acquire(pipeline.Egress)
		x.Rule = r
		err := u.Handle(context.Background(), x, pipeline.HandlerFunc(func(context.Context, *pipeline.Exchange) error {
			require.Equal(t, map[string]poolStats{"db": {idle: 0, active: 1, dials: uint64(i + 1)}}, statsOf(t, p),
				"while the connection is spliced")
			return nil
		}))
		x.Release()
		require.NoError(t, err)
		require.Equal(t, map[string]poolStats{"db": {idle: 0, active: 0, dials: uint64(i + 1)}}, statsOf(t, p))
	}
	p.Retain(nil)
	require.Empty(t, statsOf(t, p))
}

// TestPoolStatsClosedConnections: connections the upstream closes leave
// the counts once the pool notices, and idle ones the pool expires too.
func TestPoolStatsClosedConnections(t *testing.T) {
	t.Parallel()
	up := newConnCounter(t, false)
	p := newPool(t, egress.PoolConfig{WarmConns: -1, IdleTimeout: 50 * time.Millisecond})
	u := newUpstreamStage(t, p)
	r := ruleFor(up.srv.URL)
	_, err := send(context.Background(), u, r, get(t, "/"))
	require.NoError(t, err)
	require.Equal(t, poolStats{idle: 1, active: 0, dials: 1}, statsOf(t, p)["svc"])
	require.Eventually(t, func() bool { return statsOf(t, p)["svc"] == poolStats{idle: 0, active: 0, dials: 1} },
		waitFor, 5*time.Millisecond, "the idle connection expires")
}

// streamCount is a StreamCounter.
type streamCount struct{ opened, closed atomic.Int32 }

func (c *streamCount) StreamOpened() { c.opened.Add(1) }
func (c *streamCount) StreamClosed() { c.closed.Add(1) }

// TestTunnelCountsStreams: the Tunnel stage counts a stream open from the
// moment it has one until the exchange on it is over, and counts nothing
// when it could not open one.
func TestTunnelCountsStreams(t *testing.T) {
	t.Parallel()
	s := pipelinetest.NewStream()
	defer s.Shutdown()
	var count streamCount
	var fail atomic.Bool
	conn := &pipeline.Conn{ClientID: "laptop", Opener: openerFunc(func(context.Context) (pipeline.Stream, error) {
		if fail.Load() {
			return nil, pipeline.ErrOverloaded
		}
		return s, nil
	})}
	tun, err := egress.NewTunnel(egress.TunnelConfig{
		Conns:   egress.ConnSourceFunc(func(*rules.Rule) (*pipeline.Conn, error) { return conn, nil }),
		Streams: &count,
	})
	require.NoError(t, err)
	pr := peer(s, okAnswer("pong"))
	var during [2]int32
	chain := ingressChain(t, tun, func(_ context.Context, x *pipeline.Exchange) error {
		during = [2]int32{count.opened.Load(), count.closed.Load()}
		_, err := io.ReadAll(x.Response.Body)
		return err
	})
	x := pipeline.Acquire(pipeline.Ingress)
	x.Request = httptest.NewRequest(http.MethodGet, "/", nil)
	require.NoError(t, chain.Handle(context.Background(), x))
	x.Release()
	require.NoError(t, (<-pr).err)
	require.Equal(t, [2]int32{1, 0}, during, "open while the answer is delivered")
	require.EqualValues(t, 1, count.opened.Load())
	require.EqualValues(t, 1, count.closed.Load())

	fail.Store(true)
	x = pipeline.Acquire(pipeline.Ingress)
	x.Request = httptest.NewRequest(http.MethodGet, "/", nil)
	requireReject(t, chain.Handle(context.Background(), x), http.StatusServiceUnavailable)
	x.Release()
	require.EqualValues(t, 1, count.opened.Load(), "no stream, nothing counted")
	require.EqualValues(t, 1, count.closed.Load())
}
