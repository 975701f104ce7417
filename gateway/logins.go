package gateway

import (
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/qtunnel/qtunnel/codec"
	"github.com/qtunnel/qtunnel/config"
	"github.com/qtunnel/qtunnel/control"
	"github.com/qtunnel/qtunnel/internal/authlimit"
	"github.com/qtunnel/qtunnel/metrics"
)

// newLoginLimiter builds the login throttle of kind from the side's
// auth_throttle settings. It logs its records on log and counts failures
// and refusals in m.
func newLoginLimiter(kind metrics.AuthKind, c config.AuthThrottle, log *slog.Logger, m *metrics.Metrics) (*authlimit.Limiter, error) {
	return authlimit.New(authlimit.Config{
		Kind:        kind.String(),
		MaxFailures: c.MaxFailures,
		Window:      c.Window,
		MaxBackoff:  c.MaxBackoff,
		Logger:      log,
		OnFailure:   func() { m.AuthFailed(kind) },
		OnRefused:   func() { m.AuthRefused(kind) },
	})
}

// adminThrottle is a login limiter as the admin listener uses it: per
// source address, no account.
type adminThrottle struct{ l *authlimit.Limiter }

func (a adminThrottle) Allow(src netip.Addr) (time.Duration, bool) {
	return a.l.Allow(authlimit.Attempt{Source: src})
}

func (a adminThrottle) Failed(src netip.Addr) { a.l.Failed(authlimit.Attempt{Source: src}) }

func (a adminThrottle) Succeeded(src netip.Addr) { a.l.Succeeded(authlimit.Attempt{Source: src}) }

// errThrottled is the gate's refusal of a tunnel login.
var errThrottled = errors.New("too many failed logins")

// tunnelLogin follows one tunnel handshake through the server's login
// throttle: its gate runs inside control.Handshake, once the client id is
// known and before the token is checked; done records the outcome.
type tunnelLogin struct {
	lim     *authlimit.Limiter
	tokens  control.Tokens
	attempt authlimit.Attempt
	wait    time.Duration // how long the throttle refuses; zero: it did not
}

func newTunnelLogin(lim *authlimit.Limiter, tokens control.Tokens, remote net.Addr) *tunnelLogin {
	return &tunnelLogin{lim: lim, tokens: tokens, attempt: authlimit.Attempt{Source: addrOf(remote)}}
}

// gate is the handshake's control.WithGate.
func (t *tunnelLogin) gate(id string) error {
	_, known := t.tokens[id]
	t.attempt.ID, t.attempt.Known = id, known
	if wait, ok := t.lim.Allow(t.attempt); !ok {
		t.wait = wait
		return errThrottled
	}
	return nil
}

// done records the handshake's outcome, err from control.Handshake: a wrong
// id or token is a failure, no error a success; other errors (a malformed
// HELLO, a refusal by the gate) are neither.
func (t *tunnelLogin) done(err error) {
	switch {
	case err == nil:
		t.lim.Succeeded(t.attempt)
	case errors.Is(err, control.ErrUnauthenticated):
		t.lim.Failed(t.attempt)
	}
}

// throttled reports whether the gate refused the login.
func (t *tunnelLogin) throttled() bool { return t.wait > 0 }

// addrOf returns the IP address of a network address (an IPv4-mapped
// IPv6 address as IPv4), or the zero Addr.
func addrOf(a net.Addr) netip.Addr {
	switch a := a.(type) {
	case *net.UDPAddr:
		return a.AddrPort().Addr().Unmap()
	case *net.TCPAddr:
		return a.AddrPort().Addr().Unmap()
	}
	if a == nil {
		return netip.Addr{}
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// throttledWait reports whether err is the server refusing this client's
// login because of too many failed logins (codec.ConnThrottled), and how
// long the server said to wait (zero if it did not say).
// remoteClose returns the reason of a connection the server closed with
// code.
func remoteClose(err error, code uint64) (string, bool) {
	var ae *quic.ApplicationError
	if !errors.As(err, &ae) || !ae.Remote || uint64(ae.ErrorCode) != code {
		return "", false
	}
	return ae.ErrorMessage, true
}

func throttledWait(err error) (time.Duration, bool) {
	var ae *quic.ApplicationError
	if !errors.As(err, &ae) || !ae.Remote || uint64(ae.ErrorCode) != codec.ConnThrottled {
		return 0, false
	}
	wait, _ := control.ThrottledRetryAfter(ae.ErrorMessage)
	return wait, true
}
