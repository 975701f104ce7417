package pipeline

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/qtunnel/qtunnel/codec"
	"github.com/qtunnel/qtunnel/rules"
)

// Side says which end of the tunnel handles an exchange.
type Side uint8

const (
	// Ingress is the side that accepted the user's request on a listener
	// and sends it into the tunnel.
	Ingress Side = 1
	// Egress is the side that accepted the request from the tunnel and
	// reaches the upstream.
	Egress Side = 2
)

func (s Side) String() string {
	switch s {
	case Ingress:
		return "ingress"
	case Egress:
		return "egress"
	}
	return "unknown"
}

// Protocol is what the user's request speaks, as far as the gateway cares.
type Protocol uint8

// Protocols, in the order they are detected.
const (
	ProtoUnknown Protocol = iota
	ProtoHTTP1
	ProtoHTTP2
	ProtoGRPC
	ProtoWebSocket
	ProtoTCP
)

var protoNames = [...]string{"unknown", "http1", "http2", "grpc", "websocket", "tcp"}

func (p Protocol) String() string {
	if int(p) < len(protoNames) {
		return protoNames[p]
	}
	return "unknown"
}

// Stream is the tunnel stream an egress-side exchange arrived on.
type Stream interface {
	io.Reader
	io.Writer
	// Close ends the write direction cleanly.
	Close() error
	// CancelRead stops the peer's sending with an application error code
	// (codec.Stream* values); what was written already stays intact.
	CancelRead(code uint64)
	// Abort resets both directions with code.
	Abort(code uint64)
}

// Conn describes one tunnel connection. It is created once, at handshake,
// and every stream of the connection points at it (S2): no stream ever looks
// its client up by address.
type Conn struct {
	ClientID   string
	SessionID  string
	RemoteAddr net.Addr
	// Opener opens a new stream on the connection.
	Opener StreamOpener
	// Close closes the connection with a codec.Conn* code and a reason.
	Close func(code uint64, reason string) error
	// Draining is set once the peer said GOAWAY: open no new streams.
	Draining atomic.Bool
	// Active counts the request streams this side opened on the
	// connection and still uses (the egress stage of the ingress chain
	// keeps it): a side told to drain closes the connection once it is
	// zero, so that no answer still in flight is cut.
	Active atomic.Int64
}

// StreamOpener opens request streams on a tunnel connection.
type StreamOpener interface {
	OpenStream(ctx context.Context) (Stream, error)
}

// Exchange is one request crossing the tunnel, on one side. It is pooled:
// get one with Acquire, give it back with Release, and never keep it after
// the chain returns.
type Exchange struct {
	// ID is the request id, carried across the tunnel and sent upstream as
	// X-Request-Id.
	ID       string
	Side     Side
	Protocol Protocol
	// Listener names the ingress listener ("" for the server's public
	// listener, the listen address of a forward listener).
	Listener string
	// Rule is the route, set by the route stage.
	Rule *rules.Rule
	// Conn is the tunnel connection the exchange crosses: where it arrived
	// (egress side) or was sent (ingress side, set by the egress stage).
	Conn *Conn
	// Start is when the exchange was accepted.
	Start time.Time
	// Source is the address the user's request came from (ingress side,
	// set by decode): the connection's peer, or, when the peer is a
	// trusted proxy, the address it forwarded for. Per-source limits key
	// on it.
	Source netip.Addr

	// Request is the user's request (ingress) or the request rebuilt from
	// the stream (egress, set by decode). Its Body streams.
	Request *http.Request
	// Writer answers the user (ingress side only).
	Writer http.ResponseWriter
	// Downstream is the user's raw connection, for TCP rules (ingress side
	// only; Request and Writer are nil then).
	Downstream net.Conn
	// Stream carries the request and answer (egress side only).
	Stream Stream
	// Head is the request head: decoded from the stream (egress) or built
	// by decode to be sent (ingress).
	Head codec.RequestHead
	// HeadRead says Head was already read from the stream (by whoever ran
	// the exchange, to start its trace span): decode must not read it.
	HeadRead bool
	// Response is the answer, set by the egress stage. Encode, the
	// outermost stage after observe, writes it once every stage's
	// response phase has run: until then a stage may change its status
	// and headers, or wrap its body.
	Response *http.Response
	// Upgraded is the far end of a connection that switched to raw bytes
	// (a WebSocket after 101, a TCP rule after the upstream answered): set
	// by the egress stage, spliced to the user (or the stream) by encode.
	Upgraded io.ReadWriteCloser
	// Status is the status the user got, for logs and metrics: set by
	// encode when the answer's head is written.
	Status int
	// Answered is set by encode once nothing is left to write: the whole
	// answer or the refusal went out, or the stream was reset. An error
	// the chain returns then needs no answer from whoever runs it.
	Answered bool
	// BytesIn and BytesOut count body bytes: the request's as it crossed
	// this side, and the answer's as this side delivered it.
	BytesIn, BytesOut int64
	// Timings, when a stage sets it (the inspector does), gets how long
	// each stage inside that one held the exchange. Nil, the default,
	// costs the chain one comparison per stage.
	Timings *StageTimings

	// Frames and Body are scratch space for the stage that reads frames
	// from the exchange's tunnel stream, kept here so that they are pooled
	// with the exchange.
	Frames codec.Reader
	Body   codec.Body

	then    Handler     // where a chain run by Chain.Then goes on
	fins    [6]Finisher // see Defer; beyond 6, more
	finsN   int
	more    []Finisher
	resp    http.Response
	strs    [8]string   // see Strings
	strsN   int         // how many of strs were handed out
	respHdr http.Header // see ResponseHeader
}

var exchangePool = sync.Pool{New: func() any { return new(Exchange) }}

// Acquire returns a reset Exchange for side, with Start set to now.
func Acquire(side Side) *Exchange {
	x := exchangePool.Get().(*Exchange)
	x.Side = side
	x.Start = time.Now()
	return x
}

// Release resets x and returns it to the pool. x must not be used after.
func (x *Exchange) Release() {
	frames := x.Frames
	frames.Reset(nil, 0) // drop the stream, keep the read buffer
	if x.finsN > 0 {
		// Whoever ran the exchange did not deliver it (a chain without
		// encode, or one that panicked): what the stages hold is let go
		// all the same.
		_ = x.Finish(ErrNotDelivered)
	}
	hdr := x.respHdr
	clear(hdr)
	more := x.more[:0]
	*x = Exchange{Frames: frames, respHdr: hdr, more: more}
	exchangePool.Put(x)
}

// Finisher ends what a stage holds for an exchange (a tunnel stream, an
// in-flight slot, an upstream's body) once the answer is delivered. See
// Exchange.Defer.
type Finisher interface {
	// Finish is given the error the exchange ended with (nil if the
	// answer was delivered whole, else the chain's or the delivery's
	// error) and returns the error to go on with: the same one, or one
	// that says better what happened.
	Finish(x *Exchange, err error) error
}

// FinisherFunc adapts a function to Finisher. A func value made per
// exchange allocates; a stage on the hot path implements Finisher on a
// pooled type instead.
type FinisherFunc func(x *Exchange, err error) error

// Finish calls f(x, err).
func (f FinisherFunc) Finish(x *Exchange, err error) error { return f(x, err) }

// ErrNotDelivered is the error the finishers of an exchange released
// without delivery are given.
var ErrNotDelivered = errors.New("pipeline: the exchange was released before its answer was delivered")

// Defer registers f to run once the exchange's answer is delivered, after
// every stage's response phase: it is the defer of what the delivery still
// needs. A stage's Handle returns before the answer is written (encode
// writes it on the way out), so a resource the answer's body or the
// request's body still uses (a stream, a connection, a wrapped writer, an
// in-flight slot held until the answer is out) is let go by a Finisher,
// not by a defer. Finishers run last registered first, like defers: the
// innermost stage's first. Register on the way in, as a defer would be
// placed; Defer allocates nothing for up to six finishers.
func (x *Exchange) Defer(f Finisher) {
	if x.finsN < len(x.fins) {
		x.fins[x.finsN] = f
		x.finsN++
		return
	}
	x.more = append(x.more, f)
}

// Finish runs the registered finishers, last registered first, each given
// the error the one before returned, and returns the last one's. Encode
// calls it once the answer is delivered; whoever runs a chain without
// encode calls it when done. The finishers run once: a second call runs
// none and returns err.
func (x *Exchange) Finish(err error) error {
	for i := len(x.more) - 1; i >= 0; i-- {
		f := x.more[i]
		x.more[i] = nil
		x.more = x.more[:i]
		err = f.Finish(x, err)
	}
	for x.finsN > 0 {
		x.finsN--
		f := x.fins[x.finsN]
		x.fins[x.finsN] = nil
		err = f.Finish(x, err)
	}
	return err
}

// Strings returns n empty strings backed by the exchange, for header values
// that live only as long as the exchange (fields the gateway adds to a
// request it forwards or a response it writes; net/http copies a response
// header when it is written). Each call gets its own strings; beyond 8 in
// all it allocates.
func (x *Exchange) Strings(n int) []string {
	if x.strsN+n > len(x.strs) {
		return make([]string, n)
	}
	s := x.strs[x.strsN : x.strsN+n : x.strsN+n]
	x.strsN += n
	return s
}

// ResponseHeader returns an empty header map backed by the exchange, for an
// answer that is written and done with before the exchange is released.
func (x *Exchange) ResponseHeader() http.Header {
	if x.respHdr == nil {
		x.respHdr = make(http.Header, 8)
	}
	return x.respHdr
}

// NewResponse returns the exchange's embedded *http.Response, reset, so that
// the ingress egress stage need not allocate one per request.
func (x *Exchange) NewResponse() *http.Response {
	x.resp = http.Response{}
	x.Response = &x.resp
	return x.Response
}

// StageTimings records how long each stage held an exchange: from entering
// the stage to its return, the stages inside it included. Entries are
// appended as the stages return: the innermost first.
type StageTimings struct {
	Names []string
	Took  []time.Duration
}

// Own returns, in the chain's order (outermost first), each stage's
// name and the time it held the exchange without the stages inside it.
func (t *StageTimings) Own() (names []string, own []time.Duration) {
	n := len(t.Names)
	names, own = make([]string, n), make([]time.Duration, n)
	for i := 0; i < n; i++ {
		j := n - 1 - i // outermost first
		names[i], own[i] = t.Names[j], t.Took[j]
		if j > 0 {
			own[i] -= t.Took[j-1]
		}
		if own[i] < 0 {
			own[i] = 0
		}
	}
	return names, own
}
