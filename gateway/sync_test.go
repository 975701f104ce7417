package gateway_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/admin"
	"github.com/qtunnel/qtunnel/config"
	"github.com/qtunnel/qtunnel/control"
	"github.com/qtunnel/qtunnel/gateway"
	"github.com/qtunnel/qtunnel/rules"
)

const adminToken = "admin-secret"

// apiCall sends an admin API request and decodes the JSON answer.
func apiCall(t *testing.T, method, url string, body any) (int, map[string]any) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		require.NoError(t, err)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, url, rd)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+adminToken)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

func statusOf(t *testing.T, c *http.Client, url, host string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Host = host
	resp, err := c.Do(req)
	if err != nil {
		return 0
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// noPeriodicSync leaves the push as the only way a rule change reaches a
// connected client during a test: the hash check and the full sync, which
// would repair a lost push, never run. A change seen on the client is then
// the push's doing, however long it took.
func noPeriodicSync(c *config.Server) {
	c.Sync.HashCheckInterval = time.Hour
	c.Sync.FullSyncInterval = time.Hour
}

// TestAdminAPIChangesRulesLiveAndRefusesBadOnes: rules changed through the
// admin API are pushed to the client (no periodic sync runs here), bad
// ones are refused with the reason, and the server's view shows what the
// client applied.
func TestAdminAPIChangesRulesLiveAndRefusesBadOnes(t *testing.T) {
	t.Parallel()
	up := upstream(t, echoInfo("u"))
	p := startPair(t, pairOpts{
		rules: []rules.Rule{reverseRule("stay", "stay.test", up.URL)},
		serverMutate: func(c *config.Server) {
			noPeriodicSync(c)
			c.Admin = admin.Config{Listen: "127.0.0.1:0", Token: adminToken}
			c.Clients = append(c.Clients, config.ClientEntry{ID: "other", TokenSHA256: control.HashToken("x").String()})
			c.Rules = append(c.Rules, rules.Rule{ID: "other-rule", Client: "other", Direction: rules.Reverse, Host: "taken.test", Upstream: up.URL})
		},
	})
	api := "http://" + p.Server.AdminAddr().String()
	c := h1Client(t)
	v0 := p.Server.Rules().Table().Version()

	added := rules.Rule{Client: clientID, Direction: rules.Reverse, Host: "new.test", Upstream: up.URL}
	code, out := apiCall(t, http.MethodPut, api+"/rules/new", added)
	require.Equal(t, 200, code, out)
	require.EqualValues(t, v0+1, out["version"])
	require.Equal(t, true, out["changed"])
	code, out = apiCall(t, http.MethodPut, api+"/rules/new", added)
	require.Equal(t, 200, code, out)
	require.EqualValues(t, v0+1, out["version"], "the same rule again is no new version")
	require.Equal(t, false, out["changed"])
	eventually(t, 30*time.Second, func() bool { return statusOf(t, c, p.publicURL("/"), "new.test") == 200 }, "a new rule is pushed to the client and serves")

	code, out = apiCall(t, http.MethodGet, api+"/rules/new", nil)
	require.Equal(t, 200, code)
	require.Equal(t, "new.test", out["host"])

	bad := []struct {
		name string
		rule any
		says string
	}{
		{"host of another client", rules.Rule{Client: clientID, Direction: rules.Reverse, Host: "taken.test", Upstream: up.URL}, `belongs to client "other" (rule "other-rule")`},
		{"bad upstream", rules.Rule{Client: clientID, Direction: rules.Reverse, Host: "x.test", Upstream: "ftp://x"}, "scheme must be http or https"},
		{"unknown field", map[string]any{"client": clientID, "direction": "reverse", "host": "y.test", "upstream": up.URL, "colour": "red"}, `unknown field "colour"`},
	}
	for _, b := range bad {
		code, out := apiCall(t, http.MethodPut, api+"/rules/bad", b.rule)
		require.Equal(t, 400, code, b.name)
		require.Contains(t, out["error"], b.says, b.name)
	}
	require.Equal(t, v0+1, p.Server.Rules().Table().Version(), "refused changes leave the version alone")
	require.Equal(t, 200, statusOf(t, c, p.publicURL("/"), "stay.test"), "and the rules in force keep serving")

	code, _ = apiCall(t, http.MethodDelete, api+"/rules/new", nil)
	require.Equal(t, 200, code)
	eventually(t, 30*time.Second, func() bool { return statusOf(t, c, p.publicURL("/"), "new.test") == 404 }, "a removed rule answers 404")
	code, _ = apiCall(t, http.MethodDelete, api+"/rules/new", nil)
	require.Equal(t, 404, code)

	// Without the token, nothing changes.
	req, _ := http.NewRequest(http.MethodDelete, api+"/rules/stay", nil)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)

	// The server's view shows what the client applied, once its APPLIED
	// report for the last change has arrived.
	want := float64(p.Server.Rules().Table().Version())
	var mine map[string]any
	eventually(t, 30*time.Second, func() bool {
		code, out = apiCall(t, http.MethodGet, api+"/config", nil)
		require.Equal(t, 200, code)
		mine = nil
		for _, s := range out["sessions"].([]any) {
			if s.(map[string]any)["client"] == clientID {
				mine = s.(map[string]any)
			}
		}
		require.NotNil(t, mine)
		return mine["applied_version"] == want
	}, "the client's applied version reaches the server's view")
	require.NotEmpty(t, mine["applied_hash"], "with its hash")
}

func TestAdminAPIWithoutATokenIsReadOnly(t *testing.T) {
	t.Parallel()
	up := upstream(t, echoInfo("u"))
	p := startPair(t, pairOpts{
		rules:        []rules.Rule{reverseRule("a", "a.test", up.URL)},
		serverMutate: func(c *config.Server) { c.Admin = admin.Config{Listen: "127.0.0.1:0"} },
	})
	api := "http://" + p.Server.AdminAddr().String()
	v := p.Server.Rules().Table().Version()
	code, out := apiCall(t, http.MethodGet, api+"/rules/a", nil)
	require.Equal(t, 200, code, out)
	require.Equal(t, "a.test", out["host"])
	for _, c := range []struct {
		method string
		body   any
	}{
		{http.MethodPut, rules.Rule{Client: clientID, Direction: rules.Reverse, Host: "b.test", Upstream: up.URL}},
		{http.MethodDelete, nil},
	} {
		code, out = apiCall(t, c.method, api+"/rules/a", c.body)
		require.Equal(t, http.StatusForbidden, code, c.method)
		require.Contains(t, out["error"], "read-only", c.method)
	}
	require.Equal(t, v, p.Server.Rules().Table().Version(), "nothing changed")
	require.Equal(t, "a.test", p.Server.Rules().Table().ByID("a").Host)
}

func TestConfigFileReloadIsValidatedAndAtomic(t *testing.T) {
	t.Parallel()
	up := upstream(t, echoInfo("u"))
	dir := t.TempDir()
	file := filepath.Join(dir, "server.yaml")
	tok := token // the client's token in the file
	// No periodic sync (see noPeriodicSync): a rule added to the file
	// reaches the client by the push that follows the reload.
	write := func(rulesYAML string) {
		doc := fmt.Sprintf("listen: \"127.0.0.1:0\"\npublic_http: \"127.0.0.1:0\"\nclients:\n  - id: %s\n    token_sha256: %s\nsync:\n  config_poll_interval: 20ms\n  hash_check_interval: 1h\n  full_sync_interval: 1h\nrules:\n%s",
			clientID, control.HashToken(tok), rulesYAML)
		require.NoError(t, os.WriteFile(file, []byte(doc), 0o600))
	}
	rule := func(id, host string) string {
		return fmt.Sprintf("  - id: %s\n    client: %s\n    direction: reverse\n    host: %s\n    upstream: %q\n", id, clientID, host, up.URL)
	}
	write(rule("a", "a.test"))
	cfg, err := config.LoadServer(file)
	require.NoError(t, err)
	logs := newRecordKeeper(slog.LevelError)
	p := startPair(t, pairOpts{serverMutate: func(c *config.Server) { *c = *cfg },
		serverOpts: []gateway.Option{gateway.WithConfigFile(file), gateway.WithLogger(slog.New(logs))}})
	c := h1Client(t)
	require.Equal(t, 200, statusOf(t, c, p.publicURL("/"), "a.test"))

	write(rule("a", "a.test") + rule("b", "b.test"))
	eventually(t, 30*time.Second, func() bool { return statusOf(t, c, p.publicURL("/"), "b.test") == 200 }, "an edited file is picked up and pushed to the client")
	v := p.Server.Rules().Table().Version()

	write(rule("a", "a.test") + "  - id: c\n    client: " + clientID + "\n    direction: reverse\n    hots: c.test\n    upstream: \"http://x\"\n")
	err = p.Server.Reload()
	var ps config.Problems
	require.ErrorAs(t, err, &ps)
	require.Contains(t, ps.Error(), "server.yaml:19: rules[1].hots: unknown setting; did you mean host?", "the reason names the file and line")
	require.Equal(t, v, p.Server.Rules().Table().Version(), "a bad file changes nothing")
	require.Equal(t, 200, statusOf(t, c, p.publicURL("/"), "b.test"), "the previous rules keep serving")
	refused := false
	for _, r := range logs.records() {
		refused = refused || r.msg == "configuration not reloaded; the rules in force keep serving" &&
			r.attrs["file"] == file && strings.Contains(r.attrs["err"], "rules[1].hots: unknown setting")
	}
	require.True(t, refused, "the refusal is logged at error, with the file and the reason: %v", logs.records())

	// A file that changes a connected client's token disconnects it; its
	// old token no longer gets it in, so it stops.
	p.clientMayFail = true
	tok = "rotated"
	write(rule("a", "a.test"))
	require.Error(t, p.clientResult(t, 30*time.Second), "the client is refused")
	eventually(t, 30*time.Second, func() bool { return p.Server.Sessions().Conn(clientID) == nil }, "the connection is gone")
}

// TestCorruptedClientTableIsRepairedByTheHashCheck: a client whose rule
// table went wrong behind the control protocol's back (a bug, a bit flip)
// has it repaired by the periodic hash check: the server finds that the
// client's hash differs from its own and sends a snapshot, and says so in
// its log. The full sync, which would repair the table too, is an hour
// apart, so the repair is the hash check's however long it takes.
func TestCorruptedClientTableIsRepairedByTheHashCheck(t *testing.T) {
	t.Parallel()
	up := upstream(t, echoInfo("u"))
	const (
		interval  = 300 * time.Millisecond
		outOfDate = "client rules out of date; sending a snapshot"
	)
	srvLog := newRecordKeeper(slog.LevelInfo)
	p := startPair(t, pairOpts{
		rules: []rules.Rule{reverseRule("a", "a.test", up.URL), reverseRule("b", "b.test", up.URL)},
		serverMutate: func(c *config.Server) {
			c.Sync.HashCheckInterval = interval
			c.Sync.FullSyncInterval = time.Hour
		},
		serverOpts: []gateway.Option{gateway.WithLogger(slog.New(srvLog))},
	})
	// repairs are the server's records of a snapshot sent because the
	// client's hash differed, for the client at version v.
	repairs := func(v uint64) int {
		n := 0
		for _, r := range srvLog.records() {
			if r.msg == outOfDate && r.attrs["client"] == clientID && r.attrs["client_version"] == fmt.Sprint(v) {
				n++
			}
		}
		return n
	}
	c := h1Client(t)
	require.Equal(t, 200, statusOf(t, c, p.publicURL("/"), "b.test"))
	good := p.Client.Rules()
	broken, err := rules.NewTable(good.Version(), good.Rules()[:1]) // rule b lost, same version
	require.NoError(t, err)
	before, conn := repairs(good.Version()), p.Server.Sessions().Conn(clientID)
	require.NotNil(t, conn)
	p.Client.CorruptRulesForTest(broken)
	start := time.Now()
	// The corruption bites, unless a hash check came first and the repair
	// is already under way (then the server has logged it).
	if code := statusOf(t, c, p.publicURL("/"), "b.test"); code != 404 {
		require.Greater(t, repairs(good.Version()), before,
			"b.test answered %d while rule b was missing from the client's table, and no repair was logged", code)
	}
	eventually(t, 30*time.Second, func() bool { return p.Client.Rules().Hash() == good.Hash() }, "the client's table is repaired")
	require.Equal(t, 200, statusOf(t, c, p.publicURL("/"), "b.test"), "rule b serves again")
	require.Greater(t, repairs(good.Version()), before,
		"the repair is a snapshot the server sent because the hashes differed (no periodic full sync runs): %v", srvLog.records())
	require.Same(t, conn, p.Server.Sessions().Conn(clientID), "the same connection throughout: no reconnect resynced the client")
	t.Logf("repaired %v after the corruption (hash check every %v)", time.Since(start).Round(time.Millisecond), interval)
}

// TestSessionsExpireAndResume: a client that comes back before its
// session's TTL has passed resumes the session; one that stays away past
// the TTL loses it to the sweep and gets a new one when it comes back.
// Each case has a TTL that settles which side of it the client is on,
// whatever the machine's speed: an hour to resume, 100ms to lose it (the
// test waits for the sweep to remove the session before coming back).
func TestSessionsExpireAndResume(t *testing.T) {
	t.Parallel()
	up := upstream(t, echoInfo("u"))
	// away starts a pair with the given session TTL, stops its client and
	// returns the pair and the session the client had.
	away := func(t *testing.T, ttl time.Duration) (*pair, string) {
		p := startPair(t, pairOpts{
			rules: []rules.Rule{reverseRule("a", "a.test", up.URL)},
			serverMutate: func(c *config.Server) {
				c.Sessions = config.Sessions{SweepInterval: 20 * time.Millisecond, TTL: ttl}
			},
		})
		first := p.Server.Sessions().Sessions()
		require.Len(t, first, 1)
		p.stopClient(t)
		eventually(t, 30*time.Second, func() bool { return p.Server.Sessions().Conn(clientID) == nil }, "the session lost its connection")
		return p, first[0].ID
	}
	t.Run("back within the TTL", func(t *testing.T) {
		t.Parallel()
		p, id := away(t, time.Hour)
		c2 := startClientFor(t, p.Server)
		eventually(t, 30*time.Second, func() bool { return p.Server.Sessions().Conn(clientID) != nil }, "reconnected")
		require.Len(t, p.Server.Sessions().Sessions(), 1)
		require.Equal(t, id, p.Server.Sessions().Sessions()[0].ID, "same session")
		c2.stop(t)
	})
	t.Run("back after the TTL", func(t *testing.T) {
		t.Parallel()
		p, id := away(t, 100*time.Millisecond)
		eventually(t, 30*time.Second, func() bool { return len(p.Server.Sessions().Sessions()) == 0 }, "the sweep removes an idle session after its TTL")
		c3 := startClientFor(t, p.Server)
		require.Len(t, p.Server.Sessions().Sessions(), 1)
		require.NotEqual(t, id, p.Server.Sessions().Sessions()[0].ID, "a new session")
		c3.stop(t)
	})
}

// startClientFor starts a client against an existing server and waits
// until it has applied its rules.
func startClientFor(t *testing.T, s *gateway.Server) *runningClient {
	t.Helper()
	rc := runClient(t, clientConfig(s.TunnelAddr().String(), s.Pin()))
	select {
	case <-rc.Ready():
	case err := <-rc.done:
		t.Fatalf("client stopped: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("client not ready")
	}
	return rc
}
