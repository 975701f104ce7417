package gateway_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/config"
	"github.com/qtunnel/qtunnel/control"
	"github.com/qtunnel/qtunnel/gateway"
	"github.com/qtunnel/qtunnel/pipeline/pipelinetest"
	"github.com/qtunnel/qtunnel/rules"
)

func TestMain(m *testing.M) { pipelinetest.VerifyNoLeaks(m) }

const (
	clientID = "laptop"
	token    = "test-token-123"
	appHost  = "app.test"
)

// testLogger sends logs to the test log when QTUNNEL_TEST_LOG is set,
// otherwise discards them.
func testLogger(t *testing.T) *slog.Logger {
	if os.Getenv("QTUNNEL_TEST_LOG") == "" {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// upstream starts a loopback HTTP server speaking HTTP/1.1 and h2c.
func upstream(t *testing.T, h http.Handler) *httptest.Server {
	t.Helper()
	s := httptest.NewUnstartedServer(h)
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	s.Config.Protocols = &p
	s.Start()
	t.Cleanup(s.Close)
	return s
}

// okOrMissing is an upstream's handler that reads the request body and
// answers "ok", or 404 for the path /missing.
var okOrMissing = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	if r.URL.Path == "/missing" {
		http.NotFound(w, r)
		return
	}
	_, _ = w.Write([]byte("ok"))
})

// pair is a running server and client on loopback.
type pair struct {
	Server   *gateway.Server
	Client   *gateway.Client
	cancel   context.CancelFunc
	stopOnce sync.Once
	// done is closed when the client's Run returned runErr.
	done   chan struct{}
	runErr error
	// clientMayFail says the test expects Run to fail (refused client).
	clientMayFail bool
}

type pairOpts struct {
	rules        []rules.Rule
	serverMutate func(*config.Server)
	clientMutate func(*config.Client)
	serverOpts   []gateway.Option
	clientOpts   []gateway.Option
	noWait       bool // do not wait for the client's first rules
}

func serverConfig(rs []rules.Rule) config.Server {
	c := config.Server{
		Listen:     "127.0.0.1:0",
		PublicHTTP: "127.0.0.1:0",
		Clients:    []config.ClientEntry{{ID: clientID, TokenSHA256: control.HashToken(token).String()}},
		Rules:      rs,
	}
	c.ShutdownGrace = 5 * time.Second
	return c
}

func clientConfig(server, pin string) config.Client {
	c := config.Client{ID: clientID, Token: token, Server: server, ServerPin: pin}
	c.Reconnect.Base = 20 * time.Millisecond
	c.Reconnect.Max = 200 * time.Millisecond
	c.ShutdownGrace = 5 * time.Second
	return c
}

func startServer(t *testing.T, c config.Server, opts ...gateway.Option) *gateway.Server {
	t.Helper()
	c.SetDefaults()
	require.NoError(t, c.Validate())
	s, err := gateway.NewServer(c, append([]gateway.Option{gateway.WithLogger(testLogger(t))}, opts...)...)
	require.NoError(t, err)
	require.NoError(t, s.Start(context.Background()))
	return s
}

func startPair(t *testing.T, o pairOpts) *pair {
	t.Helper()
	sc := serverConfig(o.rules)
	if o.serverMutate != nil {
		o.serverMutate(&sc)
	}
	p := &pair{Server: startServer(t, sc, o.serverOpts...), done: make(chan struct{}), clientMayFail: o.noWait}
	cc := clientConfig(p.Server.TunnelAddr().String(), p.Server.Pin())
	if o.clientMutate != nil {
		o.clientMutate(&cc)
	}
	cc.SetDefaults()
	require.NoError(t, cc.Validate())
	cl, err := gateway.NewClient(cc, append([]gateway.Option{gateway.WithLogger(testLogger(t))}, o.clientOpts...)...)
	require.NoError(t, err)
	p.Client = cl
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	go func() {
		p.runErr = cl.Run(ctx)
		close(p.done)
	}()
	t.Cleanup(func() { p.stop(t) })
	if !o.noWait {
		select {
		case <-cl.Ready():
		case <-p.done:
			t.Fatalf("client stopped before its rules were applied: %v", p.runErr)
		case <-time.After(10 * time.Second):
			t.Fatal("client did not apply its rules within 10s")
		}
	}
	return p
}

// clientResult waits up to d for the client's Run to return.
func (p *pair) clientResult(t *testing.T, d time.Duration) error {
	t.Helper()
	select {
	case <-p.done:
		return p.runErr
	case <-time.After(d):
		t.Fatalf("client still running after %v", d)
		return nil
	}
}

// stopClient cancels the client and waits for it to stop.
func (p *pair) stopClient(t *testing.T) {
	t.Helper()
	p.cancel()
	err := p.clientResult(t, 15*time.Second)
	if !p.clientMayFail {
		require.NoError(t, err, "client stops cleanly")
	}
}

// stop shuts the client down, then the server; both must stop cleanly.
func (p *pair) stop(t *testing.T) {
	p.stopOnce.Do(func() {
		p.stopClient(t)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		require.NoError(t, p.Server.Shutdown(ctx))
	})
}

func (p *pair) publicURL(path string) string {
	return "http://" + p.Server.PublicAddr().String() + path
}

func (p *pair) forwardURL(t *testing.T, listen, path string) string {
	a := p.Client.ForwardAddr(listen)
	require.NotNil(t, a, "no forward listener for %s", listen)
	return "http://" + a.String() + path
}

func reverseRule(id, host, upstream string) rules.Rule {
	return rules.Rule{ID: id, Client: clientID, Direction: rules.Reverse, Host: host, Upstream: upstream}
}

func forwardRule(id, listen, upstream string) rules.Rule {
	return rules.Rule{ID: id, Client: clientID, Direction: rules.Forward, Listen: listen, Upstream: upstream}
}

// h1Client and h2cClient are the real clients of the tests. Each test gets
// its own so that idle connections are closed at its end.
func h1Client(t *testing.T) *http.Client {
	tr := &http.Transport{DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 60 * time.Second}
}

func h2cClient(t *testing.T) *http.Client {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &p, DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 60 * time.Second}
}

func get(t *testing.T, c *http.Client, url, host string) (*http.Response, string) {
	t.Helper()
	return do(t, c, newRequest(t, http.MethodGet, url, host, nil))
}

// newRequest makes a request to url, sent with host as its Host unless
// host is empty.
func newRequest(t *testing.T, method, url, host string, body io.Reader) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	require.NoError(t, err)
	if host != "" {
		req.Host = host
	}
	return req
}

// do sends req and returns the answer with its whole body.
func do(t *testing.T, c *http.Client, req *http.Request) (*http.Response, string) {
	t.Helper()
	resp, err := c.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, string(b)
}

// direction is one way through a pair: its base URL and the Host to send.
type direction struct {
	name string
	url  func(path string) string
	host string
}

// directions are the reverse way (the server's public listener, the
// server's ingress side) and the forward way (the client's listener, the
// client's ingress side).
func directions(t *testing.T, p *pair) []direction {
	return []direction{
		{"reverse", p.publicURL, appHost},
		{"forward", func(path string) string { return p.forwardURL(t, "127.0.0.1:0", path) }, ""},
	}
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	return addr
}

// eventually polls cond every 10ms until it holds or d passes.
func eventually(t *testing.T, d time.Duration, cond func() bool, msg string) {
	t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline.C:
			t.Fatalf("timed out after %v: %s", d, msg)
		case <-tick.C:
		}
	}
}
