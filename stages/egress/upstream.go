// Package egress holds the stages that take an exchange out of the gateway:
// Upstream sends it to the upstream server through a pooled, warmed
// connection (the egress side), balanced over the rule's healthy upstreams
// and retried where that is safe, and Tunnel sends it across the tunnel on
// a new QUIC stream (the ingress side). Both set Exchange.Response and call
// the next stage; what they hold for the answer (its body, its stream) is
// let go by a finisher (pipeline.Exchange.Defer) once encode, outermost,
// has delivered it.
package egress

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/qtunnel/qtunnel/codec"
	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/rules"
	"github.com/qtunnel/qtunnel/transport"
)

// Upstream is the egress stage of the egress side. Safe for concurrent use.
type Upstream struct {
	pool *Pool
}

// NewUpstream returns an Upstream stage sending through pool.
func NewUpstream(pool *Pool) (*Upstream, error) {
	if pool == nil {
		return nil, errors.New("egress: a pool is required")
	}
	return &Upstream{pool: pool}, nil
}

// Name implements pipeline.Namer.
func (u *Upstream) Name() string { return Name }

// Name is the name of both egress stages (Tunnel on the ingress side,
// Upstream on the egress side) in the chains' order.
const Name = "egress"

// Handle implements pipeline.Stage. It sends the request to the upstream
// the rule's balancer picks and, when the rule allows retries and it is
// safe, tries again on the next one: after a failure to connect (nothing
// was sent), or for an idempotent method without a body that got no
// answer. Never after the upstream answered anything, whatever the status.
// Between attempts it waits a full-jitter backoff (up to 10ms, 20ms, ...
// at most 200ms), or until ctx ends.
func (u *Upstream) Handle(ctx context.Context, x *pipeline.Exchange, next pipeline.Handler) error {
	if x.Rule != nil && x.Rule.Protocol == rules.ProtoTCP {
		return u.tcp(ctx, x, next)
	}
	if x.Rule == nil || x.Request == nil {
		return errors.New("egress: exchange has no rule or request (is route before egress?)")
	}
	g, err := u.pool.group(x.Rule)
	if err != nil {
		return &pipeline.Reject{Status: http.StatusBadGateway, Message: "upstream unavailable", Err: err}
	}
	req := x.Request
	pipeline.InjectHeader(ctx, req.Header) // the upstream joins the trace
	retries := min(max(x.Rule.Retries, 0), rules.MaxRetries)
	bodiless := req.Body == nil || req.Body == http.NoBody
	replayable := retries > 0 && bodiless && idempotent(req.Method)
	var orig url.URL // the request's URL before the first target rewrote it
	var body *onceBody
	if retries > 0 {
		orig = *req.URL
		if !bodiless {
			body = &onceBody{rc: req.Body}
			req.Body = body
		}
	}
	var tried uint64
	var failed error
	for attempt := 0; ; attempt++ {
		i, m := g.pick(tried)
		if i < 64 {
			tried |= 1 << i
		}
		r := req
		if attempt > 0 {
			// The transport may still hold the request of the failed
			// attempt: send a copy pointed at the next target.
			r = req.WithContext(req.Context())
			r.URL = new(url.URL)
			*r.URL = orig
		}
		m.t.prepare(r, x.Rule.HostHeader)
		m.t.inflight.Add(1)
		resp, err := m.t.RoundTrip(r)
		if err == nil {
			m.connected()
			return u.deliver(ctx, x, answer{t: m.t, body: resp.Body, once: body, req: req}, resp, next)
		}
		m.t.inflight.Add(-1)
		if ctx.Err() != nil {
			failed = ctx.Err() // the requester went away; nobody to answer
			break
		}
		connErr := isConnectError(err)
		if connErr {
			m.connFailed(err)
		}
		if attempt >= retries || !(replayable || connErr && (body == nil || !body.read.Load())) {
			failed = upstreamError(x, err)
			break
		}
		if failed = backoff(ctx, attempt); failed != nil {
			break
		}
	}
	// No answer: the request's own body goes back now (an answer's
	// finisher gives it back once the answer is delivered).
	body.restore(req)
	return failed
}

// answer is what an exchange holds of its upstream until the answer is
// delivered: the target's in-flight count, the answer's body, the request
// body a retry guarded, or a TCP rule's connection and counts.
type answer struct {
	t    *Target
	body io.Closer
	once *onceBody
	req  *http.Request
	conn net.Conn
	tcp  *tcpConns
}

var answerPool = sync.Pool{New: func() any { return new(answer) }}

// Finish implements pipeline.Finisher: it ends the upstream's answer (a
// body not read to its end closes its connection, as net/http does) and
// gives back what the exchange held.
func (a *answer) Finish(_ *pipeline.Exchange, err error) error {
	if a.body != nil {
		_ = a.body.Close()
	}
	a.once.restore(a.req)
	if a.t != nil {
		a.t.inflight.Add(-1)
	}
	if a.conn != nil {
		_ = a.conn.Close()
		a.tcp.open.Add(-1)
	}
	*a = answer{}
	answerPool.Put(a)
	return err
}

// deliver sets the upstream's answer on x and goes on with next; the
// answer is ended once delivered (see answer.Finish).
func (u *Upstream) deliver(ctx context.Context, x *pipeline.Exchange, held answer, resp *http.Response, next pipeline.Handler) error {
	a := answerPool.Get().(*answer)
	*a = held
	x.Defer(a)
	x.Response = resp
	if x.Head.Kind == codec.KindUpgrade && resp.StatusCode == http.StatusSwitchingProtocols {
		rwc, ok := resp.Body.(io.ReadWriteCloser)
		if !ok {
			return &pipeline.Reject{Status: http.StatusBadGateway, Message: "upstream switched protocols on a connection that cannot carry them"}
		}
		x.Upgraded = transport.RWCDuplex{ReadWriteCloser: rwc}
	}
	return next.Handle(ctx, x)
}

// idempotent reports whether a request with method can be sent twice with
// the effect of once (RFC 9110, 9.2.2).
func idempotent(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
		return true
	}
	return false
}

// Retry backoff: full jitter, a random wait in [0, min(cap, base*2^n)].
const (
	retryBase = 10 * time.Millisecond
	retryCap  = 200 * time.Millisecond
)

// backoff waits before the retry that follows attempt (0 for the first
// attempt), or until ctx ends.
func backoff(ctx context.Context, attempt int) error {
	d := rand.N(min(retryCap, retryBase<<attempt) + 1)
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// onceBody stands in for a request body while the request may go to
// another upstream after a failure to connect: it remembers whether
// anything read it (then it cannot go again), and it keeps a failed
// attempt's transport from closing it, as net/http's Transport does when
// it cannot connect. The stage closes the real body when it is done.
type onceBody struct {
	rc   io.ReadCloser
	read atomic.Bool
}

func (b *onceBody) Read(p []byte) (int, error) {
	b.read.Store(true)
	return b.rc.Read(p)
}

func (b *onceBody) Close() error { return nil }

// restore puts the real body back on req and closes it, as a transport
// would have. A nil b does nothing.
func (b *onceBody) restore(req *http.Request) {
	if b == nil {
		return
	}
	req.Body = b.rc
	_ = b.rc.Close()
}

// tcp connects a TCP rule's upstream; encode then splices it to the stream.
func (u *Upstream) tcp(ctx context.Context, x *pipeline.Exchange, next pipeline.Handler) error {
	addr, err := rules.ParseTCPUpstream(x.Rule.Upstream)
	if err != nil {
		return &pipeline.Reject{Status: http.StatusBadGateway, Message: "upstream unavailable", Err: err}
	}
	conn, err := u.pool.dialTCP(ctx, addr)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return upstreamError(x, err)
	}
	counts := u.pool.tcpConnsOf(x.Rule.ID)
	counts.dials.Add(1)
	counts.open.Add(1)
	a := answerPool.Get().(*answer)
	a.conn, a.tcp = conn, counts
	x.Defer(a)
	resp := x.NewResponse()
	resp.StatusCode, resp.Header, resp.Body, resp.ContentLength = http.StatusOK, http.Header{}, http.NoBody, -1
	x.Upgraded = transport.ConnDuplex{Conn: conn}
	return next.Handle(ctx, x)
}

func upstreamError(x *pipeline.Exchange, err error) error {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return &pipeline.Reject{Status: http.StatusGatewayTimeout,
			Message: fmt.Sprintf("upstream of rule %q did not answer in time", x.Rule.ID), Err: err}
	}
	return &pipeline.Reject{Status: http.StatusBadGateway,
		Message: fmt.Sprintf("upstream of rule %q is unreachable", x.Rule.ID), Err: err}
}

var _ pipeline.Stage = (*Upstream)(nil)
