package egress

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// h1Client is a lean HTTP/1.1 client for plain-HTTP upstreams. It speaks
// with net/http's own wire code (Request.Write, ReadResponse) on
// connections it pools itself, keeping no goroutine per connection and
// starting none for a request without a body. net/http's Transport runs two
// goroutines per connection and hands every request to both; on the hot
// path of a tunnel that costs more than the HTTP work itself (see
// BENCHMARKS.md). Requests it does not handle (Expect: 100-continue,
// upgrades) go to the Transport.
//
// Safe for concurrent use.
type h1Client struct {
	dial        func(ctx context.Context, network, addr string) (net.Conn, error)
	addr        string
	maxIdle     int
	idleTimeout time.Duration
	headTimeout time.Duration
	slots       chan struct{} // one per connection in use or idle; nil: no limit

	mu      sync.Mutex
	idle    []*h1Conn // most recently used last
	janitor *time.Timer
	closed  bool
}

type h1Conn struct {
	c      net.Conn
	br     *bufio.Reader
	bw     *bufio.Writer
	idleAt time.Time
	reused bool // kept alive, or dialled ahead: the upstream may have closed it

	clock    sync.Mutex // orders the head timer's start and the head's arrival
	headRead bool
}

// startClock times the wait for the answer's head from the end of the
// request, as net/http's Transport does: an upload may take longer than the
// timeout. With a body, the writer calls it when it is done, unless the
// head has come already (the upstream answered early), after which a
// deadline would cut the answer's body instead.
func (h *h1Client) startClock(ctx context.Context, pc *h1Conn) {
	if h.headTimeout <= 0 {
		return
	}
	pc.clock.Lock()
	defer pc.clock.Unlock()
	if !pc.headRead {
		_ = pc.c.SetReadDeadline(time.Now().Add(h.headTimeout))
		cutIfDone(ctx, pc.c) // the deadline may have replaced the cut
	}
}

func newH1Client(addr string, dial func(context.Context, string, string) (net.Conn, error), c PoolConfig) *h1Client {
	h := &h1Client{dial: dial, addr: addr, maxIdle: c.MaxIdlePerUpstream, idleTimeout: c.IdleTimeout, headTimeout: c.ResponseHeaderTimeout}
	if c.MaxConnsPerUpstream > 0 {
		h.slots = make(chan struct{}, c.MaxConnsPerUpstream)
	}
	return h
}

// handles reports whether the lean path can carry req.
func (h *h1Client) handles(req *http.Request) bool {
	return req.Header.Get("Expect") == "" && len(req.Header["Upgrade"]) == 0
}

var errClientClosed = errors.New("upstream client closed")

// roundTrip sends req and returns the response head; the body streams from
// the connection, which goes back to the pool when the body ends.
func (h *h1Client) roundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	if h.slots != nil {
		select {
		case h.slots <- struct{}{}:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	replayable := req.Body == nil || req.Body == http.NoBody
	for attempt := 0; ; attempt++ {
		pc, err := h.get(ctx)
		if err != nil {
			h.release()
			return nil, err
		}
		resp, retry, err := h.exchange(ctx, pc, req)
		if err == nil {
			return resp, nil
		}
		if retry && replayable && attempt == 0 && ctx.Err() == nil {
			continue // a kept-alive connection the upstream had closed
		}
		h.release()
		return nil, err
	}
}

func (h *h1Client) release() {
	if h.slots != nil {
		<-h.slots
	}
}

// get returns an idle connection that is still usable, or a new one.
func (h *h1Client) get(ctx context.Context) (*h1Conn, error) {
	now := time.Now()
	for {
		pc, closed := h.popIdle()
		if closed {
			return nil, errClientClosed
		}
		if pc == nil {
			break
		}
		// The look at the socket (a syscall) and the close of a dead
		// connection happen outside the lock every request takes.
		idleFor := now.Sub(pc.idleAt)
		if idleFor < h.idleTimeout && (idleFor < time.Second || alive(pc.c)) {
			pc.reused = true
			return pc, nil
		}
		_ = pc.c.Close()
	}
	c, err := h.dial(ctx, "tcp", h.addr)
	if err != nil {
		return nil, err
	}
	cc, warm := c.(*countedConn)
	warm = warm && cc.warm
	return &h1Conn{c: c, br: bufio.NewReaderSize(c, 4096), bw: bufio.NewWriterSize(c, 4096), reused: warm}, nil
}

// popIdle takes the most recently parked connection, if any, and reports
// whether the client is closed.
func (h *h1Client) popIdle() (*h1Conn, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := len(h.idle)
	if n == 0 {
		return nil, h.closed
	}
	pc := h.idle[n-1]
	h.idle[n-1] = nil
	h.idle = h.idle[:n-1]
	return pc, false
}

// exchange writes req on pc and reads the response head. retry says the
// connection failed before the upstream answered anything, so a replayable
// request may go again on another connection.
func (h *h1Client) exchange(ctx context.Context, pc *h1Conn, req *http.Request) (*http.Response, bool, error) {
	// The requester going away cuts the connection, whatever it waits on.
	stop := context.AfterFunc(ctx, func() { _ = pc.c.SetDeadline(time.Unix(1, 0)) })
	var wrote chan error
	pc.headRead = false
	if req.Body == nil || req.Body == http.NoBody {
		err := req.Write(pc.bw)
		if err == nil {
			err = pc.bw.Flush()
		}
		if err != nil {
			stop()
			_ = pc.c.Close()
			return nil, pc.reused, err
		}
		h.startClock(ctx, pc)
	} else {
		// A body may stream for as long as the answer does (and the
		// upstream may answer before reading it): write it alongside. The
		// writer owns nothing but its turn on the connection; it ends when
		// the body ends, fails, or the connection closes.
		wrote = make(chan error, 1)
		go func() {
			err := req.Write(pc.bw)
			if err == nil {
				err = pc.bw.Flush()
			}
			if err == nil {
				h.startClock(ctx, pc)
			}
			wrote <- err
		}()
	}
	var resp *http.Response
	var err error
	for {
		resp, err = http.ReadResponse(pc.br, req)
		if err != nil || resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
			break
		}
		// 1xx (100 Continue, 103 Early Hints): informational, the answer
		// follows.
	}
	if err == nil && h.headTimeout > 0 {
		pc.clock.Lock()
		pc.headRead = true
		_ = pc.c.SetReadDeadline(time.Time{})
		cutIfDone(ctx, pc.c)
		pc.clock.Unlock()
	}
	if err != nil {
		stop()
		_ = pc.c.Close() // ends a body writer blocked on the connection
		retry := pc.reused && wrote == nil && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || isReset(err))
		return nil, retry, err
	}
	b := &h1Body{h: h, pc: pc, rc: resp.Body, stop: stop, wrote: wrote,
		reusable: !resp.Close && !req.Close}
	if resp.Body == http.NoBody {
		b.finish(true)
		return resp, false, nil
	}
	resp.Body = b
	return resp, false, nil
}

// cutIfDone cuts c again if ctx has ended: a deadline set after the
// cancellation cut the connection would otherwise undo the cut. ctx.Err
// is set before the AfterFunc that cuts runs, so one of the two sees it.
func cutIfDone(ctx context.Context, c net.Conn) {
	if ctx.Err() != nil {
		_ = c.SetDeadline(time.Unix(1, 0))
	}
}

func isReset(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && !op.Timeout()
}

// h1Body returns its connection to the pool when the body has been read to
// its end, and closes it otherwise.
type h1Body struct {
	h        *h1Client
	pc       *h1Conn
	rc       io.ReadCloser
	stop     func() bool
	wrote    chan error
	reusable bool
	mu       sync.Mutex
	done     bool
	closed   atomic.Bool
}

var errBodyClosed = errors.New("http: read on closed response body")

func (b *h1Body) Read(p []byte) (int, error) {
	if b.closed.Load() {
		return 0, errBodyClosed
	}
	n, err := b.rc.Read(p)
	if err == io.EOF {
		b.finish(true)
	}
	return n, err
}

func (b *h1Body) Close() error {
	b.closed.Store(true)
	b.finish(false)
	return nil
}

func (b *h1Body) finish(atEOF bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.done {
		return
	}
	b.done = true
	// stop fails once the cut for a requester gone away has started: it
	// may not have set its deadline yet, and would set it on a parked
	// connection.
	reuse := b.stop() && atEOF && b.reusable
	if b.wrote != nil {
		// If the connection cannot be reused, the writer ends on its own
		// once the closed connection or the body (which the exchange
		// cancels when it ends) fails it; its result goes to the buffered
		// channel nobody reads.
		reuse = reuse && writeDone(b.wrote)
	}
	if !reuse {
		_ = b.pc.c.Close()
		b.h.release()
		return
	}
	_ = b.pc.c.SetDeadline(time.Time{})
	b.h.put(b.pc)
}

// maxWriteWait bounds the wait for a request body's writer after the
// answer ended; a writer still busy then (an upstream that answered without
// reading the body) loses the connection. net/http's Transport waits as
// long (maxWriteWaitBeforeConnReuse).
const maxWriteWait = 50 * time.Millisecond

// writeDone reports whether the writer reports success within maxWriteWait.
func writeDone(wrote <-chan error) bool {
	select {
	case err := <-wrote:
		return err == nil
	default:
		// The answer is complete and the writer has not reported yet: most
		// often it has flushed the last bytes and is about to (the upstream
		// read the whole body before it answered). Wait for it a little, as
		// net/http's Transport does, rather than lose the connection.
	}
	t := time.NewTimer(maxWriteWait)
	defer t.Stop()
	select {
	case err := <-wrote:
		return err == nil
	case <-t.C:
		return false
	}
}

// put parks a connection for reuse, or closes it when enough are parked.
func (h *h1Client) put(pc *h1Conn) {
	pc.idleAt = time.Now()
	h.mu.Lock()
	if h.closed || len(h.idle) >= h.maxIdle {
		h.mu.Unlock()
		_ = pc.c.Close()
		h.release()
		return
	}
	h.idle = append(h.idle, pc)
	if h.janitor == nil {
		h.janitor = time.AfterFunc(h.idleTimeout, h.expire)
	}
	h.mu.Unlock()
	h.release()
}

// expire closes connections idle past the idle timeout and reschedules
// itself while any remain.
func (h *h1Client) expire() {
	now := time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	h.janitor = nil
	keep := h.idle[:0]
	for _, pc := range h.idle {
		if now.Sub(pc.idleAt) >= h.idleTimeout {
			_ = pc.c.Close()
		} else {
			keep = append(keep, pc)
		}
	}
	clear(h.idle[len(keep):])
	h.idle = keep
	if len(h.idle) > 0 && !h.closed {
		h.janitor = time.AfterFunc(h.idleTimeout-now.Sub(h.idle[0].idleAt), h.expire)
	}
}

// close closes the idle connections; connections in use close when their
// answers end.
func (h *h1Client) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true
	if h.janitor != nil {
		h.janitor.Stop()
		h.janitor = nil
	}
	for _, pc := range h.idle {
		_ = pc.c.Close()
	}
	h.idle = nil
}

// idleConns returns how many connections are parked.
func (h *h1Client) idleConns() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.idle)
}
