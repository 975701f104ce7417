package admin

import (
	"context"
	"log/slog"
	"testing"

	"github.com/stretchr/testify/require"
)

// Start checks the address again, after Validate: here a server whose
// token was dropped after New must not bind 0.0.0.0.
func TestStartRefusesNonLoopbackWithoutToken(t *testing.T) {
	t.Parallel()
	s, err := New(Config{Listen: "0.0.0.0:0", Token: "t"}, WithLogger(slog.New(slog.DiscardHandler)))
	require.NoError(t, err)
	s.cfg.Token = ""
	err = s.Start(context.Background())
	require.ErrorIs(t, err, ErrNonLoopback)
	require.EqualError(t, err, `admin: listen "0.0.0.0:0": admin listener on a non-loopback address needs a token`)
	require.Nil(t, s.Addr(), "nothing was bound")
	require.NoError(t, s.Shutdown(context.Background()))
}

func TestCheckLoopback(t *testing.T) {
	t.Parallel()
	tests := []struct {
		addr string
		ok   bool
	}{
		{"127.0.0.1:9090", true},
		{"127.1.2.3:9090", true},
		{"[::1]:9090", true},
		{"localhost:9090", true},
		{":9090", false},
		{"0.0.0.0:9090", false},
		{"[::]:9090", false},
		{"10.0.0.1:9090", false},
	}
	for _, tt := range tests {
		t.Run(tt.addr, func(t *testing.T) {
			t.Parallel()
			err := checkLoopback(context.Background(), tt.addr)
			if tt.ok {
				require.NoError(t, err)
			} else {
				require.ErrorIs(t, err, ErrNonLoopback)
			}
		})
	}
}

func TestServerTimeouts(t *testing.T) {
	t.Parallel()
	for _, pprof := range []bool{false, true} {
		s, err := New(Config{Listen: "127.0.0.1:0", Pprof: pprof}, WithLogger(slog.New(slog.DiscardHandler)))
		require.NoError(t, err)
		require.NoError(t, s.Start(context.Background()))
		require.Equal(t, readHeaderTimeout, s.srv.ReadHeaderTimeout)
		require.Equal(t, readTimeout, s.srv.ReadTimeout)
		require.Equal(t, idleTimeout, s.srv.IdleTimeout)
		require.Equal(t, maxHeaderBytes, s.srv.MaxHeaderBytes)
		if pprof {
			require.Equal(t, pprofWriteTimeout, s.srv.WriteTimeout, "long enough for a 30 s CPU profile")
		} else {
			require.Equal(t, writeTimeout, s.srv.WriteTimeout)
		}
		require.NoError(t, s.Shutdown(context.Background()))
	}
}
