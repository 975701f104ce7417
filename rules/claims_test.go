package rules_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/rules"
)

func TestClaims(t *testing.T) {
	t.Parallel()
	c := &rules.Claims{
		BaseDomain:     "dev.example.com",
		Hosts:          []string{"shop.example.org", "*.preview.example.org"},
		TCPPorts:       []string{"2222", "20000-20009"},
		ForwardTargets: []string{"10.0.0.0/8:443", "db.internal:5432", "*.svc.internal:*", "127.0.0.1:8000-8099"},
	}
	require.NoError(t, c.Validate())
	rev := func(host string) *rules.Rule {
		return &rules.Rule{Direction: rules.Reverse, Protocol: rules.ProtoHTTP, Host: host}
	}
	tcp := func(listen string) *rules.Rule {
		return &rules.Rule{Direction: rules.Reverse, Protocol: rules.ProtoTCP, Listen: listen}
	}
	fwd := func(proto, upstream string) *rules.Rule {
		return &rules.Rule{Direction: rules.Forward, Protocol: proto, Upstream: upstream}
	}
	for _, tt := range []struct {
		r    *rules.Rule
		want string // "" accepted, else part of the refusal
	}{
		{rev("app.dev.example.com"), ""},
		{rev("a.b.dev.example.com"), "base_domain"}, // one label only
		{rev("dev.example.com"), "base_domain"},
		{rev("shop.example.org"), ""},
		{rev("x.shop.example.org"), "hosts"},
		{rev("pr-1.preview.example.org"), ""},
		{rev("evil.com"), "outside what this client may declare"},
		{tcp(":2222"), ""},
		{tcp(":20009"), ""},
		{tcp(":20010"), "tcp_ports"},
		{tcp(":22"), "tcp_ports"},
		{fwd(rules.ProtoHTTP, "https://10.9.8.7"), ""}, // port 443 by scheme
		{fwd(rules.ProtoHTTP, "http://10.9.8.7"), "forward_targets"},
		{fwd(rules.ProtoTCP, "db.internal:5432"), ""},
		{fwd(rules.ProtoTCP, "db.internal:5433"), "forward_targets"},
		{fwd(rules.ProtoHTTP, "http://api.svc.internal:9000"), ""},
		{fwd(rules.ProtoHTTP, "http://127.0.0.1:8080"), ""},
		{fwd(rules.ProtoHTTP, "http://127.0.0.1:9000"), "forward_targets"},
		{fwd(rules.ProtoHTTP, "http://192.168.1.1:443"), "forward_targets"},
		{&rules.Rule{Direction: rules.Forward, Protocol: rules.ProtoHTTP, Upstream: "https://10.0.0.1", UpstreamCAFile: "/etc/shadow"}, "upstream_ca_file"},
		{&rules.Rule{Direction: rules.Reverse, Protocol: rules.ProtoHTTP, Host: "app.dev.example.com", Stages: []rules.StageRef{{Name: "auth"}}}, "stages"},
	} {
		err := c.CheckClaim(tt.r)
		if tt.want == "" {
			assert.NoError(t, err, "%+v", tt.r)
			continue
		}
		require.Error(t, err, "%+v", tt.r)
		assert.ErrorIs(t, err, rules.ErrNotClaimable)
		assert.Contains(t, err.Error(), tt.want)
	}
	assert.Equal(t, 20000, c.FreePort(func(p int) bool { return p == 2222 }))
	assert.Zero(t, (&rules.Claims{}).FreePort(func(int) bool { return false }))

	var none *rules.Claims
	assert.False(t, none.Any())
	require.Error(t, none.CheckClaim(rev("app.dev.example.com")))
	assert.Equal(t, rules.DefaultMaxDeclared, none.Max())
}

func TestClaimsValidate(t *testing.T) {
	t.Parallel()
	for _, c := range []rules.Claims{
		{BaseDomain: "Dev.Example.com"},
		{BaseDomain: "*.example.com"},
		{Hosts: []string{"*."}},
		{Hosts: []string{"a b"}},
		{TCPPorts: []string{"0"}},
		{TCPPorts: []string{"30-20"}},
		{TCPPorts: []string{"70000"}},
		{ForwardTargets: []string{"nohostport"}},
		{ForwardTargets: []string{"10.0.0.0/8:x"}},
		{MaxRules: -1},
	} {
		assert.Error(t, c.Validate(), "%+v", c)
	}
}
