package e2e_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/internal/e2etest"
)

// TestDeadServerIsNoticed: after a SIGKILL of the server (no close, no
// reset: the process is simply gone), the client notices with its default
// liveness timeout (quic.idle_timeout, 5 s): a forward request waiting on
// the server fails with 502 saying the tunnel was lost, new ones get 503,
// and the client's /readyz turns not ready.
func TestDeadServerIsNoticed(t *testing.T) {
	t.Parallel()
	arrived := make(chan struct{}, 1)
	hold := make(chan struct{})
	t.Cleanup(func() { close(hold) })
	up := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			arrived <- struct{}{}
			select {
			case <-hold:
			case <-r.Context().Done():
			}
		}
		fmt.Fprint(w, "up")
	}))
	admin := e2etest.FreeAddr(t, "tcp")
	// The harness's default settings for quic: none are set here.
	e := startEnv(t, envOpts{nearClient: up, nearServer: up, clientYAML: "admin:\n  listen: " + admin + "\n"})
	e.waitReady(t)
	ready := func() int {
		resp, err := http.Get("http://" + admin + "/readyz")
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	require.Equal(t, http.StatusOK, ready())

	type answer struct {
		status int
		body   string
		err    error
	}
	waiting := make(chan answer, 1)
	go func() {
		c := &http.Client{Timeout: 2 * time.Minute} // a hang guard only
		resp, err := c.Get("http://" + e.forward + "/hold")
		if err != nil {
			waiting <- answer{err: err}
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		waiting <- answer{status: resp.StatusCode, body: string(b)}
	}()
	select {
	case <-arrived:
	case <-time.After(time.Minute):
		t.Fatal("the forward request did not reach the upstream near the server")
	}
	killed := time.Now()
	e.server.signal(syscall.SIGKILL)

	var a answer
	select {
	case a = <-waiting:
	case <-time.After(2 * time.Minute):
		t.Fatal("the waiting request never ended")
	}
	took := time.Since(killed)
	require.NoError(t, a.err)
	require.Equal(t, http.StatusBadGateway, a.status, a.body)
	require.Contains(t, a.body, "tunnel connection lost")
	t.Logf("waiting request answered %d %q %v after the SIGKILL", a.status, strings.TrimSpace(a.body), took.Round(time.Millisecond))

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for ready() == http.StatusOK {
		select {
		case <-ctx.Done():
			t.Fatal("/readyz still ready a minute after the server died")
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Logf("/readyz not ready %v after the SIGKILL", time.Since(killed).Round(time.Millisecond))
	resp, err := http.Get("http://" + e.forward + "/new")
	require.NoError(t, err)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, string(b))
	require.Contains(t, string(b), "not connected to the tunnel server")
	e.client.waitFor(`msg="connection to server lost".*no recent network activity`, time.Minute)
}
