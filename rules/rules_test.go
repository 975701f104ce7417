package rules_test

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"go.yaml.in/yaml/v3"

	"github.com/qtunnel/qtunnel/rules"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func rev(id, client, host, prefix string) rules.Rule {
	return rules.Rule{ID: id, Client: client, Direction: rules.Reverse, Host: host, PathPrefix: prefix, Upstream: "http://127.0.0.1:3000"}
}

// with returns a valid reverse rule changed by f.
func with(f func(*rules.Rule)) rules.Rule {
	r := rev("a", "c", "h", "")
	f(&r)
	return r
}

// multi returns a reverse rule over upstreams.
func multi(upstreams ...string) rules.Rule {
	return with(func(r *rules.Rule) { r.Upstream, r.Upstreams = "", upstreams })
}

// check returns a reverse rule over two upstreams with health check hc.
func check(hc rules.HealthCheck) rules.Rule {
	r := multi("http://127.0.0.1:3001", "http://127.0.0.1:3002")
	r.HealthCheck = &hc
	return r
}

func tcpWith(f func(*rules.Rule)) rules.Rule {
	r := rules.Rule{ID: "t", Client: "c", Direction: rules.Reverse, Protocol: rules.ProtoTCP, Listen: ":2222", Upstream: "127.0.0.1:22"}
	f(&r)
	return r
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
	require.Equal(t, "idn", tab.Match("", "Bücher.Example.:8443", "/").ID, "port and trailing dot dropped before the conversion")
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

		// Resilience (S10).
		{"upstream and upstreams", []rules.Rule{with(func(r *rules.Rule) { r.Upstreams = []string{"http://127.0.0.1:3001"} })},
			"upstreams", "either upstream or upstreams"},
		{"upstreams entry", []rules.Rule{multi("http://127.0.0.1:3001", "ftp://x")}, "upstreams[1]", "scheme"},
		{"upstreams entry with query", []rules.Rule{multi("http://127.0.0.1:3001?x=1")}, "upstreams[0]", "want scheme://host"},
		{"upstreams mixed schemes", []rules.Rule{multi("http://127.0.0.1:3001", "https://127.0.0.1:3002")}, "upstreams[1]", "share one scheme"},
		{"upstreams twice", []rules.Rule{multi("http://127.0.0.1:3001", "http://127.0.0.1:3002", "http://127.0.0.1:3001")},
			"upstreams[2]", "already upstreams[0]"},
		{"upstreams too many", []rules.Rule{multi(slices.Repeat([]string{"http://x:1"}, rules.MaxUpstreams+1)...)}, "upstreams", "at most 64"},
		{"tls settings need https upstreams", []rules.Rule{func() rules.Rule {
			r := multi("http://127.0.0.1:3001")
			r.UpstreamServerName = "x"
			return r
		}()}, "upstreams", "need an https:// upstream"},
		{"load_balance", []rules.Rule{with(func(r *rules.Rule) { r.LoadBalance = "random" })}, "load_balance", `"random" is neither`},
		{"retries negative", []rules.Rule{with(func(r *rules.Rule) { r.Retries = -1 })}, "retries", "between 0 and 5"},
		{"retries too many", []rules.Rule{with(func(r *rules.Rule) { r.Retries = 6 })}, "retries", "between 0 and 5"},
		{"health_check path missing", []rules.Rule{check(rules.HealthCheck{})}, "health_check.path", "missing"},
		{"health_check path relative", []rules.Rule{check(rules.HealthCheck{Path: "healthz"})}, "health_check.path", "not a path"},
		{"health_check path with space", []rules.Rule{check(rules.HealthCheck{Path: "/a b"})}, "health_check.path", "not a path"},
		{"health_check interval negative", []rules.Rule{check(rules.HealthCheck{Path: "/h", Interval: -1})}, "health_check.interval", "negative"},
		{"health_check interval too short", []rules.Rule{check(rules.HealthCheck{Path: "/h", Interval: rules.Duration(time.Millisecond)})},
			"health_check.interval", "below the minimum of 10ms"},
		{"health_check timeout", []rules.Rule{check(rules.HealthCheck{Path: "/h", Timeout: -1})}, "health_check.timeout", "negative"},
		{"health_check healthy_threshold", []rules.Rule{check(rules.HealthCheck{Path: "/h", HealthyThreshold: -1})}, "health_check.healthy_threshold", "negative"},
		{"health_check unhealthy_threshold", []rules.Rule{check(rules.HealthCheck{Path: "/h", UnhealthyThreshold: -2})}, "health_check.unhealthy_threshold", "negative"},
		{"health_check expect_status", []rules.Rule{check(rules.HealthCheck{Path: "/h", ExpectStatus: 999})}, "health_check.expect_status", "not an HTTP status"},
		{"tcp upstreams", []rules.Rule{tcpWith(func(r *rules.Rule) { r.Upstreams = []string{"127.0.0.1:22"} })}, "upstreams", "one upstream"},
		{"tcp load_balance", []rules.Rule{tcpWith(func(r *rules.Rule) { r.LoadBalance = rules.RoundRobin })}, "load_balance", "one upstream"},
		{"tcp health_check", []rules.Rule{tcpWith(func(r *rules.Rule) { r.HealthCheck = &rules.HealthCheck{Path: "/"} })}, "health_check", "HTTP rules"},
		{"tcp retries", []rules.Rule{tcpWith(func(r *rules.Rule) { r.Retries = 1 })}, "retries", "HTTP rules"},
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

func TestEncodingOfRulesWithoutNewFieldsIsUnchanged(t *testing.T) {
	t.Parallel()
	tab, err := rules.NewTable(1, []rules.Rule{rev("a", "c", "h1", "")})
	require.NoError(t, err)
	// The encoding and hash before upstreams, load_balance, health_check
	// and retries existed: peers of either version agree on such rules.
	require.JSONEq(t, `[{"id":"a","client":"c","direction":"reverse","protocol":"http","host":"h1","path_prefix":"/","upstream":"http://127.0.0.1:3000"}]`,
		string(rules.Encode(tab.Rules())))
	require.Equal(t, "5f9a597125f4e05f13b70435e8db6965e37ddbcf00e14807df56aafc0126b4cb", tab.HashHex())
}

func TestResilienceFieldsRoundTrip(t *testing.T) {
	t.Parallel()
	r := multi("https://10.0.0.1:8443/api", "https://10.0.0.2:8443/api", "https://10.0.0.3:8443/api")
	r.ID = "balanced"
	r.LoadBalance = rules.LeastRequests
	r.Retries = 2
	r.UpstreamServerName = "api.internal"
	r.HealthCheck = &rules.HealthCheck{Path: "/healthz?deep=1", Interval: rules.Duration(1500 * time.Millisecond),
		Timeout: rules.Duration(250 * time.Millisecond), HealthyThreshold: 1, UnhealthyThreshold: 4, ExpectStatus: 204}
	plain := rev("plain", "c", "other", "")
	tab, err := rules.NewTable(7, []rules.Rule{r, plain})
	require.NoError(t, err)

	enc := rules.Encode(tab.Rules())
	var raw []map[string]any
	require.NoError(t, json.Unmarshal(enc, &raw))
	require.Equal(t, map[string]any{"path": "/healthz?deep=1", "interval": "1.5s", "timeout": "250ms",
		"healthy_threshold": 1.0, "unhealthy_threshold": 4.0, "expect_status": 204.0}, raw[0]["health_check"],
		"durations travel as text")
	require.NotContains(t, raw[1], "health_check")
	require.NotContains(t, raw[1], "upstreams")

	decoded, err := rules.Decode(enc)
	require.NoError(t, err)
	require.Equal(t, tab.Rules()[0], decoded[0])
	require.Equal(t, enc, rules.Encode(decoded), "decode then encode is the identity")
	require.Equal(t, tab.Hash(), rules.Hash(decoded))
	again, err := rules.NewTable(8, decoded)
	require.NoError(t, err)
	require.Equal(t, tab.Hash(), again.Hash(), "the other side computes the same hash")

	// Every new field counts in the hash.
	changes := []func(*rules.Rule){
		func(r *rules.Rule) { r.Upstreams = r.Upstreams[:2] },
		func(r *rules.Rule) { r.LoadBalance = rules.RoundRobin },
		func(r *rules.Rule) { r.Retries = 3 },
		func(r *rules.Rule) { r.HealthCheck.Interval = rules.Duration(2 * time.Second) },
		func(r *rules.Rule) { r.HealthCheck.Timeout = 0 },
		func(r *rules.Rule) { r.HealthCheck.Path = "/ready" },
		func(r *rules.Rule) { r.HealthCheck.HealthyThreshold = 2 },
		func(r *rules.Rule) { r.HealthCheck.UnhealthyThreshold = 2 },
		func(r *rules.Rule) { r.HealthCheck.ExpectStatus = 0 },
		func(r *rules.Rule) { r.HealthCheck = nil },
	}
	for i, change := range changes {
		rs := tab.Rules()
		hc := *rs[0].HealthCheck
		rs[0].HealthCheck = &hc
		rs[0].Upstreams = slices.Clone(rs[0].Upstreams)
		change(&rs[0])
		require.NotEqual(t, tab.Hash(), rules.Hash(rs), "change %d", i)
	}

	// Equal durations hash alike however they were written.
	var a, b rules.Rule
	require.NoError(t, json.Unmarshal([]byte(`{"id":"x","health_check":{"path":"/","interval":"90s"}}`), &a))
	require.NoError(t, json.Unmarshal([]byte(`{"id":"x","health_check":{"path":"/","interval":"1m30s"}}`), &b))
	require.Equal(t, rules.Hash([]rules.Rule{a}), rules.Hash([]rules.Rule{b}))
	_, err = rules.Decode([]byte(`[{"id":"x","health_check":{"path":"/","interval":5}}]`))
	require.Error(t, err, "a bare number is not a duration")
	_, err = rules.Decode([]byte(`[{"id":"x","health_check":{"path":"/","interval":"soon"}}]`))
	require.ErrorContains(t, err, "not a duration")
}

func TestResilienceFieldsFromYAML(t *testing.T) {
	t.Parallel()
	doc := `
id: api
client: laptop
direction: reverse
host: api.example.test
upstreams: [http://127.0.0.1:3001, http://127.0.0.1:3002]
load_balance: least_requests
retries: 2
health_check:
  path: /healthz
  interval: 20ms
  timeout: 1s
  healthy_threshold: 1
  unhealthy_threshold: 2
  expect_status: 200
`
	dec := yaml.NewDecoder(strings.NewReader(doc))
	dec.KnownFields(true) // as the config loader does
	var r rules.Rule
	require.NoError(t, dec.Decode(&r))
	require.Equal(t, []string{"http://127.0.0.1:3001", "http://127.0.0.1:3002"}, r.Upstreams)
	require.Equal(t, rules.LeastRequests, r.LoadBalance)
	require.Equal(t, 2, r.Retries)
	require.Equal(t, &rules.HealthCheck{Path: "/healthz", Interval: rules.Duration(20 * time.Millisecond),
		Timeout: rules.Duration(time.Second), HealthyThreshold: 1, UnhealthyThreshold: 2, ExpectStatus: 200}, r.HealthCheck)
	r.Normalize()
	require.NoError(t, r.Validate(0))

	out, err := yaml.Marshal(r.HealthCheck)
	require.NoError(t, err)
	require.Contains(t, string(out), "interval: 20ms")
}

func TestUpstreamAccessors(t *testing.T) {
	t.Parallel()
	one := rev("a", "c", "h", "")
	require.Equal(t, 1, one.UpstreamCount())
	require.Equal(t, "http://127.0.0.1:3000", one.UpstreamAt(0))
	many := multi("http://x:1", "http://x:2")
	require.Equal(t, 2, many.UpstreamCount())
	require.Equal(t, "http://x:2", many.UpstreamAt(1))
}

func TestHealthCheckDefaults(t *testing.T) {
	t.Parallel()
	d := rules.HealthCheck{Path: "/h"}.WithDefaults()
	require.Equal(t, rules.HealthCheck{Path: "/h", Interval: rules.Duration(5 * time.Second), Timeout: rules.Duration(2 * time.Second),
		HealthyThreshold: 2, UnhealthyThreshold: 3}, d)
	kept := rules.HealthCheck{Path: "/h", Interval: rules.Duration(time.Second), Timeout: rules.Duration(time.Second),
		HealthyThreshold: 5, UnhealthyThreshold: 6, ExpectStatus: 204}
	require.Equal(t, kept, kept.WithDefaults())
	for status, want := range map[int]bool{200: true, 204: true, 301: true, 399: true, 199: false, 400: false, 503: false} {
		require.Equal(t, want, d.Good(status), "status %d", status)
	}
	require.True(t, kept.Good(204))
	require.False(t, kept.Good(200))
	require.Equal(t, "1m30s", rules.Duration(90*time.Second).String())
}

func TestNormalizePath(t *testing.T) {
	tests := []struct{ in, want string }{
		{"/", "/"},
		{"/api/users", "/api/users"},
		{"/api/../secret", "/secret"},
		{"/api/%2e%2e/secret", "/secret"},
		{"/api/%2E%2e/secret", "/secret"},
		{"/api/.%2e/secret", "/secret"},
		{"/api/./v1/", "/api/v1/"},
		{"/api/v1/.", "/api/v1/"},
		{"/api/v1/..", "/api/"},
		{"/..", "/"},
		{"/../../etc/passwd", "/etc/passwd"},
		{"/a//b/../c", "/a//c"},
		{"/api%2F..%2Fsecret", "/api%2F..%2Fsecret"},
		{"/%7Euser/%41", "/~user/A"},
		{"/caf%C3%A9", "/caf%C3%A9"},
		{"/a%2", "/a%252"},
		{"/%7%41", "/%257A"},
		{"/100%", "/100%25"},
		{"*", "*"},
		{"/..a/b", "/..a/b"},
		{"/a/...", "/a/..."},
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, rules.NormalizePath(tt.in), "in %q", tt.in)
	}
	require.Zero(t, testing.AllocsPerRun(100, func() { _ = rules.NormalizePath("/api/v1/users") }))
}
