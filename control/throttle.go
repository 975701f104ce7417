package control

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// HandshakeOption customises Handshake.
type HandshakeOption func(*handshakeOptions)

type handshakeOptions struct {
	gate func(clientID string) error
}

// WithGate makes Handshake call gate with the client id of the HELLO once
// it has been read, before the token is checked. If gate returns an error,
// Handshake returns it (wrapped) without checking the token and without
// sending REJECT, which a client takes as final: the caller closes the
// connection, with codec.ConnThrottled and a ThrottledReason when a login
// throttle refused. gate is called at most once, from Handshake's
// goroutine; it is also how the caller learns the client id of an attempt
// that then fails.
func WithGate(gate func(clientID string) error) HandshakeOption {
	return func(o *handshakeOptions) { o.gate = gate }
}

// MaxThrottledRetryAfter bounds the wait ThrottledRetryAfter returns,
// whatever a close reason says.
const MaxThrottledRetryAfter = time.Hour

const retryIn = "; retry in "

// ThrottledReason is the close reason of a connection closed with
// codec.ConnThrottled: it tells the client, in whole seconds rounded up,
// when its next attempt can be checked.
func ThrottledReason(wait time.Duration) string {
	secs := max(int64((wait+time.Second-1)/time.Second), 1)
	return fmt.Sprintf("too many failed logins%s%ds", retryIn, secs)
}

// ThrottledRetryAfter returns the wait a ThrottledReason names, at most
// MaxThrottledRetryAfter, and false for any other text.
func ThrottledRetryAfter(reason string) (time.Duration, bool) {
	i := strings.LastIndex(reason, retryIn)
	if i < 0 {
		return 0, false
	}
	num, ok := strings.CutSuffix(reason[i+len(retryIn):], "s")
	if !ok {
		return 0, false
	}
	secs, err := strconv.ParseUint(num, 10, 32)
	if err != nil || secs == 0 {
		return 0, false
	}
	return min(time.Duration(secs)*time.Second, MaxThrottledRetryAfter), true
}
