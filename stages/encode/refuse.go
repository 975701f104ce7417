package encode

import (
	"context"
	"errors"
	"io"
	"net/http"
	"time"

	"github.com/qtunnel/qtunnel/codec"
	"github.com/qtunnel/qtunnel/internal/httpx"
	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/transport"
)

// Refuse answers an exchange that failed with err, if it can still be
// answered, the way encode does when the stages after it return an error:
//
//   - ingress, nothing written yet: the error's status, message,
//     Retry-After and Reject.Header, with X-Request-Id (a gRPC call gets a
//     gRPC status instead); nothing if the user went away;
//   - egress: an ERROR frame that says as much to the other side, or a
//     reset when the stream cannot carry one (part of the answer went out,
//     the stream broke, the requester went away);
//   - a TCP rule: nothing (its connection is closed by whoever runs it).
//
// It sets Exchange.Answered once nothing is left to do. It reports whether
// the answer must be cut short instead: part of it went out to the user,
// and the only honest signal left is to abort the response (an HTTP/1.1
// close, an HTTP/2 RST_STREAM), which only whoever runs the exchange can
// do. Refuse does nothing on an exchange already answered.
func (e *Encoder) Refuse(ctx context.Context, x *pipeline.Exchange, err error) (abort bool) {
	if x.Answered || err == nil {
		return false
	}
	switch {
	case x.Side == pipeline.Egress && x.Stream != nil:
		e.refuseStream(ctx, x, err)
	case x.Writer != nil:
		return refuseUser(ctx, x, err)
	}
	return false
}

// refuseUser answers err to the user if nothing was written yet.
func refuseUser(ctx context.Context, x *pipeline.Exchange, err error) (abort bool) {
	_, gone := errors.AsType[pipeline.UserGoneError](err)
	if gone || (ctx.Err() != nil && !tooSlow(err)) {
		x.Answered = true // the user went away: nobody to answer, nothing left to do
		return false
	}
	if x.Status != 0 {
		return true
	}
	status, msg, retry := pipeline.Answer(err)
	x.Status, x.Answered = status, true
	if x.Protocol == pipeline.ProtoGRPC || (x.Request != nil && httpx.IsGRPC(x.Request)) {
		httpx.WriteGRPCError(x.Writer, status, msg, retry, x.ID)
		return false
	}
	var extra http.Header
	if rj, ok := errors.AsType[*pipeline.Reject](err); ok {
		extra = rj.Header
	}
	// An HTTP/1 body may be unread: close rather than wait for it.
	closeConn := x.Request != nil && x.Request.ProtoMajor == 1 && x.Request.ContentLength != 0
	httpx.WriteErrorHeader(x.Writer, status, msg, retry, x.ID, extra, closeConn)
	return false
}

// tooSlow reports whether err is the 408 of a user too slow to send: the
// request's context may be done (net/http's HTTP/1 server ends it on the
// read that timed out), but the user may be there to read the answer.
func tooSlow(err error) bool {
	rej, ok := errors.AsType[*pipeline.Reject](err)
	return ok && rej.Status == http.StatusRequestTimeout
}

// streamEnding is how the egress side ends a stream whose exchange failed.
type streamEnding uint8

const (
	// endAnswer: nothing of the answer went out; send an ERROR frame that
	// says why, then close.
	endAnswer streamEnding = iota
	// endReset: the stream cannot carry an answer (part of one went out,
	// the stream broke, or the requester went away); reset it.
	endReset
	// endDone: the stream already carries the ERROR frame and is closed.
	endDone
)

// streamEndingOf says how to end x's stream after its exchange failed
// with err. It is the one place that reads the error: in order,
//
//   - a BodyCutError: the encoder cut the body with an ERROR frame and
//     closed the stream, so nothing is left to do;
//   - an answer already started (x.Status set) or a requester gone (ctx
//     done): reset;
//   - a transport.WriteError: the stream cannot be written to, reset;
//   - a *pipeline.Reject: answered, even when what it wraps looks like a
//     broken stream (an upstream's unexpected EOF is the upstream's, and
//     says 502);
//   - a broken stream (a QUIC stream error, or frames cut short): reset;
//   - anything else: answered.
func streamEndingOf(ctx context.Context, x *pipeline.Exchange, err error) streamEnding {
	if _, ok := errors.AsType[BodyCutError](err); ok {
		return endDone
	}
	if x.Status != 0 || ctx.Err() != nil {
		return endReset
	}
	if _, ok := errors.AsType[transport.WriteError](err); ok {
		return endReset
	}
	if _, ok := errors.AsType[*pipeline.Reject](err); ok {
		return endAnswer
	}
	if _, ok := transport.StreamCode(err); ok || errors.Is(err, io.ErrUnexpectedEOF) {
		return endReset
	}
	return endAnswer
}

// refuseStream ends x's stream after its exchange failed with err
// (streamEndingOf says how): an ERROR frame if the answer has not
// started, a reset if it has or if the stream is broken.
func (e *Encoder) refuseStream(ctx context.Context, x *pipeline.Exchange, err error) {
	s := x.Stream
	x.Answered = true
	if !x.Body.Done() {
		s.CancelRead(codec.StreamCancelled)
	}
	switch streamEndingOf(ctx, x, err) {
	case endDone:
		return
	case endReset:
		s.Abort(codec.StreamInternal)
		return
	}
	status, msg, retry := pipeline.Answer(err)
	x.Status = status
	fw := transport.GetFrameWriter(s, e.maxFrame)
	fw.Error(&codec.Error{Status: status, RetryAfter: uint32((retry + time.Second - 1) / time.Second), Message: msg})
	if ferr := fw.Flush(); ferr != nil {
		s.Abort(codec.StreamInternal)
	} else {
		_ = s.Close()
	}
	transport.PutFrameWriter(fw)
}
