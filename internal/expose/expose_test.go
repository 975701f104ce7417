package expose_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/config"
	"github.com/qtunnel/qtunnel/internal/expose"
	"github.com/qtunnel/qtunnel/rules"
)

func TestRequestRule(t *testing.T) {
	for _, tt := range []struct {
		req      expose.Request
		upstream string
		insecure bool
		err      string
	}{
		{req: expose.Request{Kind: "http", Target: "3000"}, upstream: "http://127.0.0.1:3000"},
		{req: expose.Request{Kind: "http", Target: "app.lan:8080", Host: "shop"}, upstream: "http://app.lan:8080"},
		{req: expose.Request{Kind: "http", Target: "http://localhost:5173/base/"}, upstream: "http://localhost:5173/base"},
		{req: expose.Request{Kind: "https", Target: "8443"}, upstream: "https://127.0.0.1:8443", insecure: true},
		{req: expose.Request{Kind: "https", Target: "https://api.lan"}, upstream: "https://api.lan"},
		{req: expose.Request{Kind: "tcp", Target: "22", Port: 20022}, upstream: "127.0.0.1:22"},
		{req: expose.Request{Kind: "ftp", Target: "21"}, err: "not a kind of service"},
		{req: expose.Request{Kind: "http", Target: "http"}, err: "neither a port"},
		{req: expose.Request{Kind: "http", Target: "70000"}, err: "neither a port"},
		{req: expose.Request{Kind: "http", Target: "https://x:1"}, err: "use 'expose https'"},
		{req: expose.Request{Kind: "http", Target: "3000", Port: 2}, err: "--port is for tcp"},
		{req: expose.Request{Kind: "tcp", Target: "22", Host: "x"}, err: "--host is for http"},
		{req: expose.Request{Kind: "http", Target: "3000", Name: "bad name"}, err: "not a valid id"},
	} {
		r, insecure, err := tt.req.Rule()
		if tt.err != "" {
			assert.ErrorContains(t, err, tt.err, "%+v", tt.req)
			continue
		}
		require.NoError(t, err, "%+v", tt.req)
		assert.Equal(t, tt.upstream, r.Upstream)
		assert.Equal(t, tt.insecure, insecure)
		assert.Equal(t, rules.Reverse, r.Direction)
		assert.Equal(t, tt.req.Host, r.Host)
	}
	r, _, err := expose.Request{Kind: "tcp", Target: "5432", Port: 20001}.Rule()
	require.NoError(t, err)
	assert.Equal(t, "tcp-5432", r.ID)
	assert.Equal(t, ":20001", r.Listen)
}

func TestCredentials(t *testing.T) {
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	t.Setenv(config.TokenEnv, "")
	env := map[string]string{}
	getenv := func(k string) string { return env[k] }

	_, _, err := expose.ClientConfig(expose.Credentials{}, getenv)
	require.ErrorIs(t, err, expose.ErrMissing)
	assert.ErrorContains(t, err, "--server or "+expose.ServerEnv)

	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "t")
	require.NoError(t, os.WriteFile(tokenFile, []byte("s3cret\n"), 0o600))
	env[expose.ServerEnv] = "127.0.0.1:4443"
	env[expose.PinEnv] = "sha256:nZCbWVoWcXVYQNQYSC3drTfdJuRsgalRRc9pieAlctU="
	cfg, _, err := expose.ClientConfig(expose.Credentials{ID: "laptop", TokenFile: tokenFile}, getenv)
	require.NoError(t, err)
	assert.Equal(t, "127.0.0.1:4443", cfg.Server)

	// login keeps them; a later expose with nothing given reads them.
	path, err := expose.LoginFile()
	require.NoError(t, err)
	require.NoError(t, expose.WriteLogin(path, cfg))
	fi, err := os.Stat(path)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), "the login file holds the token")
	clear(env)
	got, source, err := expose.ClientConfig(expose.Credentials{}, getenv)
	require.NoError(t, err)
	assert.Equal(t, path, source)
	assert.Equal(t, "laptop", got.ID)
	token, err := got.ReadToken()
	require.NoError(t, err)
	assert.Equal(t, "s3cret", token)

	// Flags win over the file.
	got, _, err = expose.ClientConfig(expose.Credentials{Server: "10.0.0.1:4443"}, getenv)
	require.NoError(t, err)
	assert.Equal(t, "10.0.0.1:4443", got.Server)
}
