package limit_test

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"errors"
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

	"github.com/qtunnel/qtunnel/codec"
	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/pipeline/pipelinetest"
	"github.com/qtunnel/qtunnel/rules"
	"github.com/qtunnel/qtunnel/stages/decode"
	"github.com/qtunnel/qtunnel/stages/egress"
	"github.com/qtunnel/qtunnel/stages/encode"
	"github.com/qtunnel/qtunnel/stages/internal/stagetest"
	"github.com/qtunnel/qtunnel/stages/limit"
)

func TestMain(m *testing.M) { pipelinetest.VerifyNoLeaks(m) }

// timeout is the RequestTimeout of the timing tests: short, so that the
// tests are quick, and asserted with generous upper bounds.
const timeout = 50 * time.Millisecond

// inTime is the request timeout of the tests where the answer must start
// before the timer fires: twenty times timeout, so that a machine busy
// elsewhere cannot make an answer late that the test means to be in time.
// Such a test then outlasts it by half of it.
const inTime = time.Second

func newGuard(t testing.TB, cfg limit.Config) *limit.Guard {
	t.Helper()
	g, err := limit.New(cfg)
	require.NoError(t, err)
	require.Equal(t, cmp.Or(cfg.Name, "limit"), g.Name())
	return g
}

var pass = pipeline.HandlerFunc(func(context.Context, *pipeline.Exchange) error { return nil })

// user is the user's http.ResponseWriter: it records what reached the
// user. Like net/http's, it is used by one goroutine at a time.
type user struct {
	header       http.Header
	status       int
	body         bytes.Buffer
	flushes      int
	readDeadline time.Time
}

func newUser() *user { return &user{header: http.Header{}} }

func (u *user) Header() http.Header { return u.header }
func (u *user) WriteHeader(status int) {
	if u.status == 0 {
		u.status = status
	}
}
func (u *user) Write(p []byte) (int, error) {
	u.WriteHeader(http.StatusOK)
	return u.body.Write(p)
}
func (u *user) Flush() {
	u.WriteHeader(http.StatusOK)
	u.flushes++
}
func (u *user) SetReadDeadline(t time.Time) error {
	u.readDeadline = t
	return nil
}

// hijackUser is a user on HTTP/1.1, whose connection can be taken over.
type hijackUser struct {
	*user
	hijacked bool
}

func (u *hijackUser) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	u.hijacked = true
	return nil, nil, nil
}

// stream is the tunnel stream of an egress-side exchange: it records what
// the answer wrote.
type stream struct {
	mu     sync.Mutex
	wrote  bytes.Buffer
	closed bool
}

func (s *stream) Read([]byte) (int, error) { return 0, io.EOF }
func (s *stream) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.wrote.Write(p)
}
func (s *stream) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	return nil
}
func (s *stream) CancelRead(uint64) {}
func (s *stream) Abort(uint64)      {}

func (s *stream) written() (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.wrote.String(), s.closed
}

// chunky is a request body of unknown length (chunked, or HTTP/2 without
// content-length) that arrives at most n bytes per Read.
type chunky struct {
	r io.Reader
	n int
}

func (c *chunky) Read(p []byte) (int, error) { return c.r.Read(p[:min(len(p), c.n)]) }
func (c *chunky) Close() error               { return nil }

// ingress returns an ingress exchange for a POST with body: declared
// (Content-Length set) or streamed (unknown length).
func ingress(body string, declared bool, rule string) *pipeline.Exchange {
	x := pipeline.Acquire(pipeline.Ingress)
	x.Request = httptest.NewRequest(http.MethodPost, "http://app.example.test/upload", strings.NewReader(body))
	if !declared {
		x.Request.ContentLength = -1
		x.Request.Body = &chunky{r: strings.NewReader(body), n: 7}
	}
	if rule != "" {
		x.Rule = &rules.Rule{ID: rule}
	}
	x.Writer = newUser()
	return x
}

// requireReject checks that err is what the user will see as status with
// msg, and returns the *Reject.
func requireReject(t *testing.T, err error, status int, msg string) *pipeline.Reject {
	t.Helper()
	var rj *pipeline.Reject
	require.ErrorAs(t, err, &rj)
	got, gotMsg, _ := pipeline.Answer(err)
	require.Equal(t, status, got)
	require.Equal(t, msg, gotMsg)
	return rj
}

func TestNew(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		cfg     limit.Config
		wantErr string
	}{
		{"zero value: no limits", limit.Config{}, ""},
		{"every guard", limit.Config{MaxInFlight: 1000, MaxBodySize: 10 << 20, RequestTimeout: 30 * time.Second}, ""},
		{"shortest timeout", limit.Config{RequestTimeout: time.Millisecond}, ""},
		{"negative in flight", limit.Config{MaxInFlight: -1}, "max_in_flight: -1 must not be negative"},
		{"negative body size", limit.Config{MaxBodySize: -5}, "max_body_size: -5 must not be negative"},
		{"negative timeout", limit.Config{RequestTimeout: -time.Second}, "request_timeout: -1s must not be negative"},
		{"timeout without unit", limit.Config{RequestTimeout: 30}, "request_timeout: 30ns is shorter than 1ms (missing unit?)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			g, err := limit.New(tt.cfg)
			stagetest.CheckNew(t, "limit", g, err, tt.wantErr)
		})
	}
}

func TestNewReportsEveryProblem(t *testing.T) {
	t.Parallel()
	_, err := limit.New(limit.Config{MaxInFlight: -1, MaxBodySize: -1, RequestTimeout: -1})
	require.ErrorContains(t, err, "max_in_flight")
	require.ErrorContains(t, err, "max_body_size")
	require.ErrorContains(t, err, "request_timeout")
}

func TestZeroConfigPassesEverything(t *testing.T) {
	t.Parallel()
	g := newGuard(t, limit.Config{})
	x := ingress(strings.Repeat("x", 1<<20), false, "web")
	defer x.Release()
	body, w := x.Request.Body, x.Writer
	reached := false
	err := handle(g, context.Background(), x, pipeline.HandlerFunc(func(ctx context.Context, x *pipeline.Exchange) error {
		reached = true
		require.Same(t, body, x.Request.Body, "no limit: the body is not wrapped")
		require.Equal(t, w, x.Writer, "no timeout: the writer is not wrapped")
		_, ok := ctx.Deadline()
		require.False(t, ok)
		return nil
	}))
	require.NoError(t, err)
	require.True(t, reached)
	require.Zero(t, limit.InFlight(g), "counted only when MaxInFlight is set")
}

// block is a next stage that reports entering on entered and stays until
// release is closed.
func block(entered chan<- struct{}, release <-chan struct{}) pipeline.Handler {
	return pipeline.HandlerFunc(func(context.Context, *pipeline.Exchange) error {
		entered <- struct{}{}
		<-release
		return nil
	})
}

// handle runs g on x as the gateway does, inside encode, whose finishers
// (pipeline.Exchange.Defer) end what g holds once the answer is delivered.
func handle(g *limit.Guard, ctx context.Context, x *pipeline.Exchange, next pipeline.Handler) error {
	return x.Finish(g.Handle(ctx, x, next))
}

func runIngress(g *limit.Guard, next pipeline.Handler) error {
	x := ingress("", true, "web")
	defer x.Release()
	return handle(g, context.Background(), x, next)
}

func TestInFlightAdmitsExactlyN(t *testing.T) {
	t.Parallel()
	const n = 3
	g := newGuard(t, limit.Config{MaxInFlight: n})
	entered := make(chan struct{})
	done := make(chan error, n+1)
	releases := make([]chan struct{}, n)
	for i := range releases {
		releases[i] = make(chan struct{})
		go func() { done <- runIngress(g, block(entered, releases[i])) }()
	}
	for range n {
		<-entered
	}
	require.Equal(t, n, limit.InFlight(g))

	reached := false
	err := runIngress(g, pipeline.HandlerFunc(func(context.Context, *pipeline.Exchange) error {
		reached = true
		return nil
	}))
	// The slots are held throughout: a queued exchange would never come
	// back, so its return is the proof (a hang fails the test's timeout).
	require.False(t, reached, "a refused exchange must not reach the next stage")
	rj := requireReject(t, err, http.StatusServiceUnavailable, "gateway at capacity (3 requests in flight), retry")
	require.Equal(t, time.Second, rj.RetryAfter)
	require.ErrorIs(t, err, pipeline.ErrOverloaded)
	require.Equal(t, n, limit.InFlight(g), "a refused exchange holds no slot")

	close(releases[0])
	require.NoError(t, <-done)
	release := make(chan struct{})
	go func() { done <- runIngress(g, block(entered, release)) }()
	<-entered // the freed slot was taken
	require.Equal(t, n, limit.InFlight(g))
	err = runIngress(g, pass)
	requireReject(t, err, http.StatusServiceUnavailable, "gateway at capacity (3 requests in flight), retry")

	close(release)
	for _, r := range releases[1:] {
		close(r)
	}
	for range n {
		require.NoError(t, <-done)
	}
	require.Zero(t, limit.InFlight(g))
}

func TestInFlightUnderContention(t *testing.T) {
	t.Parallel()
	const n = 4
	g := newGuard(t, limit.Config{MaxInFlight: n})
	var cur, peak, passed, refused atomic.Int64
	next := pipeline.HandlerFunc(func(context.Context, *pipeline.Exchange) error {
		c := cur.Add(1)
		for p := peak.Load(); c > p && !peak.CompareAndSwap(p, c); p = peak.Load() {
		}
		cur.Add(-1)
		return nil
	})
	var wg sync.WaitGroup
	for range 64 {
		wg.Go(func() {
			for range 200 {
				if err := runIngress(g, next); err != nil {
					status, _, _ := pipeline.Answer(err)
					if status != http.StatusServiceUnavailable {
						t.Errorf("got %d, want 503", status)
					}
					refused.Add(1)
					continue
				}
				passed.Add(1)
			}
		})
	}
	wg.Wait()
	require.LessOrEqual(t, peak.Load(), int64(n), "never more than MaxInFlight inside")
	require.Positive(t, passed.Load())
	require.EqualValues(t, 64*200, passed.Load()+refused.Load())
	require.Zero(t, limit.InFlight(g), "every slot was given back")
}

func TestInFlightSlotIsReleasedOnErrorAndPanic(t *testing.T) {
	t.Parallel()
	g := newGuard(t, limit.Config{MaxInFlight: 1})
	fail := errors.New("upstream down")
	err := runIngress(g, pipeline.HandlerFunc(func(context.Context, *pipeline.Exchange) error { return fail }))
	require.ErrorIs(t, err, fail)
	require.Zero(t, limit.InFlight(g))

	require.Panics(t, func() {
		_ = runIngress(g, pipeline.HandlerFunc(func(context.Context, *pipeline.Exchange) error { panic("boom") }))
	})
	require.Zero(t, limit.InFlight(g))
	require.NoError(t, runIngress(g, pass))
}

func TestDeclaredBodySize(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		max     int64
		size    int
		egress  bool
		wantMsg string // "" means the exchange passes
	}{
		{"over the limit", 100, 101, false, "request body of 101 bytes exceeds the limit of 100 bytes"},
		{"far over the limit", 100, 1 << 20, false, "request body of 1048576 bytes exceeds the limit of 100 bytes"},
		{"exactly the limit", 100, 100, false, ""},
		{"under the limit", 100, 3, false, ""},
		{"no body", 100, 0, false, ""},
		{"no limit", 0, 1 << 20, false, ""},
		{"egress side is not checked", 100, 101, true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			g := newGuard(t, limit.Config{MaxBodySize: tt.max})
			x := ingress(strings.Repeat("b", tt.size), true, "web")
			defer x.Release()
			if tt.egress {
				x.Side = pipeline.Egress
			}
			reached := false
			err := handle(g, context.Background(), x, pipeline.HandlerFunc(func(context.Context, *pipeline.Exchange) error {
				reached = true
				return nil
			}))
			if tt.wantMsg == "" {
				require.NoError(t, err)
				require.True(t, reached)
				return
			}
			require.False(t, reached, "a declared oversized body must not reach the next stage")
			requireReject(t, err, http.StatusRequestEntityTooLarge, tt.wantMsg)
			require.ErrorIs(t, err, limit.ErrBodyTooLarge)
		})
	}
}

// The 413 is final, the 503 is not: an oversized body is refused before it
// would take an in-flight slot, so it is never told to retry.
func TestDeclaredBodyTooLargeBeforeCapacity(t *testing.T) {
	t.Parallel()
	g := newGuard(t, limit.Config{MaxInFlight: 1, MaxBodySize: 10})
	err := runIngress(g, pipeline.HandlerFunc(func(ctx context.Context, _ *pipeline.Exchange) error {
		x := ingress(strings.Repeat("b", 11), true, "web")
		defer x.Release()
		return handle(g, ctx, x, pass) // the only slot is taken
	}))
	requireReject(t, err, http.StatusRequestEntityTooLarge, "request body of 11 bytes exceeds the limit of 10 bytes")
}

// forward reads the request body the way the ingress egress stage does,
// and fails the way it does when the body fails: it aborts the tunnel
// stream and returns a 502 of its own.
func forward(got *bytes.Buffer, readErr *error) pipeline.Handler {
	return pipeline.HandlerFunc(func(_ context.Context, x *pipeline.Exchange) error {
		_, err := io.Copy(got, x.Request.Body)
		*readErr = err
		if err != nil {
			return &pipeline.Reject{Status: http.StatusBadGateway, Message: "tunnel stream failed", Err: err}
		}
		return nil
	})
}

func TestStreamedBodySize(t *testing.T) {
	t.Parallel()
	const max = 100
	tests := []struct {
		name   string
		size   int
		egress bool
		want   int // bytes the next stage reads
		cut    bool
	}{
		{"empty", 0, false, 0, false},
		{"under the limit", 99, false, 99, false},
		{"exactly the limit passes", max, false, max, false},
		{"one byte over is cut at the limit", max + 1, false, max, true},
		{"far over is cut at the limit", 64 << 10, false, max, true},
		{"egress side is not counted", 64 << 10, true, 64 << 10, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			g := newGuard(t, limit.Config{MaxBodySize: max})
			x := ingress(strings.Repeat("b", tt.size), false, "web")
			defer x.Release()
			if tt.egress {
				x.Side = pipeline.Egress
			}
			orig := x.Request.Body
			var got bytes.Buffer
			var readErr error
			err := handle(g, context.Background(), x, forward(&got, &readErr))
			require.Equal(t, tt.want, got.Len(), "bytes handed on")
			require.Same(t, orig, x.Request.Body, "the original body is back")
			if !tt.cut {
				require.NoError(t, err)
				require.NoError(t, readErr)
				return
			}
			// What the egress stage saw: a 413 the user would get as is.
			require.ErrorIs(t, readErr, limit.ErrBodyTooLarge)
			requireReject(t, readErr, http.StatusRequestEntityTooLarge, "request body exceeds the limit of 100 bytes")
			// What the stage returns although the egress stage made it a 502.
			requireReject(t, err, http.StatusRequestEntityTooLarge, "request body exceeds the limit of 100 bytes")
			require.ErrorIs(t, err, limit.ErrBodyTooLarge)
		})
	}
}

// The counter of a streamed body is pooled: one that was cut at the limit
// serves the next exchange afresh, with that exchange's limit, and counting
// a body allocates nothing.
func TestStreamedBodyCounterIsReusedClean(t *testing.T) {
	small := newGuard(t, limit.Config{MaxBodySize: 10})
	large := newGuard(t, limit.Config{MaxBodySize: 1000})
	for range 50 {
		x := ingress(strings.Repeat("b", 50), false, "web")
		var got bytes.Buffer
		var readErr error
		err := handle(small, context.Background(), x, forward(&got, &readErr))
		x.Release()
		requireReject(t, err, http.StatusRequestEntityTooLarge, "request body exceeds the limit of 10 bytes")
		require.Equal(t, 10, got.Len())

		x = ingress(strings.Repeat("c", 500), false, "web")
		got.Reset()
		err = handle(large, context.Background(), x, forward(&got, &readErr))
		x.Release()
		require.NoError(t, err)
		require.NoError(t, readErr)
		require.Equal(t, strings.Repeat("c", 500), got.String())

		// A counter that was cut once does not take a later failure for
		// its own.
		x = ingress(strings.Repeat("b", 50), false, "web")
		err = handle(small, context.Background(), x, forward(&got, &readErr))
		x.Release()
		require.ErrorIs(t, err, limit.ErrBodyTooLarge)
		x = ingress("within", false, "web")
		err = handle(large, context.Background(), x, pipeline.HandlerFunc(func(_ context.Context, x *pipeline.Exchange) error {
			if _, err := io.Copy(io.Discard, x.Request.Body); err != nil {
				return err
			}
			return errUpstream
		}))
		x.Release()
		require.ErrorIs(t, err, errUpstream)
	}
	x := ingress("", false, "web")
	defer x.Release()
	src := &chunky{n: 7}
	x.Request.Body = src
	sr := strings.NewReader("")
	buf := make([]byte, 64)
	read := pipeline.HandlerFunc(func(_ context.Context, x *pipeline.Exchange) error {
		for {
			if _, err := x.Request.Body.Read(buf); err != nil {
				return nil
			}
		}
	})
	allocs := testing.AllocsPerRun(1000, func() {
		sr.Reset("0123456789abcdef")
		src.r = sr
		if err := handle(large, context.Background(), x, read); err != nil {
			panic(err)
		}
	})
	require.Zero(t, allocs)
}

var errUpstream = &pipeline.Reject{Status: http.StatusBadGateway, Message: "upstream down"}

// A body cut at the limit fails every later Read too, and an exchange
// whose answer came anyway (the far side did not read the rest) stands.
func TestStreamedBodyCutButAnswered(t *testing.T) {
	t.Parallel()
	g := newGuard(t, limit.Config{MaxBodySize: 10})
	x := ingress(strings.Repeat("b", 50), false, "web")
	defer x.Release()
	err := handle(g, context.Background(), x, pipeline.HandlerFunc(func(_ context.Context, x *pipeline.Exchange) error {
		p := make([]byte, 64)
		n, err := io.ReadFull(x.Request.Body, p)
		require.Equal(t, 10, n)
		require.ErrorIs(t, err, limit.ErrBodyTooLarge)
		n, err = x.Request.Body.Read(p)
		require.Zero(t, n)
		require.ErrorIs(t, err, limit.ErrBodyTooLarge)
		require.NoError(t, x.Request.Body.Close())
		return nil
	}))
	require.NoError(t, err)
}

// MaxBodySize applies alike to every rule, and to an exchange with no rule
// yet.
func TestMaxBodyIsTheSameForEveryRule(t *testing.T) {
	t.Parallel()
	g := newGuard(t, limit.Config{MaxBodySize: 100})
	for _, rule := range []string{"web", "uploads", ""} {
		for _, declared := range []bool{true, false} {
			for _, tt := range []struct{ size, want int }{{100, 0}, {101, http.StatusRequestEntityTooLarge}} {
				size, want := tt.size, tt.want
				x := ingress(strings.Repeat("b", size), declared, rule)
				var got bytes.Buffer
				var readErr error
				err := handle(g, context.Background(), x, forward(&got, &readErr))
				x.Release()
				if want == 0 {
					require.NoError(t, err, "rule %q, %d bytes, declared %v", rule, size, declared)
					require.Equal(t, size, got.Len())
					continue
				}
				status, _, _ := pipeline.Answer(err)
				require.Equal(t, want, status, "rule %q, %d bytes, declared %v", rule, size, declared)
			}
		}
	}
	requireReject(t, runRule(g, "uploads", 101), http.StatusRequestEntityTooLarge,
		"request body of 101 bytes exceeds the limit of 100 bytes")

	g = newGuard(t, limit.Config{})
	require.NoError(t, runRule(g, "uploads", 1<<20), "no MaxBodySize: no limit")
}

func runRule(g *limit.Guard, rule string, size int) error {
	x := ingress(strings.Repeat("b", size), true, rule)
	defer x.Release()
	return handle(g, context.Background(), x, pass)
}

// timedExchange returns an exchange of side with the writer of its answer:
// the user's (ingress) or the tunnel stream (egress).
func timedExchange(side pipeline.Side, hijack bool) (*pipeline.Exchange, *user, *stream) {
	if side == pipeline.Egress {
		x := pipeline.Acquire(pipeline.Egress)
		s := &stream{}
		x.Stream = s
		x.Request = httptest.NewRequest(http.MethodGet, "http://app.example.test/", nil)
		return x, nil, s
	}
	x := ingress("", true, "web")
	u := newUser()
	x.Writer = u
	if hijack {
		x.Writer = &hijackUser{user: u}
	}
	return x, u, nil
}

// startAnswer writes the answer's head the way encode does on side.
func startAnswer(x *pipeline.Exchange, how string) {
	x.Status = http.StatusOK
	switch how {
	case "stream":
		_, _ = x.Stream.Write([]byte("RESPONSE 200"))
	case "flush": // an answer of unknown length: head flushed at once
		x.Writer.WriteHeader(http.StatusOK)
		_ = http.NewResponseController(x.Writer).Flush()
	case "hijack": // a WebSocket: 101 written on the hijacked connection
		_, _, _ = x.Writer.(http.Hijacker).Hijack()
	default:
		x.Writer.WriteHeader(http.StatusOK)
	}
}

// finishAnswer writes the rest of the answer: what a late answer tries too.
func finishAnswer(x *pipeline.Exchange) error {
	if x.Side == pipeline.Egress {
		if _, err := x.Stream.Write([]byte(" body")); err != nil {
			return err
		}
		return x.Stream.Close()
	}
	_, err := x.Writer.Write([]byte("body"))
	return err
}

func TestTimeoutAnswers504WhenNoAnswerStarts(t *testing.T) {
	t.Parallel()
	for _, side := range []pipeline.Side{pipeline.Ingress, pipeline.Egress} {
		t.Run(side.String(), func(t *testing.T) {
			t.Parallel()
			g := newGuard(t, limit.Config{RequestTimeout: timeout})
			x, u, s := timedExchange(side, false)
			defer x.Release()
			w, st := x.Writer, x.Stream
			var cause error
			start := time.Now()
			err := handle(g, context.Background(), x, pipeline.HandlerFunc(func(ctx context.Context, _ *pipeline.Exchange) error {
				<-ctx.Done() // the upstream never answers
				cause = context.Cause(ctx)
				return ctx.Err() // what egress returns when its context ends
			}))
			took := time.Since(start)
			require.GreaterOrEqual(t, took, timeout)
			rj := requireReject(t, err, http.StatusGatewayTimeout, "no answer within 50ms")
			require.ErrorIs(t, rj, context.DeadlineExceeded)
			requireReject(t, cause, http.StatusGatewayTimeout, "no answer within 50ms")
			require.Equal(t, w, x.Writer, "the user's writer is back")
			require.Equal(t, st, x.Stream, "the stream is back")
			if u != nil {
				require.Zero(t, u.status, "nothing reached the user: the gateway can answer 504")
			}
			if s != nil {
				wrote, closed := s.written()
				require.Empty(t, wrote)
				require.False(t, closed)
			}
		})
	}
}

// TestTimeoutReachesTheEgressRoundTrip: on the egress side the upstream's
// round trip waits on the request's own context (decode made it from the
// stream's), so the request passed down must carry the stage's context,
// and the exchange must get its own request back afterwards.
func TestTimeoutReachesTheEgressRoundTrip(t *testing.T) {
	t.Parallel()
	g := newGuard(t, limit.Config{RequestTimeout: timeout})
	x, _, _ := timedExchange(pipeline.Egress, false)
	defer x.Release()
	req := x.Request
	err := handle(g, context.Background(), x, pipeline.HandlerFunc(func(_ context.Context, x *pipeline.Exchange) error {
		<-x.Request.Context().Done() // a round trip to an upstream that never answers
		return x.Request.Context().Err()
	}))
	requireReject(t, err, http.StatusGatewayTimeout, "no answer within 50ms")
	require.Same(t, req, x.Request, "the exchange's request is back")
	require.NoError(t, req.Context().Err(), "the original request's context is left alone")
}

// answerStarts are the ways an answer starts: its first write on each side
// (see startAnswer).
var answerStarts = []struct {
	name   string
	side   pipeline.Side
	hijack bool
	how    string
}{
	{"ingress head", pipeline.Ingress, false, "head"},
	{"ingress streamed head", pipeline.Ingress, false, "flush"},
	{"ingress websocket", pipeline.Ingress, true, "hijack"},
	{"egress head", pipeline.Egress, false, "stream"},
}

func TestTimeoutStopsOnceTheAnswerStarts(t *testing.T) {
	t.Parallel()
	for _, tt := range answerStarts {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			g := newGuard(t, limit.Config{RequestTimeout: inTime})
			x, u, s := timedExchange(tt.side, tt.hijack)
			defer x.Release()
			err := handle(g, context.Background(), x, pipeline.HandlerFunc(func(ctx context.Context, x *pipeline.Exchange) error {
				startAnswer(x, tt.how)
				// A long download: the body outlasts the timeout.
				select {
				case <-ctx.Done():
					return context.Cause(ctx)
				case <-time.After(inTime + inTime/2):
				}
				if tt.how == "hijack" {
					return nil
				}
				return finishAnswer(x)
			}))
			require.NoError(t, err)
			require.Equal(t, http.StatusOK, x.Status)
			switch {
			case tt.hijack:
				require.True(t, x.Writer.(*hijackUser).hijacked)
			case u != nil:
				require.Equal(t, http.StatusOK, u.status)
				require.Equal(t, "body", u.body.String())
			default:
				wrote, closed := s.written()
				require.Equal(t, "RESPONSE 200 body", wrote)
				require.True(t, closed)
			}
		})
	}
}

// An answer that arrives after the timeout, from a stage that did not
// notice its context end, is refused: the user gets the 504, not a late
// answer cut short.
func TestTimeoutRefusesALateAnswer(t *testing.T) {
	t.Parallel()
	for _, tt := range answerStarts {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			g := newGuard(t, limit.Config{RequestTimeout: timeout})
			x, u, s := timedExchange(tt.side, tt.hijack)
			defer x.Release()
			var finishErr error
			err := handle(g, context.Background(), x, pipeline.HandlerFunc(func(ctx context.Context, x *pipeline.Exchange) error {
				<-ctx.Done()
				startAnswer(x, tt.how)
				if tt.how != "hijack" {
					finishErr = finishAnswer(x)
				}
				return nil // and even claims success
			}))
			requireReject(t, err, http.StatusGatewayTimeout, "no answer within 50ms")
			require.Zero(t, x.Status, "the gateway must write the 504, not abort")
			if tt.how != "hijack" {
				require.Error(t, finishErr, "late writes are refused")
			}
			switch {
			case tt.hijack:
				require.False(t, x.Writer.(*hijackUser).hijacked)
			case u != nil:
				require.Zero(t, u.status)
				require.Zero(t, u.body.Len())
				require.Zero(t, u.flushes)
			default:
				wrote, closed := s.written()
				require.Empty(t, wrote)
				require.False(t, closed)
			}
		})
	}
}

// The stage sees the answer start when next returns or a stage inside it
// writes the answer, not when a stage sets Status: a stage that sets
// Status and then waits, neither returning nor writing, is cut off by the
// timer.
func TestTimeoutSeesWritesNotStatus(t *testing.T) {
	t.Parallel()
	g := newGuard(t, limit.Config{RequestTimeout: timeout})
	x, u, _ := timedExchange(pipeline.Ingress, false)
	defer x.Release()
	err := handle(g, context.Background(), x, pipeline.HandlerFunc(func(ctx context.Context, x *pipeline.Exchange) error {
		x.Status = http.StatusOK // head in hand, not yet written
		<-ctx.Done()
		return ctx.Err()
	}))
	requireReject(t, err, http.StatusGatewayTimeout, "no answer within 50ms")
	require.Zero(t, u.status)
}

// An ingress exchange with no writer (a TCP rule)
// has no answer head to wait for, so it is not timed at all.
func TestTimeoutDoesNotApplyWithoutAWriter(t *testing.T) {
	t.Parallel()
	g := newGuard(t, limit.Config{RequestTimeout: timeout})
	x := pipeline.Acquire(pipeline.Ingress)
	defer x.Release()
	user, peer := net.Pipe()
	defer user.Close()
	defer peer.Close()
	x.Downstream = user
	err := handle(g, context.Background(), x, pipeline.HandlerFunc(func(ctx context.Context, _ *pipeline.Exchange) error {
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-time.After(4 * timeout):
			return nil
		}
	}))
	require.NoError(t, err)
}

func TestTimeoutPassesEarlyResultsThrough(t *testing.T) {
	t.Parallel()
	for _, side := range []pipeline.Side{pipeline.Ingress, pipeline.Egress} {
		t.Run(side.String(), func(t *testing.T) {
			t.Parallel()
			g := newGuard(t, limit.Config{RequestTimeout: time.Minute})
			x, _, _ := timedExchange(side, false)
			defer x.Release()
			refused := pipeline.Rejectf(http.StatusForbidden, "not for you")
			var timedCtx context.Context
			err := handle(g, context.Background(), x, pipeline.HandlerFunc(func(ctx context.Context, _ *pipeline.Exchange) error {
				timedCtx = ctx
				return refused
			}))
			require.Same(t, refused, err)
			require.ErrorIs(t, timedCtx.Err(), context.Canceled, "the timed context ends with the call")
			require.ErrorIs(t, context.Cause(timedCtx), context.Canceled, "without a 504 cause")
		})
	}
}

// The wrapped writer keeps what encode and egress use: optional interfaces
// and http.ResponseController's features reach the user's writer.
func TestWrappedWriterKeepsTheUsersFeatures(t *testing.T) {
	t.Parallel()
	g := newGuard(t, limit.Config{RequestTimeout: time.Minute})
	for _, hijack := range []bool{false, true} {
		x, u, _ := timedExchange(pipeline.Ingress, hijack)
		deadline := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
		err := handle(g, context.Background(), x, pipeline.HandlerFunc(func(_ context.Context, x *pipeline.Exchange) error {
			require.NotSame(t, u, x.Writer)
			_, ok := x.Writer.(http.Hijacker)
			require.Equal(t, hijack, ok, "a Hijacker only if the user's writer is one")
			_, ok = x.Writer.(http.Flusher)
			require.True(t, ok)
			require.NoError(t, http.NewResponseController(x.Writer).SetReadDeadline(deadline))
			x.Writer.Header().Set("X-Test", "1")
			return nil
		}))
		require.NoError(t, err)
		require.Equal(t, deadline, u.readDeadline)
		require.Equal(t, "1", u.header.Get("X-Test"))
		x.Release()
	}
}

// The allowed path, with every guard but the timeout on, allocates nothing.
func TestAllowedPathDoesNotAllocate(t *testing.T) {
	for _, cfg := range []limit.Config{{}, {MaxInFlight: 100, MaxBodySize: 1 << 20}} {
		g := newGuard(t, cfg)
		x := ingress("hello", true, "web")
		ctx := context.Background()
		allocs := testing.AllocsPerRun(1000, func() {
			if err := handle(g, ctx, x, pass); err != nil {
				panic(err)
			}
		})
		x.Release()
		require.Zero(t, allocs, "%+v", cfg)
	}
}

// TestTimedPathAllocatesOnlyTheContext: under RequestTimeout, an exchange
// answered in time costs the two allocations of its context
// (context.WithCancelCause); the timer and the writer wrappers are pooled,
// whether the timer was started (no body) or not yet (a body not read).
func TestTimedPathAllocatesOnlyTheContext(t *testing.T) {
	g := newGuard(t, limit.Config{MaxInFlight: 100, MaxBodySize: 1 << 20, RequestTimeout: time.Minute})
	ctx := context.Background()
	answer := pipeline.HandlerFunc(func(_ context.Context, x *pipeline.Exchange) error {
		x.Writer.WriteHeader(http.StatusOK)
		return nil
	})
	for _, body := range []string{"hello", ""} {
		x := ingress(body, true, "web")
		allocs := testing.AllocsPerRun(1000, func() {
			if err := handle(g, ctx, x, answer); err != nil {
				panic(err)
			}
		})
		x.Release()
		require.LessOrEqual(t, allocs, 2.0, "body %q", body)
	}
}

// BenchmarkOff is the cost of the stage with every guard off.
func BenchmarkOff(b *testing.B) {
	g := newGuard(b, limit.Config{})
	x := ingress("hello", true, "web")
	defer x.Release()
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if err := handle(g, ctx, x, pass); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAllowed is the fast path: in-flight and body limits on, a
// declared body within the limit, the exchange allowed.
func BenchmarkAllowed(b *testing.B) {
	g := newGuard(b, limit.Config{MaxInFlight: 1000, MaxBodySize: 1 << 20})
	x := ingress("hello", true, "web")
	defer x.Release()
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if err := handle(g, ctx, x, pass); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAllowedParallel(b *testing.B) {
	g := newGuard(b, limit.Config{MaxInFlight: 1 << 20, MaxBodySize: 1 << 20})
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		x := ingress("hello", true, "web")
		defer x.Release()
		for pb.Next() {
			if err := handle(g, ctx, x, pass); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkRefused is the 503 path.
func BenchmarkRefused(b *testing.B) {
	g := newGuard(b, limit.Config{MaxInFlight: 1})
	x := ingress("", true, "web")
	defer x.Release()
	// The refused exchanges are others: finishing one must not finish
	// the exchange that holds the only slot.
	y := ingress("", true, "web")
	defer y.Release()
	ctx := context.Background()
	inner := pipeline.HandlerFunc(func(ctx context.Context, _ *pipeline.Exchange) error {
		for b.Loop() {
			if handle(g, ctx, y, pass) == nil {
				b.Fatal("allowed")
			}
		}
		return nil
	})
	b.ReportAllocs()
	_ = handle(g, ctx, x, inner)
}

// BenchmarkStreamedBody counts a body of unknown length: the counting
// reader is pooled, so it allocates nothing.
func BenchmarkStreamedBody(b *testing.B) {
	g := newGuard(b, limit.Config{MaxBodySize: 1 << 20})
	x := ingress("", false, "web")
	defer x.Release()
	src := &chunky{n: 1 << 10}
	x.Request.Body = src
	data := strings.Repeat("b", 4<<10)
	sr := strings.NewReader(data)
	buf := make([]byte, 32<<10)
	ctx := context.Background()
	next := pipeline.HandlerFunc(func(_ context.Context, x *pipeline.Exchange) error {
		for {
			_, err := x.Request.Body.Read(buf)
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
		}
	})
	b.ReportAllocs()
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		sr.Reset(data)
		src.r = sr
		if err := handle(g, ctx, x, next); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkTimed is an exchange under RequestTimeout whose answer starts
// at once: the context, the timer and the writer wrappers.
func BenchmarkTimed(b *testing.B) {
	g := newGuard(b, limit.Config{RequestTimeout: time.Minute})
	x := ingress("", true, "web")
	defer x.Release()
	x.Writer = httptest.NewRecorder()
	ctx := context.Background()
	next := pipeline.HandlerFunc(func(_ context.Context, x *pipeline.Exchange) error {
		x.Writer.WriteHeader(http.StatusOK)
		return nil
	})
	b.ReportAllocs()
	for b.Loop() {
		if err := handle(g, ctx, x, next); err != nil {
			b.Fatal(err)
		}
	}
}

// ingressChain is the ingress side with the real stages around the guard:
// encode (outermost), decode, a stand-in for route, limit and the Tunnel
// to s.
func ingressChain(t *testing.T, g *limit.Guard, s pipeline.Stream) *pipeline.Chain {
	t.Helper()
	dec, err := decode.New(decode.Config{})
	require.NoError(t, err)
	conn := &pipeline.Conn{ClientID: "laptop", Opener: openerFunc(func(context.Context) (pipeline.Stream, error) { return s, nil })}
	tun, err := egress.NewTunnel(egress.TunnelConfig{
		Conns: egress.ConnSourceFunc(func(*rules.Rule) (*pipeline.Conn, error) { return conn, nil }),
	})
	require.NoError(t, err)
	enc, err := encode.New(encode.Config{})
	require.NoError(t, err)
	route := pipeline.StageFunc(func(ctx context.Context, x *pipeline.Exchange, next pipeline.Handler) error {
		x.Rule = &rules.Rule{ID: "web", Client: "laptop"}
		return next.Handle(ctx, x)
	})
	c, err := pipeline.New(context.Background(), []pipeline.Stage{enc, dec, route, g, tun})
	require.NoError(t, err)
	return c
}

type openerFunc func(context.Context) (pipeline.Stream, error)

func (f openerFunc) OpenStream(ctx context.Context) (pipeline.Stream, error) { return f(ctx) }

// With the real Tunnel, which turns a failed body read into a 502 of its
// own after aborting the stream, the user still gets the 413, from the
// stage by its name (the default, or the one the config gives it).
func TestChainStreamedBodyTooLarge(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"", "request_limit"} {
		s := pipelinetest.NewStream()
		drained := make(chan struct{})
		go func() { // the far side reads until the stream is aborted
			_, _ = io.Copy(io.Discard, s.Peer())
			close(drained)
		}()
		c := ingressChain(t, newGuard(t, limit.Config{MaxBodySize: 100, Name: name}), s)
		x := ingress(strings.Repeat("b", 64<<10), false, "")
		u := x.Writer.(*user)
		err := c.Handle(context.Background(), x)
		<-drained
		rj := requireReject(t, err, http.StatusRequestEntityTooLarge, "request body exceeds the limit of 100 bytes")
		require.Equal(t, cmp.Or(name, "limit"), rj.Stage)
		require.Equal(t, http.StatusRequestEntityTooLarge, u.status, "encode answered the 413")
		require.NotEmpty(t, s.AbortCodes(), "the tunnel stream was aborted")
		x.Release()
		s.Shutdown()
	}
}

func TestChainTimeout(t *testing.T) {
	t.Parallel()
	head := codec.AppendResponse(nil, &codec.ResponseHead{Status: http.StatusOK, ContentLength: -1, Header: http.Header{}})
	tests := []struct {
		name   string
		answer bool // the far side answers in time, then streams slowly
	}{
		{"no answer: 504", false},
		{"answer streams past the timeout", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := pipelinetest.NewStream()
			defer s.Shutdown()
			peerDone := make(chan error, 1)
			go func() {
				_, err := io.ReadAll(s.Peer()) // the request, up to its FIN
				if err == nil && tt.answer {
					if _, err = s.PeerWrite(codec.AppendData(head, []byte("first "))); err == nil {
						<-time.After(inTime + inTime/2)
						if _, err = s.PeerWrite(codec.AppendEnd(codec.AppendData(nil, []byte("last")))); err == nil {
							err = s.PeerClose()
						}
					}
				}
				peerDone <- err
			}()
			d := timeout
			if tt.answer {
				d = inTime
			}
			c := ingressChain(t, newGuard(t, limit.Config{RequestTimeout: d}), s)
			x := pipeline.Acquire(pipeline.Ingress)
			defer x.Release()
			x.Request = httptest.NewRequest(http.MethodGet, "http://app.example.test/events", nil)
			u := newUser()
			x.Writer = u
			start := time.Now()
			err := c.Handle(context.Background(), x)
			require.NoError(t, <-peerDone)
			if !tt.answer {
				requireReject(t, err, http.StatusGatewayTimeout, "no answer within 50ms")
				require.Equal(t, http.StatusGatewayTimeout, u.status, "encode answered the 504, and nothing else")
				require.Equal(t, http.StatusGatewayTimeout, x.Status)
				return
			}
			require.NoError(t, err)
			require.GreaterOrEqual(t, time.Since(start), inTime+inTime/2)
			require.Equal(t, http.StatusOK, u.status)
			require.Equal(t, "first last", u.body.String())
		})
	}
}

// The egress side with the real encode, outermost as in the gateway: the
// timer stops when the answer's head is in (next returns with it), whatever
// its length, so a body whose first chunk comes long after the timeout is
// still delivered (before the response phase, encode held the head of an
// answer of known length back until its first chunk, and such an answer
// got the 504).
func TestChainEgressHeadStopsTheTimer(t *testing.T) {
	t.Parallel()
	for _, contentLength := range []int64{-1, 4} {
		t.Run(fmt.Sprintf("length %d", contentLength), func(t *testing.T) {
			t.Parallel()
			enc, err := encode.New(encode.Config{})
			require.NoError(t, err)
			upstream := pipeline.StageFunc(func(ctx context.Context, x *pipeline.Exchange, next pipeline.Handler) error {
				resp := x.NewResponse()
				resp.StatusCode, resp.Header, resp.ContentLength = http.StatusOK, http.Header{}, contentLength
				resp.Body = io.NopCloser(&lateBody{ctx: ctx, data: "data", late: 4 * timeout}) // the head is in time
				return next.Handle(ctx, x)
			})
			c, err := pipeline.New(context.Background(), []pipeline.Stage{enc, newGuard(t, limit.Config{RequestTimeout: timeout}), upstream})
			require.NoError(t, err)
			x := pipeline.Acquire(pipeline.Egress)
			defer x.Release()
			s := &stream{}
			x.Stream = s
			require.NoError(t, c.Handle(context.Background(), x))
			wrote, closed := s.written()
			require.Contains(t, wrote, "data")
			require.True(t, closed)
		})
	}
}

type lateBody struct {
	ctx  context.Context
	data string
	late time.Duration
}

func (b *lateBody) Read(p []byte) (int, error) {
	select {
	case <-b.ctx.Done():
		return 0, b.ctx.Err()
	case <-time.After(cmp.Or(b.late, 4*timeout)):
		return copy(p, b.data), io.EOF
	}
}

// slowBody is an upload that takes d to arrive.
type slowBody struct {
	chunks int
	every  time.Duration
	eofAt  time.Time // when the reader was first told the body ended
}

func (b *slowBody) Read(p []byte) (int, error) {
	if b.chunks == 0 {
		if b.eofAt.IsZero() {
			b.eofAt = time.Now()
		}
		return 0, io.EOF
	}
	b.chunks--
	tm := time.NewTimer(b.every) // the user's upload is slow
	<-tm.C
	p[0] = 'x'
	return 1, nil
}

func (b *slowBody) Close() error { return nil }

// TestTimeoutStartsWhenTheBodyEnds: the timeout bounds the wait for the
// answer after the request is whole, not the upload: an upload lasting 4
// timeouts is not cut, and an upstream silent after it gets its 504 a
// timeout after the body's end.
func TestTimeoutStartsWhenTheBodyEnds(t *testing.T) {
	t.Parallel()
	for _, answers := range []bool{true, false} {
		d := timeout
		if answers {
			d = inTime // the answer right after the body's end is in time, however busy the machine
		}
		g := newGuard(t, limit.Config{RequestTimeout: d})
		x, u, _ := timedExchange(pipeline.Ingress, false)
		body := &slowBody{chunks: 8, every: d / 2}
		x.Request.Body, x.Request.ContentLength = body, -1
		err := handle(g, context.Background(), x, pipeline.HandlerFunc(func(ctx context.Context, x *pipeline.Exchange) error {
			n, err := io.Copy(io.Discard, x.Request.Body)
			if err != nil || n != 8 {
				return fmt.Errorf("body: %d bytes, %v", n, err)
			}
			if answers {
				startAnswer(x, "head")
				return finishAnswer(x)
			}
			<-ctx.Done()
			return ctx.Err()
		}))
		if answers {
			require.NoError(t, err, "a 4-timeout upload is not cut")
			require.Equal(t, http.StatusOK, u.status)
		} else {
			requireReject(t, err, http.StatusGatewayTimeout, "no answer within 50ms")
			// The stage can only have started its timer after the body
			// said EOF: so, whatever the machine's speed, the 504 came at
			// least a timeout after that.
			require.GreaterOrEqual(t, time.Since(body.eofAt), timeout, "timed from the body's end")
		}
		require.Same(t, body, x.Request.Body, "the original body is back")
		x.Release()
	}
}
