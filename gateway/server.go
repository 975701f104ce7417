package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"golang.org/x/time/rate"

	"github.com/qtunnel/qtunnel/admin"
	"github.com/qtunnel/qtunnel/codec"
	"github.com/qtunnel/qtunnel/config"
	"github.com/qtunnel/qtunnel/control"
	"github.com/qtunnel/qtunnel/metrics"
	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/rules"
	"github.com/qtunnel/qtunnel/stages/egress"
	"github.com/qtunnel/qtunnel/transport"
)

// Server is the server side: it accepts tunnel connections from clients,
// serves reverse rules on its public listener and forward rules' streams
// towards upstreams near it.
type Server struct {
	side // kit, pool, chains, stream server, reverse TCP listeners (side.go)
	cfg  config.Server
	cert tls.Certificate
	pin  string

	store    *control.RuleStore
	tokens   atomic.Pointer[control.Tokens]
	reloadMu sync.Mutex // one reload at a time
	sessions control.Registry
	serving  atomic.Bool // between Start and Shutdown

	api     *rulesAPI
	claims  atomic.Pointer[map[string]*rules.Claims] // what each client may declare (declare.go)
	running atomic.Pointer[config.Server]            // the configuration in force: the start's, with a reload's live settings
	pending atomic.Pointer[[]string]                 // settings changed in the file that need a restart

	tunnelLn  *transport.Listener
	public    []ingressListener // public_http, then public_https if set
	publicTLS []tls.Certificate

	mu    sync.Mutex
	conns map[*serverConn]struct{}
	byID  map[string]*serverConn // the tracked connection of each client id
	wg    sync.WaitGroup         // accept loop, connection handlers, public server, sweeper
	stop  context.CancelFunc
	done  chan struct{}
}

// serverConn is one live client connection.
type serverConn struct {
	qc       *quic.Conn
	info     *pipeline.Conn
	peer     *control.ServerPeer
	session  *control.Session
	changed  chan struct{}  // the rules changed: push (capacity 1, never blocks)
	declares *rate.Limiter  // the client's DECLAREs (declare.go)
	drains   sync.WaitGroup // the drain started by the client's GOAWAY

	// syncMu makes one sync at a time and guards what the client holds
	// as far as the server knows: its hello's rules, then what was sent
	// last.
	syncMu      sync.Mutex
	sentVersion uint64
	sentHash    []byte
}

// NewServer fills cfg's defaults (SetDefaults: zero settings take their
// documented default) and checks it (Validate: every problem at once),
// makes or loads the server identity, and builds the rule table and the
// chains. It binds nothing; Start does.
func NewServer(cfg config.Server, opts ...Option) (*Server, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	o := buildOptions(opts)
	s := &Server{cfg: cfg, conns: map[*serverConn]struct{}{}, byID: map[string]*serverConn{}, done: make(chan struct{})}
	s.side = side{common: &s.cfg.Common, o: o, log: o.log.With("side", "server")}
	var err error
	if cfg.TLS.CertFile != "" {
		s.cert, err = transport.LoadCertificate(cfg.TLS.CertFile, cfg.TLS.KeyFile)
	} else {
		s.cert, err = s.generatedIdentity() // identity.go
	}
	if err != nil {
		return nil, err
	}
	if s.pin, err = transport.CertificatePin(s.cert); err != nil {
		return nil, err
	}
	tokens, err := tokensOf(cfg.Clients)
	if err != nil {
		return nil, err
	}
	s.tokens.Store(&tokens)
	claims := claimsOf(cfg.Clients)
	s.claims.Store(&claims)
	built := time.Now()
	if s.store, err = control.NewRuleStore(cfg.Rules, 0); err != nil {
		return nil, err
	}
	if err := s.keepAPIRules(); err != nil {
		return nil, err
	}
	t := s.store.Table()
	took := time.Since(built) // the first rule set's apply, for the metrics
	if s.publicTLS, err = loadCerts(cfg.PublicTLS); err != nil {
		return nil, err
	}
	conns := egress.ConnSourceFunc(func(r *rules.Rule) (*pipeline.Conn, error) {
		if c := s.sessions.Conn(r.Client); c != nil {
			return c, nil
		}
		return nil, &pipeline.Reject{Status: http.StatusBadGateway, Message: fmt.Sprintf("client %q of rule %q is not connected", r.Client, r.ID), RetryAfter: time.Second}
	})
	ctx, cancel := context.WithTimeout(context.Background(), cfg.Limits.HandshakeTimeout)
	defer cancel()
	api := &rulesAPI{store: s.store}
	api.writable.Store(cfg.Admin.Token != "")
	s.api = api
	s.running.Store(&cfg)
	var apiOpts []admin.Option
	api.register(func(pattern string, h http.Handler) { apiOpts = append(apiOpts, admin.WithHandler(pattern, h)) })
	err = s.assemble(ctx, sideConfig{role: "server", store: s.store.Store(), ingressDir: rules.Reverse, egressDir: rules.Forward,
		conns: conns, connStats: s.connStats, ready: s.ready, view: s.view, admin: apiOpts, sources: s.ruleSources})
	if err != nil {
		return nil, err
	}
	s.kit.m.ConfigApplied(t.Version(), took, nil)
	// The rules' own stages are built with the rules: a stage list that
	// does not build stops the start here.
	set, err := s.kit.rules.prepare(ctx, s.store.Table())
	if err != nil {
		_ = s.chains.close(ctx)
		return nil, err
	}
	s.kit.rules.commit(set)
	return s, nil
}

func listenHosts(addr string) []string {
	host, _, _ := net.SplitHostPort(addr)
	if host == "" || host == "0.0.0.0" || host == "::" {
		return []string{"localhost", "127.0.0.1", "::1"}
	}
	return []string{host}
}

// Pin returns the server key's pin, for clients' server_pin.
func (s *Server) Pin() string { return s.pin }

// TunnelAddr returns the bound tunnel (UDP) address; valid after Start.
func (s *Server) TunnelAddr() net.Addr { return s.tunnelLn.Addr() }

// PublicAddr returns the bound public HTTP address; valid after Start.
func (s *Server) PublicAddr() net.Addr { return s.public[0].addr() }

// PublicTLSAddr returns the bound public HTTPS address, or nil if there is
// none; valid after Start.
func (s *Server) PublicTLSAddr() net.Addr {
	if len(s.public) < 2 {
		return nil
	}
	return s.public[1].addr()
}

// AdminAddr returns the bound admin listener's address, or nil when it is
// off; valid after Start.
func (s *Server) AdminAddr() net.Addr { return s.kit.admin.Addr() }

// ListenerAddr returns the bound address of a reverse TCP rule's listener
// configured as listen, or nil.
func (s *Server) ListenerAddr(listen string) net.Addr { return s.listeners.addr(listen) }

// Start binds the tunnel and public listeners and starts serving. It
// returns once both are bound.
func (s *Server) Start(ctx context.Context) error {
	ln, err := transport.Listen(s.cfg.Listen, transport.ServerTLS(s.cert), s.cfg.QUIC)
	if err != nil {
		return err
	}
	abandon := func() {
		_ = ln.Close()
		for _, l := range s.public {
			l.abandon()
		}
		s.public = nil
	}
	pub, err := listenTCP(s.cfg.PublicHTTP)
	if err != nil {
		abandon()
		return fmt.Errorf("public listener: %w", err)
	}
	s.public = append(s.public, newHTTPListener(pub, "", nil, s.ingress))
	if s.cfg.PublicHTTPS != "" {
		pubTLS, err := listenTCP(s.cfg.PublicHTTPS)
		if err != nil {
			abandon()
			return fmt.Errorf("public HTTPS listener: %w", err)
		}
		s.public = append(s.public, newHTTPListener(pubTLS, "", s.publicTLS, s.ingress))
	}
	pend, err := s.listeners.prepare(s.store.Table().Listeners(rules.Reverse))
	if err != nil {
		abandon()
		return err
	}
	// Forward rules' balancers and health checks start with the server.
	s.pool.Warm(ctx, s.store.Table().Rules(), rules.Forward)
	// The stream workers' pool is the first thing that runs goroutines:
	// made here (side.start), a server that never starts owns none.
	if err := s.side.start(ctx); err != nil {
		abandon()
		s.listeners.closeBound(pend)
		return err
	}
	s.tunnelLn = ln
	s.serving.Store(true)
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.stop = cancel
	s.wg.Go(func() { s.acceptLoop(runCtx) })
	for _, l := range s.public {
		s.wg.Go(l.serve)
	}
	s.listeners.commit(pend)
	s.store.OnChange(s.prepareRules)
	s.wg.Go(func() { s.sweep(runCtx) })
	if s.o.configFile != "" {
		s.wg.Go(func() { s.watchConfig(runCtx) })
	}
	attrs := []any{"tunnel", ln.Addr().String(), "public_http", pub.Addr().String()}
	if a := s.PublicTLSAddr(); a != nil {
		attrs = append(attrs, "public_https", a.String())
	}
	attrs = append(attrs, "pin", s.pin, "rules", s.store.Table().Len(), "clients", len(*s.tokens.Load()), "tcp_listeners", s.listeners.count())
	s.log.Info("server started", attrs...)
	return nil
}

func (s *Server) acceptLoop(ctx context.Context) {
	for {
		qc, err := s.tunnelLn.Accept(ctx)
		if err != nil {
			// The listener only fails when it is closed (or ctx ends):
			// not an error to retry.
			return
		}
		s.wg.Go(func() { s.handleConn(qc) })
	}
}

// handleConn runs one client connection: handshake on the control stream,
// session, snapshot, then the request streams until the connection ends.
func (s *Server) handleConn(qc *quic.Conn) {
	ctx := qc.Context()
	remote := qc.RemoteAddr().String()
	hsCtx, cancel := context.WithTimeout(ctx, s.cfg.Limits.HandshakeTimeout)
	cs, err := qc.AcceptStream(hsCtx)
	cancel()
	if err != nil {
		s.log.Debug("no control stream", "remote", remote, "err", err)
		_ = qc.CloseWithError(quic.ApplicationErrorCode(codec.ConnProtocol), "no control stream")
		return
	}
	tokens := *s.tokens.Load()
	login := newTunnelLogin(s.kit.tunnelLogins, tokens, qc.RemoteAddr())
	peer, err := control.Handshake(ctx, cs, tokens, s.cfg.Limits.HandshakeTimeout, control.WithGate(login.gate))
	login.done(err)
	if login.throttled() {
		// Refused unchecked: the login throttle logs it, once per window.
		s.log.Debug("client login throttled", "remote", remote, "client", login.attempt.ID, "retry_in", login.wait)
		_ = qc.CloseWithError(quic.ApplicationErrorCode(codec.ConnThrottled), control.ThrottledReason(login.wait))
		return
	}
	if err != nil {
		code, reason, level := codec.ConnProtocol, "control handshake failed", slog.LevelWarn
		if errors.Is(err, control.ErrUnauthenticated) {
			// The login throttle logs failed logins, once per window.
			code, reason, level = codec.ConnAuthFailed, control.RejectReason, slog.LevelDebug
		}
		s.log.Log(context.Background(), level, "client refused", "remote", remote, "err", err)
		// Give the REJECT a moment to arrive: the client hangs up when it
		// reads it. The close carries the reason too, in case it does not.
		_ = cs.Close()
		wait := time.NewTimer(time.Second)
		select {
		case <-ctx.Done():
		case <-wait.C:
		}
		wait.Stop()
		_ = qc.CloseWithError(quic.ApplicationErrorCode(code), reason)
		return
	}
	id := peer.Hello.ClientID
	if old := s.connOf(id); old != nil && old.peer.Alive(ctx, duplicateProbe) {
		// Two live clients with one id would push each other out for
		// ever: the one that was there first keeps it.
		from := old.qc.RemoteAddr().String()
		s.log.Warn("refused a second connection for a client id in use", "client", id, "remote", remote, "connected_from", from)
		_ = qc.CloseWithError(quic.ApplicationErrorCode(codec.ConnDuplicate),
			fmt.Sprintf("client id %s is already connected from %s; two clients cannot share an id", id, from))
		return
	}
	info := &pipeline.Conn{
		ClientID:   id,
		RemoteAddr: qc.RemoteAddr(),
		Opener:     transport.Opener{C: qc, Wait: s.cfg.Limits.StreamOpenTimeout},
		Close: func(code uint64, reason string) error {
			return qc.CloseWithError(quic.ApplicationErrorCode(code), reason)
		},
	}
	session, resumed, replaced := s.sessions.Attach(id, info, time.Now())
	if replaced != nil {
		s.log.Info("client reconnected; closing its previous connection", "client", id)
		_ = replaced.Close(codec.ConnReplaced, "replaced by a newer connection")
	}
	sc := &serverConn{qc: qc, info: info, peer: peer, session: session, changed: make(chan struct{}, 1),
		sentVersion: peer.Hello.AppliedVersion, sentHash: peer.Hello.Hash,
		declares: rate.NewLimiter(rate.Every(declareEvery), declareBurst)}
	if !s.track(sc) {
		_ = qc.CloseWithError(quic.ApplicationErrorCode(codec.ConnNormal), "server shutting down")
		s.sessions.Detach(session, info, time.Now())
		return
	}
	defer s.untrack(sc)

	ack := &codec.HelloAck{SessionID: session.ID, Resumed: resumed,
		HashCheckInterval: s.cfg.Sync.HashCheckInterval, FullSyncInterval: s.cfg.Sync.FullSyncInterval}
	err = peer.Accept(ack)
	if err == nil {
		err = s.syncClient(sc, false)
	}
	if err != nil {
		s.log.Warn("client handshake failed", "client", id, "err", err)
		_ = qc.CloseWithError(quic.ApplicationErrorCode(codec.ConnInternal), "handshake failed")
		s.sessions.Detach(session, info, time.Now())
		return
	}
	s.log.Info("client connected", "client", id, "remote", remote, "session", session.ID, "resumed", resumed)

	var streams sync.WaitGroup
	streams.Go(func() { s.streams.serve(qc, info) })
	streams.Go(func() { s.push(ctx, sc) })
	err = peer.Run(ctx, &serverEvents{s: s, conn: sc})
	// The control stream is the connection's lifeline: once it ends, so
	// does the connection.
	_ = qc.CloseWithError(quic.ApplicationErrorCode(codec.ConnNormal), "control stream closed")
	streams.Wait()
	sc.drains.Wait()
	s.sessions.Detach(session, info, time.Now())
	st := qc.ConnectionStats()
	s.log.Info("client disconnected", "client", id, "remote", remote, "reason", closeReason(qc, err),
		"rtt", st.SmoothedRTT, "packets_sent", st.PacketsSent, "packets_received", st.PacketsReceived,
		"packets_lost", st.PacketsLost, "bytes_sent", st.BytesSent, "bytes_received", st.BytesReceived)
}

func closeReason(qc *quic.Conn, err error) string {
	if cause := context.Cause(qc.Context()); cause != nil {
		return cause.Error()
	}
	if err != nil {
		return err.Error()
	}
	return "closed"
}

type serverEvents struct {
	s    *Server
	conn *serverConn
}

func (e *serverEvents) Applied(m *codec.Applied) {
	prev := e.conn.session.Applied()
	now := control.AppliedState{Version: m.Version, Hash: fmt.Sprintf("%x", m.Hash), Error: m.Error, At: time.Now()}
	e.conn.session.SetApplied(now)
	e.conn.session.Touch(now.At)
	if m.Error != "" {
		e.s.log.Warn("client refused rules", "client", e.conn.info.ClientID, "version", m.Version, "reason", m.Error)
		return
	}
	// A periodic full sync re-applies the same version: not a change.
	level := slog.LevelInfo
	if prev != nil && prev.Version == now.Version && prev.Hash == now.Hash {
		level = slog.LevelDebug
	}
	e.s.log.Log(context.Background(), level, "client applied rules", "client", e.conn.info.ClientID, "version", m.Version)
}

// HashCheck answers the client's periodic check: a mismatch, or a check
// without a hash (the client's periodic full sync), gets a snapshot.
func (e *serverEvents) HashCheck(m *codec.HashCheck) {
	e.conn.session.Touch(time.Now())
	id := e.conn.info.ClientID
	if m.Hash != nil {
		t := e.s.store.Table()
		if want := rules.Hash(t.ForClient(id)); string(want[:]) == string(m.Hash) {
			return
		}
		e.s.log.Info("client rules out of date; sending a snapshot", "client", id, "client_version", m.Version, "version", t.Version())
	}
	if err := e.s.syncClient(e.conn, true); err != nil {
		e.s.log.Debug("snapshot send failed", "client", id, "err", err)
	}
}

func (e *serverEvents) GoAway(reason string) {
	e.conn.info.Draining.Store(true)
	e.s.log.Info("client is draining", "client", e.conn.info.ClientID, "reason", reason)
	// A client that leaves takes the rules it declared with it: new
	// requests for them are not sent to a client on its way out.
	e.s.undeclare(e.conn.info.ClientID, "the client is leaving")
	// No new streams go to it; once the ones in flight have been read
	// whole, the connection is closed from here (see drain.go).
	e.conn.drains.Go(func() { closeWhenIdle(e.conn.qc.Context(), e.conn.info, e.s.cfg.ShutdownGrace) })
}

// duplicateProbe is how long a client's live connection has to answer a
// PING before a new connection with its id takes over.
const duplicateProbe = time.Second

// connOf returns the live connection of client id, or nil.
func (s *Server) connOf(id string) *serverConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sc := s.byID[id]; sc != nil && sc.qc.Context().Err() == nil {
		return sc
	}
	return nil
}

func (s *Server) track(sc *serverConn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conns == nil {
		return false // shutting down
	}
	s.conns[sc] = struct{}{}
	s.byID[sc.info.ClientID] = sc
	s.kit.m.ConnOpened()
	s.kit.m.SetSessions(len(s.sessions.Sessions()))
	return true
}

func (s *Server) untrack(sc *serverConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.conns, sc)
	if s.byID[sc.info.ClientID] == sc {
		delete(s.byID, sc.info.ClientID)
	}
	s.kit.m.ConnClosed()
}

// connStats reports every live connection for the metrics.
func (s *Server) connStats() []metrics.ConnStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]metrics.ConnStats, 0, len(s.conns))
	for sc := range s.conns {
		out = append(out, connStats(sc.info.ClientID, sc.qc))
	}
	return out
}

// ready is /readyz: serving, with at least one client connected (reverse
// rules need one to answer anything).
func (s *Server) ready() error {
	if !s.serving.Load() {
		return notReady("not serving (starting or shutting down)")
	}
	s.mu.Lock()
	n := len(s.conns)
	s.mu.Unlock()
	if n == 0 {
		return notReady("no client is connected")
	}
	return nil
}

// sessionView is a client's session as /config shows it.
type sessionView struct {
	Client         string    `json:"client"`
	Session        string    `json:"session"`
	Connected      bool      `json:"connected"`
	Created        time.Time `json:"created"`
	LastSeen       time.Time `json:"last_seen"`
	AppliedVersion uint64    `json:"applied_version,omitempty"`
	AppliedHash    string    `json:"applied_hash,omitempty"`
	AppliedAt      time.Time `json:"applied_at,omitzero"`
	// RefusedVersion and RefusedError: the last rule set the client could
	// not apply (the one in force is applied_version), until one applies.
	RefusedVersion uint64    `json:"refused_version,omitempty"`
	RefusedError   string    `json:"refused_error,omitempty"`
	RefusedAt      time.Time `json:"refused_at,omitzero"`
	// RTT is the live connection's smoothed round-trip time.
	RTT string `json:"rtt,omitempty"`
}

// view is /config: the rules in force and each client's sessions. Tokens
// and token hashes are never shown.
func (s *Server) view() any {
	v := struct {
		tableView
		Sessions []sessionView `json:"sessions"`
		// PendingRestart: settings the configuration file changed that
		// take effect at the next restart.
		PendingRestart []string `json:"pending_restart,omitempty"`
	}{tableView: viewOf(s.store.Table()), Sessions: []sessionView{}}
	if p := s.pending.Load(); p != nil {
		v.PendingRestart = *p
	}
	for _, ss := range s.sessions.Sessions() {
		sv := sessionView{Client: ss.ClientID, Session: ss.ID, Connected: ss.Conn() != nil, Created: ss.Created, LastSeen: ss.LastSeen()}
		if a := ss.Applied(); a != nil {
			sv.AppliedVersion, sv.AppliedHash, sv.AppliedAt = a.Version, a.Hash, a.At
		}
		if r := ss.Refused(); r != nil {
			sv.RefusedVersion, sv.RefusedError, sv.RefusedAt = r.Version, r.Error, r.At
		}
		if sc := s.connOf(ss.ClientID); sc != nil {
			sv.RTT = sc.qc.ConnectionStats().SmoothedRTT.Round(10 * time.Microsecond).String()
		}
		v.Sessions = append(v.Sessions, sv)
	}
	return v
}

// sweep removes sessions idle past their TTL (S7).
func (s *Server) sweep(ctx context.Context) {
	t := time.NewTicker(s.cfg.Sessions.SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			if gone := s.sessions.Sweep(now, s.cfg.Sessions.TTL); len(gone) > 0 {
				s.log.Info("sessions expired", "clients", gone)
				for _, c := range gone {
					s.undeclare(c, "its session expired")
				}
				s.kit.m.SetSessions(len(s.sessions.Sessions()))
			}
		}
	}
}

// ruleSources says where each rule in force comes from (file, api or
// declared), for the dashboard.
func (s *Server) ruleSources() map[string]string { return s.store.Sources() }

// Sessions returns the server's session registry.
func (s *Server) Sessions() *control.Registry { return &s.sessions }

// Shutdown stops the server gracefully (S1): it stops accepting connections
// and requests, lets requests in flight finish until ctx is done, tells
// clients to drain, closes every connection with a clean code, and waits for
// every goroutine it started. If ctx ends first, what is left is closed at
// once and ctx's error returned.
func (s *Server) Shutdown(ctx context.Context) error {
	var errs []error
	if s.tunnelLn == nil {
		return errors.New("server not started")
	}
	s.log.Info("server shutting down")
	s.serving.Store(false) // /readyz says so at once
	s.streams.refuse()     // forward requests not yet started: 503, retry
	_ = s.tunnelLn.StopAccepting()
	// Reverse requests in flight use client connections: finish them first.
	var lwg sync.WaitGroup
	for _, l := range s.public {
		lwg.Go(func() {
			if err := l.stop(ctx); err != nil {
				s.log.Warn("public listener did not drain in time", "listen", l.addr().String(), "err", err)
			}
		})
	}
	lwg.Go(func() { s.listeners.shutdown(ctx) })
	lwg.Wait()
	s.mu.Lock()
	conns := s.conns
	s.conns = nil
	s.mu.Unlock()
	for sc := range conns {
		if err := sc.peer.GoAway("server shutting down"); err != nil {
			s.log.Debug("goaway failed", "client", sc.info.ClientID, "err", err)
		}
	}
	// Forward requests in flight run on the stream workers.
	if err := s.streams.close(ctx); err != nil {
		errs = append(errs, fmt.Errorf("streams in flight: %w", err))
	}
	// The clients close their connections once the forward answers have
	// reached them whole (see drain.go); what is left at the end of the
	// grace is closed from here.
	for sc := range conns {
		waitClosed(ctx, sc.qc.Context().Done())
	}
	for sc := range conns {
		_ = sc.qc.CloseWithError(quic.ApplicationErrorCode(codec.ConnNormal), "server shutdown")
	}
	s.streams.wait()
	s.stop()
	waited := make(chan struct{})
	go func() {
		s.wg.Wait()
		// Upgraded connections outlive their listener's shutdown; with the
		// tunnel closed under them they end now.
		for _, l := range s.public {
			l.wait()
		}
		s.listeners.wait()
		close(waited)
	}()
	select {
	case <-waited:
	case <-ctx.Done():
		errs = append(errs, fmt.Errorf("waiting for connections: %w", ctx.Err()))
		<-waited // every goroutine above ends once its connection is closed
	}
	if err := s.tunnelLn.Close(); err != nil {
		errs = append(errs, err)
	}
	closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	if err := s.release(closeCtx); err != nil {
		errs = append(errs, err)
	}
	close(s.done)
	s.log.Info("server stopped")
	return errors.Join(errs...)
}

// Run starts the server and serves until ctx is done, then shuts down
// within the configured grace period.
func (s *Server) Run(ctx context.Context) error {
	if err := s.Start(ctx); err != nil {
		return err
	}
	<-ctx.Done()
	sctx, cancel := s.graceContext(ctx)
	defer cancel()
	return s.Shutdown(sctx)
}
