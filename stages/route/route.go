// Package route is the stage that finds the rule for an exchange.
//
// On the ingress side it matches the request's listener, host and path
// against the current rule table; on the egress side it looks the rule up
// by the id the ingress side sent, and checks that the rule belongs to the
// connection's client and points this way. No rule answers 404 with the
// reason.
package route

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/qtunnel/qtunnel/codec"
	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/rules"
)

// Config configures the route stage.
type Config struct {
	// Rules holds the side's current table. Required.
	Rules *rules.Store
	// Egress is the direction whose rules this side serves as the egress
	// side: rules.Forward on the server, rules.Reverse on the client.
	// Required.
	Egress rules.Direction
}

// Router is the route stage. Safe for concurrent use.
type Router struct {
	rules  *rules.Store
	egress rules.Direction
}

// New returns a route stage.
func New(cfg Config) (*Router, error) {
	if cfg.Rules == nil {
		return nil, errors.New("route: a rule store is required")
	}
	if cfg.Egress != rules.Forward && cfg.Egress != rules.Reverse {
		return nil, fmt.Errorf("route: egress direction %q is neither forward nor reverse", cfg.Egress)
	}
	return &Router{rules: cfg.Rules, egress: cfg.Egress}, nil
}

// Name implements pipeline.Namer.
func (r *Router) Name() string { return Name }

// Name is the stage's name in the chains' order.
const Name = "route"

// Handle implements pipeline.Stage.
func (r *Router) Handle(ctx context.Context, x *pipeline.Exchange, next pipeline.Handler) error {
	t := r.rules.Load()
	if x.Side == pipeline.Ingress {
		req := x.Request
		if req == nil { // a raw TCP connection: its listener is its route
			if x.Rule = t.MatchListener(x.Listener); x.Rule == nil || x.Rule.Protocol != rules.ProtoTCP {
				return pipeline.Rejectf(http.StatusNotFound, "no TCP rule listens on %s", x.Listener)
			}
			return next.Handle(ctx, x)
		}
		// The escaped path, which decode normalised: an escaped "/" is
		// data inside a segment, not a boundary a prefix can end on.
		x.Rule = t.Match(x.Listener, req.Host, req.URL.EscapedPath())
		if x.Rule == nil {
			return pipeline.Rejectf(http.StatusNotFound, "no route for host %q and path %q", req.Host, req.URL.Path)
		}
		return next.Handle(ctx, x)
	}
	rule := t.ByID(x.Head.RuleID)
	if rule == nil || rule.Direction != r.egress || (x.Conn != nil && x.Conn.ClientID != "" && rule.Client != x.Conn.ClientID) {
		return pipeline.Rejectf(http.StatusNotFound, "rule %q does not exist here (removed, or not this client's)", x.Head.RuleID)
	}
	if (rule.Protocol == rules.ProtoTCP) != (x.Head.Kind == codec.KindTCP) {
		return pipeline.Rejectf(http.StatusBadRequest, "rule %q carries %s, not a %s stream", rule.ID, rule.Protocol, x.Head.Kind)
	}
	x.Rule = rule
	return next.Handle(ctx, x)
}

var _ pipeline.Stage = (*Router)(nil)
