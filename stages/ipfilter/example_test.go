package ipfilter_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"

	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/stages/ipfilter"
)

// A rule open to the office network and the VPN, except one machine of the
// office. Everyone else is answered 403.
func ExampleStage() {
	filter, err := ipfilter.New(ipfilter.Config{
		Allow: []string{"192.0.2.0/24", "2001:db8:1::/48"},
		Deny:  []string{"192.0.2.66"},
	})
	if err != nil {
		panic(err)
	}
	upstream := pipeline.HandlerFunc(func(_ context.Context, x *pipeline.Exchange) error {
		fmt.Println(x.Source, "-> upstream")
		return nil
	})
	for _, src := range []string{"192.0.2.10", "::ffff:192.0.2.11", "2001:db8:1::7", "192.0.2.66", "203.0.113.9"} {
		x := pipeline.Acquire(pipeline.Ingress)
		x.Request = httptest.NewRequest(http.MethodGet, "http://app.example.test/", nil)
		x.Source = netip.MustParseAddr(src)
		if err := filter.Handle(context.Background(), x, upstream); err != nil {
			status, msg, _ := pipeline.Answer(err)
			fmt.Println(status, msg)
		}
		x.Release()
	}
	// Output:
	// 192.0.2.10 -> upstream
	// ::ffff:192.0.2.11 -> upstream
	// 2001:db8:1::7 -> upstream
	// 403 forbidden: 192.0.2.66 is not allowed
	// 403 forbidden: 203.0.113.9 is not allowed
}

// The stage as configuration names it: a Registry builds it from a rule's
// settings.
func ExampleModule() {
	var reg pipeline.Registry
	if err := reg.Register(ipfilter.Module); err != nil {
		panic(err)
	}
	_, err := reg.Build("ipfilter", func(v any) error {
		*v.(*ipfilter.Config) = ipfilter.Config{Allow: []string{"10.0.0.0/8", "10.0.0.0/33", "localhost"}}
		return nil
	})
	fmt.Println(err)
	// Output:
	// pipeline: stage "ipfilter": ipfilter: allow[1]: "10.0.0.0/33" is not a CIDR
	// allow[2]: "localhost" is not an IP address or a CIDR
}
