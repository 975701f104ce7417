package gateway_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/config"
	"github.com/qtunnel/qtunnel/control"
	"github.com/qtunnel/qtunnel/gateway"
	"github.com/qtunnel/qtunnel/internal/e2etest"
)

// TestReloadAppliesWhatCanChangeLive: a reload of the file applies the log
// level, the access log, the admin token and the request limits at once,
// and names the settings that need a restart (in a warning and in /config)
// instead of saying "reloaded" and changing nothing.
func TestReloadAppliesWhatCanChangeLive(t *testing.T) {
	t.Parallel()
	up := upstream(t, okOrMissing)
	dir := t.TempDir()
	file := filepath.Join(dir, "server.yaml")
	write := func(level string, access bool, adminToken, maxBody, publicHTTP string) {
		doc := fmt.Sprintf(`listen: "127.0.0.1:0"
public_http: %q
clients:
  - id: %s
    token_sha256: %s
rules:
  - {id: rev, client: %s, direction: reverse, host: %s, upstream: %q}
log:
  level: %s
  access: %v
admin:
  listen: "127.0.0.1:0"
  token: %s
limits:
  max_body_size: %s
sync:
  config_poll_interval: 1h
`, publicHTTP, clientID, control.HashToken(token), clientID, appHost, up.URL, level, access, adminToken, maxBody)
		require.NoError(t, os.WriteFile(file, []byte(doc), 0o600))
	}
	write("info", false, "first-admin-token", "10MiB", "127.0.0.1:0")
	cfg, err := config.LoadServer(file)
	require.NoError(t, err)
	out := &e2etest.SyncBuffer{}
	log, err := gateway.NewLogger(cfg.Log, out)
	require.NoError(t, err)
	p := startPair(t, pairOpts{rules: cfg.Rules, serverMutate: func(c *config.Server) { *c = *cfg },
		serverOpts: []gateway.Option{gateway.WithConfigFile(file), gateway.WithLogger(log)}})
	admin := func(tok string) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, "http://"+p.Server.AdminAddr().String()+"/config", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(b)
	}
	post := func(size int) int {
		resp, _ := do(t, h1Client(t), newRequest(t, http.MethodPost, p.publicURL("/up"), appHost, strings.NewReader(strings.Repeat("x", size))))
		return resp.StatusCode
	}
	status, _ := admin("first-admin-token")
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, http.StatusOK, post(2048))
	require.NotContains(t, out.String(), `msg=access`)
	require.False(t, log.Enabled(context.Background(), slog.LevelDebug))

	write("debug", true, "second-admin-token", "1KiB", "127.0.0.1:1")
	require.NoError(t, p.Server.Reload())

	status, _ = admin("first-admin-token")
	require.Equal(t, http.StatusUnauthorized, status, "the old admin token no longer works")
	status, body := admin("second-admin-token")
	require.Equal(t, http.StatusOK, status, "the new one does")
	require.Equal(t, http.StatusRequestEntityTooLarge, post(2048), "the new body limit is in force")
	require.Contains(t, out.String(), `msg=access`, "the access log is on")
	require.True(t, log.Enabled(context.Background(), slog.LevelDebug), "the level is debug")
	require.Contains(t, out.String(), `msg="settings changed live"`)
	require.Contains(t, out.String(), `msg="settings changed in the configuration file take effect at the next restart" side=server settings=[public_http]`)
	var v struct {
		PendingRestart []string `json:"pending_restart"`
	}
	require.NoError(t, json.Unmarshal([]byte(body), &v))
	require.Equal(t, []string{"public_http"}, v.PendingRestart)

	// The file goes back: nothing is pending any more.
	write("debug", true, "second-admin-token", "1KiB", "127.0.0.1:0")
	require.NoError(t, p.Server.Reload())
	_, body = admin("second-admin-token")
	v.PendingRestart = nil
	require.NoError(t, json.Unmarshal([]byte(body), &v))
	require.Empty(t, v.PendingRestart)
}
