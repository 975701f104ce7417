package gateway_test

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/config"
	"github.com/qtunnel/qtunnel/gateway"
	"github.com/qtunnel/qtunnel/internal/e2etest"
	"github.com/qtunnel/qtunnel/transport"
)

// newServer builds (and does not start) a server from c.
func newServer(t *testing.T, c config.Server, opts ...gateway.Option) (*gateway.Server, error) {
	t.Helper()
	c.SetDefaults()
	require.NoError(t, c.Validate())
	return gateway.NewServer(c, append([]gateway.Option{gateway.WithLogger(testLogger(t))}, opts...)...)
}

// TestServerKeepsItsIdentity: without certificate files, a server with a
// state directory (set, or "state" next to its configuration file) makes
// its key once and loads it at every later start: the pin stays.
func TestServerKeepsItsIdentity(t *testing.T) {
	t.Setenv(config.StateDirEnv, "") // not parallel: the default reads the environment
	dir := t.TempDir()
	for _, tt := range []struct {
		name     string
		stateDir string
		opts     []gateway.Option
		want     string
	}{
		{"state_dir", filepath.Join(dir, "set"), nil, filepath.Join(dir, "set")},
		{"next to the file", "", []gateway.Option{gateway.WithConfigFile(filepath.Join(dir, "server.yaml"))}, filepath.Join(dir, "state")},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := serverConfig(nil)
			c.StateDir = tt.stateDir
			first, err := newServer(t, c, tt.opts...)
			require.NoError(t, err)
			again, err := newServer(t, c, tt.opts...)
			require.NoError(t, err)
			require.Equal(t, first.Pin(), again.Pin(), "the second start loads the first one's key")
			b, err := os.ReadFile(filepath.Join(tt.want, "identity.pin"))
			require.NoError(t, err)
			require.Equal(t, first.Pin()+"\n", string(b))
		})
	}
}

// TestServerWithoutStateSaysSo: a configuration built in code, with no file
// and no $STATE_DIRECTORY, has a new key at each start, and the server says
// so and how to keep it.
func TestServerWithoutStateSaysSo(t *testing.T) {
	t.Setenv(config.StateDirEnv, "")
	var logs e2etest.SyncBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	c := serverConfig(nil)
	first, err := newServer(t, c, gateway.WithLogger(log))
	require.NoError(t, err)
	again, err := newServer(t, c, gateway.WithLogger(log))
	require.NoError(t, err)
	require.NotEqual(t, first.Pin(), again.Pin())
	require.Contains(t, logs.String(), "level=INFO")
	require.Contains(t, logs.String(), "change at the next start; to keep them, set state_dir (or tls.cert_file and tls.key_file)")

	// $STATE_DIRECTORY (systemd's StateDirectory=) is the default then.
	t.Setenv(config.StateDirEnv, t.TempDir())
	first, err = newServer(t, c)
	require.NoError(t, err)
	again, err = newServer(t, c)
	require.NoError(t, err)
	require.Equal(t, first.Pin(), again.Pin())
}

// TestBrokenIdentityStopsTheServer: an identity file that does not parse
// is an error that names it; it is not replaced.
func TestBrokenIdentityStopsTheServer(t *testing.T) {
	t.Parallel()
	state := t.TempDir()
	c := serverConfig(nil)
	c.StateDir = state
	_, err := newServer(t, c)
	require.NoError(t, err)
	key := filepath.Join(state, "identity.key")
	require.NoError(t, os.WriteFile(key, []byte("garbage"), 0o600))
	_, err = newServer(t, c)
	require.ErrorContains(t, err, key)
	b, err := os.ReadFile(key)
	require.NoError(t, err)
	require.Equal(t, "garbage", string(b))
}

// TestWrongServerPinSaysWhatToDo: the client's error names the server's
// address, both pins, where the new pin is, the file to change, and how
// to keep a server's key; it is still ErrPinMismatch, and final.
func TestWrongServerPinSaysWhatToDo(t *testing.T) {
	t.Parallel()
	other, err := transport.SelfSigned("127.0.0.1")
	require.NoError(t, err)
	wrong, err := transport.CertificatePin(other)
	require.NoError(t, err)
	p := startPair(t, pairOpts{
		clientMutate: func(c *config.Client) { c.ServerPin = wrong },
		clientOpts:   []gateway.Option{gateway.WithConfigFile("/etc/qtunnel/client.yaml")},
		noWait:       true,
	})
	err = p.clientResult(t, 10*time.Second)
	require.ErrorIs(t, err, transport.ErrPinMismatch)
	var pm *gateway.PinMismatchError
	require.True(t, errors.As(err, &pm), "%v", err)
	require.Equal(t, p.Server.Pin(), pm.Err.Got)
	require.Equal(t, wrong, pm.Err.Want)
	require.Contains(t, err.Error(), "the server at "+p.Server.TunnelAddr().String()+" presented key "+p.Server.Pin()+", but server_pin is "+wrong)
	require.Contains(t, err.Error(), "update server_pin in /etc/qtunnel/client.yaml")
	require.Contains(t, err.Error(), "keep the server's identity with state_dir / tls files")
}
