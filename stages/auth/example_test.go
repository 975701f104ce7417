package auth_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"

	"github.com/qtunnel/qtunnel/control"
	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/stages/auth"
)

// A rule for people with a password (alice, in an htpasswd file) and for
// scripts with a token. Without credentials, the answer is 401 with a
// challenge for each scheme; the upstream never sees the credentials.
func ExampleStage() {
	a, err := auth.New(auth.Config{
		Realm: "staging",
		Basic: auth.BasicConfig{UsersFile: "testdata/users.htpasswd"},
		Bearer: auth.BearerConfig{TokensSHA256: []string{
			control.HashToken("ci-token-1234").String(), // what "tunnel hash-token" prints
		}},
	})
	if err != nil {
		panic(err)
	}
	upstream := pipeline.HandlerFunc(func(_ context.Context, x *pipeline.Exchange) error {
		fmt.Printf("-> upstream (Authorization: %q)\n", x.Request.Header.Get("Authorization"))
		return nil
	})
	send := func(set func(r *http.Request)) {
		x := pipeline.Acquire(pipeline.Ingress)
		defer x.Release()
		x.Request = httptest.NewRequest(http.MethodGet, "http://staging.example.test/", nil)
		set(x.Request)
		err := a.Handle(context.Background(), x, upstream)
		if err == nil {
			return
		}
		status, msg, _ := pipeline.Answer(err)
		fmt.Println(status, msg)
		if rj, ok := err.(*pipeline.Reject); ok {
			for _, v := range rj.Header.Values("WWW-Authenticate") {
				fmt.Println("  WWW-Authenticate:", v)
			}
		}
	}
	send(func(*http.Request) {})
	send(func(r *http.Request) { r.SetBasicAuth("alice", "wonderland") })
	send(func(r *http.Request) { r.SetBasicAuth("alice", "guess") })
	send(func(r *http.Request) { r.Header.Set("Authorization", "Bearer ci-token-1234") })
	// Output:
	// 401 authentication required
	//   WWW-Authenticate: Basic realm="staging", charset="UTF-8"
	//   WWW-Authenticate: Bearer realm="staging"
	// -> upstream (Authorization: "")
	// 401 authentication required
	//   WWW-Authenticate: Basic realm="staging", charset="UTF-8"
	//   WWW-Authenticate: Bearer realm="staging"
	// -> upstream (Authorization: "")
}

// Validate names every problem at once.
func ExampleConfig_Validate() {
	err := auth.Config{Basic: auth.BasicConfig{Users: []string{"alice:$apr1$4z$kQ", "bob"}}}.Validate()
	fmt.Println(err)
	// Output:
	// basic.users[0]: user "alice": only bcrypt hashes ($2y$..., from "htpasswd -B") are supported
	// basic.users[1]: want "user:bcrypt-hash", as "htpasswd -nB user" prints it
}
