package setup_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/config"
	"github.com/qtunnel/qtunnel/control"
	"github.com/qtunnel/qtunnel/internal/setup"
	"github.com/qtunnel/qtunnel/internal/statedir"
	"github.com/qtunnel/qtunnel/transport"
)

// TestInitWritesMatchingConfigurations: the two files load, the client
// pins the key the server will load from its state directory, and its
// token is the one whose hash the server lists.
func TestInitWritesMatchingConfigurations(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "new")
	r, err := setup.Init(setup.Options{Dir: dir, ServerAddress: "tunnel.example.test:7443", PublicHTTP: "127.0.0.1:8088", ClientID: "laptop"})
	require.NoError(t, err)

	srv, err := config.LoadServer(r.ServerConfig)
	require.NoError(t, err)
	require.Equal(t, ":7443", srv.Listen)
	require.Equal(t, "127.0.0.1:8088", srv.PublicHTTP)
	require.Empty(t, srv.Rules, "the example rules are commented")
	require.Empty(t, srv.TLS.CertFile)
	state := filepath.Join(dir, setup.StateDirName)
	require.Equal(t, state, srv.StateDirectory(r.ServerConfig), "state_dir is relative to server.yaml")

	cl, err := config.LoadClient(r.ClientConfig)
	require.NoError(t, err)
	require.Equal(t, "laptop", cl.ID)
	require.Equal(t, "tunnel.example.test:7443", cl.Server)
	require.Equal(t, r.Pin, cl.ServerPin)
	data, err := os.ReadFile(r.ClientConfig)
	require.NoError(t, err)
	require.NoError(t, config.CheckClientFiles(r.ClientConfig, data, cl), "the token file is private and readable")
	token, err := cl.ReadToken()
	require.NoError(t, err)
	require.Len(t, token, 43, "32 bytes in base64url")
	require.Len(t, srv.Clients, 1)
	require.Equal(t, "laptop", srv.Clients[0].ID)
	require.Equal(t, control.HashToken(token).String(), srv.Clients[0].TokenSHA256)

	d, err := statedir.Open(state)
	require.NoError(t, err)
	cert, how, err := d.Identity()
	require.NoError(t, err)
	require.Equal(t, statedir.Loaded, how, "the server loads the identity init wrote")
	pin, err := transport.CertificatePin(cert)
	require.NoError(t, err)
	require.Equal(t, r.Pin, pin)
	require.Contains(t, cert.Leaf.DNSNames, "tunnel.example.test")

	for path, mode := range map[string]os.FileMode{
		state: 0o700, filepath.Join(state, statedir.KeyFile): 0o600, filepath.Join(dir, setup.TokenFileName): 0o600,
	} {
		fi, err := os.Stat(path)
		require.NoError(t, err)
		require.Equal(t, mode, fi.Mode().Perm(), path)
	}

	// The commented examples are valid rules for this client.
	ex, err := config.ParseServer("uncommented", []byte(setup.UncommentExamples(string(mustRead(t, r.ServerConfig)))))
	require.NoError(t, err)
	require.Len(t, ex.Rules, 2)
	for _, rule := range ex.Rules {
		require.Equal(t, "laptop", rule.Client)
	}

	// Paths are relative to the files: the directory can move whole.
	require.Contains(t, string(mustRead(t, r.ClientConfig)), "\ntoken_file: client.token ")
	moved := filepath.Join(filepath.Dir(dir), "moved")
	require.NoError(t, os.Rename(dir, moved))
	cl, err = config.LoadClient(filepath.Join(moved, setup.ClientConfigName))
	require.NoError(t, err)
	movedToken, err := cl.ReadToken()
	require.NoError(t, err)
	require.Equal(t, token, movedToken)
	srv, err = config.LoadServer(filepath.Join(moved, setup.ServerConfigName))
	require.NoError(t, err)
	require.Equal(t, filepath.Join(moved, setup.StateDirName), srv.StateDirectory(filepath.Join(moved, setup.ServerConfigName)))
	require.NoError(t, os.Rename(moved, dir))

	var out strings.Builder
	require.NoError(t, r.Print(&out))
	for _, f := range r.Files {
		require.Contains(t, out.String(), f.Path)
	}
	require.Contains(t, out.String(), "\n  tunnel server "+r.ServerConfig+"\n")
	require.Contains(t, out.String(), "\n  tunnel client "+r.ClientConfig+"\n")
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return b
}

// TestInitRefusesToOverwrite: with any of its files there, init writes
// nothing and names them; --force writes a new key and token.
func TestInitRefusesToOverwrite(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	o := setup.Options{Dir: dir, ServerAddress: "127.0.0.1:4443"}
	first, err := setup.Init(o)
	require.NoError(t, err)
	before := mustRead(t, first.ClientConfig)

	_, err = setup.Init(o)
	var ee *setup.ExistsError
	require.True(t, errors.As(err, &ee), "%v", err)
	require.Len(t, ee.Paths, 6)
	require.Contains(t, err.Error(), filepath.Join(dir, "server.yaml"))
	require.Contains(t, err.Error(), "--force")
	require.Equal(t, before, mustRead(t, first.ClientConfig))

	// One file is enough to refuse, and nothing else is written.
	other := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(other, "client.yaml"), []byte("mine"), 0o600))
	_, err = setup.Init(setup.Options{Dir: other, ServerAddress: "127.0.0.1:4443"})
	require.ErrorAs(t, err, &ee)
	require.Equal(t, []string{filepath.Join(other, "client.yaml")}, ee.Paths)
	require.NoFileExists(t, filepath.Join(other, "server.yaml"))
	require.NoDirExists(t, filepath.Join(other, setup.StateDirName))

	o.Force = true
	again, err := setup.Init(o)
	require.NoError(t, err)
	require.NotEqual(t, first.Pin, again.Pin)
	require.NotEqual(t, before, mustRead(t, again.ClientConfig))
}

func TestInitDefaultsAndMistakes(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	r, err := setup.Init(setup.Options{Dir: dir})
	require.NoError(t, err)
	cl, err := config.LoadClient(r.ClientConfig)
	require.NoError(t, err)
	require.Equal(t, setup.DefaultClientID, cl.ID)
	require.True(t, strings.HasSuffix(cl.Server, ":4443"), cl.Server)
	srv, err := config.LoadServer(r.ServerConfig)
	require.NoError(t, err)
	require.Equal(t, ":8080", srv.PublicHTTP)

	for _, tt := range []struct {
		o    setup.Options
		says string
	}{
		{setup.Options{ServerAddress: "no-port"}, "want host:port"},
		{setup.Options{ServerAddress: ":4443"}, "want host:port"},
		{setup.Options{ServerAddress: "h:0"}, "the port must be"},
		{setup.Options{PublicHTTP: "8080"}, "public HTTP address"},
		{setup.Options{ClientID: "a b"}, "client id"},
		{setup.Options{ClientID: "x\nrules: []"}, "client id"},
	} {
		tt.o.Dir = t.TempDir()
		require.ErrorContains(t, setup.Check(tt.o), tt.says)
		_, err := setup.Init(tt.o)
		require.ErrorContains(t, err, tt.says)
		entries, _ := os.ReadDir(tt.o.Dir)
		require.Empty(t, entries, "nothing is written for a mistake")
	}
}
