package gateway_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/config"
	"github.com/qtunnel/qtunnel/gateway"
	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/rules"
	"github.com/qtunnel/qtunnel/stages/limit"
)

// This file tests the limits of issue 6 (S3, S18, S19) through a real pair:
// header size (431) and read-header timeout (slowloris) on the ingress
// listeners, body size (413), requests in flight (503 + Retry-After) and
// the time to the answer's head (504), in both directions.

// countingUpstream counts the requests that reached it and the ones whose
// body it read to the end.
type countingUpstream struct {
	started, completed atomic.Int64
}

func (u *countingUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	u.started.Add(1)
	if _, err := io.Copy(io.Discard, r.Body); err != nil {
		return // the gateway cut the body short
	}
	u.completed.Add(1)
	fmt.Fprint(w, "ok")
}

// limitPair starts a pair with a reverse and a forward rule to upURL, and
// lim applied to the limits of both sides.
func limitPair(t *testing.T, upURL string, lim func(*config.Limits)) *pair {
	t.Helper()
	return startPair(t, pairOpts{
		rules:        []rules.Rule{reverseRule("rev", appHost, upURL), forwardRule("fwd", "127.0.0.1:0", upURL)},
		serverMutate: func(c *config.Server) { lim(&c.Limits) },
		clientMutate: func(c *config.Client) { lim(&c.Limits) },
	})
}

// TestLimitHeaderTooLarge431: a request head over limits.max_header_bytes
// is answered 431 by the ingress listener and never crosses the tunnel.
func TestLimitHeaderTooLarge431(t *testing.T) {
	t.Parallel()
	var up countingUpstream
	srv := upstream(t, &up)
	p := limitPair(t, srv.URL, func(l *config.Limits) { l.MaxHeaderBytes = 8 << 10 })
	c := h1Client(t)
	for _, d := range directions(t, p) {
		t.Run(d.name, func(t *testing.T) {
			before := up.started.Load()
			// net/http lets a head run 4 KiB past MaxHeaderBytes (the
			// request line and its read buffer): 4 KiB passes, 64 KiB not.
			req := newRequest(t, http.MethodGet, d.url("/small"), d.host, nil)
			req.Header.Set("X-Pad", strings.Repeat("s", 4<<10))
			resp, body := do(t, c, req)
			require.Equal(t, http.StatusOK, resp.StatusCode, body)

			req = newRequest(t, http.MethodGet, d.url("/big"), d.host, nil)
			req.Header.Set("X-Pad", strings.Repeat("b", 64<<10))
			resp, body = do(t, c, req)
			require.Equal(t, http.StatusRequestHeaderFieldsTooLarge, resp.StatusCode, body)
			require.EqualValues(t, before+1, up.started.Load(), "only the small head reached the upstream")
		})
	}
}

// bigBody is a request body of n bytes whose length net/http cannot know:
// it is sent chunked.
type bigBody struct{ n int }

func (b *bigBody) Read(p []byte) (int, error) {
	if b.n == 0 {
		return 0, io.EOF
	}
	k := min(len(p), b.n)
	clear(p[:k])
	b.n -= k
	return k, nil
}

// TestLimitBodyTooLarge413: a declared body over limits.max_body_size is
// answered 413 before anything is sent through the tunnel: the upstream
// sees no request at all. A streamed (chunked) body is counted as it
// crosses and fails with 413 once it passes the limit. Bodies are never
// buffered, so the head of a streamed request may already have reached the
// upstream by then (as it must, for gRPC): the upstream then sees its
// request aborted, never a complete one.
func TestLimitBodyTooLarge413(t *testing.T) {
	t.Parallel()
	const max = 64 << 10
	var up countingUpstream
	srv := upstream(t, &up)
	p := limitPair(t, srv.URL, func(l *config.Limits) { l.MaxBodySize = max })
	c := h1Client(t)
	for _, d := range directions(t, p) {
		t.Run(d.name, func(t *testing.T) {
			started, completed := up.started.Load(), up.completed.Load()

			req := newRequest(t, http.MethodPost, d.url("/declared"), d.host, strings.NewReader(strings.Repeat("x", 200<<10)))
			resp, body := do(t, c, req)
			require.Equal(t, http.StatusRequestEntityTooLarge, resp.StatusCode, body)
			require.Equal(t, "qtunnel: request body of 204800 bytes exceeds the limit of 65536 bytes\n", body)
			require.Equal(t, started, up.started.Load(), "a declared body over the limit never reaches the upstream")

			req = newRequest(t, http.MethodPost, d.url("/chunked"), d.host, &bigBody{n: 200 << 10})
			req.ContentLength = -1
			resp, body = do(t, c, req)
			require.Equal(t, http.StatusRequestEntityTooLarge, resp.StatusCode, body)
			require.Equal(t, "qtunnel: request body exceeds the limit of 65536 bytes\n", body)
			require.Equal(t, completed, up.completed.Load(), "the upstream never gets a complete oversized body")
			reached := up.started.Load() - started

			// At the limit, both kinds pass.
			req = newRequest(t, http.MethodPost, d.url("/at-limit"), d.host, strings.NewReader(strings.Repeat("x", max)))
			resp, body = do(t, c, req)
			require.Equal(t, http.StatusOK, resp.StatusCode, body)
			req = newRequest(t, http.MethodPost, d.url("/at-limit-chunked"), d.host, &bigBody{n: max})
			req.ContentLength = -1
			resp, body = do(t, c, req)
			require.Equal(t, http.StatusOK, resp.StatusCode, body)
			require.Equal(t, completed+2, up.completed.Load())
			t.Logf("%s: the chunked oversized request's head reached the upstream %d time(s), its body never whole", d.name, reached)
		})
	}
}

// needFiles raises the soft limit on open files to at least n, or skips
// the test saying why it cannot.
func needFiles(t *testing.T, n uint64) {
	t.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Skipf("needs %d open files; cannot read RLIMIT_NOFILE: %v", n, err)
	}
	if lim.Cur >= n {
		return
	}
	old := lim.Cur
	lim.Cur = min(n, lim.Max)
	if lim.Cur < n {
		t.Skipf("needs %d open files; the hard limit is %d", n, lim.Max)
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Skipf("needs %d open files; cannot raise the limit from %d: %v", n, old, err)
	}
	t.Cleanup(func() {
		lim.Cur = old
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	})
}

// memPeak samples the Go heap in use and the process RSS every 20ms until
// stopped, and keeps the peaks.
type memPeak struct {
	heap, rss uint64
	stop      chan struct{}
	done      chan struct{}
}

func sampleMemory() *memPeak {
	m := &memPeak{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(m.done)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			m.heap = max(m.heap, ms.HeapInuse)
			m.rss = max(m.rss, rss())
			select {
			case <-m.stop:
				return
			case <-tick.C:
			}
		}
	}()
	return m
}

// peaks stops the sampling and returns the peaks.
func (m *memPeak) peaks() (heap, rss uint64) {
	close(m.stop)
	<-m.done
	return m.heap, m.rss
}

// rss is the process's resident set size now, 0 if unknown.
func rss() uint64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	pages, _ := strconv.ParseUint(f[1], 10, 64)
	return pages * uint64(os.Getpagesize())
}

// countInFlight is an option that puts, right after the ingress chain's
// in-flight limit, a stage counting the exchanges the limit let through
// and that have not come back from it: *n is what the limit holds.
func countInFlight(n *atomic.Int64) gateway.Option {
	return gateway.WithIngressEdits(pipeline.After(limit.Name, pipeline.Name("count", pipeline.StageFunc(
		func(ctx context.Context, x *pipeline.Exchange, next pipeline.Handler) error {
			n.Add(1)
			defer n.Add(-1)
			return next.Handle(ctx, x)
		}))))
}

// TestLimitOverload503 sends 5000 requests at once to a reverse rule whose
// upstream holds each one 50ms, through a server that takes 100 in flight:
// each request is answered 200 or at once 503 with Retry-After: 1, nothing
// else, none waits in a queue, and memory stays bounded.
//
// The heap bound is 256 MiB for the whole test process: the 5000 users'
// connections and goroutines, both gateway sides and the upstream. With
// every request admitted and queued instead, 5000 exchanges would each hold
// their buffers (tens of KiB) and more. Under -race, whose detector allows
// 8128 live goroutines, at most 1000 requests are in flight at a time (each
// costs about five goroutines between the user's transport, the listener
// and the tunnel); that is still ten times the limit.
//
// Not parallel: it needs thousands of file descriptors to itself.
func TestLimitOverload503(t *testing.T) {
	const (
		total       = 5000
		maxInFlight = 100
		hold        = 50 * time.Millisecond
		heapBound   = 256 << 20
	)
	users := total
	if gateway.RaceDetector {
		users = 1000
	}
	needFiles(t, uint64(2*users+1000))

	var held atomic.Int64
	up := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		held.Add(1)
		tm := time.NewTimer(hold)
		select {
		case <-tm.C:
		case <-r.Context().Done():
			tm.Stop()
		}
		fmt.Fprint(w, "ok")
	}))
	var inFlight atomic.Int64
	p := startPair(t, pairOpts{
		rules:        []rules.Rule{reverseRule("rev", appHost, up.URL)},
		serverMutate: func(c *config.Server) { c.Limits.MaxInFlight = maxInFlight },
		serverOpts:   []gateway.Option{countInFlight(&inFlight)},
	})
	resp, body := get(t, h1Client(t), p.publicURL("/warm"), appHost)
	require.Equal(t, http.StatusOK, resp.StatusCode, body)
	baseline := runtime.NumGoroutine()

	tr := &http.Transport{DisableKeepAlives: true, DisableCompression: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	var ok, busy atomic.Int64
	var mu sync.Mutex
	var others []string
	mem := sampleMemory()
	start := make(chan struct{})
	var wg sync.WaitGroup
	began := time.Now()
	for range users {
		wg.Go(func() {
			<-start
			for range total / users {
				req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.publicURL("/load"), nil)
				if err != nil {
					panic(err)
				}
				req.Host = appHost
				resp, err := client.Do(req)
				if err != nil {
					mu.Lock()
					others = append(others, err.Error())
					mu.Unlock()
					continue
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				switch {
				case resp.StatusCode == http.StatusOK && string(b) == "ok":
					ok.Add(1)
				case resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") == "1":
					busy.Add(1)
				default:
					mu.Lock()
					others = append(others, fmt.Sprintf("%d %q Retry-After %q", resp.StatusCode, b, resp.Header.Get("Retry-After")))
					mu.Unlock()
				}
			}
		})
	}
	close(start)
	wg.Wait()
	took := time.Since(began)
	heap, peakRSS := mem.peaks()

	t.Logf("%d requests, at most %d at a time, in %v: %d answered 200, %d refused 503 + Retry-After: 1, %d other; upstream held %d",
		total, users, took.Round(time.Millisecond), ok.Load(), busy.Load(), len(others), held.Load())
	t.Logf("peak heap in use %.1f MiB (bound %d MiB), peak RSS %.1f MiB (race detector: %v)",
		float64(heap)/(1<<20), heapBound>>20, float64(peakRSS)/(1<<20), gateway.RaceDetector)
	require.Empty(t, others, "every request is answered 200 or 503 with Retry-After")
	require.EqualValues(t, total, ok.Load()+busy.Load())
	require.Positive(t, ok.Load())
	require.Positive(t, busy.Load())
	require.Less(t, heap, uint64(heapBound))

	// Everything returns to where it was: no slot, no goroutine is left.
	eventually(t, 10*time.Second, func() bool { return inFlight.Load() == 0 }, "no request in flight")
	up.CloseClientConnections() // the egress pool's idle upstream connections
	var now int
	eventually(t, 20*time.Second, func() bool {
		now = runtime.NumGoroutine()
		return now <= baseline+5
	}, "goroutines back to the baseline")
	t.Logf("goroutines: %d before the load, %d after", baseline, now)
}

// latencies runs n requests one after another and returns their latencies.
func latencies(t *testing.T, c *http.Client, url string, n int) []time.Duration {
	t.Helper()
	out := make([]time.Duration, 0, n)
	for range n {
		start := time.Now()
		resp, body := get(t, c, url, appHost)
		out = append(out, time.Since(start))
		require.Equal(t, http.StatusOK, resp.StatusCode, body)
	}
	return out
}

func p99(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, len(s)*99/100)]
}

// TestLimitSlowloris opens 1000 connections to the server's public
// listener that each send one byte of a request head per second, a head
// that never ends. The server closes every one of them (read_header_timeout,
// 2s: nothing else ends a connection whose head is still coming), and the
// ordinary requests made meanwhile are all answered 200. How long either
// takes is logged, not checked: it depends on the machine. The test gives
// up on an attacker a minute after its connect.
//
// Not parallel: it needs 2000 file descriptors to itself.
func TestLimitSlowloris(t *testing.T) {
	const (
		conns   = 1000
		timeout = 2 * time.Second
		giveUp  = time.Minute // a hang guard, not a bound on the close
	)
	needFiles(t, 2*conns+1000)
	up := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok") }))
	p := startPair(t, pairOpts{
		rules:        []rules.Rule{reverseRule("rev", appHost, up.URL)},
		serverMutate: func(c *config.Server) { c.Limits.ReadHeaderTimeout = timeout },
	})
	c := h1Client(t)
	url := p.publicURL("/latency")
	latencies(t, c, url, 50) // warm up
	base := latencies(t, c, url, 100)

	addr := p.Server.PublicAddr().String()
	head := "GET /slow HTTP/1.1\r\nHost: " + appHost + "\r\nX-Slow: " + strings.Repeat("z", 64)
	closedAfter := make([]time.Duration, conns) // -1: still open when the test gave up; -2: dial failed
	var open atomic.Int64                       // attackers connected and not closed yet
	var dialed, attackers sync.WaitGroup
	dialed.Add(conns)
	for i := range conns {
		attackers.Go(func() {
			conn, err := net.DialTimeout("tcp", addr, 30*time.Second)
			if err != nil {
				closedAfter[i] = -2
				dialed.Done()
				return
			}
			open.Add(1)
			dialed.Done()
			defer open.Add(-1)
			defer conn.Close()
			began := time.Now()
			var buf [512]byte
			for j := 0; ; j++ {
				if time.Since(began) > giveUp {
					closedAfter[i] = -1
					return
				}
				if _, err := conn.Write([]byte{head[j%len(head)]}); err != nil {
					closedAfter[i] = time.Since(began)
					return
				}
				// The read paces the bytes (one a second) and sees the
				// server's close (EOF, or a reset) the moment it happens.
				_ = conn.SetReadDeadline(time.Now().Add(time.Second))
				_, err := conn.Read(buf[:])
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					continue
				}
				closedAfter[i] = time.Since(began)
				return
			}
		})
	}
	dialed.Wait()
	attacked := make(chan struct{})
	go func() { attackers.Wait(); close(attacked) }()
	// Ordinary requests, ten at a time, until every attacker is done; at
	// least ten of them whatever happens.
	var during []time.Duration
	servedWhileOpen := 0
	for done := false; !done; {
		batch := latencies(t, c, url, 10) // each one answered 200
		during = append(during, batch...)
		if open.Load() > 0 {
			servedWhileOpen += len(batch)
		}
		select {
		case <-attacked:
			done = true
		default:
		}
	}

	var failed []string
	var closed []time.Duration
	for i, d := range closedAfter {
		switch {
		case d == -2:
			failed = append(failed, fmt.Sprintf("conn %d: dial failed", i))
		case d == -1:
			failed = append(failed, fmt.Sprintf("conn %d: still open %v after its connect", i, giveUp))
		default:
			closed = append(closed, d)
		}
	}
	require.Empty(t, failed, "every slow connection is closed by the server")
	slices.Sort(closed)
	t.Logf("%d slow connections closed by the server after %v (first) / %v (median) / %v (last); read_header_timeout %v",
		conns, closed[0].Round(time.Millisecond), closed[conns/2].Round(time.Millisecond), closed[conns-1].Round(time.Millisecond), timeout)
	t.Logf("ordinary requests: p99 %v before (%d requests), %v during the attack (%d requests, %d of them answered while attackers were still connected)",
		p99(base).Round(time.Microsecond), len(base), p99(during).Round(time.Microsecond), len(during), servedWhileOpen)
}

// hangingUpstream never answers: it holds each request until the gateway
// gives up on it, and counts the requests it let go.
type hangingUpstream struct {
	entered, released atomic.Int64
}

func (u *hangingUpstream) ServeHTTP(_ http.ResponseWriter, r *http.Request) {
	u.entered.Add(1)
	<-r.Context().Done()
	u.released.Add(1)
}

// TestLimitRequestTimeout504: an upstream that never answers gets the user
// a 504 once limits.request_timeout has passed, in both directions, and the
// upstream's request is cancelled, not left hanging. The 504 is the
// request timeout's own (its message names it); it comes no sooner than
// the timeout, and how much later is logged only.
func TestLimitRequestTimeout504(t *testing.T) {
	t.Parallel()
	const timeout = time.Second
	var up hangingUpstream
	srv := upstream(t, &up)
	p := limitPair(t, srv.URL, func(l *config.Limits) { l.RequestTimeout = timeout })
	c := h1Client(t)
	for _, d := range directions(t, p) {
		t.Run(d.name, func(t *testing.T) {
			start := time.Now()
			resp, body := do(t, c, newRequest(t, http.MethodGet, d.url("/never"), d.host, nil))
			took := time.Since(start)
			t.Logf("%s: %d %q after %v", d.name, resp.StatusCode, body, took.Round(time.Millisecond))
			require.Equal(t, http.StatusGatewayTimeout, resp.StatusCode, body)
			require.Equal(t, "qtunnel: no answer within 1s\n", body)
			require.GreaterOrEqual(t, took, timeout, "not before the timeout")
		})
	}
	eventually(t, 30*time.Second, func() bool { return up.released.Load() == 2 },
		"the upstream's requests are cancelled")
}

// TestLimitTimeoutSparesStreams: the request timeout bounds the wait for
// the answer's head only. An answer that starts at once and then streams
// for three times the timeout arrives whole, in both directions.
func TestLimitTimeoutSparesStreams(t *testing.T) {
	t.Parallel()
	// The head must come within the timeout however busy the machine: a
	// second is room enough on loopback.
	const (
		timeout = time.Second
		chunks  = 8
		every   = 400 * time.Millisecond // 8 x 400ms: 3.2s, over three timeouts
	)
	srv := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		rc := http.NewResponseController(w)
		_ = rc.Flush()
		tick := time.NewTicker(every)
		defer tick.Stop()
		for i := range chunks {
			select {
			case <-tick.C:
			case <-r.Context().Done():
				return
			}
			fmt.Fprintf(w, "data: %d\n\n", i)
			_ = rc.Flush()
		}
	}))
	p := limitPair(t, srv.URL, func(l *config.Limits) { l.RequestTimeout = timeout })
	c := h1Client(t)
	var want strings.Builder
	for i := range chunks {
		fmt.Fprintf(&want, "data: %d\n\n", i)
	}
	for _, d := range directions(t, p) {
		t.Run(d.name, func(t *testing.T) {
			start := time.Now()
			resp, body := do(t, c, newRequest(t, http.MethodGet, d.url("/events"), d.host, nil))
			took := time.Since(start)
			require.Equal(t, http.StatusOK, resp.StatusCode, body)
			require.Equal(t, want.String(), body)
			require.Greater(t, took, 3*timeout, "the stream outlived the timeout")
			t.Logf("%s: %d chunks over %v with a request timeout of %v", d.name, chunks, took.Round(time.Millisecond), timeout)
		})
	}
}

// TestLimitSlowlorisHTTP2: HTTP/2 reads frames, not heads, so the
// read-header timeout alone does not stop a prior-knowledge h2c client that
// trickles a frame once its connection is up. The ingress listeners ping a
// connection that delivers no whole frame for read_header_timeout and close
// it when the ping goes unanswered as long: each of 100 such connections
// gets a PING from the server and is then closed by it. idle_timeout is an
// hour here, so the ping is what closes them, however long that takes; the
// test gives up on a connection a minute after its connect.
func TestLimitSlowlorisHTTP2(t *testing.T) {
	t.Parallel()
	const (
		conns   = 100
		timeout = time.Second
		giveUp  = time.Minute // a hang guard, not a bound on the close
	)
	up := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok") }))
	p := startPair(t, pairOpts{
		rules: []rules.Rule{reverseRule("rev", appHost, up.URL)},
		serverMutate: func(c *config.Server) {
			c.Limits.ReadHeaderTimeout = timeout
			c.Limits.IdleTimeout = time.Hour
		},
	})
	addr := p.Server.PublicAddr().String()
	// The client preface and an empty SETTINGS frame, sent at once; then
	// the 9-byte header of a HEADERS frame announcing 256 bytes, one byte
	// a second.
	const preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + "\x00\x00\x00\x04\x00\x00\x00\x00\x00"
	const trickle = "\x00\x01\x00\x01\x04\x00\x00\x00\x01"
	type outcome struct {
		err         error         // the dial or the preface failed
		closedAfter time.Duration // -1: still open when the test gave up
		received    []byte        // what the server sent
	}
	got := make([]outcome, conns)
	var wg sync.WaitGroup
	for i := range conns {
		wg.Go(func() {
			got[i].closedAfter = -1
			conn, err := net.DialTimeout("tcp", addr, 30*time.Second)
			if err != nil {
				got[i].err = err
				return
			}
			defer conn.Close()
			began := time.Now()
			if _, err := conn.Write([]byte(preface)); err != nil {
				got[i].err = err
				return
			}
			var buf [512]byte
			for j := 0; time.Since(began) <= giveUp; {
				if j < len(trickle) {
					if _, err := conn.Write([]byte{trickle[j]}); err != nil {
						got[i].closedAfter = time.Since(began)
						return
					}
					j++
				}
				// The server's SETTINGS, its acknowledgement and its PING
				// arrive here and are kept, unanswered, as a stuck client
				// would leave them.
				_ = conn.SetReadDeadline(time.Now().Add(time.Second))
				n, err := conn.Read(buf[:])
				got[i].received = append(got[i].received, buf[:n]...)
				var ne net.Error
				if err == nil || (errors.As(err, &ne) && ne.Timeout()) {
					continue
				}
				got[i].closedAfter = time.Since(began)
				return
			}
		})
	}
	wg.Wait()
	var worst time.Duration
	var failed []error
	var open, unpinged []int
	for i, o := range got {
		switch {
		case o.err != nil:
			failed = append(failed, o.err)
		case o.closedAfter < 0:
			open = append(open, i)
		case !pinged(o.received):
			unpinged = append(unpinged, i)
		}
		worst = max(worst, o.closedAfter)
	}
	require.Empty(t, failed, "connections that could not start")
	require.Empty(t, open, "connections still open %v after their connect", giveUp)
	t.Logf("%d h2c connections trickling a frame: the last closed %v after its connect (read_header_timeout %v)",
		conns, worst.Round(time.Millisecond), timeout)
	require.Empty(t, unpinged, "connections closed without a PING from the server first")
}

// pinged says whether the HTTP/2 frames in b, as a server sent them after
// its preface, include a PING that is not an acknowledgement.
func pinged(b []byte) bool {
	for len(b) >= 9 {
		length := int(b[0])<<16 | int(b[1])<<8 | int(b[2])
		typ, flags := b[3], b[4]
		if typ == 0x6 && flags&0x1 == 0 {
			return true
		}
		b = b[min(len(b), 9+length):]
	}
	return false
}
