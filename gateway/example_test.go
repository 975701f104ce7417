package gateway_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/qtunnel/qtunnel/config"
	"github.com/qtunnel/qtunnel/control"
	"github.com/qtunnel/qtunnel/gateway"
	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/rules"
	"github.com/qtunnel/qtunnel/stages/route"
)

// A server and a client in one process: a reverse rule makes an upstream on
// the client's side reachable through the server's public listener.
func Example() {
	quiet := gateway.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))

	// The upstream near the client.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	up := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s via %s", r.Host, r.Header.Get("X-Forwarded-Proto"))
	})}
	go up.Serve(ln)
	defer up.Close()

	scfg := config.Server{
		Listen: "127.0.0.1:0", PublicHTTP: "127.0.0.1:0",
		Clients: []config.ClientEntry{{ID: "laptop", TokenSHA256: control.HashToken("s3cret").String()}},
		Rules: []rules.Rule{{ID: "app", Client: "laptop", Direction: rules.Reverse,
			Host: "app.example.test", Upstream: "http://" + ln.Addr().String()}},
	}
	scfg.SetDefaults()
	srv, err := gateway.NewServer(scfg, quiet)
	if err != nil {
		panic(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		panic(err)
	}

	ccfg := config.Client{ID: "laptop", Token: "s3cret", Server: srv.TunnelAddr().String(), ServerPin: srv.Pin()}
	ccfg.SetDefaults()
	cl, err := gateway.NewClient(ccfg, quiet)
	if err != nil {
		panic(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cl.Run(ctx) }()
	<-cl.Ready()

	req, _ := http.NewRequest(http.MethodGet, "http://"+srv.PublicAddr().String()+"/", nil)
	req.Host = "app.example.test"
	tr := &http.Transport{}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		panic(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	tr.CloseIdleConnections()
	fmt.Println(resp.StatusCode, string(body))

	stop()
	<-done
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	// Output: 200 hello app.example.test via http
}

// A stage of your own, put in the ingress chain by name: an API-key check
// before route. It refuses a request without the key with a 401 that
// carries a WWW-Authenticate field, and, after next returns, before encode
// writes the answer, it changes the answer: a field on every answer, the
// refusal included, and the upstream's 404 turned into a 410.
// IngressOrder names the stages it can go before or after.
func ExampleWithIngressEdits() {
	// An HTTP stage: TCP rules' exchanges (no Request) pass it by.
	apiKey := pipeline.Name("api_key", pipeline.ForProtocols(pipeline.HTTPProtocols, pipeline.StageFunc(
		func(ctx context.Context, x *pipeline.Exchange, next pipeline.Handler) error {
			var err error
			if x.Request.Header.Get("X-Api-Key") != "open-sesame" {
				err = &pipeline.Reject{Status: http.StatusUnauthorized, Message: "an API key is required",
					Header: http.Header{"Www-Authenticate": {`ApiKey realm="app"`}}}
			} else {
				err = next.Handle(ctx, x)
			}
			// The response phase: the answer, or the refusal, is not
			// written yet.
			if h := pipeline.AnswerHeader(x, err); h != nil {
				h.Set("X-Plan", "free")
			}
			if err == nil && x.Response.StatusCode == http.StatusNotFound {
				x.Response.StatusCode = http.StatusGone
			}
			return err
		})))
	fmt.Println(strings.Join(gateway.IngressOrder(), " -> "))

	// The upstream near the client: /old is gone.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	up := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/old" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprint(w, "hello")
	})}
	go up.Serve(ln)
	defer up.Close()

	scfg := config.Server{
		Listen: "127.0.0.1:0", PublicHTTP: "127.0.0.1:0",
		Clients: []config.ClientEntry{{ID: "laptop", TokenSHA256: control.HashToken("s3cret").String()}},
		Rules: []rules.Rule{{ID: "app", Client: "laptop", Direction: rules.Reverse,
			Host: "app.example.test", Upstream: "http://" + ln.Addr().String()}},
	}
	quiet := gateway.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))
	srv, err := gateway.NewServer(scfg, quiet, gateway.WithIngressEdits(pipeline.Before(route.Name, apiKey)))
	if err != nil {
		panic(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		panic(err)
	}
	cl, err := gateway.NewClient(config.Client{ID: "laptop", Token: "s3cret", Server: srv.TunnelAddr().String(), ServerPin: srv.Pin()}, quiet)
	if err != nil {
		panic(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cl.Run(ctx) }()
	<-cl.Ready()

	tr := &http.Transport{}
	for _, c := range []struct{ path, key string }{{"/", ""}, {"/", "open-sesame"}, {"/old", "open-sesame"}} {
		req, _ := http.NewRequest(http.MethodGet, "http://"+srv.PublicAddr().String()+c.path, nil)
		req.Host = "app.example.test"
		req.Header.Set("X-Api-Key", c.key)
		resp, err := tr.RoundTrip(req)
		if err != nil {
			panic(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		fmt.Printf("%d plan=%s auth=%q id=%t %s\n", resp.StatusCode, resp.Header.Get("X-Plan"),
			resp.Header.Get("Www-Authenticate"), resp.Header.Get("X-Request-Id") != "", strings.TrimSpace(string(body)))
	}
	tr.CloseIdleConnections()

	stop()
	<-done
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	// Output:
	// observe -> encode -> decode -> limit -> route -> ratelimit -> rule_stages -> request_limit -> egress
	// 401 plan=free auth="ApiKey realm=\"app\"" id=true qtunnel: an API key is required
	// 200 plan=free auth="" id=true hello
	// 410 plan=free auth="" id=true 404 page not found
}

// A stage of your own, registered as a module and named, with its
// settings, in a rule's stage list in the server's YAML: the gateway runs
// it on the rule's requests (here a reverse rule, so on the server).
func ExampleWithModules() {
	// The module: a name, a Config whose zero value works, a constructor.
	type tenantConfig struct {
		Tenant string `yaml:"tenant"`
	}
	tenant := pipeline.Module{Name: "tenant", New: func(decode func(any) error) (pipeline.Stage, error) {
		var c tenantConfig
		if err := decode(&c); err != nil {
			return nil, err
		}
		return pipeline.StageFunc(func(ctx context.Context, x *pipeline.Exchange, next pipeline.Handler) error {
			x.Request.Header.Set("X-Tenant", c.Tenant)
			return next.Handle(ctx, x)
		}), nil
	}}

	// The upstream near the client says which tenant it was told.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	up := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "tenant %s", r.Header.Get("X-Tenant"))
	})}
	go up.Serve(ln)
	defer up.Close()

	yamlText := fmt.Sprintf(`
listen: 127.0.0.1:0
public_http: 127.0.0.1:0
clients:
  - {id: laptop, token_sha256: %s}
rules:
  - id: app
    client: laptop
    direction: reverse
    host: app.example.test
    upstream: http://%s
    stages:
      - tenant: {tenant: acme}
`, control.HashToken("s3cret"), ln.Addr())
	scfg, err := config.ParseServer("server.yaml", []byte(yamlText))
	if err != nil {
		panic(err)
	}
	quiet := gateway.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))
	srv, err := gateway.NewServer(*scfg, quiet, gateway.WithModules(tenant))
	if err != nil {
		panic(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		panic(err)
	}
	cl, err := gateway.NewClient(config.Client{ID: "laptop", Token: "s3cret", Server: srv.TunnelAddr().String(), ServerPin: srv.Pin()}, quiet)
	if err != nil {
		panic(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cl.Run(ctx) }()
	<-cl.Ready()

	req, _ := http.NewRequest(http.MethodGet, "http://"+srv.PublicAddr().String()+"/", nil)
	req.Host = "app.example.test"
	tr := &http.Transport{}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		panic(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	tr.CloseIdleConnections()
	fmt.Println(resp.StatusCode, string(body))

	stop()
	<-done
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	// Output: 200 tenant acme
}
