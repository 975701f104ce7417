package metrics_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/qtunnel/qtunnel/metrics"
	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/rules"
)

// The observe stage goes first in a chain; /metrics then shows every
// exchange by rule, direction, side, protocol and status class. An
// exchange that matched no rule is counted under rule "none".
func ExampleMetrics_Stage() {
	m := metrics.New("server")
	web := &rules.Rule{ID: "web", Direction: rules.Reverse}
	route := pipeline.StageFunc(func(ctx context.Context, x *pipeline.Exchange, next pipeline.Handler) error {
		if x.Request.Host != "app.example.test" {
			return pipeline.Rejectf(http.StatusNotFound, "no route for host %q", x.Request.Host)
		}
		x.Rule = web
		x.Status = http.StatusOK // as encode would, once the answer is written
		return next.Handle(ctx, x)
	})
	chain, err := pipeline.New(context.Background(), []pipeline.Stage{m.Stage(), route})
	if err != nil {
		panic(err)
	}
	for _, host := range []string{"app.example.test", "app.example.test", "scanner.example"} {
		x := pipeline.Acquire(pipeline.Ingress)
		x.Protocol = pipeline.ProtoHTTP1
		x.Request = httptest.NewRequest(http.MethodGet, "http://"+host+"/", nil)
		_ = chain.Handle(context.Background(), x)
		x.Release()
	}

	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	for _, line := range strings.Split(rec.Body.String(), "\n") {
		if strings.HasPrefix(line, "qtunnel_requests_total{") ||
			strings.HasPrefix(line, `qtunnel_errors_total{kind="rejected",side="ingress"}`) {
			fmt.Println(line)
		}
	}
	// Output:
	// qtunnel_errors_total{kind="rejected",side="ingress"} 1
	// qtunnel_requests_total{code_class="2xx",direction="reverse",protocol="http1",rule="web",side="ingress"} 2
	// qtunnel_requests_total{code_class="4xx",direction="none",protocol="http1",rule="none",side="ingress"} 1
}
