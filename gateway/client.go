package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/qtunnel/qtunnel/codec"
	"github.com/qtunnel/qtunnel/config"
	"github.com/qtunnel/qtunnel/control"
	"github.com/qtunnel/qtunnel/metrics"
	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/rules"
	"github.com/qtunnel/qtunnel/stages/egress"
	"github.com/qtunnel/qtunnel/stages/inspect"
	"github.com/qtunnel/qtunnel/transport"
)

// Client is the client side: it keeps a tunnel connection to the server,
// serves forward rules on local listeners and reverse rules' streams towards
// upstreams near it.
type Client struct {
	side    // kit, pool, chains, stream server, forward listeners (side.go)
	cfg     config.Client
	token   string
	tlsConf *tls.Config

	rules rules.Store

	conn     atomic.Pointer[pipeline.Conn] // the live connection, nil while down
	session  atomic.Pointer[clientSession] // the live session, for its statistics
	connects atomic.Int64

	applyMu sync.Mutex // one apply at a time

	ready     chan struct{} // closed when the first rules are applied
	readyOnce sync.Once
	applied   atomic.Uint64
	refused   atomic.Pointer[refusal] // the last rule set that could not be applied, until one is
	declared  declarations            // the server's answer to config.Declare (clientdeclare.go)
	insp      *inspect.Inspector      // the request inspector, or nil (inspect.go)
}

// NewClient fills cfg's defaults (SetDefaults), checks it (Validate) and
// builds the client. It connects to nothing; Run does.
func NewClient(cfg config.Client, opts ...Option) (*Client, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	o := buildOptions(opts)
	c := &Client{cfg: cfg, ready: make(chan struct{})}
	var edits []pipeline.Edit
	if c.insp, edits = newInspector(cfg.Inspect); c.insp != nil {
		// First: the options' edits may name stages relative to it.
		o.ingressEdits = append(slices.Clone(edits), o.ingressEdits...)
		o.egressEdits = append(slices.Clone(edits), o.egressEdits...)
	}
	c.side = side{common: &c.cfg.Common, o: o, log: o.log.With("side", "client", "client", cfg.ID)}
	var err error
	if c.token, err = cfg.ReadToken(); err != nil {
		return nil, err
	}
	c.tlsConf, err = transport.ClientTLS(transport.ClientTLSOptions{ServerName: cfg.ServerName, CAFile: cfg.ServerCAFile, Pin: cfg.ServerPin})
	if err != nil {
		return nil, err
	}
	conns := egress.ConnSourceFunc(func(*rules.Rule) (*pipeline.Conn, error) {
		if conn := c.conn.Load(); conn != nil {
			return conn, nil
		}
		return nil, &pipeline.Reject{Status: http.StatusServiceUnavailable, Message: "not connected to the tunnel server, retry", RetryAfter: time.Second}
	})
	certs, err := loadCerts(cfg.ForwardTLS)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), cfg.Limits.HandshakeTimeout)
	defer cancel()
	err = c.assemble(ctx, sideConfig{role: "client", store: &c.rules, ingressDir: rules.Forward, egressDir: rules.Reverse,
		conns: conns, connStats: c.connStats, ready: c.readyErr, view: c.view, listenerCerts: certs, admin: c.inspectorAdmin(),
		inspector: c.insp != nil})
	if err != nil {
		return nil, err
	}
	return c, nil
}

// Ready is closed once the client has applied its first rules.
func (c *Client) Ready() <-chan struct{} { return c.ready }

// AppliedVersion returns the version of the rules in force (0 before any).
func (c *Client) AppliedVersion() uint64 { return c.applied.Load() }

// Rules returns the rule table in force.
func (c *Client) Rules() *rules.Table { return c.rules.Load() }

// Connected reports whether the tunnel connection is up.
func (c *Client) Connected() bool { return c.conn.Load() != nil }

// AdminAddr returns the bound admin listener's address, or nil when it is
// off; valid once Run has started it.
func (c *Client) AdminAddr() net.Addr { return c.kit.admin.Addr() }

// ForwardAddr returns the bound address of the forward listener configured
// as listen (useful when it asked for port 0), or nil.
func (c *Client) ForwardAddr(listen string) net.Addr { return c.listeners.addr(listen) }

// Run connects to the server and serves until ctx is done, reconnecting
// after losses with backoff and full jitter (S4). It then shuts down within
// the grace period: forward listeners stop accepting and drain, the server is
// told to send no more streams, streams in flight finish, and the connection
// closes cleanly. It returns nil after a clean shutdown and an error when
// the server refuses this client, whose credentials cannot improve by
// retrying.
func (c *Client) Run(ctx context.Context) error {
	if err := c.side.start(ctx); err != nil {
		return err
	}
	backoff := transport.Backoff{Base: c.cfg.Reconnect.Base, Max: c.cfg.Reconnect.Max, Stable: c.cfg.Reconnect.Stable}
	var fatal error
	for ctx.Err() == nil {
		sess, err := c.connect(ctx)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			if pm := c.pinMismatch(err); pm != nil { // identity.go
				c.log.Error("server key does not match server_pin; not retrying", "err", pm)
				fatal = pm
				break
			}
			if !retryable(err) {
				c.log.Error("server refused this client; not retrying", "err", err)
				fatal = err
				break
			}
			d := backoff.Next()
			if reason, ok := remoteClose(err, codec.ConnDuplicate); ok {
				// Another client holds this id: retried with backoff, it
				// gets the id once the other one leaves.
				c.log.Warn("server refused this connection: another client is connected with this id; retrying",
					"server", c.cfg.Server, "client", c.cfg.ID, "in", d.Round(time.Millisecond), "reason", reason)
			} else if wait, ok := throttledWait(err); ok {
				// Too many failed logins from this address: retried
				// (unlike a wrong token), once the server checks again.
				d = max(d, wait)
				c.log.Warn("server is throttling logins from this address (too many failed logins); retrying",
					"server", c.cfg.Server, "in", d.Round(time.Millisecond), "attempt", backoff.Attempt(), "err", err)
			} else {
				c.log.Warn("cannot reach server; retrying", "server", c.cfg.Server, "in", d.Round(time.Millisecond), "attempt", backoff.Attempt(), "err", err)
			}
			if !sleep(ctx, d) {
				break
			}
			continue
		}
		up := time.Now()
		select {
		case <-sess.done:
			backoff.Connected(time.Since(up))
			c.log.Warn("connection to server lost", "reason", sess.reason())
			if sess.fatal != nil {
				fatal = sess.fatal
			}
		case <-ctx.Done():
			c.drain(sess)
		}
		if fatal != nil {
			break
		}
	}
	return errors.Join(fatal, c.shutdown())
}

func retryable(err error) bool {
	var rej *control.RejectedError
	if errors.As(err, &rej) {
		return false
	}
	return transport.Retryable(err)
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// clientSession is one live connection to the server.
type clientSession struct {
	drains sync.WaitGroup // the drain started by the server's GOAWAY
	qc     *transport.ClientConn
	info   *pipeline.Conn
	peer   *control.ClientPeer
	done   chan struct{} // closed when the connection and its goroutines are gone
	err    error
	fatal  error
}

func (s *clientSession) reason() string {
	if cause := context.Cause(s.qc.Context()); cause != nil {
		return cause.Error()
	}
	if s.err != nil {
		return s.err.Error()
	}
	return "closed"
}

// connect dials, authenticates and starts serving one connection.
func (c *Client) connect(ctx context.Context) (*clientSession, error) {
	actx, acancel := context.WithTimeout(ctx, c.cfg.Reconnect.AttemptTimeout)
	qc, err := transport.Dial(actx, c.cfg.Server, c.tlsConf, c.cfg.QUIC)
	acancel()
	if err != nil {
		return nil, err
	}
	dctx, cancel := context.WithTimeout(ctx, c.cfg.Limits.HandshakeTimeout)
	defer cancel()
	cs, err := qc.OpenStreamSync(dctx)
	if err != nil {
		_ = qc.Close(codec.ConnInternal, "no control stream")
		return nil, err
	}
	t := c.rules.Load()
	hash := t.Hash()
	hello := &codec.Hello{ClientID: c.cfg.ID, Token: c.token, AppliedVersion: t.Version(), Hash: hash[:]}
	peer, err := control.Hello(dctx, cs, hello, c.cfg.Limits.HandshakeTimeout)
	if err != nil {
		_ = qc.Close(codec.ConnNormal, "handshake failed")
		if code, remote, ok := transport.CloseCode(err); ok && remote && code == codec.ConnAuthFailed {
			// The server closed before its REJECT arrived; its close says why.
			var ae *quic.ApplicationError
			errors.As(err, &ae)
			return nil, &control.RejectedError{Reason: ae.ErrorMessage}
		}
		return nil, err
	}
	if len(c.cfg.Declare) > 0 {
		// Declared again on every connection: the server forgets a
		// client's declared rules when its session ends.
		if err := peer.Declare(c.cfg.Declare); err != nil {
			_ = qc.Close(codec.ConnInternal, "declare failed")
			return nil, err
		}
	}
	info := &pipeline.Conn{
		ClientID:   c.cfg.ID,
		SessionID:  peer.Ack.SessionID,
		RemoteAddr: qc.RemoteAddr(),
		Opener:     transport.Opener{C: qc.Conn, Wait: c.cfg.Limits.StreamOpenTimeout},
		Close: func(code uint64, reason string) error {
			return qc.CloseWithError(quic.ApplicationErrorCode(code), reason)
		},
	}
	// The heartbeat lets a server that restarted at once answer with a
	// stateless reset, which QUIC's small keep-alive packets do not draw.
	// It goes a little faster than the keep-alive, so that it arrives
	// before the server's keep-alive would fire: the server then sends
	// nothing but its acknowledgement.
	peer.Heartbeat = c.cfg.QUIC.KeepAlivePeriod() * 9 / 10
	s := &clientSession{qc: qc, info: info, peer: peer, done: make(chan struct{})}
	c.conn.Store(info)
	c.session.Store(s)
	c.kit.m.ConnOpened()
	if c.connects.Add(1) > 1 {
		c.kit.m.Reconnected()
	}
	c.log.Info("connected to server", "server", c.cfg.Server, "session", peer.Ack.SessionID, "resumed", peer.Ack.Resumed)
	go func() {
		defer close(s.done)
		var streams sync.WaitGroup
		streams.Go(func() { c.streams.serve(qc.Conn, info) })
		s.err = peer.Run(qc.Context(), &clientEvents{c: c, s: s})
		c.conn.CompareAndSwap(info, nil)
		c.session.CompareAndSwap(s, nil)
		c.kit.m.ConnClosed()
		if code, remote, ok := transport.CloseCode(s.err); ok && remote && code == codec.ConnAuthFailed {
			s.fatal = s.err
		}
		_ = qc.Close(codec.ConnNormal, "control stream closed")
		streams.Wait()
		s.drains.Wait()
	}()
	return s, nil
}

type clientEvents struct {
	c *Client
	s *clientSession
}

func (e *clientEvents) Snapshot(version uint64, hash []byte, rs []rules.Rule) error {
	return e.c.apply(version, hash, rs)
}

func (e *clientEvents) Delta(from, to uint64, hash []byte, d control.ClientDelta) error {
	cur := e.c.rules.Load()
	if cur.Version() != from {
		return fmt.Errorf("%w: have version %d, the delta starts from %d", control.ErrOutOfSequence, cur.Version(), from)
	}
	return e.c.apply(to, hash, control.ApplyDelta(cur.Rules(), d))
}

func (e *clientEvents) State() (uint64, []byte) {
	t := e.c.rules.Load()
	h := t.Hash()
	return t.Version(), h[:]
}

func (e *clientEvents) GoAway(reason string) {
	e.s.info.Draining.Store(true)
	e.c.log.Info("server is draining this connection", "reason", reason)
	// No new streams go to it; once the forward requests in flight have
	// their answers whole, the connection is closed from here (drain.go).
	e.s.drains.Go(func() { closeWhenIdle(e.s.qc.Context(), e.s.info, e.c.cfg.ShutdownGrace) })
}

// apply builds the new table aside, binds new forward listeners and warms
// new upstreams, then swaps the table in atomically (S6, S13) and retires
// the listeners that only the old table used. On any error the old table
// stays in force and the error goes back to the server.
func (c *Client) apply(version uint64, hash []byte, rs []rules.Rule) (err error) {
	start := time.Now()
	defer func() {
		c.kit.m.ConfigApplied(version, time.Since(start), err)
		if errors.Is(err, errListenersClosed) {
			// Shutting down: the server's last changes (the rules this
			// client declared, dropped as it leaves) have nothing to apply.
			c.log.Debug("rules not applied: shutting down", "version", version)
			return
		}
		if err != nil {
			// Said here too, not only to the server: the cause (a busy
			// port, say) is this host's to fix.
			c.refused.Store(&refusal{Version: version, Err: err.Error(), At: time.Now()})
			c.log.Warn("rules not applied; the previous ones stay in force", "version", version,
				"in_force", c.rules.Load().Version(), "err", err)
		}
	}()
	for _, r := range rs {
		if r.Client != c.cfg.ID {
			return fmt.Errorf("rule %q belongs to client %q, not to this client", r.ID, r.Client)
		}
	}
	t, err := rules.NewTable(version, rs)
	if err != nil {
		return err
	}
	if got := t.Hash(); string(got[:]) != string(hash) {
		return fmt.Errorf("rule set hash mismatch: got %x, server said %x", got, hash)
	}
	c.applyMu.Lock()
	defer c.applyMu.Unlock()
	stages, err := c.kit.rules.prepare(context.Background(), t)
	if err != nil {
		return err
	}
	pend, err := c.listeners.prepare(t.Listeners(rules.Forward))
	if err != nil {
		c.kit.rules.discard(stages)
		return rulesOfListener(t, err)
	}
	c.pool.Warm(context.Background(), rs, rules.Reverse)
	old := c.rules.Swap(t)
	c.kit.rules.commit(stages)
	c.applied.Store(version)
	c.listeners.commit(pend)
	c.pool.Retain(t.Rules()) // health checkers and connections of removed upstreams
	if c.insp != nil {
		c.insp.Retain(func(id string) bool { return t.ByID(id) != nil })
	}
	c.kit.m.ForgetRemoved(old, t)
	// A periodic full sync re-applies the same version: not a change.
	level := slog.LevelInfo
	if old.Version() == version && old.Hash() == t.Hash() {
		level = slog.LevelDebug
	}
	c.log.Log(context.Background(), level, "rules applied", "version", version, "rules", t.Len(), "previous", old.Version(), "forward_listeners", c.listeners.count())
	c.refused.Store(nil)
	c.readyOnce.Do(func() { close(c.ready) })
	c.declared.notify()
	return nil
}

// refusal is a rule set the client could not apply.
type refusal struct {
	Version uint64
	Err     string
	At      time.Time
}

// rulesOfListener names the rules of t that need the listener a prepare
// error is about, so that the message says which rule cannot be served.
func rulesOfListener(t *rules.Table, err error) error {
	le, ok := errors.AsType[*listenError](err)
	if !ok {
		return err
	}
	var ids []string
	for _, r := range t.Rules() {
		if r.Direction == rules.Forward && r.Listen == le.addr {
			ids = append(ids, r.ID)
		}
	}
	if len(ids) == 0 {
		return err
	}
	return fmt.Errorf("rule %s: %w", strings.Join(ids, ", "), err)
}

// drain shuts a live session down gracefully: stop forward listeners and
// wait for their requests (which need the connection), tell the server to
// send no more streams, wait for the streams in flight, then close.
func (c *Client) drain(s *clientSession) {
	c.log.Info("client shutting down")
	c.streams.refuse()
	ctx, cancel := c.graceContext(context.Background())
	defer cancel()
	c.listeners.shutdown(ctx)
	if err := s.peer.GoAway("client shutting down"); err != nil {
		c.log.Debug("goaway failed", "err", err)
	}
	if err := c.streams.close(ctx); err != nil {
		c.log.Warn("streams in flight did not finish within the grace period", "err", err)
	}
	// The server closes the connection once it has read every answer
	// whole (see drain.go); at the end of the grace, it is closed here.
	waitClosed(ctx, s.qc.Context().Done())
	_ = s.qc.Close(codec.ConnNormal, "client shutdown")
	<-s.done
}

// shutdown releases everything after the last session ended.
func (c *Client) shutdown() error {
	ctx, cancel := c.graceContext(context.Background())
	defer cancel()
	c.listeners.shutdown(ctx)
	if c.insp != nil {
		c.insp.EndEvents() // the admin listener, closed last, waits for its handlers
	}
	err := c.streams.close(ctx)
	if errors.Is(err, pipeline.ErrClosed) {
		err = nil
	}
	c.streams.wait()
	c.listeners.wait()
	err = errors.Join(err, c.release(ctx))
	c.log.Info("client stopped")
	return err
}

// connStats reports the live connection for the metrics.
func (c *Client) connStats() []metrics.ConnStats {
	s := c.session.Load()
	if s == nil {
		return nil
	}
	return []metrics.ConnStats{connStats(c.cfg.ID, s.qc.Conn)}
}

// readyErr is /readyz: connected, with rules applied.
func (c *Client) readyErr() error {
	switch {
	case c.conn.Load() == nil:
		return notReady("not connected to the tunnel server")
	case c.applied.Load() == 0:
		return notReady("no rules applied yet")
	case c.refused.Load() != nil:
		r := c.refused.Load()
		return notReady("rules version %d from the server could not be applied (version %d stays in force): %s", r.Version, c.applied.Load(), r.Err)
	}
	return nil
}

// view is /config: the rules in force and the connection. The token is
// never shown.
func (c *Client) view() any {
	v := struct {
		tableView
		Client    string `json:"client"`
		Server    string `json:"server"`
		Connected bool   `json:"connected"`
		// The last rule set from the server that could not be applied
		// (version and rules above are the ones in force).
		RefusedVersion uint64    `json:"refused_version,omitempty"`
		RefusedError   string    `json:"refused_error,omitempty"`
		RefusedAt      time.Time `json:"refused_at,omitzero"`
		// Declared: the server's answer to the rules this client declares.
		Declared []Declaration `json:"declared,omitempty"`
	}{tableView: viewOf(c.rules.Load()), Client: c.cfg.ID, Server: c.cfg.Server, Connected: c.conn.Load() != nil}
	_, v.Declared, _ = c.declared.wait()
	if r := c.refused.Load(); r != nil {
		v.RefusedVersion, v.RefusedError, v.RefusedAt = r.Version, r.Err, r.At
	}
	return v
}
