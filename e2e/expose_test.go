package e2e_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/control"
	"github.com/qtunnel/qtunnel/internal/e2etest"
)

// localhostClient resolves every *.localhost name to 127.0.0.1, as curl
// and browsers do.
func localhostClient() *http.Client {
	d := &net.Dialer{Timeout: 5 * time.Second}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			host, port, err := net.SplitHostPort(addr)
			if err == nil && (host == "localhost" || strings.HasSuffix(host, ".localhost")) {
				addr = net.JoinHostPort("127.0.0.1", port)
			}
			return d.DialContext(ctx, network, addr)
		},
	}}
}

// TestExposeFromAnEmptyDirectory is a new user's first five minutes: in an
// empty directory, 'tunnel init', the server, then 'tunnel expose http
// PORT' against a local service. The printed URL answers through the
// tunnel; a claim outside the server's policy is refused with its reason;
// another client cannot claim the same host; Ctrl-C drains and the server
// drops the rule.
func TestExposeFromAnEmptyDirectory(t *testing.T) {
	t.Parallel()
	var hits atomic.Int64
	app := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		fmt.Fprintf(w, "hello from the app, you asked for %s", r.URL.Path)
	}))
	appPort := app[strings.LastIndexByte(app, ':')+1:]
	dir := t.TempDir()
	tunnelAddr := e2etest.FreeAddr(t, "udp")
	public := e2etest.FreeAddr(t, "tcp")

	started := time.Now()
	initp := start(t, "init", "init", dir, "--server-address", tunnelAddr, "--public-http", public)
	require.Zero(t, initp.wait(30*time.Second), "init")
	srv := start(t, "server", "server", filepath.Join(dir, "server.yaml"))
	srv.waitFor(`server started`, 30*time.Second)
	exp := start(t, "expose", "expose", "http", appPort, "--config", filepath.Join(dir, "client.yaml"), "--inspect-addr", e2etest.FreeAddr(t, "tcp"))
	url := exp.waitFor(`Forwarding\s+(http://\S+)\s+->`, 30*time.Second)[1]
	t.Logf("zero to URL: %v, 3 commands (init, server, expose)", time.Since(started).Round(time.Millisecond))
	_, port, _ := net.SplitHostPort(public)
	assert.Equal(t, "http://client1.localhost:"+port+"/", url, "a name under the base domain init wrote")

	c := localhostClient()
	get := func(u string) (int, string) {
		resp, err := c.Get(u)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, string(b)
	}
	code, body := get(url + "hi")
	require.Equal(t, http.StatusOK, code, body)
	assert.Equal(t, "hello from the app, you asked for /hi", body)
	assert.EqualValues(t, 1, hits.Load())

	// A second client, as an operator adds one: the server's file is
	// watched, and the new client gets the same claims.
	const other, otherToken = "client2", "second-client-token"
	cfgPath := filepath.Join(dir, "server.yaml")
	cfg, err := os.ReadFile(cfgPath)
	require.NoError(t, err)
	entry := fmt.Sprintf("  - id: %s\n    token_sha256: %s\n    declare: {base_domain: localhost}\n", other, control.HashToken(otherToken))
	withOther := strings.Replace(string(cfg), "\nclients:\n", "\nclients:\n"+entry, 1)
	require.NotEqual(t, string(cfg), withOther)
	writeFile(t, cfgPath, withOther)
	srv.waitFor(`configuration reloaded`, 30*time.Second)
	clientYAML, err := os.ReadFile(filepath.Join(dir, "client.yaml"))
	require.NoError(t, err)
	otherYAML := strings.Replace(string(clientYAML), "id: client1", "id: "+other, 1)
	otherYAML = strings.Replace(otherYAML, "token_file: client.token", "token: "+otherToken, 1)
	require.Contains(t, otherYAML, "token: "+otherToken)
	writeFile(t, filepath.Join(dir, "client2.yaml"), otherYAML)

	// The same host is the first client's.
	taken := start(t, "expose taken", "expose", "http", appPort, "--config", filepath.Join(dir, "client2.yaml"), "--host", "client1", "--no-inspect")
	assert.Equal(t, 1, taken.wait(30*time.Second), "a refused claim exits 1")
	assert.Contains(t, taken.out.String(), `host "client1.localhost" belongs to client "client1"`)

	// A host outside the policy is refused, saying which policy.
	outside := start(t, "expose outside", "expose", "http", appPort, "--config", filepath.Join(dir, "client2.yaml"), "--host", "app.example.com", "--no-inspect")
	assert.Equal(t, 1, outside.wait(30*time.Second))
	assert.Contains(t, outside.out.String(), `outside what this client may declare: host "app.example.com" is not one label under base_domain "localhost"`)

	// The first client's URL still reaches the first client's app.
	code, _ = get(url)
	assert.Equal(t, http.StatusOK, code)
	assert.EqualValues(t, 2, hits.Load())

	// Ctrl-C drains; the server drops the rule.
	exp.signal(syscall.SIGINT)
	assert.Zero(t, exp.wait(30*time.Second), "expose stops cleanly")
	srv.waitFor(`client's declared rules dropped.*client=client1`, 30*time.Second)
	code, _ = get(url)
	assert.Equal(t, http.StatusNotFound, code, "the rule went with the client")
	assert.EqualValues(t, 2, hits.Load())
}
