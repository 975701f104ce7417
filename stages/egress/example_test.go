package egress_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"

	"github.com/qtunnel/qtunnel/codec"
	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/pipeline/pipelinetest"
	"github.com/qtunnel/qtunnel/rules"
	"github.com/qtunnel/qtunnel/stages/egress"
)

// The Upstream stage sends the exchange's request to the rule's upstream
// through the pool, joining the upstream's base path, and hands the answer
// to the next stage.
func ExampleUpstream() {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "upstream saw %s %s", r.Method, r.URL.Path)
	}))
	defer srv.Close()

	pool, err := egress.NewPool(egress.PoolConfig{WarmConns: -1})
	if err != nil {
		panic(err)
	}
	defer pool.Close()
	up, err := egress.NewUpstream(pool)
	if err != nil {
		panic(err)
	}

	x := pipeline.Acquire(pipeline.Egress)
	defer x.Release()
	x.Rule = &rules.Rule{ID: "api", Upstream: srv.URL + "/v2"}
	x.Request, err = http.NewRequest(http.MethodGet, "/users", nil)
	if err != nil {
		panic(err)
	}
	err = up.Handle(context.Background(), x, pipeline.HandlerFunc(func(_ context.Context, x *pipeline.Exchange) error {
		b, err := io.ReadAll(x.Response.Body)
		fmt.Println(x.Response.StatusCode, string(b))
		return err
	}))
	fmt.Println("err:", err)
	// Output:
	// 200 upstream saw GET /v2/users
	// err: <nil>
}

// A rule with several upstreams spreads its requests over them in turn; with
// retries, a GET that cannot reach one upstream goes to the next.
func ExampleUpstream_balanced() {
	serve := func(name string) *httptest.Server {
		return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprint(w, name)
		}))
	}
	a, b, gone := serve("a"), serve("b"), serve("gone")
	defer a.Close()
	defer b.Close()
	gone.Close() // nothing listens there any more

	pool, err := egress.NewPool(egress.PoolConfig{WarmConns: -1})
	if err != nil {
		panic(err)
	}
	defer pool.Close()
	up, err := egress.NewUpstream(pool)
	if err != nil {
		panic(err)
	}
	rule := &rules.Rule{ID: "api", Upstreams: []string{gone.URL, a.URL, b.URL}, Retries: 1}
	for range 4 {
		x := pipeline.Acquire(pipeline.Egress)
		x.Rule = rule
		x.Request, err = http.NewRequest(http.MethodGet, "/", nil)
		if err != nil {
			panic(err)
		}
		err = up.Handle(context.Background(), x, pipeline.HandlerFunc(func(_ context.Context, x *pipeline.Exchange) error {
			b, err := io.ReadAll(x.Response.Body)
			fmt.Print(string(b), " ")
			return err
		}))
		x.Release()
		if err != nil {
			fmt.Print(err)
		}
	}
	fmt.Println()
	// Output:
	// a b a b
}

// The Tunnel stage opens a stream on the rule's tunnel connection, sends the
// request head, and turns the peer's answer into the exchange's response or,
// as here, into the error the peer reported.
func ExampleTunnel() {
	s := pipelinetest.NewStream()
	defer s.Shutdown()
	conn := &pipeline.Conn{ClientID: "laptop", Opener: openerFunc(func(context.Context) (pipeline.Stream, error) { return s, nil })}
	tun, err := egress.NewTunnel(egress.TunnelConfig{
		Conns: egress.ConnSourceFunc(func(*rules.Rule) (*pipeline.Conn, error) { return conn, nil }),
	})
	if err != nil {
		panic(err)
	}

	// The far side reads the request and answers that its upstream is down.
	peerDone := make(chan struct{})
	go func() {
		defer close(peerDone)
		r := codec.NewReader(s.Peer(), codec.DefaultMaxFrameSize)
		t, p, _ := r.Next()
		var head codec.RequestHead
		_ = codec.ParseRequest(p, &head)
		fmt.Println("peer got", t, "for rule", head.RuleID, head.Method, head.Path)
		_, _ = s.PeerWrite(codec.AppendError(nil, &codec.Error{Status: http.StatusBadGateway, Message: `upstream of rule "site" is unreachable`}))
		_ = s.PeerClose()
	}()

	x := pipeline.Acquire(pipeline.Ingress)
	defer x.Release()
	x.Rule = &rules.Rule{ID: "site"}
	x.Request = httptest.NewRequest(http.MethodGet, "/", nil)
	x.Head = codec.RequestHead{Kind: codec.KindHTTP, RequestID: "r-1", Method: http.MethodGet, Path: "/", Header: http.Header{}}
	err = tun.Handle(context.Background(), x, pipeline.HandlerFunc(func(context.Context, *pipeline.Exchange) error { return nil }))
	<-peerDone
	status, msg, _ := pipeline.Answer(err)
	fmt.Println(status, msg)
	// Output:
	// peer got REQUEST for rule site GET /
	// 502 upstream of rule "site" is unreachable
}
