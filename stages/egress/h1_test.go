package egress

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/rules"
)

var rulesRule = rules.Rule{ID: "bench", Client: "c", Direction: rules.Reverse, Host: "h"}

// countingListener counts accepted connections.
type countingListener struct {
	net.Listener
	n atomic.Int32
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

func h1Server(t *testing.T, h http.Handler) (*httptest.Server, *countingListener) {
	t.Helper()
	s := httptest.NewUnstartedServer(h)
	cl := &countingListener{Listener: s.Listener}
	s.Listener = cl
	s.Start()
	t.Cleanup(s.Close)
	return s, cl
}

func newTestH1(t *testing.T, addr string, mutate func(*PoolConfig)) *h1Client {
	t.Helper()
	c := PoolConfig{}
	if mutate != nil {
		mutate(&c)
	}
	c.SetDefaults()
	d := &net.Dialer{Timeout: time.Second}
	h := newH1Client(addr, d.DialContext, c)
	t.Cleanup(h.close)
	return h
}

func do(t *testing.T, h *h1Client, method, url string, body io.Reader) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	require.NoError(t, err)
	if body != nil {
		req.ContentLength = -1
	}
	resp, err := h.roundTrip(req)
	require.NoError(t, err)
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	return resp, string(b)
}

func TestH1ReusesConnectionsAndStreamsBodies(t *testing.T) {
	t.Parallel()
	srv, cl := h1Server(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("Trailer", "X-Sum")
		fmt.Fprintf(w, "%s %s %d", r.Method, r.URL.Path, len(b))
		w.Header().Set("X-Sum", "ok")
	}))
	h := newTestH1(t, srv.Listener.Addr().String(), nil)
	for i := range 10 {
		method, body := http.MethodGet, io.Reader(nil)
		if i%2 == 1 {
			method, body = http.MethodPost, strings.NewReader(strings.Repeat("x", 100_000))
		}
		resp, got := do(t, h, method, srv.URL+"/p", body)
		require.Equal(t, 200, resp.StatusCode)
		want := "GET /p 0"
		if i%2 == 1 {
			want = "POST /p 100000"
		}
		require.Equal(t, want, got)
		require.Equal(t, "ok", resp.Trailer.Get("X-Sum"))
	}
	require.EqualValues(t, 1, cl.n.Load(), "ten requests, one keep-alive connection")
	require.Equal(t, 1, h.idleConns())
}

func TestH1HeadAndBodilessAnswersKeepTheConnection(t *testing.T) {
	t.Parallel()
	srv, cl := h1Server(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/204" {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		w.Header().Set("Content-Length", "5")
		_, _ = io.WriteString(w, "hello")
	}))
	h := newTestH1(t, srv.Listener.Addr().String(), nil)
	for _, c := range []struct{ method, path string }{{"HEAD", "/"}, {"GET", "/204"}, {"GET", "/"}} {
		req, _ := http.NewRequest(c.method, srv.URL+c.path, nil)
		resp, err := h.roundTrip(req)
		require.NoError(t, err)
		require.NoError(t, resp.Body.Close(), "closing an answer without a body returns its connection")
	}
	require.EqualValues(t, 1, cl.n.Load())
}

func TestH1RetriesAKeptConnectionTheUpstreamClosed(t *testing.T) {
	t.Parallel()
	// A raw upstream that answers one request per connection but says
	// keep-alive, then closes: the next request finds a dead connection.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var conns atomic.Int32
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait) // runs after the listener closes (cleanups run last-in first-out)
	t.Cleanup(func() { ln.Close() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			br := bufio.NewReader(c)
			if _, err := http.ReadRequest(br); err == nil {
				_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			}
			c.Close()
		}
	})
	h := newTestH1(t, ln.Addr().String(), nil)
	for range 3 {
		resp, body := do(t, h, http.MethodGet, "http://"+ln.Addr().String()+"/", nil)
		require.Equal(t, 200, resp.StatusCode)
		require.Equal(t, "ok", body)
	}
	require.EqualValues(t, 3, conns.Load(), "each request after the first retried once on a fresh connection")
}

func TestH1EarlyAnswerDoesNotReuseAHalfWrittenConnection(t *testing.T) {
	t.Parallel()
	srv, cl := h1Server(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/early" {
			w.Header().Set("Connection", "close")
			http.Error(w, "too large", http.StatusRequestEntityTooLarge)
			return
		}
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = io.WriteString(w, "ok")
	}))
	h := newTestH1(t, srv.Listener.Addr().String(), nil)
	pr, pw := io.Pipe()
	t.Cleanup(func() { pw.Close() })
	go func() { _, _ = pw.Write([]byte("start")) }() // then stalls: the upstream answers first
	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/early", pr)
	req.ContentLength = -1
	resp, err := h.roundTrip(req)
	require.NoError(t, err)
	require.Equal(t, http.StatusRequestEntityTooLarge, resp.StatusCode)
	_, _ = io.ReadAll(resp.Body)
	require.NoError(t, resp.Body.Close())
	require.Zero(t, h.idleConns(), "a connection whose request was not fully written is not reused")
	resp, body := do(t, h, http.MethodGet, srv.URL+"/", nil)
	require.Equal(t, 200, resp.StatusCode)
	require.Equal(t, "ok", body)
	require.EqualValues(t, 2, cl.n.Load())
}

func TestH1SkipsInformationalAnswers(t *testing.T) {
	t.Parallel()
	srv, _ := h1Server(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</style.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		_, _ = io.WriteString(w, "final")
	}))
	h := newTestH1(t, srv.Listener.Addr().String(), nil)
	resp, body := do(t, h, http.MethodGet, srv.URL+"/", nil)
	require.Equal(t, 200, resp.StatusCode)
	require.Equal(t, "final", body)
}

func TestH1BoundsConnectionsPerUpstream(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	var inside atomic.Int32
	srv, cl := h1Server(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		inside.Add(1)
		<-release
		_, _ = io.WriteString(w, "ok")
	}))
	h := newTestH1(t, srv.Listener.Addr().String(), func(c *PoolConfig) { c.MaxConnsPerUpstream = 2 })
	var wg sync.WaitGroup
	for range 5 {
		wg.Go(func() {
			req, _ := http.NewRequest(http.MethodGet, srv.URL+"/", nil)
			resp, err := h.roundTrip(req)
			if err == nil {
				_, _ = io.ReadAll(resp.Body)
				resp.Body.Close()
			}
		})
	}
	deadline := time.Now().Add(5 * time.Second)
	for inside.Load() < 2 && time.Now().Before(deadline) {
		<-time.After(5 * time.Millisecond)
	}
	require.EqualValues(t, 2, inside.Load())
	require.EqualValues(t, 2, cl.n.Load(), "the third request waits for a connection instead of opening one")
	close(release)
	wg.Wait()
	require.LessOrEqual(t, cl.n.Load(), int32(2))
}

func TestH1CancellationCutsTheConnection(t *testing.T) {
	t.Parallel()
	entered := make(chan struct{})
	gone := make(chan struct{})
	srv, _ := h1Server(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-r.Context().Done()
		close(gone)
	}))
	h := newTestH1(t, srv.Listener.Addr().String(), nil)
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/", nil)
	go func() { <-entered; cancel() }()
	_, err := h.roundTrip(req)
	require.Error(t, err)
	select {
	case <-gone:
	case <-time.After(5 * time.Second):
		t.Fatal("the upstream did not see the cancellation")
	}
}

func TestH1IdleConnectionsExpire(t *testing.T) {
	t.Parallel()
	srv, _ := h1Server(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") }))
	h := newTestH1(t, srv.Listener.Addr().String(), func(c *PoolConfig) { c.IdleTimeout = 50 * time.Millisecond })
	do(t, h, http.MethodGet, srv.URL+"/", nil)
	require.Equal(t, 1, h.idleConns())
	deadline := time.Now().Add(5 * time.Second)
	for h.idleConns() > 0 && time.Now().Before(deadline) {
		<-time.After(10 * time.Millisecond)
	}
	require.Zero(t, h.idleConns(), "the janitor closes connections idle past the timeout")
}

// BenchmarkPoolCheckout measures taking an upstream's target from the pool
// and a kept-alive connection from its client and putting it back: the
// per-request cost of the egress pool itself.
func BenchmarkPoolCheckout(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	p, err := NewPool(PoolConfig{WarmConns: -1})
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	r := &rulesRule
	r.Upstream = "http://" + ln.Addr().String()
	t, err := p.Get(r)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	pc, err := t.h1.get(ctx)
	if err != nil {
		b.Fatal(err)
	}
	t.h1.slots <- struct{}{}
	t.h1.put(pc)
	b.ReportAllocs()
	for b.Loop() {
		t, err := p.Get(r)
		if err != nil {
			b.Fatal(err)
		}
		t.h1.slots <- struct{}{}
		pc, err := t.h1.get(ctx)
		if err != nil {
			b.Fatal(err)
		}
		t.h1.put(pc)
	}
}

// pacedBody yields n chunks, one per tick: an upload slower than the
// response-header timeout.
type pacedBody struct {
	tick *time.Ticker
	left int
}

func (b *pacedBody) Read(p []byte) (int, error) {
	if b.left == 0 {
		b.tick.Stop()
		return 0, io.EOF
	}
	<-b.tick.C
	b.left--
	return copy(p, "chunk"), nil
}

// The response-header timeout counts from the end of the request, as
// net/http's Transport counts it: an upload that takes longer than the
// timeout is not cut, and an upstream that then keeps silent is.
func TestH1HeadTimeoutStartsWhenTheRequestEnds(t *testing.T) {
	t.Parallel()
	const timeout = 150 * time.Millisecond
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	srv, _ := h1Server(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		if r.URL.Path == "/silent" {
			select {
			case <-release:
			case <-r.Context().Done():
			}
			return
		}
		fmt.Fprintf(w, "%d", n)
	}))
	h := newTestH1(t, srv.Listener.Addr().String(), func(c *PoolConfig) { c.ResponseHeaderTimeout = timeout })

	start := time.Now()
	resp, body := do(t, h, http.MethodPost, srv.URL+"/count", &pacedBody{tick: time.NewTicker(timeout / 2), left: 8})
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "40", body, "the whole upload arrived")
	require.Greater(t, time.Since(start), 3*timeout, "the upload outlasted the timeout")

	// The silent upstream holds the request until the test ends: only the
	// response-header timeout can end the round trip before this context,
	// the test's hang guard, does.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/silent", strings.NewReader("x"))
	require.NoError(t, err)
	req.ContentLength = -1
	_, err = h.roundTrip(req)
	require.Error(t, err, "a silent upstream still times out")
	require.NoError(t, ctx.Err(), "the round trip ended by the test's deadline, not by the response-header timeout: %v", err)
	var ne net.Error
	require.ErrorAs(t, err, &ne)
	require.True(t, ne.Timeout(), "%v", err)
}

// A requester that went away leaves its connection out of the pool, even
// when the answer was read to its end: the cut that its going away started
// may set its deadline at any time, on a connection parked by then.
func TestH1CancelledAnswerDoesNotParkItsConnection(t *testing.T) {
	t.Parallel()
	srv, cl := h1Server(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "5")
		_, _ = io.WriteString(w, "hello")
	}))
	h := newTestH1(t, srv.Listener.Addr().String(), nil)
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/", nil)
	require.NoError(t, err)
	resp, err := h.roundTrip(req)
	require.NoError(t, err)
	cancel()
	b, err := io.ReadAll(resp.Body) // read ahead with the head: no read on the cut connection
	require.NoError(t, err)
	require.Equal(t, "hello", string(b))
	require.NoError(t, resp.Body.Close())
	require.Zero(t, h.idleConns(), "the cut connection is closed, not parked")

	resp, body := do(t, h, http.MethodGet, srv.URL+"/", nil)
	require.Equal(t, 200, resp.StatusCode)
	require.Equal(t, "hello", body)
	require.EqualValues(t, 2, cl.n.Load())
	require.Equal(t, 1, h.idleConns())
}

// An upstream that answers before the request body ends (full duplex) is
// not timed by the response-header timeout once its head has come: the
// request's end, after it, starts no clock that would cut the answer's
// body.
func TestH1EarlyHeadIsNotTimedWhenTheRequestEnds(t *testing.T) {
	t.Parallel()
	const timeout = 100 * time.Millisecond
	srv, _ := h1Server(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		_ = rc.EnableFullDuplex()
		_, _ = io.WriteString(w, "head ")
		_ = rc.Flush()
		n, _ := io.Copy(io.Discard, r.Body)
		<-time.After(3 * timeout) // a slow answer, not a synchronisation
		fmt.Fprintf(w, "then %d", n)
	}))
	h := newTestH1(t, srv.Listener.Addr().String(), func(c *PoolConfig) { c.ResponseHeaderTimeout = timeout })
	pr, pw := io.Pipe()
	t.Cleanup(func() { pw.Close() })
	req, err := http.NewRequest(http.MethodPost, srv.URL+"/", pr)
	require.NoError(t, err)
	req.ContentLength = -1
	resp, err := h.roundTrip(req)
	require.NoError(t, err, "the head comes before the request ends")
	_, err = pw.Write([]byte("upload"))
	require.NoError(t, err)
	require.NoError(t, pw.Close())
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err, "the answer's body is not cut by a clock started at the request's end")
	require.Equal(t, "head then 6", string(b))
	require.NoError(t, resp.Body.Close())
}
