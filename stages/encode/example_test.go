package encode_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/qtunnel/qtunnel/codec"
	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/pipeline/pipelinetest"
	"github.com/qtunnel/qtunnel/stages/encode"
)

var done = pipeline.HandlerFunc(func(context.Context, *pipeline.Exchange) error { return nil })

// On the ingress side, encode writes the answer to the user: hop-by-hop
// fields dropped, the request id added, the length declared.
func ExampleEncoder_ingress() {
	enc, err := encode.New(encode.Config{})
	if err != nil {
		panic(err)
	}
	rec := httptest.NewRecorder()
	x := pipeline.Acquire(pipeline.Ingress)
	defer x.Release()
	x.ID, x.Writer = "r-42", rec
	resp := x.NewResponse()
	resp.StatusCode = http.StatusOK
	resp.ContentLength = 6
	resp.Header = http.Header{"Content-Type": {"text/plain"}, "Keep-Alive": {"timeout=5"}}
	resp.Body = io.NopCloser(strings.NewReader("hello\n"))

	fmt.Println("err:", enc.Handle(context.Background(), x, done))
	res := rec.Result()
	fmt.Println(res.StatusCode, res.Header.Get("Content-Length"), res.Header.Get("X-Request-Id"), res.Header.Get("Keep-Alive") == "")
	fmt.Print(rec.Body.String())
	// Output:
	// err: <nil>
	// 200 6 r-42 true
	// hello
}

// On the egress side, encode writes the answer as frames to the tunnel
// stream and ends it with FIN.
func ExampleEncoder_egress() {
	enc, err := encode.New(encode.Config{})
	if err != nil {
		panic(err)
	}
	s := pipelinetest.NewStream()
	defer s.Shutdown()
	wire := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(s.Peer())
		wire <- b
	}()

	x := pipeline.Acquire(pipeline.Egress)
	defer x.Release()
	x.Stream = s
	resp := x.NewResponse()
	resp.StatusCode, resp.ContentLength = http.StatusAccepted, 2
	resp.Header = http.Header{}
	resp.Body = io.NopCloser(strings.NewReader("ok"))
	fmt.Println("err:", enc.Handle(context.Background(), x, done))

	r := codec.NewReader(strings.NewReader(string(<-wire)), codec.DefaultMaxFrameSize)
	for {
		t, _, err := r.Next()
		if err != nil {
			fmt.Println(err)
			break
		}
		fmt.Println(t)
	}
	// Output:
	// err: <nil>
	// RESPONSE
	// DATA
	// END
	// EOF
}
