package rules_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/rules"
)

// Bugs the fuzz targets found, each with the input that showed it.

// FuzzDecode: a rule with host "0.." was stored as "0.", which a request's
// Host never normalises to (NormalizeHost("0.") is "0"), so the rule could
// not match any request. NormalizeHost now drops every trailing dot,
// including the one the IDNA conversion makes of U+3002.
func TestNormalizeHostDropsEveryTrailingDot(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{"a..": "a", "a...:80": "a", "ä。": "xn--4ca", "Bücher.Example..": "xn--bcher-kva.example"} {
		got := rules.NormalizeHost(in)
		require.Equal(t, want, got, "NormalizeHost(%q)", in)
		require.Equal(t, got, rules.NormalizeHost(got), "normalising %q again", got)
	}
	tab, err := rules.NewTable(1, []rules.Rule{rev("r", "c", "app.example.test..", "")})
	require.NoError(t, err)
	for _, host := range []string{"app.example.test", "app.example.test.", "APP.example.test..:8080"} {
		m := tab.Match("", host, "/")
		require.NotNil(t, m, "host %q", host)
		require.Equal(t, "r", m.ID)
	}
}

// FuzzNormalizeHost: "[a:1]:2" normalises to "a:1", which a request's Host
// normalises to "a": such a host is now refused instead of making a rule
// that matches nothing.
func TestHostThatCannotMatchIsRefused(t *testing.T) {
	t.Parallel()
	_, err := rules.NewTable(1, []rules.Rule{rev("r", "c", "[a:1]:2", "")})
	require.EqualError(t, err, `rule 0: host: "a:1" is not a host name`)
}

// FuzzRule: a host_header of "\xd1" validated, then became "\ufffd" in the
// JSON that carries rules to the client, which applied another rule than
// the server had checked. Text settings must now be valid UTF-8.
func TestRuleTextMustBeValidUTF8(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, field string
		rule        rules.Rule
	}{
		{"host_header", "host_header", with(func(r *rules.Rule) { r.HostHeader = "\xd1" })},
		{"listen", "listen", fwd("f", "c", "127.0.0.1:9\xff")},
		{"upstreams", "upstreams[1]", multi("http://a:1", "http://b\xff:2")},
		{"health check path", "health_check.path", check(rules.HealthCheck{Path: "/\xc0"})},
		{"tcp upstream", "upstream", tcpWith(func(r *rules.Rule) { r.Upstream = "db\xfe:5432" })},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := rules.NewTable(1, []rules.Rule{tt.rule})
			var fe *rules.FieldError
			require.ErrorAs(t, err, &fe)
			require.Equal(t, tt.field, fe.Field)
			require.Contains(t, fe.Msg, "is not valid UTF-8")
		})
	}
}
