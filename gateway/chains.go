package gateway

import (
	"context"
	"errors"

	"github.com/qtunnel/qtunnel/config"
	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/rules"
	"github.com/qtunnel/qtunnel/stages/decode"
	"github.com/qtunnel/qtunnel/stages/egress"
	"github.com/qtunnel/qtunnel/stages/encode"
	"github.com/qtunnel/qtunnel/stages/route"
)

// chains are the two chains of one side.
type chains struct {
	ingress, egress *pipeline.Chain
}

// buildChains makes the default stages of both chains, lets the options
// rewrite them, and compiles them. egressDir is the direction this side
// serves as the egress side.
func buildChains(ctx context.Context, c *config.Common, store *rules.Store, egressDir rules.Direction,
	conns egress.ConnSource, pool *egress.Pool, k *kit, o options) (*chains, error) {
	frame := int(c.Limits.MaxFrameSize)
	dec, err := decode.New(decode.Config{MaxFrameSize: frame})
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
	tun, err := egress.NewTunnel(egress.TunnelConfig{Conns: conns, MaxFrameSize: frame})
	if err != nil {
		return nil, err
	}
	up, err := egress.NewUpstream(pool)
	if err != nil {
		return nil, err
	}
	// observe is first so that every outcome is counted, refusals by
	// decode and route included. Rate limit and breaker come after route:
	// their buckets and circuits are per rule and per upstream. The
	// breaker guards upstreams, so it is on the egress side only.
	obs := k.m.Stage()
	ing := []pipeline.Stage{obs, dec, rt, k.limiter, tun, enc}
	egr := []pipeline.Stage{obs, dec, rt, k.limiter, k.breaker, up, enc}
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
	return &chains{ingress: ic, egress: ec}, nil
}

func (c *chains) close(ctx context.Context) error {
	return errors.Join(c.ingress.Close(ctx), c.egress.Close(ctx))
}
