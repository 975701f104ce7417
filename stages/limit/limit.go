// Package limit is the stage that guards the gateway itself, with
// independent guards, each off by default:
//
//   - MaxInFlight (S3) bounds how many exchanges pass the stage at once. One
//     more is answered at once 503 with Retry-After: 1s; it never waits in a
//     queue, so a burst cannot pile up memory or latency behind the limit.
//   - MaxBodySize (S18) bounds the user's request body on the ingress side:
//     a declared Content-Length above it is answered 413 without going
//     further, and a body of unknown length (chunked, HTTP/2 without
//     content-length) is counted as it streams and cut at the limit, which
//     fails the exchange with 413 if no answer was written yet. Bodies are
//     never buffered.
//   - RequestTimeout (S19) bounds the wait for the answer's head, not the
//     whole exchange: once the answer starts, streams, downloads and
//     WebSockets may last as long as they need. An exchange with no answer
//     by then is cancelled and answered 504.
//   - On the ingress side, the user's pace: BodyTimeout and MinBodyRate
//     hold the request body to a live sender until the answer starts (408
//     otherwise), SendTimeout cuts an HTTP/2 answer its reader stopped
//     reading, StreamIdleTimeout ends an answer on which nothing moves.
//     A request body that fails is answered for what it is (408, 400 for
//     a malformed one, 413), whatever the stage reading it returned (see
//     body.go).
//
// # Where it goes
//
// The stage does not read Exchange.Rule, so it needs no route before it;
// the timeout must enclose the egress stage, and the stages that read the
// body (egress) must run inside it.
//
// On the egress side the breaker goes before (outside) limit so that it
// sees the 504 of a slow upstream as the failure it is (inside, it would
// see only its context cancelled, which it ignores). The price is that the
// breaker also counts limit's own 503s (MaxInFlight) against the upstream;
// a chain that sets MaxInFlight on the egress side should therefore use two
// instances, one with MaxInFlight before the breaker and one with
// RequestTimeout after it. Every guard off (the zero Config) costs a few
// nanoseconds, so an unused instance is harmless.
//
// The gateway uses two instances: one with MaxInFlight alone right after
// decode, so that overload is refused before any other work ("limit", on
// both sides), and, on the ingress side, one with the body and time limits
// just before egress ("request_limit"):
//
//	ingress: observe -> encode -> decode -> limit (in flight) -> route -> ratelimit -> rule_stages -> request_limit (body, time, pace) -> egress
//	egress:  observe -> encode -> decode -> limit (in flight) -> route -> ratelimit -> breaker -> egress
//
// # How the timeout sees the answer start
//
// Encode is the outermost stage and writes the answer once next has
// returned, so the answer starts, for the timer, when next returns to this
// stage: by then the egress stage has the answer's head (its body not yet
// read), or the chain failed. A stage inside this one that writes the
// answer itself (a WebSocket's 101, a test's stand-in) starts it too: for
// the time of the call to next, the stage puts a thin wrapper around the
// writer of the answer (Exchange.Writer on the ingress side,
// Exchange.Stream on the egress side), and the first WriteHeader, Write,
// Flush or Hijack (ingress) or Write or Close (egress) marks the answer
// started with one atomic compare-and-swap. The timer expires the exchange
// with the same compare-and-swap, so exactly one of them wins. If the
// timer wins, the exchange's context is cancelled with a 504
// *pipeline.Reject as its cause and every later write through the
// wrappers is refused; when next returns, the stage gives the exchange its
// writer back and returns the 504, which encode renders: the user gets the
// 504 instead of a late, half-written answer.
//
// The stage never reads Exchange.Status from its timer (a plain int of the
// goroutine running the chain), and a stage that only sets it does not
// stop the timer. An ingress exchange without a writer (a TCP rule, whose
// "answer" is a byte stream with no head) gets no timeout; the egress
// side's dial timeout bounds how long it waits for the upstream.
//
// The wrappers, the context and the body's watch are needed until the
// answer is delivered (SendTimeout and StreamIdleTimeout hold its writing
// to a pace): a pipeline.Finisher registered with Exchange.Defer ends them
// then, as the in-flight slot's does.
package limit

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/qtunnel/qtunnel/pipeline"
)

// minTimeout is the shortest RequestTimeout accepted: anything shorter is
// almost surely a number written without its unit (30 is 30ns in YAML).
const minTimeout = time.Millisecond

// Config configures the limit stage. The zero value is the default: no
// limit at all.
type Config struct {
	// MaxInFlight is how many exchanges may pass the stage at once; one
	// more is answered 503 with Retry-After: 1s at once, never queued. If
	// zero, no limit.
	MaxInFlight int `yaml:"max_in_flight"`
	// MaxBodySize is the largest request body accepted from users, in
	// bytes, on the ingress side, the same for every rule. A streaming
	// call (gRPC client or bidi streaming) is one body for the whole call:
	// the limit bounds all it sends. If zero, no limit (bodies stream; the
	// gateway never buffers them).
	MaxBodySize int64 `yaml:"max_body_size"`
	// RequestTimeout bounds the wait for the answer's head: from the
	// moment the exchange reaches this stage to the first byte of the
	// answer written to the user (ingress) or the tunnel stream (egress).
	// Once the answer has started it no longer applies. At least 1ms; if
	// zero, no limit.
	RequestTimeout time.Duration `yaml:"request_timeout"`
	// BodyTimeout bounds, on the ingress side, the wait for the next bytes
	// of the request body until the answer starts (nginx's
	// client_body_timeout): past it the request fails with 408 and its
	// body is read no more. It needs the user's writer to support read
	// deadlines (net/http's do). If zero, no limit.
	BodyTimeout time.Duration `yaml:"body_timeout"`
	// MinBodyRate is the lowest average rate, in bytes per second, at which
	// a request body must arrive on the ingress side until the answer
	// starts, counted from the body's first read once MinRateGrace of
	// waiting has passed, and only over the time spent waiting for the
	// user (not for the tunnel or the upstream). A slower body fails with
	// 408. gRPC calls are exempt (their messages may be sparse). If zero,
	// no minimum.
	MinBodyRate int64 `yaml:"min_body_rate"`
	// MinRateGrace is the waiting time before MinBodyRate applies. If
	// zero, 10s.
	MinRateGrace time.Duration `yaml:"min_rate_grace"`
	// SendTimeout bounds, on the ingress side, an HTTP/2 answer write that
	// makes no progress (the user's stream window stays shut): past it the
	// stream is reset. HTTP/1 connections are bounded by the listener. If
	// zero, no limit.
	SendTimeout time.Duration `yaml:"send_timeout"`
	// StreamIdleTimeout ends an ingress exchange once its answer has
	// started and no byte has moved either way (body read, answer
	// written) for this long. WebSockets are not timed. If zero, no limit.
	StreamIdleTimeout time.Duration `yaml:"stream_idle_timeout"`
	// Name is the stage's name in spans, errors and the stage label of its
	// refusals; two guards in one chain need two names. If empty, "limit".
	Name string `yaml:"-"`
}

// SetDefaults sets MinRateGrace to 10s if it is zero; every other zero
// setting already means "no limit".
func (c *Config) SetDefaults() {
	if c.MinRateGrace == 0 {
		c.MinRateGrace = 10 * time.Second
	}
}

// Validate reports every negative setting, and a RequestTimeout below 1ms.
// Errors name the setting as in the config file ("max_in_flight: ...").
func (c *Config) Validate() error {
	var errs []error
	if c.MaxInFlight < 0 {
		errs = append(errs, fmt.Errorf("max_in_flight: %d must not be negative", c.MaxInFlight))
	}
	if c.MaxBodySize < 0 {
		errs = append(errs, fmt.Errorf("max_body_size: %d must not be negative", c.MaxBodySize))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"request_timeout", c.RequestTimeout}, {"body_timeout", c.BodyTimeout}, {"send_timeout", c.SendTimeout},
		{"stream_idle_timeout", c.StreamIdleTimeout}, {"min_rate_grace", c.MinRateGrace}} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("%s: %v must not be negative", d.name, d.v))
		} else if d.v > 0 && d.v < minTimeout {
			errs = append(errs, fmt.Errorf("%s: %v is shorter than %v (missing unit?)", d.name, d.v, minTimeout))
		}
	}
	if c.MinBodyRate < 0 {
		errs = append(errs, fmt.Errorf("min_body_rate: %d must not be negative", c.MinBodyRate))
	}
	return errors.Join(errs...)
}

// ErrBodyTooLarge is the cause (Reject.Err) of every 413 of this stage,
// and what a request body cut at the limit fails with: the error that
// body's Read returns is a *pipeline.Reject with status 413 that wraps
// ErrBodyTooLarge, so errors.Is(err, ErrBodyTooLarge) finds it and
// pipeline.Answer turns it into the 413.
var ErrBodyTooLarge = errors.New("request body too large")

// Guard is the limit stage. Safe for concurrent use. It starts no
// goroutines of its own (a RequestTimeout's timer runs only while an
// exchange waits for its answer) and needs no Close.
type Guard struct {
	inflight atomic.Int64 // exchanges past the stage, counted when maxInFlight > 0
	_        [56]byte     // keeps the hot counter off the read-only fields' cache line

	name        string
	maxInFlight int64
	maxBody     int64
	timeout     time.Duration
	bodyTimeout time.Duration
	minRate     float64 // bytes per second
	grace       time.Duration
	sendTimeout time.Duration
	idleTimeout time.Duration
	capacityMsg string
	timeoutMsg  string
}

// New returns a limit stage, or an error naming every invalid setting.
func New(cfg Config) (*Guard, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("limit: %w", err)
	}
	cfg.SetDefaults()
	return &Guard{
		name:        cmp.Or(cfg.Name, Name),
		maxInFlight: int64(cfg.MaxInFlight),
		maxBody:     cfg.MaxBodySize,
		timeout:     cfg.RequestTimeout,
		bodyTimeout: cfg.BodyTimeout,
		minRate:     float64(cfg.MinBodyRate),
		grace:       cfg.MinRateGrace,
		sendTimeout: cfg.SendTimeout,
		idleTimeout: cfg.StreamIdleTimeout,
		capacityMsg: "gateway at capacity (" + plural(cfg.MaxInFlight, "request") + " in flight), retry",
		timeoutMsg:  "no answer within " + cfg.RequestTimeout.String(),
	}, nil
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return strconv.Itoa(n) + " " + noun + "s"
}

// Name implements pipeline.Namer.
func (g *Guard) Name() string { return g.name }

// The names the gateway gives its guards in the chains' order: Name, the
// in-flight limit (a Config without a Name), and RequestName, the ingress
// side's request limit (body, time to the answer, pace).
const (
	Name        = "limit"
	RequestName = "request_limit"
)

// Handle implements pipeline.Stage. The checks run cheapest and most
// definitive first: a declared body too large is refused (413) before the
// exchange takes an in-flight slot, so that it is not told to retry (503)
// what can never pass.
func (g *Guard) Handle(ctx context.Context, x *pipeline.Exchange, next pipeline.Handler) error {
	limit := g.maxBody
	var r *http.Request
	if limit > 0 && x.Side == pipeline.Ingress && x.Request != nil {
		r = x.Request
		if r.ContentLength > limit {
			return &pipeline.Reject{Status: http.StatusRequestEntityTooLarge, Err: ErrBodyTooLarge,
				Message: "request body of " + strconv.FormatInt(r.ContentLength, 10) +
					" bytes exceeds the limit of " + strconv.FormatInt(limit, 10) + " bytes"}
		}
		// A declared length within the limit is held to by net/http,
		// which ends the body there: only unknown lengths are counted.
		if r.ContentLength >= 0 || r.Body == nil || r.Body == http.NoBody {
			r = nil
		}
	}
	if g.maxInFlight > 0 {
		if !g.acquire() {
			return &pipeline.Reject{Status: http.StatusServiceUnavailable, Message: g.capacityMsg,
				RetryAfter: time.Second, Err: pipeline.ErrOverloaded}
		}
		// The slot is held until the answer is delivered (a long download
		// is in flight until its last byte), and given back by a finisher,
		// which also runs if a stage panics.
		x.Defer(g)
	}
	var body *limitedBody
	if r != nil {
		body = bodyPool.Get().(*limitedBody)
		body.rc, body.left, body.limit, body.r, body.stage = r.Body, limit, limit, r, g.name
		r.Body = body
		// The exchange is pooled and its request outlives the chain:
		// whoever reads it later must not read through a stale limit.
		x.Defer(body)
	}
	var err error
	if (x.Side == pipeline.Ingress && x.Writer != nil && g.watchesIngress()) || (g.timeout > 0 && x.Side == pipeline.Egress && x.Stream != nil) {
		err = g.handleTimed(ctx, x, next)
	} else {
		err = next.Handle(ctx, x)
	}
	// The stage reading the body fails however its reading fails (the
	// ingress egress stage aborts the tunnel stream, and its own error,
	// a 502, is what it returns): the cut body is the cause, and 413 the
	// answer. A failed exchange has let go of its body by now (the ingress
	// egress stage waits for its body copier before it fails). If the
	// exchange succeeded anyway (the far side answered without reading
	// the rest), the answer stands.
	if err != nil && body != nil && body.tripped.Load() {
		return bodyReject(limit)
	}
	return err
}

// Finish implements pipeline.Finisher: it gives back an in-flight slot
// once the answer is delivered.
func (g *Guard) Finish(_ *pipeline.Exchange, err error) error {
	g.inflight.Add(-1)
	return err
}

// acquire takes an in-flight slot if one is free. The compare-and-swap
// never counts a refused exchange, even for an instant, so exactly
// MaxInFlight pass however many race for the last slot.
func (g *Guard) acquire() bool {
	for {
		n := g.inflight.Load()
		if n >= g.maxInFlight {
			return false
		}
		if g.inflight.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// bodyPool holds the counters of streamed request bodies. A counter is
// handed to the stages after this one as the request's body: like the
// exchange, they must not read it after their Handle returns.
var bodyPool = sync.Pool{New: func() any { return new(limitedBody) }}

// limitedBody counts a request body of unknown length and ends it with a
// 413 *pipeline.Reject once more than limit bytes were read. Bytes past
// the limit are never handed on. Like any io.Reader it is read by one
// goroutine at a time (possibly not Handle's: the ingress egress stage
// copies bodies in its own goroutine, hence the atomic flag).
type limitedBody struct {
	rc      io.ReadCloser
	r       *http.Request // whose Body it is
	left    int64         // bytes still allowed
	limit   int64
	stage   string // the guard's name, for a 413 made after the chain returned
	err     error  // set once tripped
	tripped atomic.Bool
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	// Ask for one byte more than allowed: if it comes, the body is too
	// large, even when the source would have ended right after.
	if int64(len(p)) > b.left+1 {
		p = p[:b.left+1]
	}
	n, err := b.rc.Read(p)
	if int64(n) <= b.left {
		b.left -= int64(n)
		return n, err
	}
	n, b.left = int(b.left), 0
	b.err = bodyReject(b.limit)
	b.tripped.Store(true)
	return n, b.err
}

func (b *limitedBody) Close() error { return b.rc.Close() }

// Finish implements pipeline.Finisher: once the answer is delivered, and
// whatever read the body is done with it, the request gets its own body
// back and b goes back to the pool. A body cut at the limit while the
// answer streamed makes a failed exchange's error the 413 it was.
func (b *limitedBody) Finish(_ *pipeline.Exchange, err error) error {
	if err != nil && b.tripped.Load() && !errors.Is(err, ErrBodyTooLarge) {
		rj := bodyReject(b.limit)
		rj.Stage = b.stage // the chain has returned: it names no stage now
		err = rj
	}
	b.r.Body = b.rc
	b.rc, b.r, b.err, b.left, b.limit, b.stage = nil, nil, nil, 0, 0, ""
	b.tripped.Store(false)
	bodyPool.Put(b)
	return err
}

// bodyReject returns a new 413: the chain names the stage on the *Reject
// it sees, so one value must not be returned twice.
func bodyReject(limit int64) *pipeline.Reject {
	return &pipeline.Reject{Status: http.StatusRequestEntityTooLarge, Err: ErrBodyTooLarge,
		Message: "request body exceeds the limit of " + strconv.FormatInt(limit, 10) + " bytes"}
}

// States of a timed exchange. waiting moves once, to started or expired.
const (
	waiting uint32 = iota
	started        // the answer started (or next returned) in time
	expired        // the timer fired first
)

// errTooLate refuses the writes of an answer that started after the
// request timeout: the user gets the 504 instead.
var errTooLate = errors.New("limit: the answer started after the request timeout")

// timed is one exchange under RequestTimeout, with its timer and the
// writer wrappers. It is pooled with its timer, which is re-armed for each
// exchange: timing an exchange then costs only its context (two or three
// allocations, made by package context).
//
// A timed goes back to the pool only if its timer was stopped before it
// fired: a timer whose function has started may still be about to run it,
// and must not find the timed serving another exchange. So an exchange
// that timed out (rare) leaves its timed to the garbage collector.
type timed struct {
	state  atomic.Uint32
	g      *Guard
	cancel context.CancelCauseFunc
	timer  *time.Timer
	// armed is set by whoever decides the timer's fate first: the end of
	// the request body (which starts it) or the start of the answer
	// (which means it will never start).
	armed atomic.Bool
	body  watchedBody
	// disarmed says the timer was stopped before its function started;
	// set by whoever moves state from waiting to started.
	disarmed atomic.Bool
	w        answerWriter
	hw       hijackWriter
	s        answerStream

	// What the stage wrapped, given back by restore: the egress stream,
	// the egress request (its copy carries the timed context), the
	// request whose body is watched.
	stream   pipeline.Stream
	req      *http.Request
	bodyReq  *http.Request
	restored bool

	// Ingress only: the user's writer (for read and write deadlines),
	// whether it is an HTTP/2 stream, and the idle clock.
	rw       http.ResponseWriter
	h2       bool
	idleable bool         // the answer may be idle-timed (not a WebSocket)
	idleMu   sync.Mutex   // orders the idle timer's checks, arming and stop
	idle     *time.Timer  // stream idle timeout, armed once the answer starts; nil until first needed
	idleOn   atomic.Bool  // idle was armed
	idleDone atomic.Bool  // idle was stopped before it fired (or never armed)
	last     atomic.Int64 // last byte moved either way, unix ns
	sendArm  atomic.Int64 // when the HTTP/2 write deadline was last set, unix ns
}

var timedPool = sync.Pool{New: func() any {
	t := new(timed)
	t.timer = time.AfterFunc(time.Hour, t.expire)
	t.timer.Stop()
	return t
}}

// watchesIngress reports whether the guard times ingress exchanges at all.
func (g *Guard) watchesIngress() bool {
	return g.timeout > 0 || g.bodyTimeout > 0 || g.minRate > 0 || g.sendTimeout > 0 || g.idleTimeout > 0
}

// touch records that a byte moved.
func (t *timed) touch() {
	if t.g.idleTimeout > 0 {
		t.last.Store(time.Now().UnixNano())
	}
}

// idleCheck runs on the idle timer's goroutine: it ends the exchange if
// nothing moved for the idle timeout, else waits for the rest of it.
func (t *timed) idleCheck() {
	t.idleMu.Lock()
	defer t.idleMu.Unlock()
	since := time.Duration(time.Now().UnixNano() - t.last.Load())
	if since >= t.g.idleTimeout {
		t.cancel(&pipeline.Reject{Status: http.StatusRequestTimeout, Err: ErrIdle,
			Message: "no bytes moved either way for " + t.g.idleTimeout.String()})
		return
	}
	t.idle.Reset(t.g.idleTimeout - since)
}

// ErrIdle is the cause of an exchange ended by StreamIdleTimeout.
var ErrIdle = errors.New("stream idle")

// arm readies a pooled timed for an exchange. The timer starts now when
// the request has no body, else when its body has been read to the end: the
// timeout bounds the wait for the answer, not the user's upload, however
// slow or large (a 1 GiB upload must not be cut at 30s). This is when
// Envoy starts its route timeout too.
func (g *Guard) arm(cancel context.CancelCauseFunc, hasBody bool) *timed {
	t := timedPool.Get().(*timed)
	t.g, t.cancel = g, cancel
	t.armed.Store(false)
	t.state.Store(waiting) // publishes g and cancel to expire
	if !hasBody {
		t.startTimer()
	}
	return t
}

// startTimer starts the timer unless the answer started first.
func (t *timed) startTimer() {
	if t.g.timeout > 0 && t.state.Load() == waiting && t.armed.CompareAndSwap(false, true) {
		t.timer.Reset(t.g.timeout)
	}
}

// release gives t back to the pool if its timers can no longer run.
func (t *timed) release() {
	if t.idleOn.Load() {
		// Under idleMu: a check that is running has finished with t once
		// this lock is ours, and Stop tells whether another one is due.
		t.idleMu.Lock()
		if t.idle.Stop() {
			t.idleDone.Store(true)
		}
		t.idleMu.Unlock()
	}
	if !t.disarmed.Load() || !t.idleDone.Load() {
		return
	}
	t.disarmed.Store(false)
	t.idleOn.Store(false)
	t.g, t.cancel, t.rw, t.h2, t.idleable = nil, nil, nil, false, false
	t.stream, t.req, t.bodyReq = nil, nil, nil
	t.w, t.hw, t.s, t.body = answerWriter{}, hijackWriter{}, answerStream{}, watchedBody{}
	t.sendArm.Store(0)
	timedPool.Put(t)
}

// start marks the answer started; false if the timer fired first.
func (t *timed) start() bool {
	if t.state.CompareAndSwap(waiting, started) {
		// Once the answer is out the timer has nothing left to do:
		// stopping it now keeps long streams from holding one. If the
		// body has not ended yet, the timer never starts.
		if t.armed.CompareAndSwap(false, true) || t.timer.Stop() {
			t.disarmed.Store(true)
		}
		// The body's clocks stop too: a streaming call's user may be
		// silent while the answer flows. The idle clock takes over.
		t.body.answerStarted()
		if t.rw != nil && !t.h2 && t.body.rc != nil && !t.body.eof.Load() {
			// An HTTP/1 answer that starts before the request body ended
			// closes the connection after it: else net/http would read the
			// rest of the body before the answer's head, for as long as
			// the user cares not to send it.
			t.rw.Header()["Connection"] = connClose
		}
		if t.idleable && t.g.idleTimeout > 0 {
			t.last.Store(time.Now().UnixNano())
			t.idleDone.Store(false) // until release stops it before it fires
			t.idleOn.Store(true)
			t.idleMu.Lock()
			if t.idle == nil {
				// Made on first use, and kept with t in the pool.
				t.idle = time.AfterFunc(t.g.idleTimeout, t.idleCheck)
			} else {
				t.idle.Reset(t.g.idleTimeout)
			}
			t.idleMu.Unlock()
		}
		return true
	}
	return t.state.Load() == started
}

// connClose is the value of a Connection: close field, shared (net/http
// only reads it; an append would copy it, its capacity being its length).
var connClose = []string{"close"}

// armSend moves the HTTP/2 stream's write deadline to SendTimeout from
// now, at most once a quarter of it: a write always has at least three
// quarters of the timeout to make progress.
func (t *timed) armSend() {
	d := t.g.sendTimeout
	if d <= 0 || !t.h2 {
		return
	}
	now := time.Now()
	if now.UnixNano()-t.sendArm.Load() > int64(d/4) {
		t.sendArm.Store(now.UnixNano())
		_ = http.NewResponseController(t.rw).SetWriteDeadline(now.Add(d))
	}
}

// expire runs on the timer's goroutine.
func (t *timed) expire() {
	if t.state.CompareAndSwap(waiting, expired) {
		t.cancel(t.g.timeoutReject())
	}
}

func (g *Guard) timeoutReject() *pipeline.Reject {
	return &pipeline.Reject{Status: http.StatusGatewayTimeout, Message: g.timeoutMsg, Err: context.DeadlineExceeded}
}

// handleTimed calls next with a context that is cancelled if no answer has
// started within the timeout. It costs the context's allocations (and, on
// the egress side, a copy of the request that carries it), only when
// RequestTimeout is set.
//
// The answer starts when next returns with it (its head has arrived:
// encode, outermost, writes it on the way out), or when a stage after this
// one writes it itself. The context, the writer's wrapper (which holds the
// answer to SendTimeout and StreamIdleTimeout while it is written) and the
// body's watch last until the answer is delivered: the exchange's
// finisher (t.Finish) ends them.
func (g *Guard) handleTimed(ctx context.Context, x *pipeline.Exchange, next pipeline.Handler) error {
	ctx, cancel := context.WithCancelCause(ctx)
	r := x.Request
	hasBody := r != nil && r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0
	t := g.arm(cancel, hasBody)
	t.idleDone.Store(true) // until the idle timer is armed
	if x.Side == pipeline.Ingress {
		t.rw = x.Writer
		t.h2 = r != nil && r.ProtoMajor == 2
		t.idleable = r != nil && x.Protocol != pipeline.ProtoWebSocket
	}
	if hasBody {
		// Whoever reads the body (the egress stage) is done with it once
		// the answer is delivered: the wrapper is not read after Finish.
		t.bodyReq = r
		t.body = watchedBody{t: t, rc: r.Body, ctx: r.Context(),
			rate: x.Side == pipeline.Ingress && g.minRate > 0 && x.Protocol != pipeline.ProtoGRPC}
		r.Body = &t.body
	}
	if x.Side == pipeline.Ingress {
		w := x.Writer
		t.w = answerWriter{t: t, rw: w}
		if _, ok := w.(http.Hijacker); ok {
			t.hw = hijackWriter{&t.w}
			x.Writer = &t.hw
		} else {
			x.Writer = &t.w
		}
	} else {
		t.stream = x.Stream
		t.s = answerStream{Stream: t.stream, t: t}
		x.Stream = &t.s
		if r := x.Request; r != nil {
			// The upstream's round trip follows the request's context
			// (decode gave it the stream's), not the one passed down: the
			// request must carry this one for the timeout to stop a round
			// trip that waits for the upstream's head. One allocation.
			t.req = r
			x.Request = r.WithContext(ctx)
		}
	}
	t.restored = false
	x.Defer(t)
	// A panic in next leaves t to the garbage collector (its timer may
	// still fire, harmlessly: the finisher cancels the context).
	err := next.Handle(ctx, x)
	if err != nil && t.body.tripped.Load() {
		// The request body failed (too slow, malformed, too large): that,
		// not how the stage reading it failed in turn (the tunnel stream
		// it aborted), is the answer.
		err = t.body.err
	}
	// next has returned: the answer's head is here, or a stage wrote it
	// through the wrappers, or it failed; start settles the race with the
	// timer once and for all.
	if t.start() {
		return err
	}
	// The timer won: every write of the answer was refused, so the user
	// saw nothing and the exchange can still be answered, with the 504,
	// on the user's own writer. next has returned, so Status and BytesOut
	// are this goroutine's.
	t.restore(x)
	x.Status, x.BytesOut = 0, 0
	return g.timeoutReject()
}

// restore gives x back the writer, stream and request the stage wrapped.
func (t *timed) restore(x *pipeline.Exchange) {
	if t.restored {
		return
	}
	t.restored = true
	if x.Side == pipeline.Ingress {
		x.Writer = t.rw
	} else {
		x.Stream = t.stream
		if t.req != nil {
			x.Request = t.req
		}
	}
	if t.bodyReq != nil {
		t.bodyReq.Body = t.body.rc
	}
}

// Finish implements pipeline.Finisher: once the answer is delivered, the
// exchange gets back what the stage wrapped, its context ends, and t goes
// back to the pool if its timers can no longer run.
func (t *timed) Finish(x *pipeline.Exchange, err error) error {
	t.restore(x)
	t.cancel(nil)
	t.start() // an exchange that failed before next returned
	t.release()
	return err
}

// answerWriter is Exchange.Writer while a timed exchange waits: the first
// write of the answer stops the timer, and if the timer fired first the
// write is refused. Its Unwrap lets http.ResponseController reach the
// user's writer (read deadlines, full duplex).
type answerWriter struct {
	t  *timed
	rw http.ResponseWriter
}

func (w *answerWriter) Header() http.Header { return w.rw.Header() }

func (w *answerWriter) WriteHeader(status int) {
	if w.t.start() {
		w.rw.WriteHeader(status)
	}
}

func (w *answerWriter) Write(p []byte) (int, error) {
	if !w.t.start() {
		return 0, errTooLate
	}
	w.t.armSend()
	n, err := w.rw.Write(p)
	w.t.touch()
	return n, err
}

// FlushError is what http.ResponseController.Flush calls.
func (w *answerWriter) FlushError() error {
	if !w.t.start() {
		return errTooLate
	}
	w.t.armSend()
	err := http.NewResponseController(w.rw).Flush()
	w.t.touch()
	return err
}

// Flush implements http.Flusher.
func (w *answerWriter) Flush() { _ = w.FlushError() }

// Unwrap returns the user's writer, for http.ResponseController.
func (w *answerWriter) Unwrap() http.ResponseWriter { return w.rw }

// hijackWriter is answerWriter for a writer that can be hijacked (HTTP/1.1),
// which encode does to answer a WebSocket upgrade.
type hijackWriter struct{ *answerWriter }

// Hijack implements http.Hijacker.
func (w hijackWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if !w.t.start() {
		return nil, nil, errTooLate
	}
	return w.rw.(http.Hijacker).Hijack()
}

// answerStream is Exchange.Stream while a timed egress exchange waits,
// like answerWriter: nothing is written to the stream before the answer
// (only the gateway's ERROR frame, after the chain), so the first Write or
// Close is the answer's.
type answerStream struct {
	pipeline.Stream
	t *timed
}

func (s *answerStream) Write(p []byte) (int, error) {
	if !s.t.start() {
		return 0, errTooLate
	}
	return s.Stream.Write(p)
}

func (s *answerStream) Close() error {
	if !s.t.start() {
		return errTooLate
	}
	return s.Stream.Close()
}

var (
	_ pipeline.Stage = (*Guard)(nil)
	_ http.Flusher   = (*answerWriter)(nil)
	_ http.Hijacker  = hijackWriter{}
)
