package limit

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/qtunnel/qtunnel/pipeline"
)

// watchedBody is the request body of a timed exchange. Its end (or its
// failure) starts the request timer. On the ingress side, until the answer
// starts, it also bounds the wait for each read (BodyTimeout, by read
// deadlines on the user's connection, so that a read blocked on a silent
// user returns) and the body's average rate (MinBodyRate); and it turns a
// failed read into the answer the user is owed: 408 for a body too slow,
// 400 for a malformed one, the 413 of a body too large. A user who went
// away gets nothing.
//
// One goroutine reads it at a time (the stage that copies the body); the
// answer's writer may stop its clocks meanwhile (answerStarted), and the
// copier's owner may interrupt it (Interrupt).
type watchedBody struct {
	t    *timed
	rc   io.ReadCloser
	ctx  context.Context // the request's: done once the user went away
	rate bool            // MinBodyRate applies

	n      int64         // bytes read
	waited time.Duration // time spent in reads that waited for the user
	// armedAt is when the read deadline was last set (unix ns), 0 when
	// none is set.
	armedAt     atomic.Int64
	interrupted atomic.Bool
	eof         atomic.Bool

	err     error // the failure, once there is one
	tripped atomic.Bool
}

func (b *watchedBody) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	t, g := b.t, b.t.g
	timing := t.rw != nil && t.state.Load() == waiting && (g.bodyTimeout > 0 || b.rate)
	var start time.Time
	if timing {
		start = time.Now()
		if g.bodyTimeout > 0 {
			b.armRead(start)
		}
	}
	n, err := b.rc.Read(p)
	if timing {
		b.waited += time.Since(start)
	}
	b.n += int64(n)
	if n > 0 {
		t.touch()
	}
	switch {
	case err == io.EOF:
		b.eof.Store(true)
		b.clearRead()
		t.startTimer()
	case err != nil:
		b.fail(b.classify(err))
		t.startTimer()
		return n, b.err
	case timing && b.rate && b.waited > g.grace && float64(b.n) < g.minRate*(b.waited-g.grace).Seconds():
		rate := int64(float64(b.n) / b.waited.Seconds())
		b.fail(&pipeline.Reject{Status: http.StatusRequestTimeout, Err: ErrBodyTooSlow,
			Message: "request body arrives at " + strconv.FormatInt(rate, 10) + " bytes/s, below the minimum of " +
				strconv.FormatInt(int64(g.minRate), 10) + " bytes/s"})
		return n, b.err
	}
	return n, err
}

func (b *watchedBody) Close() error { return b.rc.Close() }

// ErrBodyTooSlow is the cause (Reject.Err) of a 408 for a request body
// that stopped or slowed below MinBodyRate.
var ErrBodyTooSlow = errors.New("request body too slow")

// ErrMalformedBody is the cause (Reject.Err) of a 400 for a request body
// that could not be read as its framing says (a bad chunk, a body shorter
// than its Content-Length).
var ErrMalformedBody = errors.New("malformed request body")

func (b *watchedBody) fail(err error) {
	b.err = err
	if _, ok := errors.AsType[*pipeline.Reject](err); ok {
		b.tripped.Store(true)
	}
}

// classify turns a failed read of the user's body into the answer due.
func (b *watchedBody) classify(err error) error {
	if rej, ok := errors.AsType[*pipeline.Reject](err); ok {
		return rej // the body limit's 413
	}
	if b.interrupted.Load() {
		return err // the exchange is over: no answer
	}
	if errors.Is(err, os.ErrDeadlineExceeded) && b.t.g.bodyTimeout > 0 {
		// Checked before the request's context: net/http's HTTP/1 server
		// cancels it on any read error, this one included, although the
		// user may well be there to read the 408.
		return &pipeline.Reject{Status: http.StatusRequestTimeout, Err: ErrBodyTooSlow,
			Message: "no request body bytes for " + b.t.g.bodyTimeout.String()}
	}
	if b.ctx.Err() != nil {
		return err // the user went away: no answer
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return &pipeline.Reject{Status: http.StatusBadRequest, Err: ErrMalformedBody,
			Message: "request body ended before its declared length"}
	}
	return &pipeline.Reject{Status: http.StatusBadRequest, Err: ErrMalformedBody, Message: "malformed request body: " + err.Error()}
}

// armRead moves the read deadline to BodyTimeout from now, at most once a
// quarter of it (on HTTP/2 each move costs a timer): a read always has at
// least three quarters of the timeout.
func (b *watchedBody) armRead(now time.Time) {
	d := b.t.g.bodyTimeout
	if now.UnixNano()-b.armedAt.Load() <= int64(d/4) {
		return
	}
	b.armedAt.Store(now.UnixNano())
	_ = http.NewResponseController(b.t.rw).SetReadDeadline(now.Add(d))
	if b.t.state.Load() != waiting {
		b.clearRead() // the answer started meanwhile: its writer may have missed this deadline
	}
}

// clearRead removes the read deadline, if one is set. On HTTP/1 it is the
// connection's, which net/http goes on reading once the body ended.
func (b *watchedBody) clearRead() {
	if b.armedAt.Swap(0) != 0 {
		_ = http.NewResponseController(b.t.rw).SetReadDeadline(time.Time{})
	}
}

// answerStarted stops the body's clocks: once the answer flows, a user who
// sends nothing more (a streaming call) is waited for.
func (b *watchedBody) answerStarted() {
	if b.t != nil {
		b.clearRead()
	}
}

// Interrupt ends a read blocked on the user, for a copier whose exchange
// is over: the read fails at once, and the failure is no answer of the
// exchange's.
func (b *watchedBody) Interrupt() {
	b.interrupted.Store(true)
	if b.t != nil && b.t.rw != nil {
		_ = http.NewResponseController(b.t.rw).SetReadDeadline(time.Now())
	}
}
