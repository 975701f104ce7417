package gateway

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/qtunnel/qtunnel/codec"
	"github.com/qtunnel/qtunnel/config"
	"github.com/qtunnel/qtunnel/control"
	"github.com/qtunnel/qtunnel/rules"
)

// syncClient brings sc's client up to the rules in force from what it
// holds (sc.sentVersion, sc.sentHash): nothing if it has them, an
// incremental update if the store still has its version, else a full
// snapshot. full sends a snapshot whatever the client holds.
func (s *Server) syncClient(sc *serverConn, full bool) error {
	sc.syncMu.Lock()
	defer sc.syncMu.Unlock()
	t := s.store.Table()
	id := sc.info.ClientID
	want := rules.Hash(t.ForClient(id))
	have, haveHash := sc.sentVersion, sc.sentHash
	if !full && have != 0 && string(haveHash) == string(want[:]) {
		// It has its rules as they are: a reconnect, or a change of other
		// clients' rules. Its version may be older than the table's: it
		// stays so until its own rules change (a delta from it, or a
		// snapshot once the store no longer has it). A client that has
		// applied nothing yet (version 0) gets its first rules, even
		// none: that is what makes it ready.
		return nil
	}
	var d control.ClientDelta
	delta := !full && have != 0
	if delta {
		d, delta = s.store.DeltaFor(id, have, haveHash, t)
	}
	var err error
	if delta {
		err = sc.peer.SendDelta(have, t, id, d)
	} else {
		err = sc.peer.SendSnapshot(t, id)
	}
	if err != nil {
		return err
	}
	s.kit.m.RuleUpdateSent(!delta)
	sc.sentVersion, sc.sentHash = t.Version(), want[:]
	return nil
}

// push sends the client of sc every change of its rules, as soon as the
// store accepts it, until ctx ends.
func (s *Server) push(ctx context.Context, sc *serverConn) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-sc.changed:
		}
		if err := s.syncClient(sc, false); err != nil {
			s.log.Debug("rule push failed", "client", sc.info.ClientID, "err", err)
			return // the connection is going; the reconnect syncs
		}
	}
}

// prepareRules readies the server for a new table before it goes into
// force (S13): the reverse TCP listeners it needs are bound first, and a
// failure refuses the change. After the swap, connected clients are told.
func (s *Server) prepareRules(t *rules.Table) (func(), error) {
	start := time.Now()
	old := s.store.Table() // still in force: prepare runs before the swap
	stages, err := s.kit.rules.prepare(context.Background(), t)
	if err != nil {
		s.kit.m.ConfigApplied(t.Version(), time.Since(start), err)
		return nil, err
	}
	pend, err := s.listeners.prepare(t.Listeners(rules.Reverse))
	if err != nil {
		s.kit.rules.discard(stages)
		s.kit.m.ConfigApplied(t.Version(), time.Since(start), err)
		return nil, err
	}
	// Build the balancers of forward rules now, so that their health
	// checks start with the rules rather than at their first request.
	s.pool.Warm(context.Background(), t.Rules(), rules.Forward)
	return func() {
		s.kit.rules.commit(stages)
		s.listeners.commit(pend)
		s.pool.Retain(t.Rules())
		s.kit.m.ConfigApplied(t.Version(), time.Since(start), nil)
		s.kit.m.ForgetRemoved(old, t)
		s.log.Info("rules changed", "version", t.Version(), "rules", t.Len(), "hash", t.HashHex())
		// Only the clients whose rules changed are told: a change costs
		// the clients it concerns, not every connected one.
		changed := rules.ChangedClients(old, t)
		s.mu.Lock()
		for _, id := range changed {
			sc := s.byID[id]
			if sc == nil {
				continue
			}
			select {
			case sc.changed <- struct{}{}:
			default: // a push is already due; it will see this table
			}
		}
		s.mu.Unlock()
	}, nil
}

// Rules returns the server's rule store: read the rules in force, change
// them (the admin API does), subscribe to changes.
func (s *Server) Rules() *control.RuleStore { return s.store }

// Reload reads the configuration file again (WithConfigFile) and applies
// what can change live (config.LiveSettings: clients, rules, log level and
// access log, the admin token, rate limits, the request limits, trusted
// proxies). A file that does not parse or validate changes nothing; the
// error lists every problem with its line. The settings that need a
// restart are named in a warning, and in /config as pending_restart,
// until the server restarts (or the file goes back).
func (s *Server) Reload() error {
	if s.o.configFile == "" {
		return errors.New("reload: the server was not started from a configuration file")
	}
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	if err := s.reload(); err != nil {
		s.log.Error("configuration not reloaded; the rules in force keep serving", "file", s.o.configFile, "err", err)
		return err
	}
	return nil
}

// reload is Reload's work, under reloadMu; what it returns, Reload logs.
func (s *Server) reload() error {
	cfg, err := config.LoadServer(s.o.configFile)
	if err != nil {
		return err
	}
	tokens, err := tokensOf(cfg.Clients)
	if err != nil {
		return err
	}
	_, superseded, err := s.store.Replace(cfg.Rules)
	s.logSuperseded(superseded)
	if err != nil && !errors.Is(err, control.ErrUnchanged) {
		return err
	}
	s.logConflicts(s.store.Conflicts())
	if err := s.applyLive(cfg); err != nil {
		return err
	}
	old := s.tokens.Swap(&tokens)
	claims := claimsOf(cfg.Clients)
	s.claims.Store(&claims)
	s.recheckDeclared()
	// A client that was removed, or whose token changed, is disconnected.
	s.mu.Lock()
	for sc := range s.conns {
		if now, ok := tokens[sc.info.ClientID]; !ok || (*old)[sc.info.ClientID] != now {
			_ = sc.qc.CloseWithError(quic.ApplicationErrorCode(codec.ConnAuthFailed), "client removed or its token changed")
		}
	}
	s.mu.Unlock()
	return nil
}

// applyLive puts in force the live settings of next, a reloaded file, and
// records the others as pending. Only what changed is touched.
func (s *Server) applyLive(next *config.Server) error {
	running := s.running.Load()
	changed, err := config.Changed(*running, *next)
	if err != nil {
		return err
	}
	inForce := config.WithLive(*running, *next)
	var applied []string
	rebuild := false
	for _, p := range changed {
		if !config.Live(p) {
			continue
		}
		switch {
		case p == "rules" || p == "clients":
			continue // the caller's
		case p == "log.level":
			l, err := config.ParseLevel(next.Log.Level)
			if err != nil || !setLevel(s.o.log, l) {
				inForce.Log.Level = running.Log.Level
				continue // not this server's logger to change: pending
			}
		case p == "log.access":
			s.kit.access.Store(next.Log.Access)
		case p == "admin.token":
			if err := s.kit.admin.SetToken(next.Admin.Token); err != nil {
				return fmt.Errorf("admin.token: %w", err)
			}
			s.api.writable.Store(next.Admin.Token != "")
		default:
			rebuild = true // limits, rate limits, trusted proxies: the chains
		}
		applied = append(applied, p)
	}
	if rebuild {
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.Limits.HandshakeTimeout)
		defer cancel()
		spec := s.spec
		spec.settings = &inForce.Common
		n, err := buildChains(ctx, spec)
		if err != nil {
			return err
		}
		s.chains.use(n) // n now holds the chains it replaced
		if err := n.close(ctx); err != nil {
			s.log.Debug("closing the replaced chains", "err", err)
		}
	}
	s.running.Store(&inForce)
	// Pending: what the file says and the server, as started, does not.
	still, err := config.Changed(inForce, *next)
	if err != nil {
		return err
	}
	s.pending.Store(&still)
	if len(applied) > 0 {
		s.log.Info("settings changed live", "settings", applied)
	}
	if len(still) > 0 {
		s.log.Warn("settings changed in the configuration file take effect at the next restart", "settings", still)
	}
	return nil
}

// watchConfig reloads the configuration file when it changes (polled at
// the configured interval: no file-system notifier to lose events or file
// descriptors), until ctx ends.
func (s *Server) watchConfig(ctx context.Context) {
	every := s.cfg.Sync.ConfigPollInterval
	last, _ := os.Stat(s.o.configFile)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		fi, err := os.Stat(s.o.configFile)
		if err != nil {
			continue
		}
		if last != nil && fi.ModTime().Equal(last.ModTime()) && fi.Size() == last.Size() {
			continue
		}
		last = fi
		if err := s.Reload(); err == nil {
			s.log.Info("configuration reloaded", "file", s.o.configFile, "version", s.store.Table().Version())
		}
	}
}

func tokensOf(clients []config.ClientEntry) (control.Tokens, error) {
	t := control.Tokens{}
	for _, c := range clients {
		h, err := control.ParseTokenHash(c.TokenSHA256)
		if err != nil {
			return nil, fmt.Errorf("client %q: token_sha256: %w", c.ID, err)
		}
		t[c.ID] = h
	}
	return t, nil
}
