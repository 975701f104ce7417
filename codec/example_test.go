package codec_test

import (
	"bytes"
	"fmt"
	"io"
	"net/http"

	"github.com/qtunnel/qtunnel/codec"
)

// A request crosses the tunnel as a REQUEST frame, DATA frames and END; the
// far side reads the head with Next and the body with a Body.
func Example() {
	var wire []byte
	wire = codec.AppendRequest(wire, &codec.RequestHead{
		Kind: codec.KindHTTP, RuleID: "web", Method: "POST", Path: "/upload",
		ContentLength: 5, Header: http.Header{"Content-Type": {"text/plain"}},
	})
	wire = codec.AppendData(wire, []byte("hello"))
	wire = codec.AppendEnd(wire)

	r := codec.NewReader(bytes.NewReader(wire), codec.DefaultMaxFrameSize)
	typ, payload, _ := r.Next()
	var head codec.RequestHead
	_ = codec.ParseRequest(payload, &head)
	var body codec.Body
	body.Reset(r, nil)
	b, _ := io.ReadAll(&body)
	fmt.Println(typ, head.Method, head.Path, head.Header.Get("Content-Type"), string(b))
	// Output: REQUEST POST /upload text/plain hello
}
