package app

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestLoginThenExposeNeedsNoFlags: login keeps a client configuration's
// server and credentials (mode 0600); expose then finds them by itself,
// and says what is missing without them.
func TestLoginThenExposeNeedsNoFlags(t *testing.T) {
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	t.Setenv("QTUNNEL_TOKEN", "")
	dir := t.TempDir()
	r := runTunnel("", "init", dir, "--server-address", "127.0.0.1:1")
	require.Equal(t, 0, r.code, r.stderr)

	// Before login: nothing to connect with.
	r = runTunnel("", "expose", "http", "3000", "--no-inspect")
	assert.Equal(t, 2, r.code)
	assert.Contains(t, r.stderr, "missing the server's address (--server or QTUNNEL_SERVER)")
	assert.Contains(t, r.stderr, "tunnel login")

	r = runTunnel("", "login")
	assert.Equal(t, 2, r.code, "login with nothing to keep is a usage error")

	r = runTunnel("", "login", "--config", filepath.Join(dir, "client.yaml"))
	require.Equal(t, 0, r.code, r.stderr)
	path := filepath.Join(os.Getenv("XDG_CONFIG_HOME"), "qtunnel", "login.yaml")
	assert.Contains(t, r.stdout, "Wrote "+path)
	fi, err := os.Stat(path)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	token, err := os.ReadFile(filepath.Join(dir, "client.token"))
	require.NoError(t, err)
	assert.Contains(t, string(b), "token: "+string(token[:len(token)-1]))

	// check-config takes the login file as a client configuration.
	r = runTunnel("", "check-config", "client", path)
	assert.Equal(t, 0, r.code, r.stderr)
}
