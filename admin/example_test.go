package admin_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync/atomic"

	"github.com/qtunnel/qtunnel/admin"
	"github.com/qtunnel/qtunnel/metrics"
)

// An admin listener on loopback with a token: /healthz answers anyone,
// everything else needs the token, and /readyz follows the side's state.
func ExampleServer() {
	m := metrics.New("client")
	var connected atomic.Bool
	srv, err := admin.New(admin.Config{Listen: "127.0.0.1:0", Token: "s3cret"},
		admin.WithMetrics(m.Handler()),
		admin.WithReady(func() error {
			if !connected.Load() {
				return errors.New("not connected to the server")
			}
			return nil
		}),
		admin.WithConfig(func() any { return map[string]any{"version": 3, "rules": []string{"web"}} }),
		admin.WithLogger(slog.New(slog.DiscardHandler)),
	)
	if err != nil {
		panic(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		panic(err)
	}
	defer func() { _ = srv.Shutdown(context.Background()) }()

	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	show := func(path, token string) {
		req, _ := http.NewRequest(http.MethodGet, "http://"+srv.Addr().String()+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := client.Do(req)
		if err != nil {
			panic(err)
		}
		_ = resp.Body.Close()
		fmt.Println(path, resp.StatusCode)
	}
	show("/healthz", "")
	show("/readyz", "")
	show("/readyz", "s3cret")
	connected.Store(true)
	show("/readyz", "s3cret")
	show("/metrics", "s3cret")
	show("/config", "s3cret")
	show("/debug/pprof/", "s3cret")
	// Output:
	// /healthz 200
	// /readyz 401
	// /readyz 503
	// /readyz 200
	// /metrics 200
	// /config 200
	// /debug/pprof/ 404
}
