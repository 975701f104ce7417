package pipelinetest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"

	"github.com/qtunnel/qtunnel/internal/httpx"
	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/stages/encode"
)

// Answer is a stage that answers as an upstream would: it sets x.Response
// (Status, Header, Body) and calls next, so that the stages before it see
// an answer. Put it last in the chain under test, where the gateway has its
// egress stage, and run the chain with Serve.
//
// Before it answers it calls Upstream, if set, with the exchange as the
// upstream would get it, then reads the request's body to its end, as an
// upstream reads a request before answering; a failure to read it (the
// *pipeline.Reject of a stage that limits bodies, say) is returned instead
// of an answer. Each exchange gets its own copy of Header, so stages may
// edit x.Response.Header. The zero Answer is a 200 with an empty body.
// Answer is safe for concurrent use if Upstream is.
type Answer struct {
	// Status is the answer's status; 0 is 200.
	Status int
	// Header holds the answer's fields.
	Header http.Header
	// Body is the answer's body, sent with its Content-Length. A []byte
	// body is Body: string(b).
	Body string
	// Upstream, if not nil, is called with the exchange before the answer
	// is made: a test checks there what the stages before did to the
	// request (x.Request, x.Source...). It may read the request's body.
	Upstream func(x *pipeline.Exchange)
}

// Name implements pipeline.Namer.
func (Answer) Name() string { return "answer" }

// Handle implements pipeline.Stage.
func (a Answer) Handle(ctx context.Context, x *pipeline.Exchange, next pipeline.Handler) error {
	if a.Upstream != nil {
		a.Upstream(x)
	}
	if r := x.Request; r != nil && r.Body != nil {
		if _, err := io.Copy(io.Discard, r.Body); err != nil {
			return err
		}
	}
	status := a.Status
	if status == 0 {
		status = http.StatusOK
	}
	resp := x.NewResponse()
	resp.StatusCode = status
	resp.Status = strconv.Itoa(status) + " " + http.StatusText(status)
	resp.Proto, resp.ProtoMajor, resp.ProtoMinor = "HTTP/1.1", 1, 1
	resp.Header = a.Header.Clone()
	if resp.Header == nil {
		resp.Header = http.Header{}
	}
	resp.ContentLength = int64(len(a.Body))
	resp.Body = io.NopCloser(strings.NewReader(a.Body))
	resp.Request = x.Request
	return next.Handle(ctx, x)
}

// ErrNoAnswer is what Serve returns (joined to encode.ErrNoResponse) when
// the handler returned nil without an answer (x.Response): a stage
// returned without calling next and without setting one. The gateway's
// user gets a 502 then, and so does Serve's caller.
var ErrNoAnswer = errors.New("pipelinetest: the chain returned nil and set no answer (does it end with Answer? does every stage call next?); the gateway's user would get a 502")

// ErrCut is joined to the handler's error when it failed after the answer's
// head was written. The gateway cuts such an answer short (HTTP/1.1: it
// closes the connection; HTTP/2: it resets the stream); Serve returns what
// was written.
var ErrCut = errors.New("pipelinetest: the answer was cut short")

// Serve runs h on an ingress exchange made from req, as the gateway's
// listener runs its chain, and returns the response the user would get.
// Use httptest.NewRequest to make req.
//
// The exchange has x.Request = req, x.Writer = a response recorder, x.ID
// = req's X-Request-Id if it is a valid id (as decode keeps the id a
// trusted proxy gave) or a new one, x.Source = the address of
// req.RemoteAddr, x.Protocol as decode detects it, and runs in
// req.Context(). Serve releases it before it returns.
//
// h is usually a *pipeline.Chain, ending with an Answer. It runs inside
// the gateway's encode stage, as the stages of a gateway's chain do:
// encode writes the answer (x.Response) or the refusal (the error h
// returns) once h has returned, that is after every stage's response
// phase, then runs the exchange's finishers (pipeline.Exchange.Defer).
//
// An error is answered as the gateway answers refusals, by the same code
// (encode's Refuse): the status, a "qtunnel: <message>" line as the body,
// Retry-After, the fields of a *pipeline.Reject's Header, and
// X-Request-Id; a gRPC call gets a gRPC status. As in the gateway,
// nothing is written if req's context is done (the user went away).
//
// The response is never nil. The error is nil for a clean answer; else
// the handler's error, as the gateway would log it (its refusal is in the
// response), wrapped with ErrCut if the answer had started; or ErrNoAnswer
// if nothing answered.
func Serve(h pipeline.Handler, req *http.Request) (*http.Response, error) {
	rec := httptest.NewRecorder()
	rec.Code = 0 // stays 0 until something writes the head
	x := pipeline.Acquire(pipeline.Ingress)
	defer x.Release()
	x.Request, x.Writer = req, rec
	x.ID = req.Header.Get(httpx.RequestIDHeader)
	if !httpx.ValidRequestID(x.ID) {
		x.ID = httpx.NewRequestID()
	}
	x.Source = httpx.AddrOf(req.RemoteAddr)
	x.Protocol = protocolOf(req)

	err := encoder().Handle(req.Context(), x, h)
	switch {
	case errors.Is(err, encode.ErrNoResponse):
		err = errors.Join(ErrNoAnswer, err)
	case err != nil && !x.Answered && x.Status != 0:
		err = fmt.Errorf("%w: %w", ErrCut, err)
	}
	if rec.Code == 0 {
		rec.Code = http.StatusOK // nothing written: what net/http would send
	}
	// The recorder's result is a copy: nothing in it belongs to x.
	return rec.Result(), err
}

// encoder is the gateway's encode stage, as the gateway configures it by
// default.
var encoder = sync.OnceValue(func() *encode.Encoder {
	e, err := encode.New(encode.Config{})
	if err != nil {
		panic(err) // the zero Config is valid
	}
	return e
})

// protocolOf is the protocol decode sees in r.
func protocolOf(r *http.Request) pipeline.Protocol {
	switch {
	case r.ProtoMajor == 1:
		for _, v := range r.Header["Upgrade"] {
			if strings.EqualFold(strings.TrimSpace(v), "websocket") {
				return pipeline.ProtoWebSocket
			}
		}
		return pipeline.ProtoHTTP1
	case r.ProtoMajor == 2 && httpx.IsGRPC(r):
		return pipeline.ProtoGRPC
	case r.ProtoMajor == 2:
		return pipeline.ProtoHTTP2
	}
	return pipeline.ProtoHTTP1
}

var (
	_ pipeline.Stage = Answer{}
	_ pipeline.Namer = Answer{}
)
