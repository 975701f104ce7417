// Package encode is the stage that delivers Exchange.Response to whoever
// asked. It sits outermost in a chain (after observe only) and writes on
// the way out, once every other stage's response phase has run: a stage
// may change the answer's status and headers, or wrap its body, after its
// next returns, and a Reject passes back through every stage before
// encode renders it. On the ingress side it writes the user's HTTP response,
// flushing streamed bodies as they arrive and sending trailers; on the egress
// side it writes the answer's frames to the tunnel stream, batched and
// without copying body bytes.
package encode

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"

	"github.com/qtunnel/qtunnel/codec"
	"github.com/qtunnel/qtunnel/internal/httpx"
	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/transport"
)

// Config configures the encode stage. The zero value is the default.
type Config struct {
	// MaxFrameSize is the largest DATA frame written to the tunnel (S9).
	// If zero, 64 KiB. Both sides must agree.
	MaxFrameSize int
	// CopyBufferSize is the buffer for copying a body to the user. If
	// zero, 32 KiB.
	CopyBufferSize int
}

// Encoder is the encode stage. Safe for concurrent use.
type Encoder struct {
	maxFrame int
	copyBuf  int
}

// New returns an encode stage.
func New(cfg Config) (*Encoder, error) {
	if cfg.MaxFrameSize < 0 || cfg.MaxFrameSize > codec.MaxPayload || cfg.CopyBufferSize < 0 {
		return nil, fmt.Errorf("encode: sizes out of range (%d, %d)", cfg.MaxFrameSize, cfg.CopyBufferSize)
	}
	if cfg.MaxFrameSize == 0 {
		cfg.MaxFrameSize = codec.DefaultMaxFrameSize
	}
	if cfg.CopyBufferSize == 0 {
		cfg.CopyBufferSize = 32 << 10
	}
	return &Encoder{maxFrame: cfg.MaxFrameSize, copyBuf: cfg.CopyBufferSize}, nil
}

// Name implements pipeline.Namer.
func (e *Encoder) Name() string { return Name }

// Name is the stage's name in the chains' order.
const Name = "encode"

// ErrNoResponse is returned when encode runs and no stage set a response.
var ErrNoResponse = errors.New("encode: no stage set a response (is egress before encode?)")

// ErrNoStream is returned when encode runs on the egress side and the
// exchange has no tunnel stream (Exchange.Stream) to write the answer to.
var ErrNoStream = errors.New("encode: an egress exchange needs a Stream")

// Handle implements pipeline.Stage. It runs the stages after it first,
// and writes on the way out: the answer they set (x.Response), or the
// refusal they returned (see Refuse), once every response phase has run.
// Then it runs the exchange's finishers (pipeline.Exchange.Defer) and
// returns what they make of the outcome. A panic below encode runs the
// finishers too, so that no slot or stream is held for ever.
func (e *Encoder) Handle(ctx context.Context, x *pipeline.Exchange, next pipeline.Handler) error {
	done := false
	defer func() {
		if !done {
			_ = x.Finish(errPanicked)
		}
	}()
	err := next.Handle(ctx, x)
	if err == nil {
		err = e.deliver(x)
	}
	if err != nil {
		e.Refuse(ctx, x, err)
	}
	done = true
	return x.Finish(err)
}

// errPanicked is what the finishers of an exchange whose stages panicked
// are given.
var errPanicked = errors.New("encode: a stage panicked")

// deliver writes x.Response where it goes and marks x answered.
func (e *Encoder) deliver(x *pipeline.Exchange) error {
	resp := x.Response
	if resp == nil {
		if x.Upgraded != nil {
			_ = x.Upgraded.Close()
		}
		return ErrNoResponse
	}
	if x.Side == pipeline.Egress && x.Stream == nil {
		if x.Upgraded != nil {
			_ = x.Upgraded.Close() // as splice does on its failures
		}
		return ErrNoStream
	}
	var err error
	switch {
	case x.Upgraded != nil:
		err = e.splice(x, resp)
	case x.Side == pipeline.Ingress:
		httpx.RemoveHopByHop(resp.Header)
		err = e.toUser(x, resp)
	default:
		httpx.RemoveHopByHop(resp.Header)
		err = e.toStream(x, resp)
	}
	if err == nil {
		x.Answered = true
	}
	return err
}

// splice delivers an answer that switched to raw bytes (101 for a WebSocket,
// the go-ahead of a TCP rule) and then copies bytes both ways until both
// directions end. Once the switch is made there is no HTTP left to answer
// an error with: a connection that ends badly just ends (and is logged at
// debug level by whoever runs the exchange).
func (e *Encoder) splice(x *pipeline.Exchange, resp *http.Response) error {
	far, ok := x.Upgraded.(transport.Duplex)
	if !ok {
		far = transport.RWCDuplex{ReadWriteCloser: x.Upgraded}
	}
	upgrade := resp.Header["Upgrade"]
	httpx.RemoveHopByHop(resp.Header)
	x.Status = resp.StatusCode
	var near transport.Duplex
	switch {
	case x.Side == pipeline.Egress:
		if upgrade != nil {
			resp.Header["Upgrade"] = upgrade
		}
		fw := transport.GetFrameWriter(x.Stream, e.maxFrame)
		fw.Response(&codec.ResponseHead{Status: resp.StatusCode, ContentLength: -1, Header: resp.Header})
		err := fw.Flush()
		transport.PutFrameWriter(fw)
		if err != nil {
			_ = far.Close()
			return transport.WriteError{Err: err}
		}
		near = transport.StreamDuplex{R: x.Frames.Raw(), S: x.Stream}
	case x.Downstream != nil: // a TCP rule: the user's connection is raw already
		near = transport.ConnDuplex{Conn: x.Downstream}
	default: // a WebSocket: take the user's connection over and answer 101 on it
		hj, ok := x.Writer.(http.Hijacker)
		if !ok {
			_ = far.Close()
			return errors.New("encode: this connection cannot switch protocols (HTTP/2 upgrades are not supported)")
		}
		conn, brw, err := hj.Hijack()
		if err != nil {
			_ = far.Close()
			return fmt.Errorf("encode: take over the connection: %w", err)
		}
		defer conn.Close()
		h := resp.Header
		h["Connection"] = []string{"Upgrade"}
		h["Upgrade"] = upgrade
		h[httpx.RequestIDHeader] = []string{x.ID}
		fmt.Fprintf(brw, "HTTP/1.1 %d %s\r\n", resp.StatusCode, http.StatusText(resp.StatusCode))
		_ = h.Write(brw)
		_, _ = brw.WriteString("\r\n")
		if err := brw.Flush(); err != nil {
			_ = far.Close()
			return writeErr(err)
		}
		near = transport.ConnDuplex{Conn: conn, R: brw.Reader}
	}
	in, out, _ := transport.Splice(near, far)
	x.BytesIn, x.BytesOut = in, out
	return nil
}

// toUser writes resp to the user's ResponseWriter.
func (e *Encoder) toUser(x *pipeline.Exchange, resp *http.Response) error {
	w := x.Writer
	h := w.Header()
	for k, v := range resp.Header {
		h[k] = v
	}
	// net/http is done with the header when the exchange ends, so the
	// values can live in the exchange.
	vals := x.Strings(2)
	vals[0] = x.ID
	h[httpx.RequestIDHeader] = vals[0:1:1]
	if resp.ContentLength >= 0 && !bodyless(resp.StatusCode) {
		vals[1] = strconv.FormatInt(resp.ContentLength, 10)
		h["Content-Length"] = vals[1:2:2]
	}
	x.Status = resp.StatusCode
	w.WriteHeader(resp.StatusCode)
	// A body of unknown length is a stream (gRPC, server-sent events): the
	// head and every chunk go out at once. A body of known length is
	// buffered by net/http and flushed at the end.
	streaming := resp.ContentLength < 0
	var rc *http.ResponseController
	if streaming {
		rc = http.NewResponseController(w)
		if err := rc.Flush(); err != nil {
			return writeErr(err)
		}
	}
	buf := pipeline.GetBuffer(e.copyBuf)
	defer pipeline.PutBuffer(buf)
	p := buf.B[:e.copyBuf]
	for {
		n, rerr := resp.Body.Read(p)
		if n > 0 {
			if _, err := w.Write(p[:n]); err != nil {
				return writeErr(err)
			}
			x.BytesOut += int64(n)
			if streaming {
				if err := rc.Flush(); err != nil {
					return writeErr(err)
				}
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return fmt.Errorf("encode: read answer body: %w", rerr)
		}
	}
	trailer := resp.Trailer
	if b, ok := resp.Body.(*codec.Body); ok && trailer == nil {
		trailer = b.Trailer // the tunnel's answer: trailers arrive with the body
	}
	for k, v := range trailer {
		if len(v) > 0 {
			h[http.TrailerPrefix+k] = v
		}
	}
	return nil
}

// toStream writes resp as frames to the tunnel stream.
func (e *Encoder) toStream(x *pipeline.Exchange, resp *http.Response) error {
	fw := transport.GetFrameWriter(x.Stream, e.maxFrame)
	defer transport.PutFrameWriter(fw)
	if len(resp.Trailer) > 0 {
		// Declare the trailers so that an HTTP/1.1 user gets them too.
		names := make([]string, 0, len(resp.Trailer))
		for k := range resp.Trailer {
			names = append(names, k)
		}
		resp.Header["Trailer"] = names
	}
	head := codec.ResponseHead{Status: resp.StatusCode, ContentLength: resp.ContentLength, Header: resp.Header}
	delete(resp.Header, "Content-Length")
	fw.Response(&head)
	x.Status = resp.StatusCode
	if resp.ContentLength < 0 {
		if err := fw.Flush(); err != nil {
			return transport.WriteError{Err: err}
		}
	}
	n, err := fw.CopyBody(resp.Body)
	x.BytesOut += n
	if err != nil {
		var we transport.WriteError
		if errors.As(err, &we) {
			return err
		}
		// The upstream's body failed after its head: send what was read and
		// an ERROR frame that cuts the body on the other side, then close.
		// A reset would do as much, but QUIC may drop the frames still
		// unsent or unread when it arrives (the head included, which would
		// turn a cut 200 into a 502).
		fw.Error(&codec.Error{Status: http.StatusBadGateway, Message: "upstream body cut: " + err.Error()})
		if ferr := fw.Flush(); ferr != nil {
			return transport.WriteError{Err: ferr}
		}
		_ = x.Stream.Close()
		return BodyCutError{Err: err}
	}
	fw.Trailers(resp.Trailer)
	fw.End()
	if err := fw.Flush(); err != nil {
		return transport.WriteError{Err: err}
	}
	return x.Stream.Close()
}

func bodyless(status int) bool {
	return status == http.StatusNoContent || status == http.StatusNotModified || (status >= 100 && status < 200)
}

// writeErr marks a failure to write to the user: the user went away.
func writeErr(err error) error { return pipeline.UserGoneError{Err: err} }

// BodyCutError is returned on the egress side when the answer's body failed
// after its head had gone out. The stream already carries an ERROR frame
// that cuts the body on the other side and is closed: whoever runs the
// exchange has nothing left to send.
type BodyCutError struct{ Err error }

func (e BodyCutError) Error() string { return "encode: read answer body: " + e.Err.Error() }
func (e BodyCutError) Unwrap() error { return e.Err }

var _ pipeline.Stage = (*Encoder)(nil)
