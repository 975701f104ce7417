package gateway_test

import (
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/config"
	"github.com/qtunnel/qtunnel/gateway"
	"github.com/qtunnel/qtunnel/rules"
)

// TestClientSaysItCannotApplyItsRules: a rule set the client cannot apply
// (its forward port is taken on the client's host) is said on the client
// itself: a warning that names the rule and the cause, /readyz not ready
// with the reason, and /config and the server's /config that keep apart
// the version in force and the one refused.
func TestClientSaysItCannotApplyItsRules(t *testing.T) {
	t.Parallel()
	up := upstream(t, echoInfo("u"))
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer busy.Close()
	clientLog := newRecordKeeper(slog.LevelWarn)
	p := startPair(t, pairOpts{rules: []rules.Rule{reverseRule("rev", appHost, up.URL)},
		serverMutate: func(c *config.Server) { c.Admin.Listen = "127.0.0.1:0" },
		clientMutate: func(c *config.Client) { c.Admin.Listen = "127.0.0.1:0" },
		clientOpts:   []gateway.Option{gateway.WithLogger(slog.New(clientLog))}})
	status, _ := adminGet(t, p.Client.AdminAddr(), "/readyz")
	require.Equal(t, http.StatusOK, status)
	inForce := p.Client.AppliedVersion()

	bad, err := p.Server.Rules().Put(forwardRule("db-admin", busy.Addr().String(), up.URL))
	require.NoError(t, err)
	eventually(t, time.Minute, func() bool { return clientLog.has("rules not applied; the previous ones stay in force") }, "the client warns")
	var rec logRecord
	for _, r := range clientLog.records() {
		if r.msg == "rules not applied; the previous ones stay in force" {
			rec = r
		}
	}
	require.Contains(t, rec.attrs["err"], "rule db-admin")
	require.Contains(t, rec.attrs["err"], "address already in use")

	status, body := adminGet(t, p.Client.AdminAddr(), "/readyz")
	require.Equal(t, http.StatusServiceUnavailable, status)
	require.Contains(t, body, "could not be applied")
	require.Contains(t, body, "rule db-admin")

	var cv struct {
		Version        uint64 `json:"version"`
		RefusedVersion uint64 `json:"refused_version"`
		RefusedError   string `json:"refused_error"`
	}
	_, body = adminGet(t, p.Client.AdminAddr(), "/config")
	require.NoError(t, json.Unmarshal([]byte(body), &cv))
	require.Equal(t, inForce, cv.Version, "the rules in force are the old ones")
	require.Equal(t, bad.Version(), cv.RefusedVersion)
	require.Contains(t, cv.RefusedError, "rule db-admin")

	eventually(t, time.Minute, func() bool {
		_, body := adminGet(t, p.Server.AdminAddr(), "/config")
		var sv struct {
			Sessions []map[string]any `json:"sessions"`
		}
		require.NoError(t, json.Unmarshal([]byte(body), &sv))
		for _, s := range sv.Sessions {
			if s["client"] == clientID {
				return s["applied_version"] == float64(inForce) && s["refused_version"] == float64(bad.Version()) &&
					strings.Contains(s["refused_error"].(string), "address already in use")
			}
		}
		return false
	}, "the server's /config keeps the version in force apart from the refused one")

	// Once the port is free, the next sync applies it and all is well.
	require.NoError(t, busy.Close())
	_, err = p.Server.Rules().Put(forwardRule("db-admin", busy.Addr().String(), up.URL+"/again"))
	require.NoError(t, err)
	eventually(t, time.Minute, func() bool { s, _ := adminGet(t, p.Client.AdminAddr(), "/readyz"); return s == http.StatusOK }, "ready again")
}
