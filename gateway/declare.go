package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/qtunnel/qtunnel/codec"
	"github.com/qtunnel/qtunnel/config"
	"github.com/qtunnel/qtunnel/control"
	"github.com/qtunnel/qtunnel/rules"
)

// Rules a client declares (control/declare.go has the model): the server
// checks each claim against the client's clients[].declare and the rules in
// force, picks the host or port a claim leaves open, and answers with the
// outcome and the public URLs. The claims go with the client's session:
// when it expires, or when the client says it is leaving (GOAWAY).

// claimsOf returns each client's claims from the configuration.
func claimsOf(clients []config.ClientEntry) map[string]*rules.Claims {
	m := make(map[string]*rules.Claims, len(clients))
	for _, c := range clients {
		m[c.ID] = c.Declare
	}
	return m
}

// maxAutoNames bounds the names tried for a claim without a host.
const maxAutoNames = 100

// Declarations a connection may make: a burst, then one every few
// seconds. Each accepted change is a new rule-set version for every
// client, so a client flipping its claims must not churn them.
const (
	declareBurst = 5
	declareEvery = 5 * time.Second
)

// Declare answers a client's DECLARE (control.Declarer).
func (e *serverEvents) Declare(m *codec.Declare) *codec.Declared {
	if !e.conn.declares.Allow() {
		out := &codec.Declared{}
		rs, _ := rules.Decode(m.Rules)
		for _, r := range rs {
			out.Results = append(out.Results, codec.DeclaredRule{Name: r.ID,
				Error: fmt.Sprintf("too many declarations on this connection: at most %d, then one every %v", declareBurst, declareEvery)})
		}
		return out
	}
	return e.s.declare(e.conn.info.ClientID, m)
}

func (s *Server) declare(client string, m *codec.Declare) *codec.Declared {
	out := &codec.Declared{}
	rs, err := rules.Decode(m.Rules)
	if err != nil {
		out.Results = []codec.DeclaredRule{{Error: err.Error()}}
		return out
	}
	claims := (*s.claims.Load())[client]
	refuseAll := func(format string, args ...any) *codec.Declared {
		msg := fmt.Sprintf(format, args...)
		for _, r := range rs {
			out.Results = append(out.Results, codec.DeclaredRule{Name: r.ID, Error: msg})
		}
		s.log.Warn("client's declared rules refused", "client", client, "rules", len(rs), "reason", msg)
		return out
	}
	switch {
	case len(rs) > 0 && !claims.Any():
		return refuseAll("client %q may declare no rules: the server's clients[].declare gives it none", client)
	case len(rs) > claims.Max():
		return refuseAll("%d rules declared; client %q may declare at most %d (clients[].declare.max_rules)", len(rs), client, claims.Max())
	}
	names := make([]string, len(rs))
	for i := range rs {
		names[i] = rs[i].ID
		rs[i].ID = client + "." + rs[i].ID
		if rs[i].Client == "" {
			rs[i].Client = client
		}
	}
	t, accepted, refused, err := s.store.Declare(client, rs, s.claimCheck(client, claims))
	if err != nil && !errors.Is(err, control.ErrUnchanged) {
		// The whole change failed (a listener that would not bind, say).
		return refuseAll("%v", err)
	}
	byID := make(map[string]rules.Rule, len(accepted))
	for _, r := range accepted {
		byID[r.ID] = r
	}
	var took, left []string
	for i, r := range rs {
		res := codec.DeclaredRule{Name: names[i]}
		if refused[i] != nil {
			res.Error = refused[i].Error()
			left = append(left, names[i]+": "+res.Error)
		} else if a, ok := byID[r.ID]; ok {
			res.ID = a.ID
			res.URLs = s.publicURLs(a)
			took = append(took, a.ID)
		}
		out.Results = append(out.Results, res)
	}
	level := slog.LevelInfo
	if err != nil { // unchanged: a reconnect declaring the same again
		level = slog.LevelDebug
	}
	s.log.Log(context.Background(), level, "client declared rules", "client", client, "accepted", took, "version", t.Version())
	if len(left) > 0 {
		s.log.Warn("client's declared rules refused", "client", client, "refused", left)
	}
	return out
}

// claimCheck fills in what a claim of client leaves to the server (a host
// under the base domain, a free TCP port) and checks it against claims.
func (s *Server) claimCheck(client string, claims *rules.Claims) control.ClaimCheck {
	return func(r *rules.Rule, in []rules.Rule) error {
		r.Normalize()
		if r.Direction == rules.Reverse && r.Protocol == rules.ProtoHTTP {
			switch {
			case r.Host == "" && claims.BaseDomain == "":
				return fmt.Errorf("%w: no host given, and no base_domain to pick one under", rules.ErrNotClaimable)
			case r.Host == "":
				r.Host = freeName(client, claims.BaseDomain, in)
			case !strings.Contains(r.Host, ".") && claims.BaseDomain != "":
				r.Host = r.Host + "." + claims.BaseDomain
			}
		}
		if r.Direction == rules.Reverse && r.Protocol == rules.ProtoTCP {
			_, port, _ := net.SplitHostPort(r.Listen)
			if r.Listen == "" || port == "" || port == "0" {
				n := claims.FreePort(func(p int) bool { return portUsed(in, p) })
				if n == 0 {
					return fmt.Errorf("%w: every port of tcp_ports %v is taken", rules.ErrNotClaimable, claims.TCPPorts)
				}
				port = strconv.Itoa(n)
			}
			// The server decides where its listeners bind: with its
			// public HTTP listener.
			r.Listen = net.JoinHostPort(hostOf(s.cfg.PublicHTTP), port)
		}
		return claims.CheckClaim(r)
	}
}

// freeName returns "<client>.<domain>", or "<client>-N.<domain>" when that
// is another client's host.
func freeName(client, domain string, in []rules.Rule) string {
	name := rules.NormalizeHost(client + "." + domain)
	for n := 2; n < maxAutoNames && hostTaken(in, name, client); n++ {
		name = rules.NormalizeHost(client + "-" + strconv.Itoa(n) + "." + domain)
	}
	return name
}

func hostTaken(in []rules.Rule, host, client string) bool {
	for _, r := range in {
		if r.Host == host && r.Client != client {
			return true
		}
	}
	return false
}

func portUsed(in []rules.Rule, port int) bool {
	for _, r := range in {
		if r.Direction == rules.Reverse && r.Protocol == rules.ProtoTCP {
			if _, p, err := net.SplitHostPort(r.Listen); err == nil && p == strconv.Itoa(port) {
				return true
			}
		}
	}
	return false
}

func hostOf(addr string) string {
	h, _, err := net.SplitHostPort(addr)
	if err != nil {
		return ""
	}
	return h
}

// publicURLs says where the public reaches r: its host on each public
// listener for a reverse HTTP rule, its port for a reverse TCP rule (with
// the listener's host, empty when it binds every address: the client puts
// the server's name there).
func (s *Server) publicURLs(r rules.Rule) []string {
	if r.Direction != rules.Reverse {
		return nil
	}
	if r.Protocol == rules.ProtoTCP {
		return []string{"tcp://" + r.Listen}
	}
	var out []string
	for i, scheme := range []string{"http", "https"} {
		if i >= len(s.public) {
			break
		}
		port := ""
		if a, ok := s.public[i].addr().(*net.TCPAddr); ok {
			port = strconv.Itoa(a.Port)
		}
		host := r.Host
		if !(scheme == "http" && port == "80") && !(scheme == "https" && port == "443") && port != "" {
			host = net.JoinHostPort(host, port)
		}
		out = append(out, scheme+"://"+host+r.PathPrefix)
	}
	return out
}

// recheckDeclared runs every client's declared rules through its claims
// again (after a reload changed them): the ones now outside are dropped,
// and a client no longer listed loses them all.
func (s *Server) recheckDeclared() {
	claims := *s.claims.Load()
	for client, rs := range s.store.Declared() {
		c, listed := claims[client]
		if !listed || !c.Any() {
			s.undeclare(client, "the client may no longer declare rules")
			continue
		}
		_, accepted, _, err := s.store.Declare(client, rs, s.claimCheck(client, c))
		if err == nil && len(accepted) < len(rs) {
			s.log.Warn("declared rules dropped: outside the client's claims since the reload", "client", client,
				"kept", len(accepted), "dropped", len(rs)-len(accepted))
		}
	}
}

// undeclare drops the rules client declared, saying why.
func (s *Server) undeclare(client, why string) {
	if _, err := s.store.Undeclare(client); err == nil {
		s.log.Info("client's declared rules dropped", "client", client, "reason", why)
	}
}
