package egress

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/qtunnel/qtunnel/codec"
	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/rules"
	"github.com/qtunnel/qtunnel/transport"
)

// ConnSource finds the tunnel connection that carries a rule's requests.
// It returns a *pipeline.Reject when there is none (the client is not
// connected, the tunnel is down).
type ConnSource interface {
	ConnFor(r *rules.Rule) (*pipeline.Conn, error)
}

// ConnSourceFunc adapts a function to ConnSource.
type ConnSourceFunc func(r *rules.Rule) (*pipeline.Conn, error)

// ConnFor calls f(r).
func (f ConnSourceFunc) ConnFor(r *rules.Rule) (*pipeline.Conn, error) { return f(r) }

// TunnelConfig configures the Tunnel stage.
type TunnelConfig struct {
	// Conns picks the connection for each rule. Required.
	Conns ConnSource
	// MaxFrameSize is the largest frame sent or accepted, in bytes (S9). If
	// zero, 64 KiB. Both sides must agree.
	MaxFrameSize int
	// Streams, if set, counts the streams the stage holds open: one
	// StreamOpened when it has opened a stream, one StreamClosed when the
	// exchange on it is over.
	Streams StreamCounter
	// RequestBuffer is how much of a request body is read before a stream
	// is opened for it, so that a user slow to send holds no stream
	// meanwhile: a body of known length up to it is read whole, a longer
	// one until that much has arrived, one of unknown length until its
	// first bytes have (gRPC calls excepted: they open at once, since a
	// streaming call may wait for the answer before it sends). If zero,
	// only bodies of known length up to MaxFrameSize are read first (so
	// that head, body and END leave in one write). At most MaxFrameSize.
	RequestBuffer int
	// MaxStreamsPerSource bounds the streams that the exchanges of one
	// source address (Exchange.Source) may hold at once towards one
	// client (the rule's); one more is answered 429 with Retry-After. If
	// zero, no limit.
	MaxStreamsPerSource int
}

// StreamCounter counts tunnel streams in use; *metrics.Metrics is one. Its
// methods are called once per request and must not block.
type StreamCounter interface {
	StreamOpened()
	StreamClosed()
}

// Tunnel is the egress stage of the ingress side: it opens a stream on the
// rule's tunnel connection, sends the request head and streams the body,
// and sets the response from the peer's answer. Safe for concurrent use.
type Tunnel struct {
	conns    ConnSource
	maxFrame int
	buffer   int
	streams  StreamCounter // nil: not counted
	sources  *sourceLimit  // nil: no per-source limit
}

// NewTunnel returns a Tunnel stage.
func NewTunnel(cfg TunnelConfig) (*Tunnel, error) {
	if cfg.Conns == nil {
		return nil, errors.New("egress: tunnel needs a connection source")
	}
	if cfg.MaxFrameSize < 0 || cfg.MaxFrameSize > codec.MaxPayload {
		return nil, fmt.Errorf("egress: max frame size %d out of range", cfg.MaxFrameSize)
	}
	if cfg.MaxFrameSize == 0 {
		cfg.MaxFrameSize = codec.DefaultMaxFrameSize
	}
	if cfg.RequestBuffer < 0 || cfg.RequestBuffer > cfg.MaxFrameSize {
		return nil, fmt.Errorf("egress: request buffer %d is outside 0..%d (the frame size)", cfg.RequestBuffer, cfg.MaxFrameSize)
	}
	if cfg.MaxStreamsPerSource < 0 {
		return nil, fmt.Errorf("egress: max streams per source %d must not be negative", cfg.MaxStreamsPerSource)
	}
	t := &Tunnel{conns: cfg.Conns, maxFrame: cfg.MaxFrameSize, buffer: cfg.RequestBuffer, streams: cfg.Streams}
	if cfg.MaxStreamsPerSource > 0 {
		t.sources = newSourceLimit(cfg.MaxStreamsPerSource)
	}
	return t, nil
}

// Name implements pipeline.Namer.
func (t *Tunnel) Name() string { return Name }

// Handle implements pipeline.Stage.
func (t *Tunnel) Handle(ctx context.Context, x *pipeline.Exchange, next pipeline.Handler) error {
	if x.Rule == nil || (x.Request == nil && x.Head.Kind != codec.KindTCP) {
		return errors.New("egress: exchange has no rule or request (is route before egress?)")
	}
	conn, err := t.conns.ConnFor(x.Rule)
	if err != nil {
		return err
	}
	if conn.Draining.Load() {
		return &pipeline.Reject{Status: http.StatusServiceUnavailable, Message: "tunnel connection is draining, retry", RetryAfter: time.Second}
	}
	// The head, and the start of the body, are collected before a stream
	// is taken: a user who is slow to send holds none meanwhile.
	fw := transport.GetFrameWriter(nil, t.maxFrame)
	x.Head.RuleID = x.Rule.ID
	pipeline.InjectHead(ctx, &x.Head) // the far side's spans join this trace
	fw.Request(&x.Head)
	if size := fw.Pending() - codec.FrameHeaderLen; size > t.maxFrame {
		transport.PutFrameWriter(fw)
		return &pipeline.Reject{Status: http.StatusRequestHeaderFieldsTooLarge,
			Message: fmt.Sprintf("request header of %d bytes (as sent through the tunnel) exceeds the limit of %d", size, t.maxFrame)}
	}
	req := x.Request
	filled, eof := 0, false
	if max, first, ok := t.prefill(x); ok {
		filled, eof, err = fw.Fill(req.Body, max, first)
		x.BytesIn = int64(filled)
		if err != nil {
			// The user's body failed before anything was sent: too slow,
			// malformed, too large, or the user went away.
			transport.PutFrameWriter(fw)
			return err
		}
	}
	if !t.sources.acquire(x.Rule.Client, x.Source) {
		transport.PutFrameWriter(fw)
		return &pipeline.Reject{Status: http.StatusTooManyRequests, RetryAfter: time.Second, Err: ErrSourceLimit,
			Message: fmt.Sprintf("%s has %d requests in flight to this tunnel, the most one address may; retry", x.Source, t.sources.max)}
	}
	s, err := conn.Opener.OpenStream(ctx)
	if err != nil {
		t.sources.release(x.Rule.Client, x.Source)
		transport.PutFrameWriter(fw)
		return openError(ctx, err)
	}
	c := callPool.Get().(*call)
	c.t, c.conn, c.s, c.client, c.source = t, conn, s, x.Rule.Client, x.Source
	if t.streams != nil {
		// Counted until nothing uses the stream any more: the answer is
		// delivered (or the splice over), the body copier is done.
		t.streams.StreamOpened()
	}
	x.Conn = conn
	conn.Active.Add(1)
	// The requester going away cancels the stream both ways, which the
	// egress side sees as its request context ending.
	c.stop = context.AfterFunc(ctx, func() { s.Abort(codec.StreamCancelled) })
	fw.Attach(s)
	if x.Head.Kind != codec.KindHTTP {
		err := t.raw(ctx, x, s, fw)
		c.raw = x.Upgraded != nil
		return c.settle(ctx, x, err, next)
	}
	if x.Head.ContentLength == 0 || eof {
		// The whole request is here: head, body and END leave in one write.
		err = finishRequest(fw, s, req.Trailer)
		transport.PutFrameWriter(fw)
	} else {
		// The head (and what came of the body) leaves now: a streaming
		// peer (gRPC) may answer before the body ends, or wait for the
		// answer's head before sending more.
		if err = fw.Flush(); err == nil {
			c.fw = fw
			c.copied = make(chan error, 1)
			copied := c.copied
			go func() {
				n, err := fw.CopyBody(req.Body)
				x.BytesIn = int64(filled) + n // read by the finisher only after <-copied
				if err == nil {
					err = finishRequest(fw, s, req.Trailer)
				}
				if err != nil {
					s.Abort(codec.StreamCancelled)
				}
				copied <- err
			}()
		} else {
			transport.PutFrameWriter(fw)
		}
	}
	if err == nil {
		err = t.readResponse(ctx, x, s)
	}
	return c.settle(ctx, x, err, next)
}

// call is what an exchange holds on its tunnel stream until its answer is
// delivered: the stream, the request body's copier, the connection's and
// the source's counts. Pooled.
type call struct {
	t      *Tunnel
	conn   *pipeline.Conn
	s      pipeline.Stream
	fw     *transport.FrameWriter // the copier's, once it is done
	copied chan error             // nil: no copier
	stop   func() bool
	client string
	source netip.Addr
	raw    bool // upgraded or TCP: the splice ends the stream
}

var callPool = sync.Pool{New: func() any { return new(call) }}

// settle ends the call at once if the exchange failed before its answer
// (so that the error returned is the one that explains it: a request body
// that failed, not the stream that broke because of it), else leaves it
// to the exchange's finishers, after the answer is delivered, and goes
// on with next.
func (c *call) settle(ctx context.Context, x *pipeline.Exchange, err error, next pipeline.Handler) error {
	if err != nil {
		return c.Finish(x, err)
	}
	x.Defer(c)
	return next.Handle(ctx, x)
}

// Finish implements pipeline.Finisher: once the answer is delivered (or
// failed), a stream whose answer was not read to its end is reset, the
// request body's copier is waited for, and the counts are given back.
func (c *call) Finish(x *pipeline.Exchange, err error) error {
	if !c.raw && (err != nil || !x.Body.Done()) {
		c.s.Abort(codec.StreamCancelled)
	}
	if c.copied != nil {
		cerr, interrupted := waitCopy(x, c.copied)
		switch _, writeFailed := errors.AsType[transport.WriteError](cerr); {
		case cerr == nil || interrupted:
		case err == nil && !x.Body.Done():
			err = cerr
		case err != nil && !writeFailed:
			// Reading the user's body failed, and the copier aborted the
			// stream: that failure, not the broken stream, is the cause.
			err = cerr
		}
		transport.PutFrameWriter(c.fw)
	}
	c.stop()
	c.conn.Active.Add(-1)
	if c.t.streams != nil {
		c.t.streams.StreamClosed()
	}
	c.t.sources.release(c.client, c.source)
	*c = call{}
	callPool.Put(c)
	return err
}

// raw carries an upgrade (WebSocket) or a TCP connection: the head goes now,
// without END; if the far side agrees (101, or 200 for TCP once it reached
// the upstream) the stream carries raw bytes both ways, which encode
// splices to the user. A refused upgrade is an ordinary answer.
func (t *Tunnel) raw(ctx context.Context, x *pipeline.Exchange, s pipeline.Stream, fw *transport.FrameWriter) error {
	err := fw.Flush()
	transport.PutFrameWriter(fw)
	if err == nil {
		err = t.readResponse(ctx, x, s)
	}
	if err != nil {
		s.Abort(codec.StreamCancelled)
		return err
	}
	if x.Head.Kind == codec.KindUpgrade && x.Response.StatusCode != http.StatusSwitchingProtocols {
		_ = s.Close() // refused: nothing more to send; the answer follows as frames
		return nil
	}
	x.Response.Body = http.NoBody
	x.Upgraded = transport.StreamDuplex{R: x.Frames.Raw(), S: s}
	return nil
}

// prefill says how much of x's body to read before a stream is opened:
// at most max bytes, stopping at the first bytes if first is set.
func (t *Tunnel) prefill(x *pipeline.Exchange) (max int, first, ok bool) {
	cl := x.Head.ContentLength
	switch {
	case x.Head.Kind != codec.KindHTTP || cl == 0 || x.Request == nil:
		return 0, false, false
	case cl > 0 && cl < int64(t.maxFrame):
		return int(cl) + 1, false, true // the whole body and its end
	case t.buffer == 0 || x.Protocol == pipeline.ProtoGRPC:
		return 0, false, false
	case cl > 0:
		return t.buffer, false, true
	}
	return t.buffer, true, true
}

// ErrSourceLimit is the cause (Reject.Err) of a 429 for a source address
// that holds MaxStreamsPerSource streams already.
var ErrSourceLimit = errors.New("egress: per-source stream limit")

// interrupter is a request body whose blocked read can be ended by the
// exchange's owner (the limit stage's body is one).
type interrupter interface{ Interrupt() }

// waitCopy waits for the request-body copier. The answer is complete (or
// failed) by now, so the rest of the body is not wanted: if the copier is
// stuck reading the user's body, the read is interrupted (a read deadline
// in the past), and its failure is nobody's answer.
func waitCopy(x *pipeline.Exchange, copied chan error) (err error, interrupted bool) {
	select {
	case err := <-copied:
		return err, false
	default:
	}
	if i, ok := x.Request.Body.(interrupter); ok {
		i.Interrupt()
	} else if x.Writer != nil {
		_ = http.NewResponseController(x.Writer).SetReadDeadline(time.Now())
	}
	return <-copied, true
}

func finishRequest(fw *transport.FrameWriter, s pipeline.Stream, trailer http.Header) error {
	fw.Trailers(trailer)
	fw.End()
	if err := fw.Flush(); err != nil {
		return err
	}
	// Everything is written. Close can still fail when the peer, having
	// read all it wanted, stopped the sending direction first (its
	// STOP_SENDING raced the close): the request is whole over there, so
	// that is no failure of this request. A stream that really broke fails
	// the reading of the answer.
	_ = s.Close()
	return nil
}

// readResponse reads the peer's answer head into x.Response.
func (t *Tunnel) readResponse(ctx context.Context, x *pipeline.Exchange, s pipeline.Stream) error {
	x.Frames.Reset(s, t.maxFrame)
	typ, p, err := x.Frames.Next()
	if err != nil {
		return streamError(ctx, err)
	}
	switch typ {
	case codec.FrameResponse:
		// The answer is written to the user before the exchange ends: its
		// header map can be the exchange's.
		head := codec.ResponseHead{Header: x.ResponseHeader()}
		if err := codec.ParseResponse(p, &head); err != nil {
			return &pipeline.Reject{Status: http.StatusBadGateway, Message: "malformed answer from the tunnel peer", Err: err}
		}
		resp := x.NewResponse()
		resp.StatusCode = head.Status
		resp.Header = head.Header
		resp.ContentLength = head.ContentLength
		resp.Proto, resp.ProtoMajor, resp.ProtoMinor = "HTTP/1.1", 1, 1
		// No trailer map up front: most answers have none, and the body
		// makes one when TRAILERS arrive (encode reads it from there).
		x.Body.Reset(&x.Frames, nil)
		resp.Body = &x.Body
		resp.Request = x.Request
		return nil
	case codec.FrameError:
		e, err := codec.ParseError(p)
		if err != nil {
			return &pipeline.Reject{Status: http.StatusBadGateway, Message: "malformed answer from the tunnel peer", Err: err}
		}
		return e
	}
	return &pipeline.Reject{Status: http.StatusBadGateway, Message: "malformed answer from the tunnel peer",
		Err: fmt.Errorf("want RESPONSE or ERROR, got %s", typ)}
}

// streamError turns a failure to get an answer into what the user sees: a
// refused stream is retryable (503), a cancelled request needs no answer,
// anything else is a 502.
func streamError(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if code, ok := transport.StreamCode(err); ok && code == codec.StreamRefused {
		return &pipeline.Reject{Status: http.StatusServiceUnavailable, Message: "tunnel peer refused the request (at capacity or shutting down), retry", RetryAfter: time.Second, Err: err}
	}
	if transport.ConnLost(err) {
		return &pipeline.Reject{Status: http.StatusBadGateway, Message: "tunnel connection lost: the other side stopped answering", RetryAfter: time.Second, Err: err}
	}
	return &pipeline.Reject{Status: http.StatusBadGateway, Message: "tunnel stream failed", Err: err}
}

func openError(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if errors.Is(err, pipeline.ErrOverloaded) {
		return &pipeline.Reject{Status: http.StatusServiceUnavailable, Message: "tunnel is at its stream limit, retry", RetryAfter: time.Second, Err: err}
	}
	return &pipeline.Reject{Status: http.StatusServiceUnavailable, Message: "tunnel connection unavailable, retry", RetryAfter: time.Second, Err: err}
}

var _ pipeline.Stage = (*Tunnel)(nil)
