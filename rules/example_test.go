package rules_test

import (
	"fmt"

	"github.com/qtunnel/qtunnel/rules"
)

func ExampleTable_Match() {
	tab, err := rules.NewTable(1, []rules.Rule{
		{ID: "site", Client: "laptop", Direction: rules.Reverse, Host: "app.example.test", Upstream: "http://127.0.0.1:3000"},
		{ID: "api", Client: "laptop", Direction: rules.Reverse, Host: "app.example.test", PathPrefix: "/api", Upstream: "http://127.0.0.1:8081"},
	})
	if err != nil {
		panic(err)
	}
	for _, path := range []string{"/", "/api/users", "/apix"} {
		fmt.Println(path, "->", tab.Match("", "App.Example.Test:8080", path).ID)
	}
	// Output:
	// / -> site
	// /api/users -> api
	// /apix -> site
}
