package e2e_test

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/internal/e2etest"
)

// TestAPIRuleChangesSurviveReloadAndRestart: a rule added through the
// admin API stays in force when the configuration file is edited (a
// comment is enough to reload it) and when the server restarts, and the
// API says where each rule comes from.
func TestAPIRuleChangesSurviveReloadAndRestart(t *testing.T) {
	t.Parallel()
	up := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "up") }))
	admin := e2etest.FreeAddr(t, "tcp")
	const adminToken = "admin-token-for-the-test"
	e := startEnv(t, envOpts{nearClient: up, nearServer: up,
		serverYAML: fmt.Sprintf("admin:\n  listen: %s\n  token: %s\nsync:\n  config_poll_interval: 100ms\n", admin, adminToken)})
	e.waitReady(t)
	c := newClient(t)
	status := func() int {
		resp, err := c.Do(request(t, http.MethodGet, "http://"+e.public+"/", "api.test", nil))
		if err != nil {
			return 0
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	api := func(method, path, body string) (int, string) {
		req, err := http.NewRequest(method, "http://"+admin+path, strings.NewReader(body))
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+adminToken)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(b)
	}
	served := func(label string) {
		t.Helper()
		deadline := time.Now().Add(time.Minute) // a hang guard
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for status() != http.StatusOK {
			require.True(t, time.Now().Before(deadline), "%s: the API's rule does not serve", label)
			<-tick.C
		}
	}
	code, body := api(http.MethodPut, "/rules/api", fmt.Sprintf(`{"client":%q,"direction":"reverse","host":"api.test","upstream":%q}`, clientID, up))
	require.Equal(t, http.StatusOK, code, body)
	served("after the PUT")

	// The file is edited: a comment only, and the server reloads it.
	b, err := os.ReadFile(e.serverConf)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(e.serverConf, append(b, []byte("# edited by hand\n")...), 0o600))
	e.server.waitFor(`msg="configuration reloaded"`, time.Minute)
	served("after the file was reloaded")
	_, body = api(http.MethodGet, "/rules", "")
	require.Contains(t, body, `"source": "api"`)
	require.Contains(t, body, `"source": "file"`)

	// The server restarts with the same configuration.
	e.server.signal(syscall.SIGTERM)
	require.Equal(t, 0, e.server.wait(time.Minute))
	e.server = start(t, "server", "server", "-config", e.serverConf)
	e.server.waitFor(`msg="server started"`, time.Minute)
	e.server.waitFor(`msg="rules changed through the admin API kept in force"`, time.Minute)
	served("after the restart")
}
