package demo_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/demo"
	"github.com/qtunnel/qtunnel/internal/e2etest"
	"github.com/qtunnel/qtunnel/pipeline/pipelinetest"
)

func TestMain(m *testing.M) { pipelinetest.VerifyNoLeaks(m) }

func TestDemoBothDirections(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d, err := demo.Start(ctx, demo.Options{Public: e2etest.FreeAddr(t, "tcp"), Forward: e2etest.FreeAddr(t, "tcp"), Tunnel: e2etest.FreeAddr(t, "udp")})
	require.NoError(t, err)
	text := d.Instructions()
	require.Contains(t, text, d.Server.Pin())
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	for _, c := range []struct{ url, host, want string }{
		{"http://" + d.Server.PublicAddr().String() + "/hello", "app.demo.localhost", "hello from the upstream near the client"},
		{"http://" + d.Client.ForwardAddr(mustForward(t, text)).String() + "/hello", "", "hello from the upstream near the server"},
	} {
		req, _ := http.NewRequest(http.MethodGet, c.url, nil)
		if c.host != "" {
			req.Host = c.host
		}
		resp, err := tr.RoundTrip(req)
		require.NoError(t, err)
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.Equal(t, 200, resp.StatusCode)
		require.True(t, strings.HasPrefix(string(b), c.want), string(b))
		require.Contains(t, text, strings.TrimSuffix(c.url, "/hello"), "the printed instructions name the address")
	}
	require.NoError(t, d.Stop(context.Background()))
}

// mustForward finds the forward listener's address in the instructions.
func mustForward(t *testing.T, text string) string {
	t.Helper()
	for line := range strings.SplitSeq(text, "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "curl http://"); ok {
			return strings.TrimSuffix(rest, "/hello")
		}
	}
	t.Fatalf("no forward curl line in:\n%s", text)
	return ""
}

func TestStartFailsCleanlyOnBusyPort(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	_, err = demo.Start(context.Background(), demo.Options{Public: ln.Addr().String(), Forward: e2etest.FreeAddr(t, "tcp"), Tunnel: e2etest.FreeAddr(t, "udp")})
	require.ErrorContains(t, err, "address already in use")
}
