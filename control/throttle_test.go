package control_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/codec"
	"github.com/qtunnel/qtunnel/control"
)

var errTooMany = errors.New("too many failed logins")

// TestHandshakeGate: the gate sees the HELLO's client id before the token
// is checked; when it refuses, Handshake returns its error without a check
// and without REJECT (so the client does not take it as final), and when
// it lets the attempt through the token is checked as usual.
func TestHandshakeGate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		token     string
		refuse    bool
		wantErr   error
		wantReply bool // the client gets HELLO_ACK or REJECT
	}{
		{name: "refused before the check, right token", token: "tok", refuse: true, wantErr: errTooMany},
		{name: "refused before the check, wrong token", token: "guess", refuse: true, wantErr: errTooMany},
		{name: "allowed, right token", token: "tok", wantReply: true},
		{name: "allowed, wrong token", token: "guess", wantErr: control.ErrUnauthenticated, wantReply: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			client, server := pipe(t)
			var seen []string
			gate := control.WithGate(func(id string) error {
				seen = append(seen, id)
				if tt.refuse {
					return errTooMany
				}
				return nil
			})
			done := make(chan error, 1)
			go func() {
				p, err := control.Handshake(context.Background(), server, tokens, wait, gate)
				if err != nil {
					_ = server.Close() // as the gateway closes the connection
					done <- err
					return
				}
				done <- p.Accept(&codec.HelloAck{SessionID: "s-1"})
			}()
			_, err := control.Hello(context.Background(), client, &codec.Hello{ClientID: "c1", Token: tt.token}, wait)
			serr := recv(t, done, "the handshake")
			require.Equal(t, []string{"c1"}, seen, "the gate is asked once, with the client id")
			if tt.wantErr == nil {
				require.NoError(t, serr)
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, serr, tt.wantErr)
			var rej *control.RejectedError
			require.Equal(t, tt.wantReply, errors.As(err, &rej), "REJECT only after a check: %v", err)
			require.Equal(t, !tt.refuse, errors.Is(serr, control.ErrUnauthenticated))
		})
	}
}

func TestThrottledReasonRoundTrips(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		wait time.Duration
		want time.Duration
	}{
		{time.Minute, time.Minute},
		{1500 * time.Millisecond, 2 * time.Second}, // rounded up: not before
		{time.Nanosecond, time.Second},
		{15 * time.Minute, 15 * time.Minute},
	} {
		reason := control.ThrottledReason(tt.wait)
		require.Contains(t, reason, "too many failed logins")
		got, ok := control.ThrottledRetryAfter(reason)
		require.True(t, ok, reason)
		require.Equal(t, tt.want, got, reason)
	}
	for _, reason := range []string{"", "unknown client id or invalid token", "retry in soon", "retry in -5s", "retry in 5m"} {
		_, ok := control.ThrottledRetryAfter(reason)
		require.False(t, ok, reason)
	}
}

func FuzzThrottledRetryAfter(f *testing.F) {
	f.Add(control.ThrottledReason(time.Minute))
	f.Add("retry in 0s")
	f.Add("retry in 99999999999999999999s")
	f.Fuzz(func(t *testing.T, reason string) {
		if d, ok := control.ThrottledRetryAfter(reason); ok {
			require.Positive(t, d)
			require.LessOrEqual(t, d, control.MaxThrottledRetryAfter)
		}
	})
}
