package gateway

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/qtunnel/qtunnel/admin"
	"github.com/qtunnel/qtunnel/config"
	"github.com/qtunnel/qtunnel/internal/authlimit"
	"github.com/qtunnel/qtunnel/metrics"
	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/rules"
	"github.com/qtunnel/qtunnel/stages/breaker"
)

// kit is the services a server and a client both run, built the same way
// on either side and used by the rest of the side (its chains, listeners,
// stream server and tunnel connections): the metrics, the upstream breaker,
// the admin listener, the login throttles, the rules' own stages and the
// access-log switch. This file holds the kit and nothing else; the rest of
// what both sides share (the upstream pool, the chains, the listeners and
// the lifecycle steps around them) is the side, in side.go.
type kit struct {
	access  atomic.Bool // log.access, changed live by a reload
	m       *metrics.Metrics
	log     *slog.Logger
	breaker *breaker.Breaker
	admin   *admin.Server
	// rules runs the rules' own stage lists in the ingress chain; it
	// outlives the chains, which a reload may rebuild.
	rules *ruleStages

	// adminLogins throttles admin requests with a wrong token;
	// tunnelLogins (server only, nil on a client) tunnel handshakes.
	adminLogins  *authlimit.Limiter
	tunnelLogins *authlimit.Limiter
}

// kitConfig is what newKit builds a kit from.
type kitConfig struct {
	// role is the metrics' role label, "server" or "client"; a server's
	// kit throttles tunnel logins too.
	role     string
	settings *config.Common // breaker, auth_throttle, admin, log.access
	store    *rules.Store   // the side's rule table: breaker states are labelled by rule
	log      *slog.Logger
	ready    func() error   // the admin listener's /readyz; nil: always ready
	view     func() any     // the admin listener's /config; nil: none
	admin    []admin.Option // more for the admin listener (the server's rules API)

	// The rules' own stages: the modules they may name besides
	// stages.Modules, the direction of the rules whose stages this side
	// runs (those whose requests enter its listeners) and the tracer of
	// their spans (nil: none).
	modules []pipeline.Module
	rulesIn rules.Direction
	tracer  trace.Tracer
}

// newKit builds the kit of one side.
func newKit(c kitConfig) (*kit, error) {
	k := &kit{m: metrics.New(c.role), log: c.log}
	k.access.Store(c.settings.Log.Access)
	var err error
	onChange := func(upstream string, _, to breaker.State) {
		st := metrics.BreakerClosed
		switch to {
		case breaker.Open:
			st = metrics.BreakerOpen
		case breaker.HalfOpen:
			st = metrics.BreakerHalfOpen
		}
		for _, r := range c.store.Load().Rules() {
			if breaker.Key(&r) == upstream {
				k.m.SetBreakerState(r.ID, st)
			}
		}
	}
	if k.breaker, err = breaker.New(c.settings.Breaker, breaker.WithLogger(c.log), breaker.OnStateChange(onChange)); err != nil {
		return nil, err
	}
	if k.adminLogins, err = newLoginLimiter(metrics.AuthAdmin, c.settings.AuthThrottle, c.log, k.m); err != nil {
		return nil, err
	}
	if c.role == "server" {
		if k.tunnelLogins, err = newLoginLimiter(metrics.AuthTunnel, c.settings.AuthThrottle, c.log, k.m); err != nil {
			return nil, err
		}
	}
	k.admin, err = admin.New(c.settings.Admin, append([]admin.Option{admin.WithMetrics(k.m.Handler()), admin.WithReady(c.ready),
		admin.WithConfig(c.view), admin.WithLogger(c.log), admin.WithThrottle(adminThrottle{k.adminLogins})}, c.admin...)...)
	if err != nil {
		return nil, err
	}
	if k.rules, err = newRuleStages(c.modules, c.rulesIn, tracerOption(c.tracer)); err != nil {
		return nil, err
	}
	return k, nil
}

// start starts the admin listener, logging where it listens.
func (k *kit) start(ctx context.Context) error {
	return k.admin.Start(ctx) // the admin server logs where it listens
}

// stop stops the admin listener: last, so that the drain can be watched.
// The login throttles then log the counts they hold and stop their timers.
func (k *kit) stop() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := k.admin.Shutdown(ctx)
	k.adminLogins.Close()
	k.tunnelLogins.Close()
	return err
}
