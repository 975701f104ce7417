package rules_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/rules"
)

// TestUpstreamWithoutScheme: an upstream written as host:port is refused
// with the URL it should be, not with url.Parse's words, under the rule's
// upstream field (a FieldError, as config reports it).
func TestUpstreamWithoutScheme(t *testing.T) {
	t.Parallel()
	tests := []struct{ upstream, want string }{
		{"127.0.0.1:3000", `"127.0.0.1:3000" has no scheme: write http://127.0.0.1:3000 or https://...`},
		{"localhost:3000", `"localhost:3000" has no scheme: write http://localhost:3000 or https://...`},
		{"app.internal", `"app.internal" has no scheme: write http://app.internal or https://...`},
		{"http:/127.0.0.1:3000", `"http:/127.0.0.1:3000": want scheme://host[:port][/base-path]`},
		{"ftp://x", `"ftp://x": scheme must be http or https`},
		{"http://[::1", `"http://[::1" is not a URL such as http://127.0.0.1:3000: missing ']' in host`},
	}
	for _, tt := range tests {
		t.Run(tt.upstream, func(t *testing.T) {
			t.Parallel()
			_, err := rules.ParseUpstream(tt.upstream)
			require.EqualError(t, err, tt.want)

			r := rules.Rule{ID: "a", Client: "c", Direction: rules.Reverse, Host: "h.test", Upstream: tt.upstream}
			r.Normalize()
			var fe *rules.FieldError
			require.ErrorAs(t, r.Validate(0), &fe)
			require.Equal(t, rules.FieldError{Index: 0, Field: "upstream", Msg: tt.want}, *fe)
		})
	}
}
