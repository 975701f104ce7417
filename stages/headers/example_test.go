package headers_test

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"

	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/stages/headers"
)

// Tell the upstream which tenant it serves and drop the user's cookies;
// harden the answer for browsers and hide what the upstream runs.
func ExampleStage() {
	h, err := headers.New(headers.Config{
		Request: headers.Rules{
			Set:    map[string]string{"X-Tenant": "acme"},
			Remove: []string{"Cookie"},
		},
		Response: headers.Rules{
			Set:    map[string]string{"Strict-Transport-Security": "max-age=31536000"},
			Add:    map[string]string{"Vary": "Origin"},
			Remove: []string{"Server", "X-Powered-By"},
		},
	})
	if err != nil {
		panic(err)
	}
	// The upstream, as the egress stage would reach it.
	upstream := pipeline.HandlerFunc(func(_ context.Context, x *pipeline.Exchange) error {
		fmt.Printf("upstream got X-Tenant %q, Cookie %q\n", x.Request.Header.Get("X-Tenant"), x.Request.Header.Get("Cookie"))
		resp := x.NewResponse()
		resp.StatusCode = http.StatusOK
		resp.Header = http.Header{
			"Server": {"nginx/1.2.3"}, "X-Powered-By": {"PHP/5.4"},
			"Vary": {"Accept-Encoding"}, "Content-Type": {"text/html"},
		}
		return nil
	})

	x := pipeline.Acquire(pipeline.Ingress)
	defer x.Release()
	x.Request = httptest.NewRequest(http.MethodGet, "http://app.example.test/", nil)
	x.Request.Header.Set("Cookie", "session=42")
	x.Request.Header.Set("X-Tenant", "evil") // set replaces what the user sent
	if err := h.Handle(context.Background(), x, upstream); err != nil {
		panic(err)
	}
	// What encode writes to the user:
	for _, k := range slices.Sorted(maps.Keys(x.Response.Header)) {
		fmt.Printf("%s: %s\n", k, strings.Join(x.Response.Header[k], ", "))
	}
	// Output:
	// upstream got X-Tenant "acme", Cookie ""
	// Content-Type: text/html
	// Strict-Transport-Security: max-age=31536000
	// Vary: Accept-Encoding, Origin
}

// Validate names every problem at once.
func ExampleConfig_Validate() {
	err := headers.Config{
		Request: headers.Rules{
			Set:    map[string]string{"Content-Length": "0", "X-Bad Name": "1", "X-Ok": "line\nbreak"},
			Remove: []string{"x-request-id"},
		},
		Response: headers.Rules{Add: map[string]string{"connection": "close"}},
	}.Validate()
	fmt.Println(err)
	// Output:
	// request.remove[0]: X-Request-Id cannot be edited: it is the gateway's own request id
	// request.set["Content-Length"]: Content-Length cannot be edited: it is a framing field
	// request.set["X-Bad Name"]: "X-Bad Name" is not a valid header field name
	// request.set["X-Ok"]: value "line\nbreak" is not a valid header field value
	// response.add["connection"]: Connection cannot be edited: it is a hop-by-hop field
}
