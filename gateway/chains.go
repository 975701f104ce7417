package gateway

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/qtunnel/qtunnel/config"
	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/rules"
	"github.com/qtunnel/qtunnel/stages/egress"
	"github.com/qtunnel/qtunnel/stages/ratelimit"
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

// chainSpec is what buildChains builds a side's two chains from. A side
// keeps its own (side.spec): a reload builds new chains from it with the
// reloaded settings.
type chainSpec struct {
	settings  *config.Common    // limits, rate limits, trusted proxies
	store     *rules.Store      // the side's rule table, which route reads
	egressDir rules.Direction   // the direction this side serves as the egress side
	conns     egress.ConnSource // the tunnel connection of a rule (the ingress chain's tunnel stage)
	pool      *egress.Pool      // the upstreams (the egress chain's upstream stage)
	kit       *kit              // metrics, breaker, rule stages (kit.go)
	opts      options           // the chain edits and the tracer; zero: none
}

// buildChains builds both chains of a side from the order table
// (order.go), with the options' edits applied.
func buildChains(ctx context.Context, spec chainSpec) (*chains, error) {
	limiter, err := ratelimit.New(spec.settings.RateLimit, ratelimit.WithLogger(spec.kit.log))
	if err != nil {
		return nil, err
	}
	b := &chainBuild{chainSpec: spec, limiter: limiter}
	ing, err := b.order(ingressOrder, spec.opts.ingressEdits)
	if err != nil {
		return nil, fmt.Errorf("ingress chain: %w", err)
	}
	egr, err := b.order(egressOrder, spec.opts.egressEdits)
	if err != nil {
		return nil, fmt.Errorf("egress chain: %w", err)
	}
	var copts []pipeline.Option
	if spec.opts.tracer != nil {
		copts = append(copts, pipeline.WithTracer(spec.opts.tracer))
	}
	ic, err := ing.Build(ctx, copts...)
	if err != nil {
		return nil, err
	}
	ec, err := egr.Build(ctx, copts...)
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
