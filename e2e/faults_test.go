package e2e_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/internal/e2etest"
)

// TestServerKilledAndRestarted kills the server with SIGKILL twice: once
// long enough for the client to notice and back off to its cap, once
// restarted at once as a supervisor would. Both times traffic resumes in
// both directions without anyone touching the client; the first time the
// client never waits longer than its backoff cap (500ms in the harness)
// between attempts, and the second it learns of the restart from the new
// server's stateless reset. How long resuming took is logged, not checked.
func TestServerKilledAndRestarted(t *testing.T) {
	t.Parallel()
	up := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "up") }))
	// A short idle timeout makes the client notice a dead server quickly;
	// the keep-alive also sets the client's heartbeat, a control message
	// large enough for a restarted server to answer with a stateless reset
	// (QUIC's own keep-alive packets are too small to draw one).
	e := startEnv(t, envOpts{nearClient: up, nearServer: up,
		serverYAML: "quic:\n  idle_timeout: 2s\n  keep_alive: 300ms\n",
		clientYAML: "quic:\n  idle_timeout: 2s\n  keep_alive: 300ms\n"})
	e.waitReady(t)
	c := newClient(t)
	c.Timeout = 2 * time.Second
	both := func() bool {
		for _, u := range []struct{ url, host string }{{"http://" + e.public + "/", appHost}, {"http://" + e.forward + "/", ""}} {
			resp, err := c.Do(request(t, http.MethodGet, u.url, u.host, nil))
			if err != nil {
				return false
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return false
			}
		}
		return true
	}
	require.True(t, both())
	const backoffCap = 500 * time.Millisecond // reconnect.max in the harness

	resumed := func(label string) {
		t0 := time.Now()
		deadline := t0.Add(time.Minute) // a hang guard
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for !both() {
			require.True(t, time.Now().Before(deadline), "%s: traffic did not resume within a minute", label)
			<-tick.C
		}
		c.CloseIdleConnections()
		t.Logf("%s: traffic resumed both ways %v after the new server started", label, time.Since(t0).Round(time.Millisecond))
	}

	// 1. Killed and down long enough for the client to give up on the
	// connection and back off to the cap: from 50ms doubling, the fifth
	// wait on would be over 500ms without it, and eight waits make a wait
	// past the cap all but certain to show if the cap were not applied.
	e.server.signal(syscall.SIGKILL)
	e.server.wait(30 * time.Second)
	e.client.waitFor(`msg="connection to server lost"`, 30*time.Second)
	e.client.waitFor(`msg="cannot reach server; retrying".*attempt=8`, 60*time.Second)
	e.server = start(t, "server-2", "server", "-config", e.serverConf)
	e.server.waitFor(`msg="server started"`, 30*time.Second)
	resumed("after an outage")
	waits := regexp.MustCompile(`msg="cannot reach server; retrying" .*?\bin=(\S+)`).FindAllStringSubmatch(e.client.out.String(), -1)
	require.GreaterOrEqual(t, len(waits), 8, "the client logs each wait before a new attempt")
	for _, m := range waits {
		d, err := time.ParseDuration(m[1])
		require.NoError(t, err, m[0])
		assert.LessOrEqual(t, d, backoffCap, "a wait between attempts is over reconnect.max: %s", m[0])
	}

	// 2. Killed and restarted at once: the client still holds its old
	// connection and learns from the new server's stateless reset.
	mark := len(e.client.out.String())
	e.server.signal(syscall.SIGKILL)
	e.server.wait(30 * time.Second)
	e.server = start(t, "server-3", "server", "-config", e.serverConf)
	e.server.waitFor(`msg="server started"`, 30*time.Second)
	resumed("after an immediate restart")
	assert.Contains(t, e.client.out.String()[mark:], "stateless reset", "the client learnt of the restart by a stateless reset")
}

// dyingUpstream is an upstream that is killed while it answers: it reads
// the request, writes a head and part of the body as the path asks, and
// then resets the connection, as the kernel does for a killed process.
//
//	/before   dies before answering anything
//	/half     writes half a head and closes (FIN, not a reset)
//	/length   200 with Content-Length 1 MiB, dies after 64 KiB
//	/chunked  200 chunked, dies after a 64 KiB chunk
func dyingUpstream(t *testing.T) string {
	t.Helper()
	return "http://" + e2etest.TCPUpstream(t, 30*time.Second, func(c net.Conn) {
		req, err := http.ReadRequest(bufio.NewReader(c))
		if err != nil {
			return
		}
		part := strings.Repeat("x", 64<<10)
		switch req.URL.Path {
		case "/half":
			fmt.Fprint(c, "HTTP/1.1 200 OK\r\nContent-")
			return
		case "/length":
			fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", 1<<20, part)
		case "/chunked":
			fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n", len(part), part)
		}
		_ = c.(*net.TCPConn).SetLinger(0) // close with a reset
	})
}

// TestUpstreamKilledMidResponse: the caller gets a clean error, never a
// hang and never a truncated body passed off as whole, in both directions.
func TestUpstreamKilledMidResponse(t *testing.T) {
	t.Parallel()
	up := dyingUpstream(t)
	e := startEnv(t, envOpts{nearClient: up, nearServer: up})
	e.waitReady(t)
	c := newClient(t)
	c.Timeout = 20 * time.Second
	for _, dir := range []struct{ name, base, host string }{
		{"reverse", "http://" + e.public, appHost},
		{"forward", "http://" + e.forward, ""},
	} {
		t.Run(dir.name, func(t *testing.T) {
			resp, err := c.Do(request(t, http.MethodGet, dir.base+"/before", dir.host, nil))
			require.NoError(t, err)
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			assert.Equal(t, http.StatusBadGateway, resp.StatusCode, "an upstream that died before answering: %s", body)
			assert.NotEmpty(t, strings.TrimSpace(string(body)), "the 502 says why")

			resp, err = c.Do(request(t, http.MethodGet, dir.base+"/half", dir.host, nil))
			require.NoError(t, err)
			body, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
			assert.Equal(t, http.StatusBadGateway, resp.StatusCode, "an upstream that closed mid-head: %s", body)
			assert.Contains(t, string(body), "upstream", "the 502 blames the upstream, not the tunnel")

			for _, path := range []string{"/length", "/chunked"} {
				t0 := time.Now()
				resp, err := c.Do(request(t, http.MethodGet, dir.base+path, dir.host, nil))
				require.NoError(t, err, path)
				require.Equal(t, http.StatusOK, resp.StatusCode, path)
				n, err := io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				require.Error(t, err, "%s: the body was cut, the caller must see an error (got %d bytes)", path, n)
				assert.Less(t, n, int64(1<<20), path)
				t.Logf("%s%s: %d bytes, then %v after %v", dir.name, path, n, err, time.Since(t0).Round(time.Millisecond))
			}
		})
	}
	// The tunnel itself is unharmed: the failures were per request.
	assert.NotContains(t, e.client.out.String(), "connection to server lost")
}

// TestClientSurvivesSIGHUP: SIGHUP reloads the server; the client, whose
// rules come from the server, says it ignores it and keeps serving.
func TestClientSurvivesSIGHUP(t *testing.T) {
	t.Parallel()
	up := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "up") }))
	e := startEnv(t, envOpts{nearClient: up, nearServer: up})
	e.waitReady(t)
	e.client.signal(syscall.SIGHUP)
	e.client.waitFor(`msg="SIGHUP ignored`, 10*time.Second)
	resp, err := newClient(t).Do(request(t, http.MethodGet, "http://"+e.forward+"/", "", nil))
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "up", string(body))
	e.client.signal(syscall.SIGTERM)
	assert.Equal(t, 0, e.client.wait(20*time.Second), "the client still drains and exits cleanly")
}

// TestServerReloadsOnSIGHUP: with the file watch too slow to notice (an
// hour), SIGHUP alone makes the server read its edited file: the new rule
// serves, and the client, sent the change, applies it.
func TestServerReloadsOnSIGHUP(t *testing.T) {
	t.Parallel()
	up := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "up") }))
	e := startEnv(t, envOpts{nearClient: up, nearServer: up, serverYAML: "sync:\n  config_poll_interval: 1h\n"})
	e.waitReady(t)
	c := newClient(t)
	status := func() int {
		resp, err := c.Do(request(t, http.MethodGet, "http://"+e.public+"/", "hup.test", nil))
		require.NoError(t, err)
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	require.Equal(t, http.StatusNotFound, status())
	e.writeServerConfig(t, fmt.Sprintf("  - {id: hup, client: %s, direction: reverse, host: hup.test, upstream: %q}\n", clientID, up))
	e.server.signal(syscall.SIGHUP)
	e.server.waitFor(`msg="configuration reloaded on SIGHUP"`, 10*time.Second)
	e.client.waitFor(`msg="rules applied".*version=2`, 10*time.Second)
	require.Equal(t, http.StatusOK, status(), "the rule added by the reload serves")
}
