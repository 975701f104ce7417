package inspect_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/pipeline/pipelinetest"
	"github.com/qtunnel/qtunnel/stages/inspect"
)

// The inspector in a chain: each request it sees is kept, its secrets
// masked, with a preview of each body and the time of the stages inside.
func Example() {
	in := inspect.New(inspect.Config{BodyCapture: 8})
	chain, err := pipeline.New(context.Background(), []pipeline.Stage{in, pipelinetest.Answer{Body: `{"status":"created"}`}})
	if err != nil {
		panic(err)
	}

	req := httptest.NewRequest(http.MethodPost, "http://app.test/orders", strings.NewReader(`{"item":"tea"}`))
	req.Header.Set("Authorization", "Bearer s3cret")
	if _, err := pipelinetest.Serve(chain, req); err != nil {
		fmt.Println(err)
	}

	e := in.Entries()[0]
	fmt.Println(e.Method, e.URI, e.Status)
	fmt.Println(e.RequestHeader.Get("Authorization"))
	fmt.Printf("%q of %d bytes, truncated %v\n", e.RequestBody.Preview, e.RequestBody.Size, e.RequestBody.Truncated)
	fmt.Println(e.Stages[0].Stage)
	// Output:
	// POST /orders 200
	// *** (13 bytes)
	// "{\"item\":" of 14 bytes, truncated true
	// answer
}
