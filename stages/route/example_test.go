package route_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"

	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/rules"
	"github.com/qtunnel/qtunnel/stages/route"
)

// The route stage on the server's public listener: a request is matched by
// host and path; one that matches nothing is answered 404 with the reason.
func ExampleRouter() {
	tab, err := rules.NewTable(1, []rules.Rule{
		{ID: "site", Client: "laptop", Direction: rules.Reverse, Host: "app.example.test", Upstream: "http://127.0.0.1:3000"},
		{ID: "api", Client: "laptop", Direction: rules.Reverse, Host: "app.example.test", PathPrefix: "/api", Upstream: "http://127.0.0.1:8081"},
	})
	if err != nil {
		panic(err)
	}
	var store rules.Store
	store.Swap(tab)
	router, err := route.New(route.Config{Rules: &store, Egress: rules.Forward})
	if err != nil {
		panic(err)
	}
	printRule := pipeline.HandlerFunc(func(_ context.Context, x *pipeline.Exchange) error {
		fmt.Println("->", x.Rule.ID, x.Rule.Upstream)
		return nil
	})
	for _, target := range []string{"http://app.example.test/", "http://app.example.test/api/users", "http://unknown.test/"} {
		x := pipeline.Acquire(pipeline.Ingress)
		x.Request = httptest.NewRequest(http.MethodGet, target, nil)
		if err := router.Handle(context.Background(), x, printRule); err != nil {
			status, msg, _ := pipeline.Answer(err)
			fmt.Println(status, msg)
		}
		x.Release()
	}
	// Output:
	// -> site http://127.0.0.1:3000
	// -> api http://127.0.0.1:8081
	// 404 no route for host "unknown.test" and path "/"
}
