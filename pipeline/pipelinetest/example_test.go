package pipelinetest_test

import (
	"context"
	"crypto/subtle"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"

	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/pipeline/pipelinetest"
)

// apiKey is a stage of your own: it admits requests whose X-Api-Key is
// the key, and removes the field so that the upstream never sees it;
// others get a 401 with a challenge.
type apiKey struct{ key string }

func (apiKey) Name() string { return "apikey" }

func (s apiKey) Handle(ctx context.Context, x *pipeline.Exchange, next pipeline.Handler) error {
	if x.Request == nil { // a TCP rule: no request to check, refuse
		return pipeline.Rejectf(http.StatusForbidden, "an API key needs HTTP")
	}
	got := x.Request.Header.Get("X-Api-Key")
	if subtle.ConstantTimeCompare([]byte(got), []byte(s.key)) != 1 {
		return &pipeline.Reject{
			Status:  http.StatusUnauthorized,
			Message: "API key required",
			Header:  http.Header{"Www-Authenticate": {`ApiKey realm="demo"`}},
		}
	}
	x.Request.Header.Del("X-Api-Key")
	return next.Handle(ctx, x)
}

// A stage of your own, tested with package pipeline alone: the chain ends
// with an Answer where the gateway reaches the upstream, and Serve returns
// what the user would get, refusals included.
func ExampleServe() {
	chain, err := pipeline.New(context.Background(), []pipeline.Stage{
		apiKey{key: "s3cret"},
		pipelinetest.Answer{Body: "hello\n", Upstream: func(x *pipeline.Exchange) {
			fmt.Printf("upstream: X-Api-Key %q\n", x.Request.Header.Get("X-Api-Key"))
		}},
	})
	if err != nil {
		panic(err)
	}
	defer chain.Close(context.Background())

	for _, key := range []string{"wrong", "s3cret"} {
		req := httptest.NewRequest(http.MethodGet, "http://app.example.test/", nil)
		req.Header.Set("X-Request-Id", "req-1")
		req.Header.Set("X-Api-Key", key)
		resp, err := pipelinetest.Serve(chain, req)
		b, _ := io.ReadAll(resp.Body)
		fmt.Printf("%s, id %s, challenge %q\n", resp.Status, resp.Header.Get("X-Request-Id"), resp.Header.Get("Www-Authenticate"))
		fmt.Printf("body: %q, err: %v\n", b, err)
	}
	// Output:
	// 401 Unauthorized, id req-1, challenge "ApiKey realm=\"demo\""
	// body: "qtunnel: API key required\n", err: 401 API key required
	// upstream: X-Api-Key ""
	// 200 OK, id req-1, challenge ""
	// body: "hello\n", err: <nil>
}

// Answer stands for the upstream: the stages before it see its answer once
// next returns.
func ExampleAnswer() {
	peek := pipeline.StageFunc(func(ctx context.Context, x *pipeline.Exchange, next pipeline.Handler) error {
		err := next.Handle(ctx, x)
		fmt.Println("peek saw", x.Response.StatusCode, x.Response.Header.Get("Location"))
		return err
	})
	chain, err := pipeline.New(context.Background(), []pipeline.Stage{
		peek,
		pipelinetest.Answer{Status: http.StatusFound, Header: http.Header{"Location": {"/login"}}},
	})
	if err != nil {
		panic(err)
	}
	resp, err := pipelinetest.Serve(chain, httptest.NewRequest(http.MethodGet, "http://app.example.test/", nil))
	fmt.Println(resp.StatusCode, resp.Header.Get("Location"), err)
	// Output:
	// peek saw 302 /login
	// 302 /login <nil>
}
