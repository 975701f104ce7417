package metrics

import "github.com/prometheus/client_golang/prometheus"

// AuthKind says what a login was for; it is the kind label of
// qtunnel_auth_failures_total and qtunnel_auth_refused_total. The set is
// fixed.
type AuthKind uint8

// Login kinds.
const (
	// AuthTunnel: a client's tunnel handshake (server side).
	AuthTunnel AuthKind = iota
	// AuthAdmin: a request to the admin listener, when it has a token.
	AuthAdmin

	numAuthKinds = iota
)

var authKindNames = [numAuthKinds]string{"tunnel", "admin"}

// String returns the kind's label value.
func (k AuthKind) String() string {
	if int(k) < len(authKindNames) {
		return authKindNames[k]
	}
	return "unknown"
}

// authSeries are the login throttle's counters, one child per kind, made
// up front so that every kind is exported from the start, at zero.
type authSeries struct {
	failures [numAuthKinds]prometheus.Counter
	refused  [numAuthKinds]prometheus.Counter
}

func (a *authSeries) init(f factory) {
	failures := f.counterVec("auth_failures_total",
		"Logins whose token was checked and found wrong (or missing), by kind: tunnel handshakes, admin requests.", "kind")
	refused := f.counterVec("auth_refused_total",
		"Logins refused by the login throttle without checking the token (too many failures), by kind.", "kind")
	for k, name := range authKindNames {
		a.failures[k] = failures.WithLabelValues(name)
		a.refused[k] = refused.WithLabelValues(name)
	}
}

// AuthFailed counts a login of kind whose token was checked and was wrong.
// Kinds outside the fixed set are not counted.
func (m *Metrics) AuthFailed(kind AuthKind) {
	if m != nil && kind < numAuthKinds {
		m.auth.failures[kind].Inc()
	}
}

// AuthRefused counts a login of kind that the login throttle refused
// without checking its token. Kinds outside the fixed set are not counted.
func (m *Metrics) AuthRefused(kind AuthKind) {
	if m != nil && kind < numAuthKinds {
		m.auth.refused[kind].Inc()
	}
}
