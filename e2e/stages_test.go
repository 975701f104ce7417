package e2e_test

import (
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"

	"github.com/qtunnel/qtunnel/control"
	"github.com/qtunnel/qtunnel/internal/e2etest"
)

// TestRuleStagesBetweenProcesses: rules' own stage lists, written in the
// server's YAML, run between real server and client processes: on the
// server for reverse rules, on the client for forward rules (the client
// gets them with its rules). ipfilter refuses with 403, auth with 401 and
// its challenge (Basic with a bcrypt htpasswd line, checked with curl -u;
// Bearer with a token by its SHA-256); the right credentials reach the
// upstream, which never sees them; a refused request never reaches it.
func TestRuleStagesBetweenProcesses(t *testing.T) {
	t.Parallel()
	var reached atomic.Int64
	echo := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reached.Add(1)
		fmt.Fprintf(w, "%s authorization=%q", r.Host, r.Header.Get("Authorization"))
	}))
	hash, err := bcrypt.GenerateFromPassword([]byte("open sesame"), bcrypt.MinCost)
	require.NoError(t, err)
	fwdAuth, fwdDeny := e2etest.FreeAddr(t, "tcp"), e2etest.FreeAddr(t, "tcp")
	basic := fmt.Sprintf("      - auth: {realm: e2e, basic: {users: [%q]}}\n", "alice:"+string(hash))
	bearer := fmt.Sprintf("      - auth: {bearer: {tokens_sha256: [%s]}}\n", control.HashToken("fwd-token"))
	deny := "      - ipfilter: {deny: [127.0.0.0/8, \"::1\"]}\n"
	allow := "      - ipfilter: {allow: [127.0.0.0/8]}\n"
	rule := func(id, dir, where, up, stages string) string {
		key := "host"
		if dir == "forward" {
			key = "listen"
		}
		return fmt.Sprintf("  - id: %s\n    client: %s\n    direction: %s\n    %s: %s\n    upstream: %q\n    stages:\n%s", id, clientID, dir, key, where, up, stages)
	}
	extra := rule("rev-basic", "reverse", "basic.e2e.test", echo, allow+basic) +
		rule("rev-deny", "reverse", "deny.e2e.test", echo, deny) +
		rule("fwd-bearer", "forward", fwdAuth, echo, bearer) +
		rule("fwd-deny", "forward", fwdDeny, echo, deny)
	e := startEnv(t, envOpts{nearClient: echo, nearServer: echo, extraRules: extra})
	e.waitReady(t)

	c := newClient(t)
	send := func(url, host, authorization string) (int, string, http.Header) {
		req := request(t, http.MethodGet, url, host, nil)
		if authorization != "" {
			req.Header.Set("Authorization", authorization)
		}
		resp, err := c.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), resp.Header
	}
	before := reached.Load()

	// Reverse, on the server.
	code, body, h := send("http://"+e.public+"/", "basic.e2e.test", "")
	require.Equal(t, http.StatusUnauthorized, code, body)
	require.Equal(t, `Basic realm="e2e", charset="UTF-8"`, h.Get("Www-Authenticate"))
	code, body, _ = send("http://"+e.public+"/", "basic.e2e.test", "Basic YWxpY2U6d3Jvbmc=") // alice:wrong
	require.Equal(t, http.StatusUnauthorized, code, body)
	code, body, _ = send("http://"+e.public+"/", "deny.e2e.test", "")
	require.Equal(t, http.StatusForbidden, code, body)

	// Forward, on the client.
	code, body, h = send("http://"+fwdAuth+"/", "", "")
	require.Equal(t, http.StatusUnauthorized, code, body)
	require.Equal(t, `Bearer realm="qtunnel"`, h.Get("Www-Authenticate"))
	code, body, _ = send("http://"+fwdDeny+"/", "", "")
	require.Equal(t, http.StatusForbidden, code, body)
	require.Equal(t, before, reached.Load(), "no refused request reached the upstream")

	code, body, _ = send("http://"+fwdAuth+"/", "", "Bearer fwd-token")
	require.Equal(t, http.StatusOK, code, body)
	require.True(t, strings.HasSuffix(body, `authorization=""`), "the upstream does not see the gateway's credentials: %s", body)

	// The right password, with a real client.
	curl, err := exec.LookPath("curl")
	if err != nil {
		code, body, _ = send("http://"+e.public+"/", "basic.e2e.test", "Basic YWxpY2U6b3BlbiBzZXNhbWU=") // alice:open sesame
		t.Log("curl is not installed (.ci/run installs it): the Basic login was checked with net/http")
	} else {
		out, err := exec.Command(curl, "-sS", "--max-time", "20", "-o", "/dev/stdout", "-w", "\n%{http_code}",
			"-u", "alice:open sesame", "-H", "Host: basic.e2e.test", "http://"+e.public+"/").CombinedOutput()
		require.NoError(t, err, string(out))
		lines := strings.Split(string(out), "\n")
		body = lines[0]
		_, _ = fmt.Sscan(lines[len(lines)-1], &code)
	}
	require.Equal(t, http.StatusOK, code, body)
	require.Equal(t, `basic.e2e.test authorization=""`, body)
	require.Equal(t, before+2, reached.Load())
	t.Logf("reverse on the server: 401 (no and wrong credentials), 403 (denied), 200 with alice's password; forward on the client: 401, 403, 200 with the token; refused requests that reached the upstream: 0")
}

// TestHeaderRulesBetweenProcesses: the headers stage, in rules' stage
// lists, edits the request the upstream gets and the answer the user gets,
// on a reverse rule (on the server) and a forward rule (on the client),
// between real processes. Its response rules edit a refusal too: an auth
// stage after it answers 401, which carries the headers rule's fields.
func TestHeaderRulesBetweenProcesses(t *testing.T) {
	t.Parallel()
	up := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Upstream-Secret", "leak")
		w.Header().Set("X-Powered-By", "upstream")
		fmt.Fprintf(w, "tenant=%q secret=%q", r.Header.Get("X-Tenant"), r.Header.Get("X-Secret"))
	}))
	hdrs := "      - headers: {request: {set: {X-Tenant: acme}, remove: [X-Secret]}, " +
		"response: {set: {X-Frame-Options: DENY, X-Powered-By: qtunnel}, remove: [X-Upstream-Secret]}}\n"
	bearer := fmt.Sprintf("      - auth: {bearer: {tokens_sha256: [%s]}}\n", control.HashToken("hdr-token"))
	fwd := e2etest.FreeAddr(t, "tcp")
	extra := fmt.Sprintf("  - id: rev-hdr\n    client: %s\n    direction: reverse\n    host: hdr.e2e.test\n    upstream: %q\n    stages:\n%s", clientID, up, hdrs) +
		fmt.Sprintf("  - id: fwd-hdr\n    client: %s\n    direction: forward\n    listen: %s\n    upstream: %q\n    stages:\n%s", clientID, fwd, up, hdrs+bearer)
	e := startEnv(t, envOpts{nearClient: up, nearServer: up, extraRules: extra})
	e.waitReady(t)

	c := newClient(t)
	send := func(url, host, token string) (int, string, http.Header) {
		req := request(t, http.MethodGet, url, host, nil)
		req.Header.Set("X-Secret", "from-the-user")
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := c.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), resp.Header
	}
	for _, c := range []struct{ name, url, host, token string }{
		{"reverse, on the server", "http://" + e.public + "/", "hdr.e2e.test", ""},
		{"forward, on the client", "http://" + fwd + "/", "", "hdr-token"},
	} {
		code, body, h := send(c.url, c.host, c.token)
		require.Equal(t, http.StatusOK, code, "%s: %s", c.name, body)
		require.Equal(t, `tenant="acme" secret=""`, body, c.name)
		require.Equal(t, "DENY", h.Get("X-Frame-Options"), c.name)
		require.Equal(t, []string{"qtunnel"}, h.Values("X-Powered-By"), c.name)
		require.Empty(t, h.Values("X-Upstream-Secret"), c.name)
		require.NotEmpty(t, h.Get("X-Request-Id"), c.name)
	}
	code, body, h := send("http://"+fwd+"/", "", "")
	require.Equal(t, http.StatusUnauthorized, code, body)
	require.Equal(t, `Bearer realm="qtunnel"`, h.Get("Www-Authenticate"))
	require.Equal(t, "DENY", h.Get("X-Frame-Options"), "the refusal passes back through the headers stage")
	require.NotEmpty(t, h.Get("X-Request-Id"))
	t.Logf("reverse and forward: the upstream got X-Tenant and not X-Secret; the user got X-Frame-Options, X-Powered-By rewritten and not X-Upstream-Secret; the 401 of the auth stage after headers carried X-Frame-Options")
}
