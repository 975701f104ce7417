package e2e_test

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/control"
	"github.com/qtunnel/qtunnel/internal/e2etest"
	"github.com/qtunnel/qtunnel/transport"
)

// serverPin matches the pin in the server's "server started" record.
var serverPin = regexp.MustCompile(`msg="server started".* pin="?(sha256:[A-Za-z0-9+/=]+)`)

// identityEnv is a server run from a configuration file without
// certificate files, so that it keeps a generated identity in its state
// directory (by default "state" next to the file), and a client of it.
type identityEnv struct {
	dir, serverConf, clientConf string
	tunnel, public              string
	server, client              *proc
	pin                         string // what the first server logged
}

// startIdentityEnv starts the server from dir/server.yaml (no tls files,
// no state_dir) and waits for its pin; a client started with clientPin
// ("" for the server's) is left to connect.
func startIdentityEnv(t *testing.T, up, clientPin string) *identityEnv {
	t.Helper()
	e := &identityEnv{dir: t.TempDir(), tunnel: e2etest.FreeAddr(t, "udp"), public: e2etest.FreeAddr(t, "tcp")}
	e.serverConf = filepath.Join(e.dir, "server.yaml")
	// A short keep-alive sets the client's heartbeat, which a restarted
	// server answers with a stateless reset: the client notices a SIGKILL
	// at once instead of at its idle timeout.
	writeFile(t, e.serverConf, fmt.Sprintf(`listen: %q
public_http: %q
clients:
  - id: %s
    token_sha256: %s
rules:
  - id: rev
    client: %s
    direction: reverse
    host: %s
    upstream: %q
quic:
  idle_timeout: 2s
  keep_alive: 300ms
log:
  level: info
`, e.tunnel, e.public, clientID, control.HashToken(theToken), clientID, appHost, up))
	e.server = start(t, "server", "server", "-config", e.serverConf)
	e.pin = e.server.waitFor(serverPin.String(), 20*time.Second)[1]
	if clientPin == "" {
		clientPin = e.pin
	}
	e.clientConf = filepath.Join(e.dir, "client.yaml")
	writeFile(t, e.clientConf, fmt.Sprintf(`id: %s
token: %q
server: %q
server_pin: %q
reconnect:
  base: 50ms
  max: 500ms
quic:
  idle_timeout: 2s
  keep_alive: 300ms
`, clientID, theToken, e.tunnel, clientPin))
	e.client = start(t, "client", "client", "-config", e.clientConf)
	return e
}

// restart stops the server with sig and starts a new one from the same
// file, returning the pin it logs.
func (e *identityEnv) restart(t *testing.T, sig syscall.Signal) string {
	t.Helper()
	e.server.signal(sig)
	e.server.wait(30 * time.Second)
	e.server = start(t, "server-2", "server", "-config", e.serverConf)
	return e.server.waitFor(serverPin.String(), 20*time.Second)[1]
}

// getThrough polls a request through the reverse rule until it answers
// 200 with want, or fails the test after d.
func getThrough(t *testing.T, public, want string, d time.Duration) {
	t.Helper()
	c := newClient(t)
	c.Timeout = 2 * time.Second
	deadline := time.Now().Add(d)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var last string
	for {
		resp, err := c.Do(request(t, http.MethodGet, "http://"+public+"/", appHost, nil))
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && string(b) == want {
				return
			}
			last = fmt.Sprintf("%d %s", resp.StatusCode, b)
		} else {
			last = err.Error()
		}
		require.True(t, time.Now().Before(deadline), "no %q through the tunnel within %v; last: %s", want, d, last)
		<-tick.C
	}
}

// TestServerKeepsItsIdentityAcrossRestarts: a server without certificate
// files, run from a configuration file, keeps the key it generated in its
// state directory. Stopped (SIGTERM) or killed (SIGKILL) and started
// again from the same file, it has the same pin, and its client
// reconnects on its own: traffic flows again with nobody touching the
// client. When the state directory is lost, the restarted server has a
// new key, and the client exits 1 saying both pins and what to do.
func TestServerKeepsItsIdentityAcrossRestarts(t *testing.T) {
	t.Parallel()
	up := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "up") }))
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		t.Run(sig.String(), func(t *testing.T) {
			t.Parallel()
			e := startIdentityEnv(t, up, "")
			e.client.waitFor(`msg="rules applied"`, 20*time.Second)
			getThrough(t, e.public, "up", 10*time.Second)

			require.Equal(t, e.pin, e.restart(t, sig), "a restarted server has the same pin")
			// The same rules again are applied at debug: the second
			// connection shows, then traffic through it.
			e.client.waitFor(`(?s)msg="connected to server".*msg="connected to server"`, 30*time.Second)
			getThrough(t, e.public, "up", 10*time.Second)
			require.NotContains(t, e.client.out.String(), "does not match")

			state := filepath.Join(e.dir, "state")
			for name, mode := range map[string]os.FileMode{"": 0o700, "identity.key": 0o600} {
				fi, err := os.Stat(filepath.Join(state, name))
				require.NoError(t, err, "the server keeps its identity in %s", state)
				require.Equal(t, mode, fi.Mode().Perm(), "%s", filepath.Join(state, name))
			}
		})
	}
	t.Run("state directory lost", func(t *testing.T) {
		t.Parallel()
		e := startIdentityEnv(t, up, "")
		e.client.waitFor(`msg="rules applied"`, 20*time.Second)
		e.server.signal(syscall.SIGKILL)
		e.server.wait(30 * time.Second)
		require.NoError(t, os.RemoveAll(filepath.Join(e.dir, "state")))
		e.server = start(t, "server-2", "server", "-config", e.serverConf)
		newPin := e.server.waitFor(serverPin.String(), 20*time.Second)[1]
		require.NotEqual(t, e.pin, newPin)
		require.Equal(t, 1, e.client.wait(30*time.Second), "a wrong pin is final")
		out := e.client.out.String()
		require.Contains(t, out, fmt.Sprintf("the server at %s presented key %s, but server_pin is %s", e.tunnel, newPin, e.pin))
		require.Contains(t, out, "update server_pin in "+e.clientConf)
	})
}

// TestPinMismatchSaysWhatToDo: a client whose server_pin is not the
// server's key exits 1, and its output names both pins, where to find the
// right one, which file to change, and how to keep a server's key.
func TestPinMismatchSaysWhatToDo(t *testing.T) {
	t.Parallel()
	other, err := transport.SelfSigned("127.0.0.1")
	require.NoError(t, err)
	wrong, err := transport.CertificatePin(other)
	require.NoError(t, err)
	e := startIdentityEnv(t, "http://127.0.0.1:1", wrong)
	require.Equal(t, 1, e.client.wait(15*time.Second))
	out := e.client.out.String()
	for _, want := range []string{
		fmt.Sprintf("the server at %s presented key %s, but server_pin is %s", e.tunnel, e.pin, wrong),
		`get the new pin from the server's log ("server started ... pin=") or its state directory`,
		"update server_pin in " + e.clientConf,
		"keep the server's identity with state_dir",
	} {
		require.Contains(t, out, want)
	}
	require.NotContains(t, out, `msg="rules applied"`)
	e.server.signal(syscall.SIGTERM)
	require.Equal(t, 0, e.server.wait(15*time.Second))
}

// TestInitWritesAWorkingSetup runs 'tunnel init DIR', then the two
// commands it prints: the server and the client start from what it wrote,
// and the client connects and applies its rules. init writes the rules as
// commented examples only; the test adds a reverse rule to the server's
// file, as a user would. A second init refuses to overwrite, naming the
// files, unless --force is given.
func TestInitWritesAWorkingSetup(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "qt")
	tunnelAddr, public := e2etest.FreeAddr(t, "udp"), e2etest.FreeAddr(t, "tcp")
	args := []string{"init", dir, "--server-address", tunnelAddr, "--public-http", public, "--client-id", "laptop"}
	in := start(t, "init", args...)
	require.Equal(t, 0, in.wait(30*time.Second), in.out.String())
	printed := in.out.String()
	for _, f := range []string{"server.yaml", "client.yaml", "client.token", filepath.Join("server-state", "identity.key"), filepath.Join("server-state", "identity.crt")} {
		require.Contains(t, printed, filepath.Join(dir, f))
		require.FileExists(t, filepath.Join(dir, f))
	}
	fi, err := os.Stat(filepath.Join(dir, "client.token"))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())

	// The commands to run, as printed ("tunnel server ..." and "tunnel
	// client ...").
	cmds := regexp.MustCompile(`(?m)^\s+tunnel ((?:server|client) .*)$`).FindAllStringSubmatch(printed, -1)
	require.Len(t, cmds, 2, "init prints the server's and the client's command:\n%s", printed)

	up := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "near the laptop") }))
	f, err := os.OpenFile(filepath.Join(dir, "server.yaml"), os.O_APPEND|os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = fmt.Fprintf(f, "  - id: e2e\n    client: laptop\n    direction: reverse\n    host: %s\n    upstream: %q\n", appHost, up)
	require.NoError(t, err)
	require.NoError(t, f.Close())

	srv := start(t, "server", strings.Fields(cmds[0][1])...)
	logged := srv.waitFor(serverPin.String(), 20*time.Second)[1]
	clientYAML, err := os.ReadFile(filepath.Join(dir, "client.yaml"))
	require.NoError(t, err)
	require.Contains(t, string(clientYAML), logged, "client.yaml pins the key the server uses")
	cl := start(t, "client", strings.Fields(cmds[1][1])...)
	cl.waitFor(`msg="rules applied".* rules=1`, 20*time.Second)
	getThrough(t, public, "near the laptop", 10*time.Second)

	again := start(t, "init-again", args...)
	require.Equal(t, 1, again.wait(30*time.Second))
	require.Contains(t, again.out.String(), "--force")
	require.Contains(t, again.out.String(), filepath.Join(dir, "server.yaml"))

	cl.signal(syscall.SIGTERM)
	require.Equal(t, 0, cl.wait(15*time.Second))
	srv.signal(syscall.SIGTERM)
	require.Equal(t, 0, srv.wait(15*time.Second))

	forced := start(t, "init-force", append(args, "--force")...)
	require.Equal(t, 0, forced.wait(30*time.Second), forced.out.String())
	clientYAML2, err := os.ReadFile(filepath.Join(dir, "client.yaml"))
	require.NoError(t, err)
	require.NotEqual(t, string(clientYAML), string(clientYAML2), "--force writes a new key and token")
}
