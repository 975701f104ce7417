package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"slices"
	"sync"

	"github.com/quic-go/quic-go"

	"github.com/qtunnel/qtunnel/admin"
	"github.com/qtunnel/qtunnel/config"
	"github.com/qtunnel/qtunnel/metrics"
	"github.com/qtunnel/qtunnel/rules"
	"github.com/qtunnel/qtunnel/stages/egress"
)

// side is what a Server and a Client are both made of: the kit (kit.go),
// the upstream pool, the two chains, the rules' listeners and the ingress
// settings they share, and the stream server; and the steps of their
// lifecycles that are the same on both: assemble (NewServer, NewClient),
// start (Server.Start, Client.Run), graceContext, and release (the end of
// Server.Shutdown and of Client.shutdown).
//
// What is each side's own stays in server.go and client.go: the tunnel (a
// server's listener and its many connections, a client's one dialled
// connection), the server's public listeners, and the drain. Both drains
// follow the protocol drain.go describes, step for step in its order, but
// each step acts on what only that side has, so each is written out where
// it happens.
type side struct {
	// Set by the side's constructor, before assemble.
	common *config.Common // the side's settings as it started (a reload changes the chains': spec)
	o      options
	log    *slog.Logger

	// Made by assemble.
	kit       *kit
	pool      *egress.Pool
	spec      chainSpec // what chains were built from: a reload builds new ones from it with its settings
	chains    *chains
	ingress   *ingressConfig // what the side's ingress listeners share
	listeners *listenerSet   // the rules' listeners: a server's reverse TCP ones, a client's forward ones
	recent    *recentLog     // the last warnings and errors, for the dashboard
	liveDone  chan struct{}  // closed by endLive: the admin listener's live streams end
	liveOnce  sync.Once

	streams *streamServer // made by start
}

// sideConfig is what differs between a server's side and a client's, for
// assemble.
type sideConfig struct {
	role  string       // "server" or "client" (kitConfig.role)
	store *rules.Store // the side's rule table

	// ingressDir is the direction of the rules whose requests enter this
	// side's listeners (rules.Reverse on a server), whose own stages it
	// runs; egressDir is the other one, which it serves as the egress side.
	ingressDir, egressDir rules.Direction

	conns         egress.ConnSource          // the tunnel connection a rule's requests go out on
	connStats     func() []metrics.ConnStats // the tunnel connections, for /metrics
	ready         func() error               // /readyz; nil: always ready
	view          func() any                 // /config; nil: none
	admin         []admin.Option             // more for the admin listener (the server's rules API)
	listenerCerts []tls.Certificate          // for listen_tls rules (a client's forward_tls); none: refused
	sources       func() map[string]string   // where each rule comes from, for the dashboard; nil: not said
	inspector     bool                       // the client's request inspector is on
}

// assemble builds the side's kit, pool, chains and listener set from its
// settings and c. It binds nothing and starts no goroutine.
func (sd *side) assemble(ctx context.Context, c sideConfig) error {
	pc := sd.common.Egress
	pc.Logger = sd.log
	var err error
	if sd.pool, err = egress.NewPool(pc); err != nil {
		return err
	}
	// The dashboard shows the side's last warnings and errors.
	sd.recent = newRecentLog(recentErrors)
	sd.log = slog.New(sd.recent.wrap(sd.log.Handler()))
	sd.liveDone = make(chan struct{})
	dash := &dashboardSource{role: c.role, view: c.view, sources: c.sources, m: func() *metrics.Metrics { return sd.kit.m },
		conns: c.connStats, recent: sd.recent, insp: c.inspector}
	adminOpts := append(slices.Clone(c.admin), dash.handlers(sd.liveDone)...)
	sd.kit, err = newKit(kitConfig{role: c.role, settings: sd.common, store: c.store, log: sd.log,
		ready: c.ready, view: c.view, admin: adminOpts, modules: sd.o.modules, rulesIn: c.ingressDir, tracer: sd.o.tracer})
	if err != nil {
		return err
	}
	sd.kit.m.SetConnStats(c.connStats)
	sd.kit.m.SetPoolStats(poolStats(sd.pool))
	sd.spec = chainSpec{settings: sd.common, store: c.store, egressDir: c.egressDir, conns: c.conns, pool: sd.pool, kit: sd.kit, opts: sd.o}
	if sd.chains, err = buildChains(ctx, sd.spec); err != nil {
		return err
	}
	sd.ingress = &ingressConfig{chain: &sd.chains.ingress, lim: sd.common.Limits, tracer: sd.o.tracer, log: sd.log,
		access: &sd.kit.access, abuse: abuseReporter(sd.kit.m, sd.log), metrics: sd.kit.m}
	sd.listeners = newListenerSet(listenerSetConfig{ingress: sd.ingress, certs: c.listenerCerts, grace: sd.common.ShutdownGrace})
	return nil
}

// start makes the stream server, whose worker pool is the first thing of
// the side that runs goroutines (a side that never starts owns none), and
// starts the admin listener. When it fails, neither is left running.
func (sd *side) start(ctx context.Context) error {
	lim := sd.common.Limits
	var err error
	sd.streams, err = newStreamServer(streamServerConfig{chain: &sd.chains.egress, maxStreams: lim.MaxConcurrentStreams,
		maxFrame: int(lim.MaxFrameSize), tracer: sd.o.tracer, metrics: sd.kit.m, log: sd.log, access: &sd.kit.access})
	if err != nil {
		return err
	}
	if err := sd.kit.start(ctx); err != nil {
		_ = sd.streams.close(ctx)
		return err
	}
	return nil
}

// graceContext is the context a shutdown works within: the grace period
// (shutdown_grace) from now, whether or not parent is done.
func (sd *side) graceContext(parent context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(parent), sd.common.ShutdownGrace)
}

// release closes what the side's requests ran on, once none runs any more
// (listeners, stream workers and connections are done), in this order: the
// upstream pool, the chains, the rules' own stages, then the kit, whose
// admin listener goes last so that the drain can be watched to its end.
// ctx bounds the closing of the chains and stages.
func (sd *side) release(ctx context.Context) error {
	sd.endLive()
	sd.pool.Close()
	chainsErr := sd.chains.close(ctx)
	stagesErr := sd.kit.rules.close(ctx)
	return errors.Join(chainsErr, stagesErr, sd.kit.stop())
}

// endLive ends the live streams of the admin listener (the dashboard's),
// which would otherwise keep its shutdown waiting.
func (sd *side) endLive() {
	sd.liveOnce.Do(func() {
		if sd.liveDone != nil {
			close(sd.liveDone)
		}
	})
}

// poolStats reports p's connections at each scrape (qtunnel_egress_pool_*).
func poolStats(p *egress.Pool) func() []metrics.PoolStats {
	return func() []metrics.PoolStats {
		var out []metrics.PoolStats
		p.Stats(func(rule string, idle, active int, dials uint64) {
			out = append(out, metrics.PoolStats{Rule: rule, Idle: idle, Active: active, Dials: dials})
		})
		return out
	}
}

// connStats maps quic-go's statistics of a tunnel connection for the
// metrics (sideConfig.connStats).
func connStats(client string, qc *quic.Conn) metrics.ConnStats {
	st := qc.ConnectionStats()
	return metrics.ConnStats{ClientID: client, SmoothedRTT: st.SmoothedRTT, PacketsLost: st.PacketsLost,
		BytesSent: st.BytesSent, BytesReceived: st.BytesReceived, CongestionWindow: st.CongestionWindow}
}
