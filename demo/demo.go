// Package demo runs the whole product on one machine: a server, a client and
// two sample upstreams (one near each side), on loopback, with the embedded
// configuration in server.yaml and client.yaml. It is what 'make demo' runs.
package demo

import (
	"context"
	"crypto/rand"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/qtunnel/qtunnel/config"
	"github.com/qtunnel/qtunnel/control"
	"github.com/qtunnel/qtunnel/gateway"
	"github.com/qtunnel/qtunnel/internal/httpx"
)

//go:embed server.yaml
var serverYAML string

//go:embed client.yaml
var clientYAML string

// Options sets the demo's addresses. The zero value uses the defaults.
type Options struct {
	// Public is the server's public HTTP listener. Default 127.0.0.1:18080.
	Public string
	// Forward is the client's forward listener. Default 127.0.0.1:19090.
	Forward string
	// Tunnel is the server's QUIC listener. Default 127.0.0.1:14443.
	Tunnel string
	// Logger receives the gateway's logs. Default: discard below warn.
	Logger *slog.Logger
}

// Demo is a running demo.
type Demo struct {
	opts      Options
	Server    *gateway.Server
	Client    *gateway.Client
	upstream  []*http.Server
	cancel    context.CancelFunc
	clientErr chan error
	wg        sync.WaitGroup
}

// Start starts the upstreams, the server and the client, and returns once the
// client has applied its rules, or with an error.
func Start(ctx context.Context, o Options) (_ *Demo, err error) {
	if o.Public == "" {
		o.Public = "127.0.0.1:18080"
	}
	if o.Forward == "" {
		o.Forward = "127.0.0.1:19090"
	}
	if o.Tunnel == "" {
		o.Tunnel = "127.0.0.1:14443"
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	d := &Demo{opts: o, clientErr: make(chan error, 1)}
	defer func() {
		if err != nil {
			_ = d.Stop(context.Background()) // stops whatever started
		}
	}()
	nearClient, err := d.upstreamServer("the upstream near the client (reached by the reverse tunnel)")
	if err != nil {
		return nil, err
	}
	nearServer, err := d.upstreamServer("the upstream near the server (reached by the forward tunnel)")
	if err != nil {
		return nil, err
	}
	var tok [16]byte
	_, _ = rand.Read(tok[:])
	token := hex.EncodeToString(tok[:])
	fill := strings.NewReplacer("{{tunnel}}", o.Tunnel, "{{public}}", o.Public, "{{forward}}", o.Forward,
		"{{near_client}}", nearClient, "{{near_server}}", nearServer,
		"{{token_sha256}}", control.HashToken(token).String(), "{{token}}", token)

	scfg, err := config.ParseServer("demo/server.yaml", []byte(fill.Replace(serverYAML)))
	if err != nil {
		return nil, err
	}
	srv, err := gateway.NewServer(*scfg, gateway.WithLogger(o.Logger))
	if err != nil {
		return nil, err
	}
	if err := srv.Start(ctx); err != nil {
		return nil, err
	}
	d.Server = srv
	fill = strings.NewReplacer("{{token}}", token, "{{tunnel}}", srv.TunnelAddr().String(), "{{pin}}", srv.Pin())
	ccfg, err := config.ParseClient("demo/client.yaml", []byte(fill.Replace(clientYAML)))
	if err != nil {
		return nil, err
	}
	if d.Client, err = gateway.NewClient(*ccfg, gateway.WithLogger(o.Logger)); err != nil {
		return nil, err
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	d.cancel = cancel
	d.wg.Go(func() { d.clientErr <- d.Client.Run(runCtx) })
	select {
	case <-d.Client.Ready():
		return d, nil
	case cerr := <-d.clientErr:
		d.clientErr <- cerr // for Stop
		return nil, fmt.Errorf("client stopped before applying its rules: %w", cerr)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// upstreamServer starts a sample upstream on a free loopback port; it
// answers every request with who it is and what it received.
func (d *Demo) upstreamServer(name string) (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Protocols: &protos, ReadHeaderTimeout: 10 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			fmt.Fprintf(w, "hello from %s\n%s %s %s host=%s x-forwarded-for=%s request-id=%s\n",
				name, r.Proto, r.Method, r.URL.RequestURI(), r.Host, r.Header.Get("X-Forwarded-For"), r.Header.Get(httpx.RequestIDHeader))
		})}
	d.upstream = append(d.upstream, srv)
	d.wg.Go(func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			slog.Error("demo upstream failed", "err", err)
		}
	})
	return ln.Addr().String(), nil
}

// Instructions returns the curl commands that cross the tunnel each way.
func (d *Demo) Instructions() string {
	public := d.Server.PublicAddr().String()
	return fmt.Sprintf(`qtunnel demo is running: a server, a client and two sample upstreams on loopback.
Server pin: %s

Reverse tunnel (server's public listener -> QUIC -> client -> upstream near the client):
  curl -H 'Host: app.demo.localhost' http://%s/hello

Forward tunnel (client's listener -> QUIC -> server -> upstream near the server):
  curl http://%s/hello

HTTP/2 works too: add --http2-prior-knowledge to either command.
Press Ctrl-C to stop (twice to force).
`, d.Server.Pin(), public, d.Client.ForwardAddr(d.opts.Forward))
}

// Stop shuts the client down, then the server, then the upstreams, and
// returns the first error.
func (d *Demo) Stop(ctx context.Context) error {
	var errs []error
	if d.cancel != nil {
		d.cancel()
		errs = append(errs, <-d.clientErr)
	}
	if d.Server != nil {
		errs = append(errs, d.Server.Shutdown(ctx))
	}
	for _, s := range d.upstream {
		errs = append(errs, s.Shutdown(ctx))
	}
	d.wg.Wait()
	return errors.Join(errs...)
}
