// Package egress holds the stages that take an exchange out of the gateway:
// Upstream sends it to the upstream server through a pooled, warmed
// connection (the egress side), and Tunnel sends it across the tunnel on a
// new QUIC stream (the ingress side). Both set Exchange.Response and call
// the next stage (encode) to deliver it, then release what they hold.
package egress

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"

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
func (u *Upstream) Name() string { return "egress" }

// Handle implements pipeline.Stage.
func (u *Upstream) Handle(ctx context.Context, x *pipeline.Exchange, next pipeline.Handler) error {
	if x.Rule != nil && x.Rule.Protocol == rules.ProtoTCP {
		return u.tcp(ctx, x, next)
	}
	if x.Rule == nil || x.Request == nil {
		return errors.New("egress: exchange has no rule or request (is route before egress?)")
	}
	t, err := u.pool.Get(x.Rule)
	if err != nil {
		return &pipeline.Reject{Status: http.StatusBadGateway, Message: "upstream unavailable", Err: err}
	}
	req := x.Request
	t.prepare(req, x.Rule.HostHeader)
	pipeline.InjectHeader(ctx, req.Header) // the upstream joins the trace
	resp, err := t.RoundTrip(req)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err() // the requester went away; nobody to answer
		}
		return upstreamError(x, err)
	}
	x.Response = resp
	if x.Head.Kind == codec.KindUpgrade && resp.StatusCode == http.StatusSwitchingProtocols {
		rwc, ok := resp.Body.(io.ReadWriteCloser)
		if !ok {
			_ = resp.Body.Close()
			return &pipeline.Reject{Status: http.StatusBadGateway, Message: "upstream switched protocols on a connection that cannot carry them"}
		}
		x.Upgraded = transport.RWCDuplex{ReadWriteCloser: rwc}
	}
	err = next.Handle(ctx, x)
	_ = resp.Body.Close()
	return err
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
	defer conn.Close()
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
