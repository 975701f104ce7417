package admin_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/admin"
	"github.com/qtunnel/qtunnel/pipeline/pipelinetest"
)

func TestMain(m *testing.M) { pipelinetest.VerifyNoLeaks(m) }

// start runs an admin server on a loopback port until the test ends and
// returns its base URL.
func start(t *testing.T, cfg admin.Config, opts ...admin.Option) (*admin.Server, string) {
	t.Helper()
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	s, err := admin.New(cfg, opts...)
	require.NoError(t, err)
	require.NoError(t, s.Start(context.Background()))
	t.Cleanup(func() { require.NoError(t, s.Shutdown(context.Background())) })
	return s, "http://" + s.Addr().String()
}

type answer struct {
	status int
	body   string
	header http.Header
}

// get fetches url with an Authorization header when auth is not empty.
func get(t *testing.T, url, auth string) answer {
	t.Helper()
	a, err := fetch(url, auth)
	require.NoError(t, err)
	return a
}

// fetch is get for goroutines other than the test's. No connection
// outlives the call.
func fetch(url, auth string) (answer, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return answer{}, err
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return answer{}, err
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	return answer{status: resp.StatusCode, body: string(b), header: resp.Header}, err
}

type ruleView struct {
	Version uint64   `json:"version"`
	Rules   []string `json:"rules"`
}

func TestEndpoints(t *testing.T) {
	t.Parallel()
	metricsHandler := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "qtunnel_requests_total 3\n")
	})
	view := func() any { return ruleView{Version: 7, Rules: []string{"web", "db"}} }
	_, full := start(t, admin.Config{}, admin.WithMetrics(metricsHandler), admin.WithConfig(view))
	_, bare := start(t, admin.Config{})

	tests := []struct {
		name   string
		url    string
		status int
		body   string // exact, when not empty
		ctype  string // prefix of Content-Type, when not empty
	}{
		{name: "healthz", url: full + "/healthz", status: 200, body: "ok\n", ctype: "text/plain"},
		{name: "readyz without a ready func", url: full + "/readyz", status: 200, body: "ready\n"},
		{name: "metrics", url: full + "/metrics", status: 200, body: "qtunnel_requests_total 3\n"},
		{name: "config", url: full + "/config", status: 200, ctype: "application/json"},
		{name: "pprof off by default", url: full + "/debug/pprof/", status: 404},
		{name: "unknown path", url: full + "/nope", status: 404},
		{name: "no metrics handler", url: bare + "/metrics", status: 404},
		{name: "no config view", url: bare + "/config", status: 404},
		{name: "healthz without options", url: bare + "/healthz", status: 200, body: "ok\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			a := get(t, tt.url, "")
			require.Equal(t, tt.status, a.status, a.body)
			if tt.body != "" {
				require.Equal(t, tt.body, a.body)
			}
			if tt.ctype != "" {
				require.True(t, strings.HasPrefix(a.header.Get("Content-Type"), tt.ctype), a.header.Get("Content-Type"))
			}
			require.Equal(t, "no-store", a.header.Get("Cache-Control"))
		})
	}

	a := get(t, full+"/config", "")
	var got ruleView
	require.NoError(t, json.Unmarshal([]byte(a.body), &got))
	require.Equal(t, ruleView{Version: 7, Rules: []string{"web", "db"}}, got)
}

func TestConfigThatCannotBeEncodedIs500(t *testing.T) {
	t.Parallel()
	_, base := start(t, admin.Config{}, admin.WithConfig(func() any { return func() {} }))
	a := get(t, base+"/config", "")
	require.Equal(t, http.StatusInternalServerError, a.status)
	require.Contains(t, a.body, "cannot encode the configuration")
}

func TestToken(t *testing.T) {
	t.Parallel()
	const token = "s3cret-admin-token"
	_, base := start(t, admin.Config{Token: token, Pprof: true},
		admin.WithMetrics(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "m 1\n") })),
		admin.WithConfig(func() any { return map[string]int{"version": 1} }))

	tests := []struct {
		name   string
		path   string
		auth   string
		status int
	}{
		{"healthz is open", "/healthz", "", 200},
		{"healthz with a wrong token is still open", "/healthz", "Bearer nope", 200},
		{"readyz needs the token", "/readyz", "", 401},
		{"metrics needs the token", "/metrics", "", 401},
		{"config needs the token", "/config", "", 401},
		{"pprof needs the token", "/debug/pprof/", "", 401},
		{"unknown paths do not tell 404 from 401", "/nope", "", 401},
		{"wrong token", "/metrics", "Bearer " + token + "x", 401},
		{"prefix of the token", "/metrics", "Bearer s3cret", 401},
		{"other scheme", "/metrics", "Basic " + token, 401},
		{"token without a scheme", "/metrics", token, 401},
		{"right token", "/metrics", "Bearer " + token, 200},
		{"scheme is case-insensitive", "/readyz", "bearer " + token, 200},
		{"config with the token", "/config", "Bearer " + token, 200},
		{"pprof with the token", "/debug/pprof/", "Bearer " + token, 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			a := get(t, base+tt.path, tt.auth)
			require.Equal(t, tt.status, a.status, a.body)
			if tt.status == http.StatusUnauthorized {
				require.Equal(t, `Bearer realm="qtunnel admin"`, a.header.Get("WWW-Authenticate"))
				require.Equal(t, "missing or wrong bearer token\n", a.body)
			}
		})
	}
}

func TestPprof(t *testing.T) {
	t.Parallel()
	_, off := start(t, admin.Config{})
	_, on := start(t, admin.Config{Pprof: true})
	tests := []struct {
		name   string
		url    string
		status int
	}{
		{"off: index", off + "/debug/pprof/", 404},
		{"off: cmdline", off + "/debug/pprof/cmdline", 404},
		{"off: heap", off + "/debug/pprof/heap", 404},
		{"on: index", on + "/debug/pprof/", 200},
		{"on: cmdline", on + "/debug/pprof/cmdline", 200},
		{"on: goroutine", on + "/debug/pprof/goroutine?debug=1", 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			a := get(t, tt.url, "")
			require.Equal(t, tt.status, a.status, a.body)
		})
	}
	require.Contains(t, get(t, on+"/debug/pprof/", "").body, "goroutine")
}

func TestReadyzFollowsTheReadyFunc(t *testing.T) {
	t.Parallel()
	var connected atomic.Bool
	_, base := start(t, admin.Config{}, admin.WithReady(func() error {
		if !connected.Load() {
			return errors.New("not connected to the server")
		}
		return nil
	}))

	a := get(t, base+"/readyz", "")
	require.Equal(t, http.StatusServiceUnavailable, a.status)
	require.Equal(t, "not connected to the server\n", a.body)
	require.Equal(t, http.StatusOK, get(t, base+"/healthz", "").status, "alive while not ready")

	connected.Store(true)
	a = get(t, base+"/readyz", "")
	require.Equal(t, http.StatusOK, a.status)
	require.Equal(t, "ready\n", a.body)

	connected.Store(false)
	require.Equal(t, http.StatusServiceUnavailable, get(t, base+"/readyz", "").status)
}

func TestNonLoopbackWithoutTokenIsRefused(t *testing.T) {
	t.Parallel()
	for _, listen := range []string{"0.0.0.0:9090", ":9090", "[::]:9090", "192.0.2.1:9090", "[2001:db8::1]:9090"} {
		t.Run(listen, func(t *testing.T) {
			t.Parallel()
			_, err := admin.New(admin.Config{Listen: listen})
			require.ErrorIs(t, err, admin.ErrNonLoopback)
			require.Contains(t, err.Error(), "admin listener on a non-loopback address needs a token")

			s, err := admin.New(admin.Config{Listen: listen, Token: "t"})
			require.NoError(t, err, "a token allows any address")
			require.True(t, s.Enabled())
		})
	}
}

func TestLoopbackAddresses(t *testing.T) {
	t.Parallel()
	for _, listen := range []string{"127.0.0.1:0", "[::1]:0", "localhost:0"} {
		t.Run(listen, func(t *testing.T) {
			t.Parallel()
			s, err := admin.New(admin.Config{Listen: listen})
			require.NoError(t, err)
			if err := s.Start(context.Background()); err != nil {
				if listen == "[::1]:0" {
					t.Skipf("no IPv6 loopback here: %v", err)
				}
				t.Fatal(err)
			}
			require.Equal(t, http.StatusOK, get(t, "http://"+s.Addr().String()+"/healthz", "").status)
			require.NoError(t, s.Shutdown(context.Background()))
		})
	}
}

func TestBadConfig(t *testing.T) {
	t.Parallel()
	_, err := admin.New(admin.Config{Listen: "127.0.0.1"})
	require.ErrorContains(t, err, "is not host:port")

	_, err = admin.New(admin.Config{Listen: "127.0.0.1:0"}, admin.WithHandler("GET /healthz", http.NotFoundHandler()))
	require.ErrorContains(t, err, `handler for "GET /healthz"`)

	_, err = admin.New(admin.Config{Listen: "127.0.0.1:0"}, admin.WithHandler("GET /x", nil))
	require.ErrorContains(t, err, "nil")
}

func TestDisabled(t *testing.T) {
	t.Parallel()
	s, err := admin.New(admin.Config{})
	require.NoError(t, err)
	require.False(t, s.Enabled())
	require.NoError(t, s.Start(context.Background()))
	require.Nil(t, s.Addr())
	require.NoError(t, s.Shutdown(context.Background()))
}

func TestWithHandlerIsBehindTheToken(t *testing.T) {
	t.Parallel()
	extra := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "rule "+r.PathValue("id")+"\n")
	})
	_, base := start(t, admin.Config{Token: "tok"}, admin.WithHandler("GET /rules/{id}", extra))
	require.Equal(t, http.StatusUnauthorized, get(t, base+"/rules/web", "").status)
	a := get(t, base+"/rules/web", "Bearer tok")
	require.Equal(t, http.StatusOK, a.status)
	require.Equal(t, "rule web\n", a.body)
}

func TestStartTwiceFails(t *testing.T) {
	t.Parallel()
	s, _ := start(t, admin.Config{})
	require.ErrorContains(t, s.Start(context.Background()), "already started")
}

func TestShutdownWaitsForRequestsInFlight(t *testing.T) {
	t.Parallel()
	entered, release := make(chan struct{}), make(chan struct{})
	slow := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		select {
		case <-release:
			_, _ = io.WriteString(w, "done\n")
		case <-r.Context().Done():
		}
	})
	s, err := admin.New(admin.Config{Listen: "127.0.0.1:0"}, admin.WithHandler("GET /slow", slow))
	require.NoError(t, err)
	require.NoError(t, s.Start(context.Background()))
	base := "http://" + s.Addr().String()

	got := make(chan answer, 1)
	go func() {
		a, err := fetch(base+"/slow", "")
		if err != nil {
			a.body = err.Error()
		}
		got <- a
	}()
	<-entered
	shut := make(chan error, 1)
	go func() { shut <- s.Shutdown(context.Background()) }()
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v with a request in flight", err)
	default:
	}
	close(release)
	require.NoError(t, <-shut)
	a := <-got
	require.Equal(t, http.StatusOK, a.status)
	require.Equal(t, "done\n", a.body)
}

func TestShutdownForcesWhenItsContextEnds(t *testing.T) {
	t.Parallel()
	entered := make(chan struct{})
	stuck := http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		close(entered)
		<-r.Context().Done() // until the connection is closed
	})
	s, err := admin.New(admin.Config{Listen: "127.0.0.1:0"}, admin.WithHandler("GET /stuck", stuck))
	require.NoError(t, err)
	require.NoError(t, s.Start(context.Background()))

	failed := make(chan error, 1)
	go func() {
		_, err := fetch("http://"+s.Addr().String()+"/stuck", "")
		failed <- err
	}()
	<-entered
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	require.ErrorIs(t, s.Shutdown(ctx), context.Canceled)
	require.Error(t, <-failed, "the request was cut")
}

func TestShutdownTwiceAndStartAfterShutdown(t *testing.T) {
	t.Parallel()
	s, err := admin.New(admin.Config{Listen: "127.0.0.1:0"})
	require.NoError(t, err)
	require.NoError(t, s.Start(context.Background()))
	require.NoError(t, s.Shutdown(context.Background()))
	require.NoError(t, s.Shutdown(context.Background()))
	require.Error(t, s.Start(context.Background()), "a Server serves once")
}
