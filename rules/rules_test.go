package rules_test

import (
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/qtunnel/qtunnel/rules"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func rev(id, client, host, prefix string) rules.Rule {
	return rules.Rule{ID: id, Client: client, Direction: rules.Reverse, Host: host, PathPrefix: prefix, Upstream: "http://127.0.0.1:3000"}
}

func fwd(id, client, listen string) rules.Rule {
	return rules.Rule{ID: id, Client: client, Direction: rules.Forward, Listen: listen, Upstream: "http://127.0.0.1:4000"}
}

func TestMatch(t *testing.T) {
	t.Parallel()
	tab, err := rules.NewTable(1, []rules.Rule{
		rev("root", "c1", "App.Example.test.", ""),
		rev("api", "c1", "app.example.test", "/api"),
		rev("api-v2", "c1", "app.example.test", "/api/v2/"),
		rev("other", "c2", "other.test", "/"),
		fwd("db", "c1", "127.0.0.1:9000"),
	})
	require.NoError(t, err)
	tests := []struct {
		listener, host, path, want string
	}{
		{"", "app.example.test", "/", "root"},
		{"", "APP.example.test:8080", "/index.html", "root"},
		{"", "app.example.test.", "/api", "api"},
		{"", "app.example.test", "/api/users?x=1", "api"},
		{"", "app.example.test", "/api?x=1", "api"},
		{"", "app.example.test", "/apix", "root"},
		{"", "app.example.test", "/api/v2/x", "api-v2"},
		{"", "other.test", "/x", "other"},
		{"", "nobody.test", "/", ""},
		{rules.ListenerKey(rules.Forward, "127.0.0.1:9000"), "anything", "/", "db"},
		{rules.ListenerKey(rules.Forward, "127.0.0.1:9001"), "anything", "/", ""},
		{"127.0.0.1:9000", "anything", "/", ""},
	}
	for _, tt := range tests {
		got := tab.Match(tt.listener, tt.host, tt.path)
		if tt.want == "" {
			require.Nil(t, got, "%s %s%s", tt.listener, tt.host, tt.path)
			continue
		}
		require.NotNil(t, got, "%s %s%s", tt.listener, tt.host, tt.path)
		require.Equal(t, tt.want, got.ID, "%s %s%s", tt.listener, tt.host, tt.path)
	}
	require.Equal(t, "app.example.test", tab.ByID("root").Host, "hosts are normalised")
	require.Equal(t, []rules.Listener{{Addr: "127.0.0.1:9000", Direction: rules.Forward, Protocol: rules.ProtoHTTP}}, tab.Listeners(rules.Forward))
	require.Empty(t, tab.Listeners(rules.Reverse))
	require.Len(t, tab.ForClient("c1"), 4)
	require.Equal(t, uint64(1), tab.Version())
	require.Equal(t, 5, tab.Len())
}

func TestInternationalHostsAreNormalised(t *testing.T) {
	t.Parallel()
	tab, err := rules.NewTable(1, []rules.Rule{rev("idn", "c", "Bücher.Example.", "")})
	require.NoError(t, err)
	require.Equal(t, "xn--bcher-kva.example", tab.ByID("idn").Host)
	require.Equal(t, "idn", tab.Match("", "xn--bcher-kva.example:8080", "/").ID, "clients send the ASCII form")
	require.Equal(t, "idn", tab.Match("", "bücher.example", "/").ID)
	_, err = rules.NewTable(1, []rules.Rule{rev("a", "c1", "bücher.example", ""), rev("b", "c2", "XN--BCHER-KVA.example", "/x")})
	require.ErrorContains(t, err, `belongs to client "c1"`, "the two spellings are one host")
}

func TestNilTableMatchesNothing(t *testing.T) {
	t.Parallel()
	var tab *rules.Table
	require.Nil(t, tab.Match("", "x", "/"))
	require.Nil(t, tab.ByID("x"))
	require.Zero(t, tab.Len())
	require.Equal(t, rules.Hash(nil), tab.Hash())
}

func TestValidation(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		rules []rules.Rule
		field string
		msg   string
	}{
		{"bad id", []rules.Rule{rev("bad id", "c", "h", "")}, "id", "not a valid id"},
		{"bad client", []rules.Rule{rev("a", "", "h", "")}, "client", "not a valid client"},
		{"direction", []rules.Rule{{ID: "a", Client: "c", Direction: "sideways", Upstream: "http://x:1"}}, "direction", "neither"},
		{"reverse without host", []rules.Rule{rev("a", "c", "", "")}, "host", "needs a host"},
		{"forward without listen", []rules.Rule{{ID: "a", Client: "c", Direction: rules.Forward, Upstream: "http://x:1"}}, "listen", "needs a listen"},
		{"forward bad listen", []rules.Rule{fwd("a", "c", "9000")}, "listen", "not host:port"},
		{"upstream scheme", []rules.Rule{{ID: "a", Client: "c", Direction: rules.Reverse, Host: "h", Upstream: "ftp://x"}}, "upstream", "scheme"},
		{"upstream missing", []rules.Rule{{ID: "a", Client: "c", Direction: rules.Reverse, Host: "h"}}, "upstream", "missing"},
		{"duplicate id", []rules.Rule{rev("a", "c", "h1", ""), rev("a", "c", "h2", "")}, "id", "already used"},
		{"same route", []rules.Rule{rev("a", "c", "h", "/x"), rev("b", "c", "H.", "/x")}, "host", `already routed by rule "a"`},
		{"host of another client", []rules.Rule{rev("a", "c1", "h", "/"), rev("b", "c2", "h", "/other")}, "host", `belongs to client "c1"`},
		{"port of another client", []rules.Rule{fwd("a", "c1", "127.0.0.1:9000"), func() rules.Rule {
			r := fwd("b", "c2", "127.0.0.1:9000")
			r.Host = "x"
			return r
		}()}, "listen", `belongs to client "c1"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := rules.NewTable(1, tt.rules)
			var fe *rules.FieldError
			require.ErrorAs(t, err, &fe)
			require.Equal(t, tt.field, fe.Field)
			require.Contains(t, fe.Msg, tt.msg)
		})
	}
}

func TestHashIsOrderIndependentAndSensitive(t *testing.T) {
	t.Parallel()
	a, b := rev("a", "c", "h1", ""), rev("b", "c", "h2", "")
	t1, err := rules.NewTable(1, []rules.Rule{a, b})
	require.NoError(t, err)
	t2, err := rules.NewTable(2, []rules.Rule{b, a})
	require.NoError(t, err)
	require.Equal(t, t1.Hash(), t2.Hash())
	b.Upstream = "http://127.0.0.1:3001"
	t3, err := rules.NewTable(3, []rules.Rule{a, b})
	require.NoError(t, err)
	require.NotEqual(t, t1.Hash(), t3.Hash())
	require.Len(t, t1.HashHex(), 64)

	decoded, err := rules.Decode(rules.Encode(t1.Rules()))
	require.NoError(t, err)
	require.Equal(t, rules.Hash(t1.Rules()), rules.Hash(decoded))
	_, err = rules.Decode([]byte("{"))
	require.Error(t, err)
}
