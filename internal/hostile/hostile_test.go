package hostile_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/net/http2"

	"github.com/qtunnel/qtunnel/internal/hostile"
	"github.com/qtunnel/qtunnel/pipeline/pipelinetest"
)

func TestMain(m *testing.M) { pipelinetest.VerifyNoLeaks(m) }

const attacker = "127.0.0.2"

// testCtx bounds a test.
func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// countingConn counts the bytes the server read from a connection and
// closes eof once a read failed: the server stopped reading.
type countingConn struct {
	net.Conn
	n    *atomic.Int64
	once sync.Once
	eof  chan struct{}
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.n.Add(int64(n))
	if err != nil {
		c.once.Do(func() { close(c.eof) })
	}
	return n, err
}

type countingListener struct {
	net.Listener
	n     atomic.Int64
	conns chan *countingConn // every accepted connection, buffered
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	cc := &countingConn{Conn: c, n: &l.n, eof: make(chan struct{})}
	select {
	case l.conns <- cc:
	default:
	}
	return cc, nil
}

// server is a plain net/http server speaking HTTP/1.1 and h2c, with at most
// maxStreams concurrent streams per HTTP/2 connection (0: the default).
func server(t *testing.T, h http.Handler, maxStreams int) (*httptest.Server, *countingListener) {
	t.Helper()
	s := httptest.NewUnstartedServer(h)
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	s.Config.Protocols = &p
	if maxStreams > 0 {
		s.Config.HTTP2 = &http.HTTP2Config{MaxConcurrentStreams: maxStreams}
	}
	cl := &countingListener{Listener: s.Listener, conns: make(chan *countingConn, 16)}
	s.Listener = cl
	s.Start()
	t.Cleanup(s.Close)
	return s, cl
}

func addr(s *httptest.Server) string { return strings.TrimPrefix(s.URL, "http://") }

func remoteIP(r *http.Request) string {
	h, _, _ := net.SplitHostPort(r.RemoteAddr)
	return h
}

// bodyArrival is what a handler saw of one slow body.
type bodyArrival struct {
	contentLength int64
	proto         string
	contentType   string
	remote        string
	times         []time.Time
}

// readBytes reads n body bytes one at a time, noting when each came.
func readBytes(r *http.Request, n int) bodyArrival {
	a := bodyArrival{contentLength: r.ContentLength, proto: r.Proto, contentType: r.Header.Get("Content-Type"), remote: remoteIP(r)}
	b := make([]byte, 1)
	for len(a.times) < n {
		k, err := r.Body.Read(b)
		for range k {
			a.times = append(a.times, time.Now())
		}
		if err != nil {
			break
		}
	}
	return a
}

// TestSlowBodyH1 shows the body bytes reaching the handler one by one, at
// the stated pace, over both framings, from the chosen source; and the
// answer recorded.
func TestSlowBodyH1(t *testing.T) {
	t.Parallel()
	const n, interval = 4, 50 * time.Millisecond
	arrivals := make(chan bodyArrival, 2)
	s, _ := server(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a := readBytes(r, n)
		w.Header().Set("Connection", "close")
		w.WriteHeader(http.StatusRequestTimeout)
		arrivals <- a
	}), 0)
	rs, err := hostile.SlowBodyH1(testCtx(t), hostile.SlowBodyConfig{
		Target: hostile.Target{Addr: addr(s), Source: attacker, Host: "slow.test", Path: "/up", Duration: 20 * time.Second},
		Conns:  2, Length: hostile.MixedLength, ContentLength: 100, Interval: interval, MaxBytes: n,
	})
	require.NoError(t, err)
	require.Len(t, rs, 2)
	for _, r := range rs {
		require.Equal(t, http.StatusRequestTimeout, r.Status, "%+v", r)
		require.Equal(t, hostile.Answered, r.End)
		require.True(t, r.ServerClose)
		require.EqualValues(t, n, r.Sent)
		require.Equal(t, "408", r.Key())
	}
	lengths := map[int64]bool{}
	for range 2 {
		a := <-arrivals
		lengths[a.contentLength] = true
		require.Equal(t, attacker, a.remote)
		require.Len(t, a.times, n)
		// Byte k is written no sooner than k intervals after the head.
		span := a.times[n-1].Sub(a.times[0])
		require.GreaterOrEqual(t, span, time.Duration(n-2)*interval, "bytes came faster than the pace")
	}
	require.Equal(t, map[int64]bool{100: true, -1: true}, lengths, "one Content-Length, one chunked")
}

// TestSlowBodyH1HeadOnly: with no interval nothing follows the head, and
// the context stops the attack.
func TestSlowBodyH1HeadOnly(t *testing.T) {
	t.Parallel()
	got := make(chan int, 3)
	s, _ := server(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		got <- int(n)
	}), 0)
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	var live hostile.Live
	type out struct {
		rs  []hostile.ConnResult
		err error
	}
	done := make(chan out, 1)
	go func() {
		rs, err := hostile.SlowBodyH1(ctx, hostile.SlowBodyConfig{
			Target: hostile.Target{Addr: addr(s), Source: attacker, Live: &live},
			Conns:  3, Length: hostile.UnknownLength,
		})
		done <- out{rs, err}
	}()
	require.NoError(t, live.Wait(testCtx(t), func(started, _ int) bool { return started == 3 }))
	cancel()
	o := <-done
	require.NoError(t, o.err)
	require.Len(t, o.rs, 3)
	for _, r := range o.rs {
		require.Equal(t, hostile.Open, r.End, "%+v", r)
		require.Zero(t, r.Status)
		require.Zero(t, r.Sent)
	}
	started, ended := live.Counts()
	require.Equal(t, 3, started)
	require.Equal(t, 3, ended)
}

// TestSlowStreamsH2C shows slow h2c streams: within the server's stream
// limit, with and without content-length, their bytes at the pace, and
// their answers or resets recorded.
func TestSlowStreamsH2C(t *testing.T) {
	t.Parallel()
	const n, interval = 3, 30 * time.Millisecond
	arrivals := make(chan bodyArrival, 8)
	s, _ := server(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Content-Type") == "application/grpc" {
			arrivals <- bodyArrival{contentType: r.Header.Get("Content-Type"), proto: r.Proto, contentLength: r.ContentLength}
			panic(http.ErrAbortHandler) // a reset
		}
		a := readBytes(r, n)
		w.WriteHeader(http.StatusRequestTimeout)
		arrivals <- a
	}), 2)

	t.Run("slow bodies answered", func(t *testing.T) {
		rs, err := hostile.SlowStreamsH2C(testCtx(t), hostile.SlowStreamsConfig{
			Target: hostile.Target{Addr: addr(s), Source: attacker, Host: "slow.test", Duration: 20 * time.Second},
			Conns:  2, Streams: 3, Length: hostile.MixedLength, ContentLength: 100, Interval: interval, MaxBytes: n,
		})
		require.NoError(t, err)
		require.Len(t, rs, 4, "two streams per connection: the server allows two")
		for _, r := range rs {
			require.Equal(t, http.StatusRequestTimeout, r.Status, "%+v", r)
			require.Equal(t, hostile.Answered, r.End)
			require.EqualValues(t, n, r.Sent)
		}
		lengths := map[int64]int{}
		for range 4 {
			a := <-arrivals
			require.Equal(t, "HTTP/2.0", a.proto)
			require.Equal(t, attacker, a.remote)
			require.Len(t, a.times, n)
			require.GreaterOrEqual(t, a.times[n-1].Sub(a.times[0]), time.Duration(n-2)*interval)
			lengths[a.contentLength]++
		}
		require.Equal(t, map[int64]int{100: 2, -1: 2}, lengths)
	})

	t.Run("grpc reset", func(t *testing.T) {
		rs, err := hostile.SlowStreamsH2C(testCtx(t), hostile.SlowStreamsConfig{
			Target: hostile.Target{Addr: addr(s), Source: attacker, Duration: 20 * time.Second},
			Conns:  1, Streams: 1, Length: hostile.UnknownLength, GRPC: true,
		})
		require.NoError(t, err)
		require.Len(t, rs, 1)
		require.Equal(t, hostile.Reset, rs[0].End, "%+v", rs[0])
		require.Equal(t, http2.ErrCodeInternal, rs[0].Code)
		require.Equal(t, "reset:INTERNAL_ERROR", rs[0].Key())
		a := <-arrivals
		require.Equal(t, "application/grpc", a.contentType)
		require.EqualValues(t, -1, a.contentLength)
	})
}

// bigAnswer writes size bytes; when deadline is set, each write must
// finish by then, and a failed write calls onCut.
func bigAnswer(size int, deadline time.Duration, onCut func()) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(size))
		if deadline > 0 {
			_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(deadline))
		}
		chunk := make([]byte, 32<<10)
		for left := size; left > 0; left -= len(chunk) {
			if _, err := w.Write(chunk[:min(len(chunk), left)]); err != nil {
				if onCut != nil {
					onCut()
				}
				return
			}
		}
	}
}

// TestSlowReaders shows readers that read at their pace, that stop and
// learn that the server cut them, and that read to the end, over HTTP/1.1
// and h2c.
func TestSlowReaders(t *testing.T) {
	t.Parallel()
	const size = 8 << 20
	t.Run("h1 slow reader keeps its pace", func(t *testing.T) {
		t.Parallel()
		s, _ := server(t, bigAnswer(size, 0, nil), 0)
		const chunk, interval = 1024, 50 * time.Millisecond
		rs, err := hostile.SlowReaders(testCtx(t), hostile.SlowReadersConfig{
			Target: hostile.Target{Addr: addr(s), Source: attacker, Duration: time.Second},
			Conns:  2, Chunk: chunk, Interval: interval,
		})
		require.NoError(t, err)
		for _, r := range rs {
			require.Equal(t, hostile.Open, r.End, "%+v", r)
			require.Equal(t, http.StatusOK, r.Status)
			require.EqualValues(t, size, r.Length)
			// One chunk per tick: at most 20 ticks in a second.
			require.GreaterOrEqual(t, r.Got, int64(chunk))
			require.LessOrEqual(t, r.Got, int64(20*chunk))
		}
	})
	t.Run("h1 stopped reader is cut", func(t *testing.T) {
		t.Parallel()
		cut := make(chan struct{})
		s, _ := server(t, bigAnswer(size, 200*time.Millisecond, sync.OnceFunc(func() { close(cut) })), 0)
		rs, err := hostile.SlowReaders(testCtx(t), hostile.SlowReadersConfig{
			Target: hostile.Target{Addr: addr(s), Source: attacker, Duration: 30 * time.Second},
			Conns:  1, Hold: 30 * time.Second, Resume: cut,
		})
		require.NoError(t, err)
		r := rs[0]
		require.True(t, r.Cut(), "%+v", r)
		require.Equal(t, hostile.Closed, r.End)
		require.Less(t, r.Got, int64(size))
		require.Positive(t, r.Got)
	})
	t.Run("h1 reader reads to the end", func(t *testing.T) {
		t.Parallel()
		s, _ := server(t, bigAnswer(size, 0, nil), 0)
		rs, err := hostile.SlowReaders(testCtx(t), hostile.SlowReadersConfig{
			Target: hostile.Target{Addr: addr(s), Source: attacker, Duration: 30 * time.Second},
			Conns:  1, Chunk: 64 << 10, Interval: time.Millisecond, Hold: 50 * time.Millisecond,
		})
		require.NoError(t, err)
		require.Equal(t, hostile.Complete, rs[0].End, "%+v", rs[0])
		require.EqualValues(t, size, rs[0].Got)
	})
	t.Run("h2c stopped reader is reset", func(t *testing.T) {
		t.Parallel()
		cut := make(chan struct{})
		s, _ := server(t, bigAnswer(size, 200*time.Millisecond, sync.OnceFunc(func() { close(cut) })), 0)
		rs, err := hostile.SlowReaders(testCtx(t), hostile.SlowReadersConfig{
			Target: hostile.Target{Addr: addr(s), Source: attacker, Duration: 30 * time.Second},
			Conns:  2, H2C: true,
		})
		require.NoError(t, err)
		for _, r := range rs {
			require.Equal(t, hostile.Reset, r.End, "%+v", r)
			require.Equal(t, "reset:INTERNAL_ERROR", r.Key())
			require.True(t, r.Cut())
			require.Equal(t, http.StatusOK, r.Status)
			require.EqualValues(t, size, r.Length)
			require.LessOrEqual(t, r.Got, int64(65535), "no more than the window it never granted back")
		}
	})
	t.Run("h2c slow reader reads to the end", func(t *testing.T) {
		t.Parallel()
		const small = 1 << 20
		s, _ := server(t, bigAnswer(small, 0, nil), 0)
		rs, err := hostile.SlowReaders(testCtx(t), hostile.SlowReadersConfig{
			Target: hostile.Target{Addr: addr(s), Source: attacker, Duration: 30 * time.Second},
			Conns:  1, H2C: true, Chunk: 128 << 10, Interval: 2 * time.Millisecond, Window: 256 << 10,
		})
		require.NoError(t, err)
		require.Equal(t, hostile.Complete, rs[0].End, "%+v", rs[0])
		require.EqualValues(t, small, rs[0].Got)
	})
}

// TestRapidReset shows the resets reaching a plain server: its handlers'
// requests are cancelled.
func TestRapidReset(t *testing.T) {
	t.Parallel()
	var started, cancelled atomic.Int64
	s, _ := server(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		started.Add(1)
		<-r.Context().Done()
		cancelled.Add(1)
	}), 0)
	rs, err := hostile.RapidReset(testCtx(t), hostile.RapidResetConfig{
		Target: hostile.Target{Addr: addr(s), Source: attacker, Duration: 20 * time.Second},
		Conns:  2, MaxResets: 300, CloseWait: 100 * time.Millisecond,
	})
	require.NoError(t, err)
	require.Len(t, rs, 2)
	sent := 0
	for _, r := range rs {
		require.NoError(t, r.Err)
		require.True(t, r.Sent == 300 || r.End == hostile.GoAway, "%+v", r)
		sent += r.Sent
	}
	require.Positive(t, started.Load())
	require.Positive(t, cancelled.Load(), "the server saw resets")
	t.Logf("sent %d; handlers started %d, cancelled %d; %s", sent, started.Load(), cancelled.Load(), hostile.FormatTally(hostile.Tally(rs)))
}

// fakeH2 is a raw HTTP/2 server that takes one connection, counts the
// frames it reads, and sends GOAWAY(code) and closes once stop says so.
type fakeH2 struct {
	ln     net.Listener
	counts map[http2.FrameType]int // by the serving goroutine, read after done
	done   chan struct{}
}

func newFakeH2(t *testing.T, code http2.ErrCode, stop func(counts map[http2.FrameType]int) bool) *fakeH2 {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	f := &fakeH2{ln: ln, counts: map[http2.FrameType]int{}, done: make(chan struct{})}
	go func() {
		defer close(f.done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		preface := make([]byte, len(http2.ClientPreface))
		if _, err := io.ReadFull(c, preface); err != nil {
			return
		}
		fr := http2.NewFramer(c, c)
		if fr.WriteSettings() != nil {
			return
		}
		for {
			fm, err := fr.ReadFrame()
			if err != nil {
				return
			}
			f.counts[fm.Header().Type]++
			if stop(f.counts) {
				_ = fr.WriteGoAway(0, code, nil)
				return
			}
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-f.done
	})
	return f
}

// TestRapidResetGoAway: a server's GOAWAY and close are recorded.
func TestRapidResetGoAway(t *testing.T) {
	t.Parallel()
	f := newFakeH2(t, http2.ErrCodeEnhanceYourCalm, func(c map[http2.FrameType]int) bool { return c[http2.FrameRSTStream] == 50 })
	rs, err := hostile.RapidReset(testCtx(t), hostile.RapidResetConfig{
		Target: hostile.Target{Addr: f.ln.Addr().String(), Source: attacker, Duration: 20 * time.Second},
		Conns:  1, MaxResets: 100000,
	})
	require.NoError(t, err)
	<-f.done
	r := rs[0]
	require.Equal(t, hostile.GoAway, r.End, "%+v", r)
	require.Equal(t, http2.ErrCodeEnhanceYourCalm, r.Code)
	require.True(t, r.Closed)
	require.Equal(t, "goaway:ENHANCE_YOUR_CALM", r.Key())
	require.GreaterOrEqual(t, r.Sent, 50)
	require.Less(t, r.Sent, 100000)
	require.Equal(t, 50, f.counts[http2.FrameHeaders], "HEADERS and RST_STREAM in pairs")
}

// TestContinuationFlood: the flood is counted to the GOAWAY that stops it,
// and a plain net/http server reads every frame of it without calling a
// handler.
func TestContinuationFlood(t *testing.T) {
	t.Parallel()
	t.Run("goaway", func(t *testing.T) {
		t.Parallel()
		f := newFakeH2(t, http2.ErrCodeProtocol, func(c map[http2.FrameType]int) bool { return c[http2.FrameContinuation] == 10 })
		r, err := hostile.ContinuationFlood(testCtx(t), hostile.FloodConfig{
			Target:    hostile.Target{Addr: f.ln.Addr().String(), Source: attacker, Duration: 20 * time.Second},
			MaxFrames: 1000, Interval: 2 * time.Millisecond,
		})
		require.NoError(t, err)
		<-f.done
		require.Equal(t, hostile.GoAway, r.End, "%+v", r)
		require.Equal(t, http2.ErrCodeProtocol, r.Code)
		require.True(t, r.Closed)
		require.GreaterOrEqual(t, r.WrittenAtGoAway, 10)
		require.Less(t, r.Written, 1000)
		require.Equal(t, 1, f.counts[http2.FrameHeaders])
	})
	t.Run("plain server", func(t *testing.T) {
		t.Parallel()
		var calls atomic.Int64
		s, cl := server(t, http.HandlerFunc(func(http.ResponseWriter, *http.Request) { calls.Add(1) }), 0)
		const frames = 5000
		r, err := hostile.ContinuationFlood(testCtx(t), hostile.FloodConfig{
			Target:    hostile.Target{Addr: addr(s), Source: attacker, Duration: 20 * time.Second},
			MaxFrames: frames, CloseWait: 100 * time.Millisecond,
		})
		require.NoError(t, err)
		t.Logf("plain net/http server: %+v", r)
		if r.End == hostile.GoAway {
			return // a server that defends itself
		}
		require.Equal(t, frames, r.Written)
		c := <-cl.conns
		select {
		case <-c.eof:
		case <-testCtx(t).Done():
			t.Fatal("the server did not read the connection to its end")
		}
		require.GreaterOrEqual(t, cl.n.Load(), int64(9*frames), "the server read the flood")
		require.Zero(t, calls.Load(), "the header block never ended")
	})
}

// TestOrdinary counts ordinary requests by status, over HTTP/1.1 and h2c,
// from the chosen source, GETs and POSTs in turn.
func TestOrdinary(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name  string
		h2c   bool
		proto string
	}{{"http1", false, "HTTP/1.1"}, {"h2c", true, "HTTP/2.0"}} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var mu sync.Mutex
			seen := map[string]int{}
			s, _ := server(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				n, _ := io.Copy(io.Discard, r.Body)
				mu.Lock()
				seen[r.Method+" "+r.Proto+" "+remoteIP(r)+" "+strconv.Itoa(int(n))]++
				mu.Unlock()
				if r.Host == "busy.test" {
					w.WriteHeader(http.StatusServiceUnavailable)
				}
			}), 0)
			res, err := hostile.Ordinary(testCtx(t), hostile.OrdinaryConfig{
				URL: s.URL + "/x", Hosts: []string{"ok.test", "ok.test", "busy.test", "busy.test"}, Source: "127.0.0.1",
				Requests: 40, Concurrency: 4, PostBytes: 100, H2C: tt.h2c,
			})
			require.NoError(t, err)
			require.Equal(t, map[int]int{200: 20, 503: 20}, res.Status, res.String())
			require.Empty(t, res.Errors)
			require.Zero(t, res.NotSent)
			require.Equal(t, 40, res.Total())
			require.Equal(t, map[string]int{
				"GET " + tt.proto + " 127.0.0.1 0":    20,
				"POST " + tt.proto + " 127.0.0.1 100": 20,
			}, seen)
		})
	}
	t.Run("errors", func(t *testing.T) {
		t.Parallel()
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		url := "http://" + ln.Addr().String()
		ln.Close() // nobody listens: refused
		res, err := hostile.Ordinary(testCtx(t), hostile.OrdinaryConfig{URL: url, Requests: 3})
		require.NoError(t, err)
		require.Equal(t, map[string]int{"refused": 3}, res.Errors)
		ctx, cancel := context.WithCancel(testCtx(t))
		cancel()
		res, err = hostile.Ordinary(ctx, hostile.OrdinaryConfig{URL: url, Requests: 3})
		require.NoError(t, err)
		require.Equal(t, 3, res.NotSent+res.Errors["canceled"])
	})
}

func TestErrorKind(t *testing.T) {
	t.Parallel()
	require.Equal(t, "timeout", hostile.ErrorKind(context.DeadlineExceeded))
	require.Equal(t, "eof", hostile.ErrorKind(io.ErrUnexpectedEOF))
	require.Equal(t, "dial tcp #: boom", hostile.ErrorKind(errors.New("dial tcp 127.0.0.1:8080: boom")))
	require.Equal(t, "stream error: #; REFUSED_STREAM", hostile.ErrorKind(errors.New("stream error: stream ID 7; REFUSED_STREAM")))
}

func TestConfigErrors(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	_, err := hostile.SlowBodyH1(ctx, hostile.SlowBodyConfig{Target: hostile.Target{Addr: "127.0.0.1:1"}})
	require.ErrorContains(t, err, "Conns")
	_, err = hostile.SlowStreamsH2C(ctx, hostile.SlowStreamsConfig{Target: hostile.Target{Addr: "127.0.0.1:1"}, Conns: 1})
	require.ErrorContains(t, err, "Streams")
	_, err = hostile.RapidReset(ctx, hostile.RapidResetConfig{Target: hostile.Target{Addr: "127.0.0.1:1", Source: "nope"}, Conns: 1, MaxResets: 1})
	require.ErrorContains(t, err, "Source")
	_, err = hostile.SlowReaders(ctx, hostile.SlowReadersConfig{Target: hostile.Target{Addr: "127.0.0.1:1"}, Conns: 1, Chunk: 10})
	require.ErrorContains(t, err, "Interval")
	_, err = hostile.ContinuationFlood(ctx, hostile.FloodConfig{Target: hostile.Target{}, MaxFrames: 1})
	require.ErrorContains(t, err, "Addr")
}
