package limit_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/stages/limit"
)

// The limit stage on the ingress side: one exchange at a time, request
// bodies of up to 16 bytes, and 20ms for the answer to start. Each refusal
// is what the user gets.
func ExampleGuard() {
	guard, err := limit.New(limit.Config{
		MaxInFlight:    1,
		MaxBodySize:    16,
		RequestTimeout: 20 * time.Millisecond,
	})
	if err != nil {
		panic(err)
	}

	// forward stands for egress and encode: it streams the body to the
	// upstream and writes the answer.
	forward := pipeline.HandlerFunc(func(_ context.Context, x *pipeline.Exchange) error {
		n, err := io.Copy(io.Discard, x.Request.Body)
		if err != nil {
			return &pipeline.Reject{Status: http.StatusBadGateway, Message: "tunnel stream failed", Err: err}
		}
		x.Status = http.StatusOK
		x.Writer.WriteHeader(http.StatusOK)
		fmt.Printf("200 (the upstream got %d bytes)\n", n)
		return nil
	})
	send := func(body string, chunked bool, next pipeline.Handler) {
		x := pipeline.Acquire(pipeline.Ingress)
		defer x.Release()
		x.Request = httptest.NewRequest(http.MethodPost, "http://app.example.test/", strings.NewReader(body))
		if chunked { // a body of unknown length
			x.Request.ContentLength = -1
			x.Request.Body = io.NopCloser(strings.NewReader(body))
		}
		x.Writer = httptest.NewRecorder()
		if err := guard.Handle(context.Background(), x, next); err != nil {
			status, msg, retry := pipeline.Answer(err)
			fmt.Printf("%d %s (Retry-After: %v)\n", status, msg, retry)
		}
	}

	send("hello", false, forward)
	send(strings.Repeat("x", 20), false, forward)
	send(strings.Repeat("x", 40), true, forward)
	// A second exchange while the first is in flight.
	send("", false, pipeline.HandlerFunc(func(context.Context, *pipeline.Exchange) error {
		send("", false, forward)
		return nil
	}))
	// An upstream that never answers.
	send("", false, pipeline.HandlerFunc(func(ctx context.Context, _ *pipeline.Exchange) error {
		<-ctx.Done()
		return ctx.Err()
	}))
	// Output:
	// 200 (the upstream got 5 bytes)
	// 413 request body of 20 bytes exceeds the limit of 16 bytes (Retry-After: 0s)
	// 413 request body exceeds the limit of 16 bytes (Retry-After: 0s)
	// 503 gateway at capacity (1 request in flight), retry (Retry-After: 1s)
	// 504 no answer within 20ms (Retry-After: 0s)
}
