package pipeline

import (
	"context"
	"errors"
	"net/http"

	"github.com/qtunnel/qtunnel/codec"
)

// Kind says why an exchange failed. It is the one classification of
// errors in the gateway: the errors_total metric's kind label, the
// breaker's judgement of an upstream, and the listeners' choice between
// answering and hanging up all read it (with Answer for what the user is
// sent). The set is fixed.
type Kind uint8

// Error kinds, as Classify gives them.
const (
	// KindRejected: a stage answered with a status of its own (404 no
	// route, 502 upstream unreachable, 504 upstream timeout, ...).
	KindRejected Kind = iota
	// KindUpstream: the far side of the tunnel answered with an ERROR
	// frame (it could not reach or use its upstream).
	KindUpstream
	// KindTunnel: the tunnel itself failed (stream reset, malformed
	// frames, connection lost), or the error is of no known type.
	KindTunnel
	// KindTimeout: a deadline passed.
	KindTimeout
	// KindOverload: a bounded resource was full; the answer is 503 with
	// Retry-After and the request may be retried.
	KindOverload
	// KindCanceled: the requester went away (its context ended, or the
	// answer could not be written to it: UserGoneError).
	KindCanceled
	// KindInternal: a bug, such as a panic in a stage. Classify never
	// gives it; whoever recovers the panic counts it.
	KindInternal

	// NumKinds is the number of kinds.
	NumKinds = iota
)

var kindNames = [NumKinds]string{"rejected", "upstream", "tunnel", "timeout", "overload", "canceled", "internal"}

// String returns the kind's name, the metric's label value.
func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "internal"
}

// Classify says what kind of failure err is:
//
//   - an error that says the requester went away (context.Canceled, a
//     UserGoneError), wherever it is in err's chain, is KindCanceled: a
//     refusal that came of it was for nobody;
//   - a *Reject is KindOverload when it is a 503 with a Retry-After (the
//     request may be retried), else KindRejected;
//   - a *codec.Error (the far side's ERROR frame) is KindOverload on the
//     same condition, else KindUpstream;
//   - ErrOverloaded is KindOverload;
//   - context.DeadlineExceeded is KindTimeout;
//   - anything else is KindTunnel.
//
// The first of these that holds wins, in that order. It allocates
// nothing.
func Classify(err error) Kind {
	if errors.Is(err, context.Canceled) {
		return KindCanceled
	}
	if _, ok := errors.AsType[UserGoneError](err); ok {
		return KindCanceled
	}
	if rj, ok := errors.AsType[*Reject](err); ok {
		if rj.Status == http.StatusServiceUnavailable && rj.RetryAfter > 0 {
			return KindOverload
		}
		return KindRejected
	}
	if ce, ok := errors.AsType[*codec.Error](err); ok {
		if ce.Status == http.StatusServiceUnavailable && ce.RetryAfter > 0 {
			return KindOverload
		}
		return KindUpstream
	}
	switch {
	case errors.Is(err, ErrOverloaded):
		return KindOverload
	case errors.Is(err, context.DeadlineExceeded):
		return KindTimeout
	}
	return KindTunnel
}

// StatusOf is Answer's status alone, without Answer's allocations for the
// errors stages return as they are.
func StatusOf(err error) int {
	switch e := err.(type) {
	case *Reject:
		return e.Status
	case *codec.Error:
		return e.Status
	}
	status, _, _ := Answer(err)
	return status
}

// UserGoneError marks a failure to write the answer to the user: the user
// went away, and nobody is left to answer.
type UserGoneError struct{ Err error }

func (e UserGoneError) Error() string { return "write to user: " + e.Err.Error() }
func (e UserGoneError) Unwrap() error { return e.Err }
