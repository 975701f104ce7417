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

// TestRulesChangeUnderSteadyLoad holds more than 1000 requests/s on an
// unchanged rule for more than 20 s while another rule is added, changed
// and removed 50 times, through the admin API and through the
// configuration file, between real server and client processes. Not one
// request on the unchanged rule may fail; every change must be visible
// within a second.
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
	e := startEnv(t, envOpts{nearClient: steady, nearServer: steady, extraRules: steadyRule,
		serverYAML: fmt.Sprintf("admin:\n  listen: %q\n  token: %q\nsync:\n  config_poll_interval: 50ms\n", adminAddr, token)})
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
	within := func(what string, want func(int, string) bool) {
		start := time.Now()
		for {
			code, body := get()
			if want(code, body) {
				break
			}
			require.Less(t, time.Since(start), time.Second, "%s: still %d %q after a second", what, code, body)
			<-time.After(5 * time.Millisecond) // polling interval
		}
	}
	serves := func(s string) func(int, string) bool { return func(c int, b string) bool { return c == 200 && b == s } }
	gone := func(c int, _ string) bool { return c == 404 }
	dynAPI := func(up string) map[string]any {
		return map[string]any{"client": clientID, "direction": "reverse", "host": "dyn.test", "upstream": up}
	}
	for i := range 50 {
		switch i % 5 {
		case 0: // add through the API
			api(http.MethodPut, dynAPI(one))
			within("added by the API", serves("one"))
		case 1: // change through the file
			e.writeServerConfig(t, steadyRule+dynRule(two))
			within("changed in the file", serves("two"))
		case 2: // remove through the API
			api(http.MethodDelete, nil)
			within("removed by the API", gone)
		case 3: // add through the file
			e.writeServerConfig(t, steadyRule+dynRule(one))
			within("added in the file", serves("one"))
		case 4: // remove through the file
			e.writeServerConfig(t, steadyRule)
			within("removed from the file", gone)
		}
	}
	// Keep the load on for at least 21 s in all.
	if rest := 21*time.Second - time.Since(loadStart); rest > 0 {
		<-time.After(rest)
	}
	atk.Stop()
	<-loadDone
	took := time.Since(loadStart)
	rate := float64(total.Load()) / took.Seconds()
	t.Logf("steady rule: %d requests in %v (%.0f/s), %d failed; 50 changes made", total.Load(), took.Round(time.Millisecond), rate, failed.Load())
	require.Zero(t, failed.Load(), "first failure: %v", firstFailure.Load())
	require.GreaterOrEqual(t, took, 20*time.Second)
	require.GreaterOrEqual(t, rate, 1000.0)

	e.client.signal(syscall.SIGTERM)
	require.Equal(t, 0, e.client.wait(15*time.Second))
	e.server.signal(syscall.SIGTERM)
	require.Equal(t, 0, e.server.wait(15*time.Second))

}
