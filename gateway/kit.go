package gateway

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/qtunnel/qtunnel/admin"
	"github.com/qtunnel/qtunnel/config"
	"github.com/qtunnel/qtunnel/internal/authlimit"
	"github.com/qtunnel/qtunnel/metrics"
	"github.com/qtunnel/qtunnel/rules"
	"github.com/qtunnel/qtunnel/stages/breaker"
	"github.com/qtunnel/qtunnel/stages/egress"
)

// kit is what both sides set up the same way: metrics,
// the upstream breaker, the admin listener and the login throttles.
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

// newKit builds the kit of one side. store is the side's rule table, used to
// label breaker states by rule.
func newKit(role string, c *config.Common, store *rules.Store, log *slog.Logger, ready func() error, view func() any, extra ...admin.Option) (*kit, error) {
	k := &kit{m: metrics.New(role)}
	k.access.Store(c.Log.Access)
	var err error
	k.log = log
	onChange := func(upstream string, _, to breaker.State) {
		st := metrics.BreakerClosed
		switch to {
		case breaker.Open:
			st = metrics.BreakerOpen
		case breaker.HalfOpen:
			st = metrics.BreakerHalfOpen
		}
		for _, r := range store.Load().Rules() {
			if breaker.Key(&r) == upstream {
				k.m.SetBreakerState(r.ID, st)
			}
		}
	}
	if k.breaker, err = breaker.New(c.Breaker, breaker.WithLogger(log), breaker.OnStateChange(onChange)); err != nil {
		return nil, err
	}
	if k.adminLogins, err = newLoginLimiter(metrics.AuthAdmin, c.AuthThrottle, log, k.m); err != nil {
		return nil, err
	}
	if role == "server" {
		if k.tunnelLogins, err = newLoginLimiter(metrics.AuthTunnel, c.AuthThrottle, log, k.m); err != nil {
			return nil, err
		}
	}
	k.admin, err = admin.New(c.Admin, append([]admin.Option{admin.WithMetrics(k.m.Handler()), admin.WithReady(ready),
		admin.WithConfig(view), admin.WithLogger(log), admin.WithThrottle(adminThrottle{k.adminLogins})}, extra...)...)
	if err != nil {
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

// watchPool makes the side's egress pool report its connections at each
// scrape (qtunnel_egress_pool_*).
func (k *kit) watchPool(p *egress.Pool) {
	k.m.SetPoolStats(func() []metrics.PoolStats {
		var out []metrics.PoolStats
		p.Stats(func(rule string, idle, active int, dials uint64) {
			out = append(out, metrics.PoolStats{Rule: rule, Idle: idle, Active: active, Dials: dials})
		})
		return out
	})
}

// connStats maps quic-go's statistics of a connection for the metrics.
func connStats(client string, qc *quic.Conn) metrics.ConnStats {
	st := qc.ConnectionStats()
	return metrics.ConnStats{ClientID: client, SmoothedRTT: st.SmoothedRTT, PacketsLost: st.PacketsLost,
		BytesSent: st.BytesSent, BytesReceived: st.BytesReceived, CongestionWindow: st.CongestionWindow}
}

// ruleView is a rule as /config shows it.
type ruleView struct {
	rules.Rule
	// Source is where a server's rule comes from: "file" or "api" (GET
	// /rules only).
	Source string `json:"source,omitempty"`
}

// tableView is what /config shows of a rule table.
type tableView struct {
	Version uint64     `json:"version"`
	Hash    string     `json:"hash"`
	Rules   []ruleView `json:"rules"`
}

func viewOf(t *rules.Table) tableView {
	v := tableView{Version: t.Version(), Hash: t.HashHex(), Rules: []ruleView{}}
	for _, r := range t.Rules() {
		v.Rules = append(v.Rules, ruleView{Rule: r})
	}
	return v
}

// notReady is the reason /readyz gives.
func notReady(format string, args ...any) error { return fmt.Errorf(format, args...) }
