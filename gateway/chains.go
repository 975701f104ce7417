package gateway

import (
	"context"
	"errors"
	"sync/atomic"

	"github.com/qtunnel/qtunnel/config"
	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/rules"
	"github.com/qtunnel/qtunnel/stages/decode"
	"github.com/qtunnel/qtunnel/stages/egress"
	"github.com/qtunnel/qtunnel/stages/encode"
	"github.com/qtunnel/qtunnel/stages/limit"
	"github.com/qtunnel/qtunnel/stages/ratelimit"
	"github.com/qtunnel/qtunnel/stages/route"
)

// chains are the two chains of one side. Listeners and stream servers
// hold the chainRefs; a reload that changes a chain's settings builds new
// chains aside and puts them in with use, atomically: exchanges under way
// finish on the chain they started on.
type chains struct {
	ingress, egress chainRef
	limiter         *ratelimit.Limiter // the rate limiter the chains share
}

// chainRef is the chain in force, as a pipeline.Handler.
type chainRef struct {
	p atomic.Pointer[pipeline.Chain]
}

// Handle implements pipeline.Handler.
func (r *chainRef) Handle(ctx context.Context, x *pipeline.Exchange) error {
	return r.p.Load().Handle(ctx, x)
}

// use puts n's chains in force and returns the ones they replace, in n.
func (c *chains) use(n *chains) {
	in, eg, lim := n.ingress.p.Load(), n.egress.p.Load(), n.limiter
	n.ingress.p.Store(c.ingress.p.Swap(in))
	n.egress.p.Store(c.egress.p.Swap(eg))
	n.limiter, c.limiter = c.limiter, lim
}

// buildChains makes the default stages of both chains, lets the options
// rewrite them, and compiles them. egressDir is the direction this side
// serves as the egress side.
func buildChains(ctx context.Context, c *config.Common, store *rules.Store, egressDir rules.Direction,
	conns egress.ConnSource, pool *egress.Pool, k *kit, o options) (*chains, error) {
	limiter, err := ratelimit.New(c.RateLimit, ratelimit.WithLogger(k.log))
	if err != nil {
		return nil, err
	}
	frame := int(c.Limits.MaxFrameSize)
	dec, err := decode.New(decode.Config{MaxFrameSize: frame, TrustedProxies: c.TrustedPrefixes(),
		AllowSNIMismatch: c.Limits.SNIHostMismatch == config.SNIAllow})
	if err != nil {
		return nil, err
	}
	rt, err := route.New(route.Config{Rules: store, Egress: egressDir})
	if err != nil {
		return nil, err
	}
	enc, err := encode.New(encode.Config{MaxFrameSize: frame})
	if err != nil {
		return nil, err
	}
	tun, err := egress.NewTunnel(egress.TunnelConfig{Conns: conns, MaxFrameSize: frame, Streams: k.m,
		RequestBuffer: int(c.Limits.RequestBuffer), MaxStreamsPerSource: max(c.Limits.MaxStreamsPerSource, 0)})
	if err != nil {
		return nil, err
	}
	up, err := egress.NewUpstream(pool)
	if err != nil {
		return nil, err
	}
	// Each chain has its own in-flight limit, so that requests from users
	// and requests from the tunnel are counted apart.
	ingFlight, err := limit.New(limit.Config{MaxInFlight: c.Limits.MaxInFlight})
	if err != nil {
		return nil, err
	}
	egrFlight, err := limit.New(limit.Config{MaxInFlight: c.Limits.MaxInFlight})
	if err != nil {
		return nil, err
	}
	// The ingress side's request limit bounds the request body and the
	// time to the answer's head; it is named "request_limit" apart from
	// the in-flight "limit". The egress side has none. No body limit: it
	// would protect nothing of this side, since bodies stream through
	// bounded buffers (the egress side never holds a body, whatever its
	// size), and every request it takes has crossed the peer's ingress
	// side, where the users are and where the peer's limit applied; a
	// second limit could only disagree with the peer's. No request timer
	// either: the upstream pool already bounds the connect
	// (egress.dial_timeout) and the wait for the head
	// (egress.response_header_timeout, a 504 the breaker counts), so a
	// second timer would only cost a context and a request copy per
	// request (3 allocations).
	//
	// It also holds the user to the pace of a live client: the body must
	// keep coming (body_timeout, min_body_rate) until the answer starts,
	// the answer must be read (send_timeout; on HTTP/1 the listener's
	// connection guard does it) and must not sit idle (stream_idle_timeout).
	ingReq, err := limit.New(limit.Config{
		MaxBodySize:       c.Limits.MaxBodySize.Bytes(),
		RequestTimeout:    c.Limits.RequestTimeout,
		BodyTimeout:       c.Limits.BodyTimeout,
		MinBodyRate:       c.Limits.MinBodyRate.Bytes(),
		MinRateGrace:      c.Limits.MinRateGrace,
		SendTimeout:       c.Limits.SendTimeout,
		StreamIdleTimeout: c.Limits.StreamIdleTimeout,
		Name:              "request_limit",
	})
	if err != nil {
		return nil, err
	}
	// observe is first so that every outcome is counted, refusals by
	// decode and route included. The in-flight limit comes right after
	// decode, so that overload is refused before any other work (decode
	// gives the 503 its request id). Rate limit and breaker come after
	// route: their buckets and circuits are per rule and per upstream.
	// The breaker guards upstreams, so it is on the egress side only. The
	// ingress request limit (body size, time to the answer's head) comes
	// last before egress, so that it times the whole trip through the
	// tunnel.
	obs := k.m.Stage()
	ing := []pipeline.Stage{obs, dec, ingFlight, rt, limiter, ingReq, tun, enc}
	egr := []pipeline.Stage{obs, dec, egrFlight, rt, limiter, k.breaker, up, enc}
	if o.ingress != nil {
		if ing, err = o.ingress(ing); err != nil {
			return nil, err
		}
	}
	if o.egress != nil {
		if egr, err = o.egress(egr); err != nil {
			return nil, err
		}
	}
	var copts []pipeline.Option
	if o.tracer != nil {
		copts = append(copts, pipeline.WithTracer(o.tracer))
	}
	ic, err := pipeline.New(ctx, ing, copts...)
	if err != nil {
		return nil, err
	}
	ec, err := pipeline.New(ctx, egr, copts...)
	if err != nil {
		return nil, errors.Join(err, ic.Close(ctx))
	}
	ch := &chains{limiter: limiter}
	ch.ingress.p.Store(ic)
	ch.egress.p.Store(ec)
	return ch, nil
}

func (c *chains) close(ctx context.Context) error {
	return errors.Join(c.ingress.p.Load().Close(ctx), c.egress.p.Load().Close(ctx))
}
