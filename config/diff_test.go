package config_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/config"
)

// TestChangedAndLive: Changed names every setting that differs, by its
// path in the file; Live tells which a reload applies; WithLive takes those
// and only those from the new file.
func TestChangedAndLive(t *testing.T) {
	t.Parallel()
	a, err := config.ParseServer("server.yaml", []byte(serverDoc(minimalServer)))
	require.NoError(t, err)
	b := *a
	b.Log.Level = "debug"
	b.Admin.Token = "new-token"
	b.Limits.MaxInFlight = 7
	b.Limits.BodyTimeout = time.Second
	b.Limits.ReadHeaderTimeout = time.Minute
	b.PublicHTTP = ":9999"
	b.QUIC.IdleTimeout = time.Minute
	changed, err := config.Changed(*a, b)
	require.NoError(t, err)
	require.Equal(t, []string{"admin.token", "limits.body_timeout", "limits.max_in_flight", "limits.read_header_timeout", "log.level", "public_http", "quic.idle_timeout"}, changed)
	var live, restart []string
	for _, p := range changed {
		if config.Live(p) {
			live = append(live, p)
		} else {
			restart = append(restart, p)
		}
	}
	require.Equal(t, []string{"admin.token", "limits.body_timeout", "limits.max_in_flight", "log.level"}, live)
	require.Equal(t, []string{"limits.read_header_timeout", "public_http", "quic.idle_timeout"}, restart)

	in := config.WithLive(*a, b)
	left, err := config.Changed(in, b)
	require.NoError(t, err)
	require.Equal(t, restart, left, "what is in force after the reload differs from the file only in what needs a restart")
	same, err := config.Changed(*a, *a)
	require.NoError(t, err)
	require.Empty(t, same)
}
