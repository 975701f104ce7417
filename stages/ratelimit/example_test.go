package ratelimit_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/rules"
	"github.com/qtunnel/qtunnel/stages/ratelimit"
)

// The rate-limit stage after route: each rule may take 2 requests a second
// (a burst of 2), and each client 10 a second over all its rules (a burst
// of 3). Over a limit, the answer is 429 with a Retry-After and the reason;
// a request refused by one limit spends no token of the others.
func ExampleLimiter() {
	start := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	now := start
	limiter, err := ratelimit.New(ratelimit.Config{
		PerRule:   ratelimit.Limit{Rate: 2},
		PerClient: ratelimit.Limit{Rate: 10, Burst: 3},
	}, ratelimit.WithClock(func() time.Time { return now }))
	if err != nil {
		panic(err)
	}

	forward := pipeline.HandlerFunc(func(_ context.Context, x *pipeline.Exchange) error {
		fmt.Println("-> upstream of", x.Rule.ID)
		return nil
	})
	send := func(rule string) {
		x := pipeline.Acquire(pipeline.Ingress)
		defer x.Release()
		x.Request = httptest.NewRequest(http.MethodGet, "http://app.example.test/", nil)
		x.Rule = &rules.Rule{ID: rule, Client: "laptop"}
		if err := limiter.Handle(context.Background(), x, forward); err != nil {
			status, msg, retry := pipeline.Answer(err)
			fmt.Printf("%d %s (Retry-After: %v)\n", status, msg, retry)
		}
	}
	for range 3 {
		send("web")
	}
	for range 2 {
		send("api")
	}
	now = now.Add(500 * time.Millisecond) // a token for web, laptop's burst refilled
	send("web")
	// Output:
	// -> upstream of web
	// -> upstream of web
	// 429 rate limit of rule "web" exceeded (2 requests/s) (Retry-After: 1s)
	// -> upstream of api
	// 429 rate limit of client "laptop" exceeded (10 requests/s) (Retry-After: 1s)
	// -> upstream of web
}
