package e2e_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/internal/e2etest"
	vegeta "github.com/tsenart/vegeta/v12/lib"
)

// TestRulesChangeUnderSteadyLoad sends 1200 requests/s (as many as the
// machine manages; the rate reached is logged) to an unchanged rule for
// more than 20 s while another rule is added, changed and removed 50
// times, through the admin API and through the configuration file, between
// real server and client processes. Not one request on the unchanged rule
// may fail, and some of them are answered while the changes are made.
// Every change must reach the client by the server's push: the periodic
// hash check and full sync are an hour apart, so a change seen is the
// push's doing however long it took.
func TestRulesChangeUnderSteadyLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skips 20 s of steady load")
	}
	text := func(s string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, s) })
	}
	steady, one, two := upstream(t, text("steady")), upstream(t, text("one")), upstream(t, text("two"))
	adminAddr := e2etest.FreeAddr(t, "tcp")
	const token = "admin-token-e2e"
	steadyRule := fmt.Sprintf("  - {id: steady, client: %s, direction: reverse, host: steady.test, upstream: %q}\n", clientID, steady)
	dynRule := func(up string) string {
		return fmt.Sprintf("  - {id: dyn, client: %s, direction: reverse, host: dyn.test, upstream: %q}\n", clientID, up)
	}
	// The load comes from one address: the per-source cap on tunnel
	// streams (100 by default) is lifted, or it would refuse some of it.
	e := startEnv(t, envOpts{nearClient: steady, nearServer: steady, extraRules: steadyRule,
		serverYAML: fmt.Sprintf("admin:\n  listen: %q\n  token: %q\nsync:\n  config_poll_interval: 50ms\n  hash_check_interval: 1h\n  full_sync_interval: 1h\nlimits:\n  max_streams_per_source: -1\n", adminAddr, token)})
	e.waitReady(t)
	public := "http://" + e.public

	// Steady load on the unchanged rule, in the background.
	var total, failed atomic.Int64
	var firstFailure atomic.Value
	atk := vegeta.NewAttacker(vegeta.Workers(32), vegeta.MaxWorkers(256), vegeta.KeepAlive(true), vegeta.Timeout(10*time.Second))
	target := vegeta.NewStaticTargeter(vegeta.Target{Method: http.MethodGet, URL: public + "/steady", Header: http.Header{"Host": {"steady.test"}}})
	loadStart := time.Now()
	results := atk.Attack(target, vegeta.Rate{Freq: 1200, Per: time.Second}, 0, "steady")
	loadDone := make(chan struct{})
	go func() {
		defer close(loadDone)
		for r := range results {
			total.Add(1)
			if r.Code != 200 || string(r.Body) != "steady" {
				failed.Add(1)
				firstFailure.CompareAndSwap(nil, fmt.Sprintf("code %d %q %s", r.Code, r.Body, r.Error))
			}
		}
	}()
	defer func() { atk.Stop(); <-loadDone }()

	c := &http.Client{Timeout: 5 * time.Second}
	get := func() (int, string) {
		req, _ := http.NewRequest(http.MethodGet, public+"/dyn", nil)
		req.Host = "dyn.test"
		resp, err := c.Do(req)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	api := func(method string, body any) {
		var rd io.Reader
		if body != nil {
			b, _ := json.Marshal(body)
			rd = bytes.NewReader(b)
		}
		req, _ := http.NewRequest(method, "http://"+adminAddr+"/rules/dyn", rd)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := c.Do(req)
		require.NoError(t, err)
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.Equal(t, 200, resp.StatusCode, "%s", b)
	}
	// seen waits for a change to show; the deadline is a hang guard.
	var slowest time.Duration
	seen := func(what string, want func(int, string) bool) {
		start := time.Now()
		for {
			code, body := get()
			if want(code, body) {
				break
			}
			require.Less(t, time.Since(start), time.Minute, "%s: still %d %q after a minute", what, code, body)
			<-time.After(5 * time.Millisecond) // polling interval
		}
		slowest = max(slowest, time.Since(start))
	}
	serves := func(s string) func(int, string) bool { return func(c int, b string) bool { return c == 200 && b == s } }
	gone := func(c int, _ string) bool { return c == 404 }
	dynAPI := func(up string) map[string]any {
		return map[string]any{"client": clientID, "direction": "reverse", "host": "dyn.test", "upstream": up}
	}
	beforeChanges := total.Load()
	for i := range 50 {
		switch i % 5 {
		case 0: // add through the API
			api(http.MethodPut, dynAPI(one))
			seen("added by the API", serves("one"))
		case 1: // change through the file
			e.writeServerConfig(t, steadyRule+dynRule(two))
			seen("changed in the file", serves("two"))
		case 2: // remove through the API
			api(http.MethodDelete, nil)
			seen("removed by the API", gone)
		case 3: // add through the file
			e.writeServerConfig(t, steadyRule+dynRule(one))
			seen("added in the file", serves("one"))
		case 4: // remove through the file
			e.writeServerConfig(t, steadyRule)
			seen("removed from the file", gone)
		}
	}
	duringChanges := total.Load() - beforeChanges
	// Keep the load on for at least 21 s in all.
	if rest := 21*time.Second - time.Since(loadStart); rest > 0 {
		<-time.After(rest)
	}
	atk.Stop()
	<-loadDone
	took := time.Since(loadStart)
	rate := float64(total.Load()) / took.Seconds()
	t.Logf("steady rule: %d requests in %v (%.0f/s), %d failed, %d answered while 50 changes were made; the slowest change showed after %v",
		total.Load(), took.Round(time.Millisecond), rate, failed.Load(), duringChanges, slowest.Round(time.Millisecond))
	require.Zero(t, failed.Load(), "first failure: %v", firstFailure.Load())
	require.Positive(t, duringChanges, "requests on the unchanged rule were answered while the rules changed")

	e.client.signal(syscall.SIGTERM)
	require.Equal(t, 0, e.client.wait(15*time.Second))
	e.server.signal(syscall.SIGTERM)
	require.Equal(t, 0, e.server.wait(15*time.Second))

}
