package breaker_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/rules"
	"github.com/qtunnel/qtunnel/stages/breaker"
)

// The breaker stage in front of egress: an upstream that keeps failing is
// cut off after 5 failures, its requests refused at once with 503 until the
// cool-down ends; then one probe finds it healthy again and closes the
// circuit.
func ExampleBreaker() {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	b, err := breaker.New(breaker.Config{}, // defaults: 5 failures in 10s, 10s cool-down, 1 probe
		breaker.WithClock(func() time.Time { return now }),
		breaker.WithLogger(slog.New(slog.DiscardHandler)),
		breaker.OnStateChange(func(upstream string, from, to breaker.State) {
			fmt.Printf("[%s: %s -> %s]\n", upstream, from, to)
		}))
	if err != nil {
		panic(err)
	}
	healthy := false
	egress := pipeline.HandlerFunc(func(_ context.Context, x *pipeline.Exchange) error {
		if !healthy {
			return pipeline.Rejectf(http.StatusBadGateway, "upstream of rule %q is unreachable", x.Rule.ID)
		}
		x.NewResponse().StatusCode = http.StatusOK
		fmt.Println("200 from the upstream")
		return nil
	})
	send := func() {
		x := pipeline.Acquire(pipeline.Egress)
		defer x.Release()
		x.Request = httptest.NewRequest(http.MethodGet, "/", nil)
		x.Rule = &rules.Rule{ID: "web", Upstream: "http://127.0.0.1:3000"}
		if err := b.Handle(context.Background(), x, egress); err != nil {
			status, msg, _ := pipeline.Answer(err)
			fmt.Println(status, msg)
		}
	}
	for range 6 {
		send()
	}
	now = now.Add(4 * time.Second)
	send()
	now = now.Add(6 * time.Second) // cool-down over; the upstream is back
	healthy = true
	send()
	send()
	fmt.Println("state:", b.State("http://127.0.0.1:3000"))
	// Output:
	// 502 upstream of rule "web" is unreachable
	// 502 upstream of rule "web" is unreachable
	// 502 upstream of rule "web" is unreachable
	// 502 upstream of rule "web" is unreachable
	// [http://127.0.0.1:3000: closed -> open]
	// 502 upstream of rule "web" is unreachable
	// 503 circuit breaker open for upstream of rule "web": 5 failures in the last 10s; retrying in 10s
	// 503 circuit breaker open for upstream of rule "web": 5 failures in the last 10s; retrying in 6s
	// [http://127.0.0.1:3000: open -> half-open]
	// 200 from the upstream
	// [http://127.0.0.1:3000: half-open -> closed]
	// 200 from the upstream
	// state: closed
}
