package egress_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/iotest"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/codec"
	"github.com/qtunnel/qtunnel/internal/httpx"
	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/pipeline/pipelinetest"
	"github.com/qtunnel/qtunnel/rules"
	"github.com/qtunnel/qtunnel/stages/decode"
	"github.com/qtunnel/qtunnel/stages/egress"
	"github.com/qtunnel/qtunnel/stages/encode"
	"github.com/qtunnel/qtunnel/stages/route"
)

func TestMain(m *testing.M) { pipelinetest.VerifyNoLeaks(m) }

// waitFor bounds every wait of these tests: long enough never to fire on a
// slow CI machine, short enough to fail rather than hang.
const waitFor = 10 * time.Second

// ---- helpers: upstreams ----

// countingListener counts and keeps the connections it accepts.
type countingListener struct {
	net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.mu.Lock()
		l.conns = append(l.conns, c)
		l.mu.Unlock()
	}
	return c, err
}

func (l *countingListener) accepted() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns)
}

// remoteAddrs returns the client-side addresses of the accepted connections.
func (l *countingListener) remoteAddrs() map[string]bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[string]bool, len(l.conns))
	for _, c := range l.conns {
		out[c.RemoteAddr().String()] = true
	}
	return out
}

// upstream starts a test server on 127.0.0.1 whose listener counts
// connections. It is closed when the test ends.
func upstream(t *testing.T, h http.Handler, h2c bool) (*httptest.Server, *countingListener) {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	ln := &countingListener{Listener: srv.Listener}
	srv.Listener = ln
	if h2c {
		var p http.Protocols
		p.SetHTTP1(true)
		p.SetUnencryptedHTTP2(true)
		srv.Config.Protocols = &p
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv, ln
}

func newPool(t *testing.T, cfg egress.PoolConfig) *egress.Pool {
	t.Helper()
	p, err := egress.NewPool(cfg)
	require.NoError(t, err)
	t.Cleanup(p.Close) // runs before the servers' Close: the pool was made later
	return p
}

func newUpstreamStage(t *testing.T, p *egress.Pool) *egress.Upstream {
	t.Helper()
	u, err := egress.NewUpstream(p)
	require.NoError(t, err)
	return u
}

func ruleFor(url string) *rules.Rule {
	return &rules.Rule{ID: "svc", Client: "laptop", Direction: rules.Reverse, Host: "app.example.test", Upstream: url}
}

type answer struct {
	status int
	header http.Header
	body   string
}

// send runs one request through the Upstream stage, the way the egress chain
// does after decode and route; the next stage reads the whole answer.
func send(ctx context.Context, u *egress.Upstream, r *rules.Rule, req *http.Request) (answer, error) {
	x := pipeline.Acquire(pipeline.Egress)
	defer x.Release()
	x.Rule, x.Request = r, req
	var a answer
	err := u.Handle(ctx, x, pipeline.HandlerFunc(func(_ context.Context, x *pipeline.Exchange) error {
		b, err := io.ReadAll(x.Response.Body)
		a = answer{status: x.Response.StatusCode, header: x.Response.Header, body: string(b)}
		return err
	}))
	return a, err
}

func get(t *testing.T, target string) *http.Request {
	t.Helper()
	req, err := http.NewRequestWithContext(context.Background(), http.MethodGet, target, nil)
	require.NoError(t, err)
	return req
}

func requireReject(t *testing.T, err error, status int) *pipeline.Reject {
	t.Helper()
	var rj *pipeline.Reject
	require.ErrorAs(t, err, &rj)
	require.Equal(t, status, rj.Status, "reject: %v", rj)
	return rj
}

// ---- pool ----

func TestNewPool(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		cfg     egress.PoolConfig
		wantErr bool
	}{
		{"zero is default", egress.PoolConfig{}, false},
		{"warm-up off", egress.PoolConfig{WarmConns: -1}, false},
		{"negative max conns", egress.PoolConfig{MaxConnsPerUpstream: -1}, true},
		{"negative max idle", egress.PoolConfig{MaxIdlePerUpstream: -1}, true},
		{"negative idle timeout", egress.PoolConfig{IdleTimeout: -time.Second}, true},
		{"negative dial timeout", egress.PoolConfig{DialTimeout: -time.Second}, true},
		{"negative header timeout", egress.PoolConfig{ResponseHeaderTimeout: -time.Second}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p, err := egress.NewPool(tt.cfg)
			if tt.wantErr {
				require.Error(t, err)
				require.Nil(t, p)
				return
			}
			require.NoError(t, err)
			p.Close()
		})
	}
}

func TestPoolConfigDefaults(t *testing.T) {
	t.Parallel()
	var c egress.PoolConfig
	c.SetDefaults()
	require.Equal(t, 2, c.WarmConns)
	require.Equal(t, 512, c.MaxConnsPerUpstream)
	require.Equal(t, 128, c.MaxIdlePerUpstream)
	require.Equal(t, 90*time.Second, c.IdleTimeout)
	require.Equal(t, 10*time.Second, c.DialTimeout)
	require.Equal(t, 30*time.Second, c.ResponseHeaderTimeout)
	require.NotNil(t, c.Logger)

	off := egress.PoolConfig{WarmConns: -1}
	off.SetDefaults()
	require.Equal(t, -1, off.WarmConns, "negative turns warm-up off and stays so")
}

func TestPoolGetSharesTargets(t *testing.T) {
	t.Parallel()
	p := newPool(t, egress.PoolConfig{WarmConns: -1})
	a := &rules.Rule{ID: "a", Upstream: "http://127.0.0.1:3000"}
	b := &rules.Rule{ID: "b", Upstream: "http://127.0.0.1:3000"}
	h2 := &rules.Rule{ID: "c", Upstream: "http://127.0.0.1:3000", UpstreamHTTP2: true}
	other := &rules.Rule{ID: "d", Upstream: "http://127.0.0.1:3001"}

	ta, err := p.Get(a)
	require.NoError(t, err)
	ta2, err := p.Get(a)
	require.NoError(t, err)
	tb, err := p.Get(b)
	require.NoError(t, err)
	th2, err := p.Get(h2)
	require.NoError(t, err)
	to, err := p.Get(other)
	require.NoError(t, err)
	require.Same(t, ta, ta2, "same rule, same target")
	require.Same(t, ta, tb, "rules pointing at one upstream share its connections")
	require.NotSame(t, ta, th2, "HTTP/2 to the same address is another pool")
	require.NotSame(t, ta, to)

	// Concurrent first use creates one target.
	fresh := &rules.Rule{ID: "e", Upstream: "http://127.0.0.1:3002"}
	got := make([]*egress.Target, 16)
	var wg sync.WaitGroup
	for i := range got {
		wg.Go(func() { got[i], _ = p.Get(fresh) })
	}
	wg.Wait()
	for _, g := range got {
		require.NotNil(t, g)
		require.Same(t, got[0], g)
	}

	_, err = p.Get(&rules.Rule{ID: "bad", Upstream: "ftp://127.0.0.1:21"})
	require.Error(t, err)
}

func TestPoolCloseRefusesGet(t *testing.T) {
	t.Parallel()
	p, err := egress.NewPool(egress.PoolConfig{WarmConns: -1})
	require.NoError(t, err)
	r := ruleFor("http://127.0.0.1:3000")
	_, err = p.Get(r)
	require.NoError(t, err)
	p.Close()
	_, err = p.Get(r)
	require.ErrorIs(t, err, egress.ErrPoolClosed, "a target made before Close is gone too")
	_, err = p.Get(ruleFor("http://127.0.0.1:3999"))
	require.ErrorIs(t, err, egress.ErrPoolClosed)
	p.Close() // twice is fine

	_, err = send(context.Background(), newUpstreamStage(t, p), r, get(t, "/"))
	rj := requireReject(t, err, http.StatusBadGateway)
	require.ErrorIs(t, rj, egress.ErrPoolClosed)
}

// warmPool returns a pool that has opened n warm connections to srv,
// accepted by ln, and the rule that uses them.
func warmPool(t *testing.T, srv *httptest.Server, ln *countingListener, n int) (*egress.Pool, *rules.Rule) {
	t.Helper()
	p := newPool(t, egress.PoolConfig{WarmConns: n})
	r := ruleFor(srv.URL)
	p.Warm(context.Background(), []rules.Rule{*r}, rules.Reverse)
	require.Eventually(t, func() bool { return ln.accepted() == n }, waitFor, 5*time.Millisecond)
	return p, r
}

func TestWarmOpensConnectionsAhead(t *testing.T) {
	t.Parallel()
	var requests atomic.Int32
	srv, ln := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		_, _ = io.WriteString(w, r.RemoteAddr)
	}), false)
	p := newPool(t, egress.PoolConfig{WarmConns: 3})
	r := ruleFor(srv.URL)
	p.Warm(context.Background(), []rules.Rule{*r}, rules.Reverse)

	target, err := p.Get(r)
	require.NoError(t, err)
	require.Equal(t, 3, target.Warm(), "Warm returns once the connections are up")
	require.Eventually(t, func() bool { return ln.accepted() == 3 }, waitFor, 5*time.Millisecond)
	require.Zero(t, requests.Load(), "warm-up sends no request")
	warm := ln.remoteAddrs()

	a, err := send(context.Background(), newUpstreamStage(t, p), r, get(t, "/first"))
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, a.status)
	require.True(t, warm[a.body], "the first request rides a warm connection (%s not in %v)", a.body, warm)
	require.Equal(t, 3, ln.accepted(), "and the upstream accepted no new connection for it")
	require.Equal(t, 2, target.Warm())
}

func TestWarmConnectionsServeConcurrentRequests(t *testing.T) {
	t.Parallel()
	const n = 3
	arrived := make(chan string, n)
	release := make(chan struct{})
	srv, ln := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- r.RemoteAddr
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}), false)
	releaseAll := sync.OnceFunc(func() { close(release) })
	t.Cleanup(releaseAll) // also on failure, before srv.Close waits for the handlers
	p, r := warmPool(t, srv, ln, n)
	warm := ln.remoteAddrs()

	u := newUpstreamStage(t, p)
	errs := make(chan error, n)
	for i := range n {
		req := get(t, fmt.Sprintf("/c%d", i))
		go func() {
			_, err := send(context.Background(), u, r, req)
			errs <- err
		}()
	}
	// All n requests are in the upstream at once, so each holds its own
	// connection: every one of them must be a warm one.
	seen := map[string]bool{}
	for range n {
		select {
		case addr := <-arrived:
			require.True(t, warm[addr], "request came on %s, not a warm connection %v", addr, warm)
			seen[addr] = true
		case <-time.After(waitFor):
			t.Fatal("requests did not reach the upstream")
		}
	}
	releaseAll()
	for range n {
		require.NoError(t, <-errs)
	}
	require.Len(t, seen, n)
	require.Equal(t, n, ln.accepted())
	target, err := p.Get(r)
	require.NoError(t, err)
	require.Zero(t, target.Warm())
}

// Warm connections that the upstream closed while they waited (its
// read-header or idle timeout) are not handed to requests, and a request
// that still meets one is sent again on a new connection: no 502.
func TestWarmConnectionsClosedByTheUpstream(t *testing.T) {
	t.Parallel()
	srv, ln := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "ok")
	}), false)
	p, r := warmPool(t, srv, ln, 2)
	ln.mu.Lock()
	for _, c := range ln.conns {
		require.NoError(t, c.Close())
	}
	ln.mu.Unlock()

	u := newUpstreamStage(t, p)
	for i := range 3 {
		a, err := send(context.Background(), u, r, get(t, fmt.Sprintf("/after-close-%d", i)))
		require.NoError(t, err, "request %d", i)
		require.Equal(t, http.StatusOK, a.status)
		require.Equal(t, "ok", a.body)
	}
	require.Equal(t, 3, ln.accepted(), "one new connection, kept alive for the next requests")
}

// A warm connection that looks alive but that the upstream closes once
// the request is on it (its idle timeout struck as the request left) counts
// as reused: the request goes again on a new connection, with no retries
// configured, as on a kept-alive connection.
func TestWarmConnectionClosedUnderTheRequestIsRetried(t *testing.T) {
	t.Parallel()
	var warm atomic.Value // map[string]bool: the warm connections' addresses
	warm.Store(map[string]bool{})
	srv, ln := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if warm.Load().(map[string]bool)[r.RemoteAddr] {
			c, _, err := http.NewResponseController(w).Hijack()
			if err == nil {
				_ = c.Close() // no answer: the upstream gave up on it
			}
			return
		}
		_, _ = io.WriteString(w, "ok")
	}), false)
	p, r := warmPool(t, srv, ln, 1)
	warm.Store(ln.remoteAddrs())

	a, err := send(context.Background(), newUpstreamStage(t, p), r, get(t, "/"))
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, a.status)
	require.Equal(t, "ok", a.body)
	require.Equal(t, 2, ln.accepted(), "the warm connection, then a new one for the retry")
}

func TestWarmSkipsAndLogs(t *testing.T) {
	t.Parallel()
	srv, _ := upstream(t, http.NotFoundHandler(), false)

	for _, tc := range []struct {
		name string
		cfg  egress.PoolConfig
		dir  rules.Direction
	}{
		{"other direction", egress.PoolConfig{WarmConns: 2}, rules.Forward},
		{"warm-up off", egress.PoolConfig{WarmConns: -1}, rules.Reverse},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := newPool(t, tc.cfg)
			r := ruleFor(srv.URL)
			p.Warm(context.Background(), []rules.Rule{*r}, tc.dir)
			target, err := p.Get(r)
			require.NoError(t, err)
			require.Zero(t, target.Warm())
		})
	}
	t.Run("shared upstream warmed once", func(t *testing.T) {
		t.Parallel()
		p := newPool(t, egress.PoolConfig{WarmConns: 2})
		a, b := ruleFor(srv.URL), ruleFor(srv.URL)
		b.ID = "svc-2"
		p.Warm(context.Background(), []rules.Rule{*a, *b}, rules.Reverse)
		target, err := p.Get(a)
		require.NoError(t, err)
		require.Equal(t, 2, target.Warm())
	})
	t.Run("unreachable upstream is logged, not fatal", func(t *testing.T) {
		t.Parallel()
		var logs bytes.Buffer
		p := newPool(t, egress.PoolConfig{WarmConns: 2, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
		r := ruleFor(closedAddr(t))
		r.ID = "down"
		p.Warm(context.Background(), []rules.Rule{*r}, rules.Reverse)
		require.Contains(t, logs.String(), "upstream warm-up failed")
		require.Contains(t, logs.String(), "rule=down")
	})
}

func TestPoolCloseClosesWarmConnections(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer func() { _ = ln.Close() }()
	accepted := make(chan net.Conn, 2)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}
	}()
	p, err := egress.NewPool(egress.PoolConfig{WarmConns: 2})
	require.NoError(t, err)
	p.Warm(context.Background(), []rules.Rule{*ruleFor("http://" + ln.Addr().String())}, rules.Reverse)
	conns := []net.Conn{<-accepted, <-accepted}
	p.Close()
	for _, c := range conns {
		require.NoError(t, c.SetReadDeadline(time.Now().Add(waitFor)))
		_, err := c.Read(make([]byte, 1))
		require.ErrorIs(t, err, io.EOF, "the pool closed its warm connection")
		require.NoError(t, c.Close())
	}
	require.NoError(t, ln.Close())
	for c := range accepted { // until the accept loop is gone
		_ = c.Close()
	}
}

// closedAddr returns an http:// URL on 127.0.0.1 where nothing listens.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	return "http://" + addr
}

// ---- upstream stage ----

func TestNewUpstream(t *testing.T) {
	t.Parallel()
	_, err := egress.NewUpstream(nil)
	require.Error(t, err)
	u := newUpstreamStage(t, newPool(t, egress.PoolConfig{WarmConns: -1}))
	require.Equal(t, "egress", u.Name())

	x := pipeline.Acquire(pipeline.Egress)
	defer x.Release()
	called := false
	err = u.Handle(context.Background(), x, pipeline.HandlerFunc(func(context.Context, *pipeline.Exchange) error { called = true; return nil }))
	require.Error(t, err, "no rule and no request: route did not run")
	require.False(t, called)
}

func TestKeepAliveReuse(t *testing.T) {
	t.Parallel()
	var newConns, requests atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		_, _ = io.WriteString(w, strings.Repeat("x", 1000))
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			newConns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	p := newPool(t, egress.PoolConfig{WarmConns: -1})
	u := newUpstreamStage(t, p)
	r := ruleFor(srv.URL)
	for i := range 20 {
		a, err := send(context.Background(), u, r, get(t, fmt.Sprintf("/n/%d", i)))
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, a.status)
		require.Len(t, a.body, 1000)
	}
	require.EqualValues(t, 20, requests.Load())
	require.EqualValues(t, 1, newConns.Load(), "20 sequential requests share one connection")
}

func TestUpstreamHTTP2(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		h2        bool
		wantMajor int
	}{
		{"h2c when the rule asks", true, 2},
		{"HTTP/1.1 by default", false, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv, _ := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = fmt.Fprint(w, r.ProtoMajor)
			}), true)
			p := newPool(t, egress.PoolConfig{WarmConns: -1})
			r := ruleFor(srv.URL)
			r.UpstreamHTTP2 = tt.h2
			a, err := send(context.Background(), newUpstreamStage(t, p), r, get(t, "/"))
			require.NoError(t, err)
			require.Equal(t, fmt.Sprint(tt.wantMajor), a.body)
		})
	}
}

func TestUpstreamTarget(t *testing.T) {
	t.Parallel()
	srv, _ := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = fmt.Fprintf(w, "%s %s", r.Host, r.RequestURI)
	}), false)
	host := strings.TrimPrefix(srv.URL, "http://")
	p := newPool(t, egress.PoolConfig{WarmConns: -1})
	u := newUpstreamStage(t, p)
	tests := []struct {
		name       string
		base       string
		target     string
		reqHost    string
		hostHeader string
		want       string
	}{
		{"base path joined", "/api", "/x", "app.example.test", "", "app.example.test /api/x"},
		{"base path with slash", "/api/", "/x", "app.example.test", "", "app.example.test /api/x"},
		{"query kept", "/api", "/x?q=1&r=%2F", "app.example.test", "", "app.example.test /api/x?q=1&r=%2F"},
		{"escaped slash kept", "/api", "/a%2Fb", "app.example.test", "", "app.example.test /api/a%2Fb"},
		{"no base path", "", "/x", "app.example.test", "", "app.example.test /x"},
		{"root base path", "/", "/x", "app.example.test", "", "app.example.test /x"},
		{"host header rewritten", "", "/x", "app.example.test", "internal.svc", "internal.svc /x"},
		{"no host: the upstream's", "", "/x", "", "", host + " /x"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := ruleFor(srv.URL + tt.base)
			r.HostHeader = tt.hostHeader
			req := get(t, tt.target)
			req.Host = tt.reqHost
			a, err := send(context.Background(), u, r, req)
			require.NoError(t, err)
			require.Equal(t, tt.want, a.body)
		})
	}
}

func TestUpstreamForwardsBodyHeadersAndStatus(t *testing.T) {
	t.Parallel()
	srv, _ := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Echo-Header", r.Header.Get("X-In"))
		w.Header().Set("Content-Encoding", "identity-test")
		w.WriteHeader(http.StatusTeapot)
		_, _ = fmt.Fprintf(w, "%s:%s", r.Method, b)
	}), false)
	p := newPool(t, egress.PoolConfig{WarmConns: -1})
	req, err := http.NewRequest(http.MethodPost, "/echo", strings.NewReader("payload"))
	require.NoError(t, err)
	req.Header.Set("X-In", "v1")
	a, err := send(context.Background(), newUpstreamStage(t, p), ruleFor(srv.URL), req)
	require.NoError(t, err)
	require.Equal(t, http.StatusTeapot, a.status)
	require.Equal(t, "v1", a.header.Get("X-Echo-Header"))
	require.Equal(t, "identity-test", a.header.Get("Content-Encoding"), "bodies pass through as encoded")
	require.Equal(t, "POST:payload", a.body)
}

func TestUpstreamRefused(t *testing.T) {
	t.Parallel()
	p := newPool(t, egress.PoolConfig{WarmConns: -1})
	_, err := send(context.Background(), newUpstreamStage(t, p), ruleFor(closedAddr(t)), get(t, "/"))
	rj := requireReject(t, err, http.StatusBadGateway)
	require.Contains(t, rj.Message, `"svc"`, "the answer names the rule")
	require.ErrorIs(t, err, syscall.ECONNREFUSED)
}

func TestUpstreamResponseHeaderTimeout(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	srv, _ := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}), false)
	t.Cleanup(func() { close(release) }) // before srv.Close, which waits for the handler
	p := newPool(t, egress.PoolConfig{WarmConns: -1, ResponseHeaderTimeout: 100 * time.Millisecond})
	// The upstream never answers: only the response-header timeout can
	// end the call before this context, the test's hang guard, does.
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	_, err := send(ctx, newUpstreamStage(t, p), ruleFor(srv.URL), get(t, "/slow").WithContext(ctx))
	require.NoError(t, ctx.Err(), "the call ended by the test's deadline, not by the response-header timeout: %v", err)
	rj := requireReject(t, err, http.StatusGatewayTimeout)
	require.Contains(t, rj.Message, `"svc"`)
}

func TestUpstreamRequesterGone(t *testing.T) {
	t.Parallel()
	entered := make(chan struct{})
	enter := sync.OnceFunc(func() { close(entered) })
	srv, _ := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		enter()
		<-r.Context().Done()
	}), false)
	p := newPool(t, egress.PoolConfig{WarmConns: -1})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "/hang", nil)
	require.NoError(t, err)
	go func() {
		<-entered
		cancel()
	}()
	_, err = send(ctx, newUpstreamStage(t, p), ruleFor(srv.URL), req)
	require.ErrorIs(t, err, context.Canceled, "nobody to answer: no Reject")
	var rj *pipeline.Reject
	require.NotErrorAs(t, err, &rj)
}

func TestUpstreamNextErrorClosesBody(t *testing.T) {
	t.Parallel()
	srv, _ := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "ignored")
	}), false)
	p := newPool(t, egress.PoolConfig{WarmConns: -1})
	u := newUpstreamStage(t, p)
	boom := errors.New("encode failed")
	x := pipeline.Acquire(pipeline.Egress)
	defer x.Release()
	x.Rule, x.Request = ruleFor(srv.URL), get(t, "/")
	var body io.ReadCloser
	err := u.Handle(context.Background(), x, pipeline.HandlerFunc(func(_ context.Context, x *pipeline.Exchange) error {
		body = x.Response.Body
		return boom
	}))
	require.ErrorIs(t, err, boom)
	_, rerr := body.Read(make([]byte, 1))
	require.NoError(t, rerr, "the upstream body is open until the exchange's finishers run")
	require.ErrorIs(t, x.Finish(err), boom)
	_, rerr = body.Read(make([]byte, 1))
	require.Error(t, rerr, "the upstream body is closed once the exchange is finished")
}

// streamToPeer returns a stream, shut down when the test ends, and the
// bytes written to it, which come once the writer has closed it.
func streamToPeer(t *testing.T) (*pipelinetest.Stream, <-chan []byte) {
	t.Helper()
	s := pipelinetest.NewStream()
	t.Cleanup(s.Shutdown)
	out := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(s.Peer())
		out <- b
	}()
	return s, out
}

// TestEgressChain runs the whole egress side: frames in from the tunnel
// stream, decode, route, the upstream pool, and frames back out.
func TestEgressChain(t *testing.T) {
	t.Parallel()
	type seen struct {
		method, uri, host, body, reqID string
		trailer                        http.Header
	}
	got := make(chan seen, 1)
	srv, _ := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- seen{r.Method, r.RequestURI, r.Host, string(b), r.Header.Get("X-Request-Id"), r.Trailer.Clone()}
		w.Header().Set("Trailer", "X-Result")
		w.Header().Set("Content-Type", "text/plain")
		_, _ = io.WriteString(w, "done")
		w.Header().Set("X-Result", "ok")
	}), false)

	tab, err := rules.NewTable(1, []rules.Rule{*ruleFor(srv.URL + "/base")})
	require.NoError(t, err)
	var store rules.Store
	store.Swap(tab)
	dec, err := decode.New(decode.Config{})
	require.NoError(t, err)
	rt, err := route.New(route.Config{Rules: &store, Egress: rules.Reverse})
	require.NoError(t, err)
	p := newPool(t, egress.PoolConfig{WarmConns: -1})
	enc, err := encode.New(encode.Config{})
	require.NoError(t, err)
	chain, err := pipeline.New(context.Background(), []pipeline.Stage{enc, dec, rt, newUpstreamStage(t, p)})
	require.NoError(t, err)

	var in []byte
	in = codec.AppendRequest(in, &codec.RequestHead{
		Kind: codec.KindHTTP, RuleID: "svc", RequestID: "req-1", Method: http.MethodPost,
		Authority: "app.example.test", Path: "/up?x=1", ContentLength: -1,
		Header: http.Header{"X-Request-Id": {"req-1"}, "Trailer": {"X-Sum"}},
	})
	in = codec.AppendData(in, []byte("up"))
	in = codec.AppendData(in, []byte("load"))
	in = codec.AppendTrailers(in, http.Header{"X-Sum": {"42"}})
	in = codec.AppendEnd(in)

	s, out := streamToPeer(t)
	sent := s.PeerSend(in, true)
	x := pipeline.Acquire(pipeline.Egress)
	defer x.Release()
	x.Stream, x.Conn = s, &pipeline.Conn{ClientID: "laptop"}
	require.NoError(t, chain.Handle(context.Background(), x))
	require.NoError(t, <-sent)
	require.True(t, s.Closed())
	wire := <-out

	up := <-got
	require.Equal(t, seen{"POST", "/base/up?x=1", "app.example.test", "upload", "req-1", http.Header{"X-Sum": {"42"}}}, up)

	r := codec.NewReader(bytes.NewReader(wire), codec.DefaultMaxFrameSize)
	typ, payload, err := r.Next()
	require.NoError(t, err)
	require.Equal(t, codec.FrameResponse, typ)
	var head codec.ResponseHead
	require.NoError(t, codec.ParseResponse(payload, &head))
	require.Equal(t, http.StatusOK, head.Status)
	var body codec.Body
	body.Reset(r, nil)
	b, err := io.ReadAll(&body)
	require.NoError(t, err)
	require.Equal(t, "done", string(b))
	require.Equal(t, http.Header{"X-Result": {"ok"}}, body.Trailer)
	require.Empty(t, s.CancelReadCodes())
	require.Empty(t, s.AbortCodes())
}

// TestUpstreamSmallAnswerIsOneWrite checks S15 end to end on the egress side:
// a small answer of known length from a real upstream leaves in one write.
func TestUpstreamSmallAnswerIsOneWrite(t *testing.T) {
	t.Parallel()
	srv, _ := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "small answer")
	}), false)
	p := newPool(t, egress.PoolConfig{WarmConns: -1})
	enc, err := encode.New(encode.Config{})
	require.NoError(t, err)
	s, out := streamToPeer(t)
	x := pipeline.Acquire(pipeline.Egress)
	defer x.Release()
	x.Rule, x.Request, x.Stream = ruleFor(srv.URL), get(t, "/"), s
	up := newUpstreamStage(t, p)
	err = enc.Handle(context.Background(), x, pipeline.HandlerFunc(func(ctx context.Context, x *pipeline.Exchange) error {
		return up.Handle(ctx, x, pipeline.HandlerFunc(func(context.Context, *pipeline.Exchange) error { return nil }))
	}))
	require.NoError(t, err)
	<-out
	require.Len(t, s.Writes(), 1)
}

// ---- tunnel stage ----

type openerFunc func(ctx context.Context) (pipeline.Stream, error)

func (f openerFunc) OpenStream(ctx context.Context) (pipeline.Stream, error) { return f(ctx) }

// tunnelTo returns a Tunnel whose every stream is s, and the connection.
func tunnelTo(t *testing.T, s pipeline.Stream, maxFrame int) (*egress.Tunnel, *pipeline.Conn) {
	t.Helper()
	conn := &pipeline.Conn{ClientID: "laptop", Opener: openerFunc(func(context.Context) (pipeline.Stream, error) { return s, nil })}
	tun, err := egress.NewTunnel(egress.TunnelConfig{
		Conns:        egress.ConnSourceFunc(func(*rules.Rule) (*pipeline.Conn, error) { return conn, nil }),
		MaxFrameSize: maxFrame,
	})
	require.NoError(t, err)
	return tun, conn
}

// peerRequest is what the fake peer read from the stream.
type peerRequest struct {
	head     codec.RequestHead
	body     []byte
	trailers http.Header
	err      error
}

// readRequest reads a whole request as the egress side's decode would: the
// head, then the body up to END and the end of the stream.
func readRequest(s *pipelinetest.Stream) peerRequest {
	var pr peerRequest
	r := codec.NewReader(s.Peer(), 1<<20)
	typ, p, err := r.Next()
	if err != nil {
		pr.err = err
		return pr
	}
	if typ != codec.FrameRequest {
		pr.err = fmt.Errorf("want REQUEST, got %s", typ)
		return pr
	}
	if pr.err = codec.ParseRequest(p, &pr.head); pr.err != nil {
		return pr
	}
	var body codec.Body
	body.Reset(r, nil)
	pr.body, pr.err = io.ReadAll(&body)
	pr.trailers = body.Trailer
	return pr
}

// peer runs a fake egress side on s: it reads the request, then writes
// answer and ends its direction.
func peer(s *pipelinetest.Stream, answer []byte) <-chan peerRequest {
	done := make(chan peerRequest, 1)
	go func() {
		pr := readRequest(s)
		if pr.err == nil {
			if _, err := s.PeerWrite(answer); err != nil {
				pr.err = err
			} else {
				pr.err = s.PeerClose()
			}
		}
		done <- pr
	}()
	return done
}

func okAnswer(body string) []byte {
	b := codec.AppendResponse(nil, &codec.ResponseHead{Status: http.StatusOK, ContentLength: int64(len(body)), Header: http.Header{"X-Up": {"1"}}})
	b = codec.AppendData(b, []byte(body))
	return codec.AppendEnd(b)
}

// ingressChain is decode, a stand-in for route, the Tunnel and a last stage
// that reads the answer.
func ingressChain(t *testing.T, tun *egress.Tunnel, last pipeline.HandlerFunc) *pipeline.Chain {
	t.Helper()
	dec, err := decode.New(decode.Config{})
	require.NoError(t, err)
	setRule := pipeline.StageFunc(func(ctx context.Context, x *pipeline.Exchange, next pipeline.Handler) error {
		x.Rule = ruleFor("http://127.0.0.1:3000")
		return next.Handle(ctx, x)
	})
	lastStage := pipeline.StageFunc(func(ctx context.Context, x *pipeline.Exchange, next pipeline.Handler) error {
		if err := last(ctx, x); err != nil {
			return err
		}
		return next.Handle(ctx, x)
	})
	c, err := pipeline.New(context.Background(), []pipeline.Stage{dec, setRule, tun, lastStage})
	require.NoError(t, err)
	return c
}

func TestNewTunnel(t *testing.T) {
	t.Parallel()
	src := egress.ConnSourceFunc(func(*rules.Rule) (*pipeline.Conn, error) { return nil, nil })
	tests := []struct {
		name    string
		cfg     egress.TunnelConfig
		wantErr bool
	}{
		{"ok", egress.TunnelConfig{Conns: src}, false},
		{"no source", egress.TunnelConfig{}, true},
		{"negative frame", egress.TunnelConfig{Conns: src, MaxFrameSize: -1}, true},
		{"frame too large", egress.TunnelConfig{Conns: src, MaxFrameSize: codec.MaxPayload + 1}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tun, err := egress.NewTunnel(tt.cfg)
			if tt.wantErr {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, "egress", tun.Name())
		})
	}
}

func TestTunnelRefusesBeforeOpening(t *testing.T) {
	t.Parallel()
	notConnected := pipeline.Rejectf(http.StatusBadGateway, "client %q is not connected", "laptop")
	tests := []struct {
		name      string
		connErr   error
		draining  bool
		openErr   error
		cancelled bool
		check     func(t *testing.T, err error)
	}{
		{name: "no connection", connErr: notConnected, check: func(t *testing.T, err error) {
			require.ErrorIs(t, err, notConnected)
		}},
		{name: "draining", draining: true, check: func(t *testing.T, err error) {
			rj := requireReject(t, err, http.StatusServiceUnavailable)
			require.Positive(t, rj.RetryAfter)
		}},
		{name: "stream limit", openErr: fmt.Errorf("no slot: %w", pipeline.ErrOverloaded), check: func(t *testing.T, err error) {
			rj := requireReject(t, err, http.StatusServiceUnavailable)
			require.Equal(t, time.Second, rj.RetryAfter)
			require.ErrorIs(t, err, pipeline.ErrOverloaded)
		}},
		{name: "connection lost", openErr: errors.New("connection closed"), check: func(t *testing.T, err error) {
			rj := requireReject(t, err, http.StatusServiceUnavailable)
			require.Positive(t, rj.RetryAfter)
		}},
		{name: "requester gone", openErr: context.Canceled, cancelled: true, check: func(t *testing.T, err error) {
			require.ErrorIs(t, err, context.Canceled)
			var rj *pipeline.Reject
			require.NotErrorAs(t, err, &rj)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var opened atomic.Int32
			conn := &pipeline.Conn{ClientID: "laptop", Opener: openerFunc(func(context.Context) (pipeline.Stream, error) {
				opened.Add(1)
				return nil, tt.openErr
			})}
			conn.Draining.Store(tt.draining)
			tun, err := egress.NewTunnel(egress.TunnelConfig{Conns: egress.ConnSourceFunc(func(r *rules.Rule) (*pipeline.Conn, error) {
				if tt.connErr != nil {
					return nil, tt.connErr
				}
				return conn, nil
			})})
			require.NoError(t, err)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tt.cancelled {
				cancel()
			}
			x := pipeline.Acquire(pipeline.Ingress)
			defer x.Release()
			x.Rule, x.Request = ruleFor("http://127.0.0.1:3000"), httptest.NewRequest(http.MethodGet, "/", nil)
			called := false
			err = tun.Handle(ctx, x, pipeline.HandlerFunc(func(context.Context, *pipeline.Exchange) error { called = true; return nil }))
			tt.check(t, err)
			require.False(t, called)
			if tt.connErr != nil || tt.draining {
				require.Zero(t, opened.Load(), "no stream is opened")
			}
		})
	}
}

func TestTunnelWithoutRule(t *testing.T) {
	t.Parallel()
	tun, _ := tunnelTo(t, nil, 0)
	x := pipeline.Acquire(pipeline.Ingress)
	defer x.Release()
	require.Error(t, tun.Handle(context.Background(), x, pipeline.HandlerFunc(func(context.Context, *pipeline.Exchange) error { return nil })))
}

func TestTunnelExchange(t *testing.T) {
	t.Parallel()
	payload := strings.Repeat("0123456789", 1000) // 10 000 bytes
	tests := []struct {
		name     string
		maxFrame int
		body     func() io.Reader
		length   int64
		trailer  http.Header
		want     string
		// oneWrite: head, body and END leave in a single write (S15).
		oneWrite bool
	}{
		{name: "no body", body: func() io.Reader { return nil }, want: "", oneWrite: true},
		{name: "small body", body: func() io.Reader { return iotest.DataErrReader(strings.NewReader("ping")) }, length: 4, want: "ping", oneWrite: true},
		{name: "small body with trailers", body: func() io.Reader { return strings.NewReader("ping") }, length: 4,
			trailer: http.Header{"X-Sum": {"abc"}}, want: "ping"},
		{name: "large body streams", maxFrame: 1024, body: func() io.Reader { return strings.NewReader(payload) }, length: int64(len(payload)), want: payload},
		{name: "unknown length streams, with trailers", body: func() io.Reader { return strings.NewReader(payload) }, length: -1,
			trailer: http.Header{"X-Sum": {"def"}}, want: payload},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := pipelinetest.NewStream()
			defer s.Shutdown()
			tun, conn := tunnelTo(t, s, tt.maxFrame)
			pr := peer(s, okAnswer("pong!"))

			var gotStatus int
			var gotHeader http.Header
			var gotBody string
			var gotConn *pipeline.Conn
			chain := ingressChain(t, tun, func(_ context.Context, x *pipeline.Exchange) error {
				gotStatus, gotHeader, gotConn = x.Response.StatusCode, x.Response.Header, x.Conn
				b, err := io.ReadAll(x.Response.Body)
				gotBody = string(b)
				return err
			})
			r := httptest.NewRequest(http.MethodPost, "/orders?id=7", tt.body())
			r.Host = "app.example.test"
			r.ContentLength = tt.length
			r.Trailer = tt.trailer
			x := pipeline.Acquire(pipeline.Ingress)
			defer x.Release()
			x.Request = r
			require.NoError(t, chain.Handle(context.Background(), x))

			got := <-pr
			require.NoError(t, got.err)
			require.Equal(t, "svc", got.head.RuleID, "the head names the rule for the egress side")
			require.Equal(t, x.ID, got.head.RequestID)
			require.Equal(t, http.MethodPost, got.head.Method)
			require.Equal(t, "app.example.test", got.head.Authority)
			require.Equal(t, "/orders?id=7", got.head.Path)
			require.Equal(t, tt.want, string(got.body))
			if tt.trailer != nil {
				require.Equal(t, tt.trailer, got.trailers)
			} else {
				require.Empty(t, got.trailers)
			}
			require.Equal(t, http.StatusOK, gotStatus)
			require.Equal(t, "1", gotHeader.Get("X-Up"))
			require.Equal(t, "pong!", gotBody)
			require.Same(t, conn, gotConn)
			require.True(t, s.Closed(), "the request ends with FIN")
			require.Empty(t, s.AbortCodes(), "a complete exchange is not reset")
			if tt.oneWrite {
				require.Len(t, s.Writes(), 1)
			}
		})
	}
}

func TestTunnelStreamingSendsHeadFirst(t *testing.T) {
	t.Parallel()
	s := pipelinetest.NewStream()
	defer s.Shutdown()
	tun, _ := tunnelTo(t, s, 1024)
	// The user's body does not end until the peer has answered: a
	// streaming (gRPC-like) exchange, where the answer's head comes first.
	bodyR, bodyW := io.Pipe()
	defer func() { _ = bodyW.Close() }()
	answered := make(chan peerRequest, 1)
	go func() {
		var pr peerRequest
		r := codec.NewReader(s.Peer(), 1<<20)
		typ, p, err := r.Next()
		if err == nil && typ == codec.FrameRequest {
			err = codec.ParseRequest(p, &pr.head)
		}
		if err == nil {
			_, err = s.PeerWrite(codec.AppendResponse(nil, &codec.ResponseHead{Status: 200, ContentLength: -1, Header: http.Header{}}))
		}
		if err != nil {
			pr.err = err
			answered <- pr
			return
		}
		var body codec.Body
		body.Reset(r, nil)
		pr.body, pr.err = io.ReadAll(&body)
		if pr.err == nil {
			_, pr.err = s.PeerWrite(codec.AppendEnd(codec.AppendData(nil, []byte("bye"))))
		}
		if pr.err == nil {
			pr.err = s.PeerClose()
		}
		answered <- pr
	}()
	x := pipeline.Acquire(pipeline.Ingress)
	defer x.Release()
	x.Rule = ruleFor("http://127.0.0.1:3000")
	x.Request = httptest.NewRequest(http.MethodPost, "/stream", bodyR)
	x.Request.ContentLength = -1
	x.Head = codec.RequestHead{Kind: codec.KindHTTP, Method: "POST", Path: "/stream", ContentLength: -1, Header: http.Header{}}
	var got string
	err := tun.Handle(context.Background(), x, pipeline.HandlerFunc(func(_ context.Context, x *pipeline.Exchange) error {
		// The answer's head is here while the user is still sending.
		require.Equal(t, 200, x.Response.StatusCode)
		_, err := io.WriteString(bodyW, "hello")
		require.NoError(t, err)
		require.NoError(t, bodyW.Close())
		b, err := io.ReadAll(x.Response.Body)
		got = string(b)
		return err
	}))
	require.NoError(t, err)
	pr := <-answered
	require.NoError(t, pr.err)
	require.Equal(t, "hello", string(pr.body))
	require.Equal(t, "bye", got)
}

func TestTunnelPeerAnswersError(t *testing.T) {
	t.Parallel()
	s := pipelinetest.NewStream()
	defer s.Shutdown()
	tun, _ := tunnelTo(t, s, 0)
	pr := peer(s, codec.AppendError(nil, &codec.Error{Status: http.StatusTooManyRequests, RetryAfter: 2, Message: "slow down"}))
	called := false
	chain := ingressChain(t, tun, func(context.Context, *pipeline.Exchange) error { called = true; return nil })
	x := pipeline.Acquire(pipeline.Ingress)
	defer x.Release()
	x.Request = httptest.NewRequest(http.MethodGet, "/", nil)
	err := chain.Handle(context.Background(), x)
	var ce *codec.Error
	require.ErrorAs(t, err, &ce)
	require.Equal(t, http.StatusTooManyRequests, ce.Status)
	require.Equal(t, "slow down", ce.Message)
	status, _, retry := pipeline.Answer(err)
	require.Equal(t, http.StatusTooManyRequests, status)
	require.Equal(t, 2*time.Second, retry)
	require.False(t, called)
	require.NoError(t, (<-pr).err)
	require.Equal(t, []uint64{codec.StreamCancelled}, s.AbortCodes())
}

func TestTunnelBadAnswers(t *testing.T) {
	t.Parallel()
	badResponse := codec.AppendFrameHeader(nil, codec.FrameResponse, 1)
	badResponse = append(badResponse, 0x01) // status 1, then nothing
	badError := codec.AppendFrameHeader(nil, codec.FrameError, 1)
	badError = append(badError, 0x01)
	refused := &quic.StreamError{StreamID: 4, ErrorCode: quic.StreamErrorCode(codec.StreamRefused), Remote: true}
	internal := &quic.StreamError{StreamID: 4, ErrorCode: quic.StreamErrorCode(codec.StreamInternal), Remote: true}
	tests := []struct {
		name   string
		answer []byte
		reset  error // instead of a FIN after answer
		status int
		retry  bool
	}{
		{name: "DATA first", answer: codec.AppendData(nil, []byte("x")), status: http.StatusBadGateway},
		{name: "malformed RESPONSE", answer: badResponse, status: http.StatusBadGateway},
		{name: "malformed ERROR", answer: badError, status: http.StatusBadGateway},
		{name: "no answer at all", status: http.StatusBadGateway},
		{name: "refused stream", reset: refused, status: http.StatusServiceUnavailable, retry: true},
		{name: "stream failed part-way", reset: internal, status: http.StatusBadGateway},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := pipelinetest.NewStream()
			defer s.Shutdown()
			tun, _ := tunnelTo(t, s, 0)
			done := make(chan error, 1)
			go func() {
				pr := readRequest(s)
				if pr.err != nil {
					done <- pr.err
					return
				}
				if len(tt.answer) > 0 {
					if _, err := s.PeerWrite(tt.answer); err != nil {
						done <- err
						return
					}
				}
				if tt.reset != nil {
					s.PeerReset(tt.reset)
				} else {
					_ = s.PeerClose()
				}
				done <- nil
			}()
			called := false
			chain := ingressChain(t, tun, func(context.Context, *pipeline.Exchange) error { called = true; return nil })
			x := pipeline.Acquire(pipeline.Ingress)
			defer x.Release()
			x.Request = httptest.NewRequest(http.MethodGet, "/", nil)
			err := chain.Handle(context.Background(), x)
			rj := requireReject(t, err, tt.status)
			if tt.retry {
				require.Equal(t, time.Second, rj.RetryAfter)
			} else {
				require.Zero(t, rj.RetryAfter)
			}
			if tt.reset != nil {
				require.ErrorIs(t, err, tt.reset)
			}
			require.False(t, called)
			require.NoError(t, <-done)
			require.Equal(t, []uint64{codec.StreamCancelled}, s.AbortCodes())
		})
	}
}

func TestTunnelRequesterGoneWhileWaiting(t *testing.T) {
	t.Parallel()
	s := pipelinetest.NewStream()
	defer s.Shutdown()
	tun, _ := tunnelTo(t, s, 0)
	gotRequest := make(chan error, 1)
	go func() { gotRequest <- readRequest(s).err }()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		if err := <-gotRequest; err == nil {
			cancel() // the user hangs up while the peer thinks
		}
	}()
	x := pipeline.Acquire(pipeline.Ingress)
	defer x.Release()
	x.Rule, x.Request = ruleFor("http://127.0.0.1:3000"), httptest.NewRequest(http.MethodGet, "/", nil)
	x.Head = codec.RequestHead{Kind: codec.KindHTTP, Method: "GET", Path: "/", Header: http.Header{}}
	err := tun.Handle(ctx, x, pipeline.HandlerFunc(func(context.Context, *pipeline.Exchange) error { return nil }))
	require.ErrorIs(t, err, context.Canceled)
	require.Contains(t, s.AbortCodes(), codec.StreamCancelled, "the stream is reset so the egress side stops too")
}

func TestTunnelUnreadAnswerResetsStream(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		nextErr error
	}{
		{"next ignores the body", nil},
		{"next fails", errors.New("user gone")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := pipelinetest.NewStream()
			defer s.Shutdown()
			tun, _ := tunnelTo(t, s, 0)
			pr := peer(s, okAnswer("never read"))
			chain := ingressChain(t, tun, func(context.Context, *pipeline.Exchange) error { return tt.nextErr })
			x := pipeline.Acquire(pipeline.Ingress)
			defer x.Release()
			x.Request = httptest.NewRequest(http.MethodGet, "/", nil)
			err := x.Finish(chain.Handle(context.Background(), x)) // as encode does
			if tt.nextErr != nil {
				require.ErrorIs(t, err, tt.nextErr)
			} else {
				require.NoError(t, err)
			}
			require.Equal(t, []uint64{codec.StreamCancelled}, s.AbortCodes())
			s.Shutdown()
			<-pr
		})
	}
}

// ---- both sides, in memory ----

// inMemoryTunnel is a user-facing HTTP server running the ingress chain
// (encode, decode, route, Tunnel) whose tunnel streams are served, in
// memory, by the egress chain (encode, decode, route, Upstream) against a
// real upstream: the whole data path of the gateway without QUIC.
type inMemoryTunnel struct {
	user *httptest.Server
	wg   sync.WaitGroup
	mu   sync.Mutex
	strs []*pipelinetest.Stream
}

func newInMemoryTunnel(t *testing.T, upstreamURL string) *inMemoryTunnel {
	t.Helper()
	tab, err := rules.NewTable(1, []rules.Rule{*ruleFor(upstreamURL)})
	require.NoError(t, err)
	var store rules.Store
	store.Swap(tab)
	mustChain := func(stages ...pipeline.Stage) *pipeline.Chain {
		c, err := pipeline.New(context.Background(), stages)
		require.NoError(t, err)
		return c
	}
	dec, err := decode.New(decode.Config{})
	require.NoError(t, err)
	enc, err := encode.New(encode.Config{})
	require.NoError(t, err)
	egressRoute, err := route.New(route.Config{Rules: &store, Egress: rules.Reverse})
	require.NoError(t, err)
	ingressRoute, err := route.New(route.Config{Rules: &store, Egress: rules.Forward})
	require.NoError(t, err)
	egressChain := mustChain(enc, dec, egressRoute, newUpstreamStage(t, newPool(t, egress.PoolConfig{WarmConns: -1})))

	m := &inMemoryTunnel{}
	info := &pipeline.Conn{ClientID: "laptop"}
	ctx, cancel := context.WithCancel(context.Background())
	conn := &pipeline.Conn{ClientID: "laptop", Opener: openerFunc(func(context.Context) (pipeline.Stream, error) {
		s := pipelinetest.NewStream()
		m.mu.Lock()
		m.strs = append(m.strs, s)
		m.mu.Unlock()
		m.wg.Go(func() {
			x := pipeline.Acquire(pipeline.Egress)
			defer x.Release()
			remote := s.Remote()
			x.Stream, x.Conn = remote, info
			if err := egressChain.Handle(ctx, x); err != nil && !x.Answered {
				if x.Status != 0 {
					remote.Abort(codec.StreamInternal)
					return
				}
				status, msg, _ := pipeline.Answer(err)
				_, _ = remote.Write(codec.AppendError(nil, &codec.Error{Status: status, Message: msg}))
				_ = remote.Close()
			}
		})
		return s, nil
	})}
	tun, err := egress.NewTunnel(egress.TunnelConfig{Conns: egress.ConnSourceFunc(func(*rules.Rule) (*pipeline.Conn, error) { return conn, nil })})
	require.NoError(t, err)
	ingressChain := mustChain(enc, dec, ingressRoute, tun)

	m.user = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		x := pipeline.Acquire(pipeline.Ingress)
		defer x.Release()
		x.Request, x.Writer = r, w
		if err := ingressChain.Handle(r.Context(), x); err != nil && !x.Answered && x.Status == 0 {
			status, msg, retry := pipeline.Answer(err)
			httpx.WriteError(w, status, msg, retry, x.ID)
		}
	}))
	t.Cleanup(func() {
		m.user.Client().CloseIdleConnections()
		m.user.Close()
		cancel()
		m.mu.Lock()
		for _, s := range m.strs {
			s.Shutdown()
		}
		m.mu.Unlock()
		m.wg.Wait()
	})
	return m
}

func (m *inMemoryTunnel) do(t *testing.T, req *http.Request) (*http.Response, string) {
	t.Helper()
	req.Host = "app.example.test"
	resp, err := m.user.Client().Do(req)
	require.NoError(t, err)
	defer func() { require.NoError(t, resp.Body.Close()) }()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, string(b)
}

func echoUpstream(t *testing.T) *httptest.Server {
	t.Helper()
	srv, _ := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if r.URL.Path == "/grpcish" {
			w.Header().Set("Trailer", "Grpc-Status")
			w.Header().Set("Content-Type", "application/grpc")
			_, _ = w.Write([]byte("\x00\x00\x00\x00\x00"))
			w.Header().Set("Grpc-Status", "0")
			return
		}
		_, _ = fmt.Fprintf(w, "%s %s %s body=%d trailer=%s", r.Method, r.Host, r.RequestURI, len(b), r.Trailer.Get("X-Sum"))
	}), false)
	return srv
}

func TestInMemoryTunnel(t *testing.T) {
	t.Parallel()
	m := newInMemoryTunnel(t, echoUpstream(t).URL)
	big := strings.Repeat("z", 200_000) // several frames: the streaming path

	t.Run("GET", func(t *testing.T) {
		req, err := http.NewRequest(http.MethodGet, m.user.URL+"/echo?x=1", nil)
		require.NoError(t, err)
		resp, body := m.do(t, req)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.Equal(t, "GET app.example.test /echo?x=1 body=0 trailer=", body)
		require.Regexp(t, `^[0-9a-f]{16}$`, resp.Header.Get("X-Request-Id"))
	})
	t.Run("large POST", func(t *testing.T) {
		req, err := http.NewRequest(http.MethodPost, m.user.URL+"/echo", strings.NewReader(big))
		require.NoError(t, err)
		resp, body := m.do(t, req)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.Equal(t, "POST app.example.test /echo body=200000 trailer=", body)
	})
	t.Run("response trailers reach the user", func(t *testing.T) {
		req, err := http.NewRequest(http.MethodPost, m.user.URL+"/grpcish", strings.NewReader("x"))
		require.NoError(t, err)
		resp, body := m.do(t, req)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.Equal(t, "\x00\x00\x00\x00\x00", body)
		require.Equal(t, "0", resp.Trailer.Get("Grpc-Status"))
	})
	t.Run("no route", func(t *testing.T) {
		req, err := http.NewRequest(http.MethodGet, m.user.URL+"/", nil)
		require.NoError(t, err)
		req.Host = "unknown.test"
		resp, err := m.user.Client().Do(req)
		require.NoError(t, err)
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		require.NoError(t, resp.Body.Close())
		require.Equal(t, http.StatusNotFound, resp.StatusCode)
		require.Contains(t, string(b), `qtunnel: no route for host "unknown.test"`)
	})
	t.Run("request trailers reach the upstream", func(t *testing.T) {
		req, err := http.NewRequest(http.MethodPost, m.user.URL+"/echo", io.MultiReader(strings.NewReader("abc")))
		require.NoError(t, err)
		req.ContentLength = -1
		req.Trailer = http.Header{"X-Sum": {"42"}}
		resp, body := m.do(t, req)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.Equal(t, "POST app.example.test /echo body=3 trailer=42", body)
	})
}
