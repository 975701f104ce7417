package decode_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"

	"github.com/qtunnel/qtunnel/codec"
	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/pipeline/pipelinetest"
	"github.com/qtunnel/qtunnel/stages/decode"
)

// On the ingress side, decode turns the user's request into the head that
// crosses the tunnel: hop-by-hop fields go, forwarding fields are added.
// The request comes through a trusted proxy, whose request id is kept.
func ExampleDecoder_ingress() {
	d, err := decode.New(decode.Config{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}})
	if err != nil {
		panic(err)
	}
	r := httptest.NewRequest(http.MethodGet, "/orders?page=2", nil)
	r.Host = "app.example.test"
	r.RemoteAddr = "192.0.2.10:51000"
	r.Header.Set("X-Request-Id", "order-page-2")
	r.Header.Set("Connection", "keep-alive")

	x := pipeline.Acquire(pipeline.Ingress)
	defer x.Release()
	x.Request = r
	err = d.Handle(context.Background(), x, pipeline.HandlerFunc(func(context.Context, *pipeline.Exchange) error { return nil }))
	fmt.Println("err:", err)
	fmt.Println("id:", x.ID)
	fmt.Println("head:", x.Head.Kind, x.Head.Method, x.Head.Authority, x.Head.Path, x.Head.ContentLength)
	fmt.Println("X-Forwarded-For:", x.Head.Header.Get("X-Forwarded-For"))
	fmt.Println("Connection kept:", x.Head.Header.Get("Connection") != "")
	fmt.Println("source:", x.Source)
	// Output:
	// err: <nil>
	// id: order-page-2
	// head: http GET app.example.test /orders?page=2 0
	// X-Forwarded-For: 192.0.2.10
	// Connection kept: false
	// source: 192.0.2.10
}

// On the egress side, decode reads the head and body frames from the tunnel
// stream and gives the next stage an *http.Request whose body streams.
func ExampleDecoder_egress() {
	d, err := decode.New(decode.Config{})
	if err != nil {
		panic(err)
	}
	var wire []byte
	wire = codec.AppendRequest(wire, &codec.RequestHead{
		Kind: codec.KindHTTP, RuleID: "api", RequestID: "r-1",
		Method: http.MethodPost, Authority: "api.example.test", Path: "/v1/echo",
		ContentLength: 5, Header: http.Header{"Content-Type": {"text/plain"}},
	})
	wire = codec.AppendData(wire, []byte("hello"))
	wire = codec.AppendEnd(wire)

	s := pipelinetest.NewStream()
	defer s.Shutdown()
	sent := s.PeerSend(wire, true)

	x := pipeline.Acquire(pipeline.Egress)
	defer x.Release()
	x.Stream = s
	err = d.Handle(context.Background(), x, pipeline.HandlerFunc(func(_ context.Context, x *pipeline.Exchange) error {
		body, err := io.ReadAll(x.Request.Body)
		fmt.Println(x.Request.Method, x.Request.Host, x.Request.URL.Path, string(body), err)
		return nil
	}))
	fmt.Println("err:", err, "sent:", <-sent)
	// Output:
	// POST api.example.test /v1/echo hello <nil>
	// err: <nil> sent: <nil>
}
