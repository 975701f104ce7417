package rules_test

import (
	"errors"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/rules"
)

// The fuzz targets of this package: rules come from configuration files,
// the admin API and (as JSON) the control stream. testdata/fuzz/<name>/
// holds more seeds and regressions.

// yamlKeys returns the yaml keys of the fields of struct type t.
func yamlKeys(t reflect.Type) map[string]bool {
	keys := map[string]bool{}
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		keys[name] = true
	}
	return keys
}

var (
	ruleKeys        = yamlKeys(reflect.TypeFor[rules.Rule]())
	healthCheckKeys = yamlKeys(reflect.TypeFor[rules.HealthCheck]())
)

// requireFieldError checks that err is a *FieldError of rule i whose Field
// is a key of the configuration file ("upstreams[2]", "health_check.path"),
// so that the config loader can point at its line.
func requireFieldError(t *testing.T, err error, i int) {
	t.Helper()
	var fe *rules.FieldError
	require.True(t, errors.As(err, &fe), "want a *rules.FieldError, got %T: %v", err, err)
	require.Equal(t, i, fe.Index)
	require.NotEmpty(t, fe.Msg)
	key, sub, nested := strings.Cut(fe.Field, ".")
	key, _, _ = strings.Cut(key, "[")
	require.True(t, ruleKeys[key], "field %q is not a rule setting", fe.Field)
	if nested {
		require.Equal(t, "health_check", key)
		require.True(t, healthCheckKeys[sub], "field %q is not a health check setting", fe.Field)
	}
}

// requireTableConsistent checks what a built table promises: every rule is
// normalised (normalising again changes nothing), found by its id, matched
// by its own host and path prefix (or its listener), and the hash is that
// of the rules.
func requireTableConsistent(t *testing.T, tab *rules.Table) {
	t.Helper()
	rs := tab.Rules()
	require.Len(t, rs, tab.Len())
	require.Equal(t, rules.Hash(rs), tab.Hash())
	perClient := 0
	seen := map[string]bool{}
	for i, r := range rs {
		again := r
		again.Normalize()
		require.Equal(t, r, again, "rule %d: normalising twice changes it", i)
		require.NoError(t, r.Validate(i), "a table's rules validate again")
		require.Equal(t, &rs[i], tab.ByID(r.ID))
		if !seen[r.Client] {
			seen[r.Client] = true
			perClient += len(tab.ForClient(r.Client))
		}
		if r.Protocol == rules.ProtoTCP {
			m := tab.MatchListener(rules.ListenerKey(r.Direction, r.Listen))
			require.NotNil(t, m, "TCP rule %q does not match its listener", r.ID)
			require.Equal(t, r.ID, m.ID)
			_, err := rules.ParseTCPUpstream(r.Upstream)
			require.NoError(t, err)
			continue
		}
		for j := range r.UpstreamCount() {
			u, err := rules.ParseUpstream(r.UpstreamAt(j))
			require.NoError(t, err)
			require.Contains(t, []string{"http", "https"}, u.Scheme)
			require.NotEmpty(t, u.Host)
		}
		key := ""
		if r.Direction == rules.Forward {
			key = rules.ListenerKey(rules.Forward, r.Listen)
		}
		host := r.Host
		if host == "" {
			host = "any-host.example"
		}
		m := tab.Match(key, host, r.PathPrefix)
		require.NotNil(t, m, "rule %q does not match its own host %q and path %q", r.ID, r.Host, r.PathPrefix)
		if r.Host != "" {
			require.Equal(t, r.ID, m.ID, "host %q path %q", r.Host, r.PathPrefix)
			if !strings.ContainsAny(host, ":[]") {
				m = tab.Match(key, host+":8443", r.PathPrefix)
				require.NotNil(t, m, "a port in the Host does not matter")
				require.Equal(t, r.ID, m.ID)
			}
		}
	}
	require.Equal(t, len(rs), perClient, "ForClient partitions the rules")
	for _, dir := range []rules.Direction{rules.Forward, rules.Reverse} {
		for _, l := range tab.Listeners(dir) {
			require.NotNil(t, tab.MatchListener(l.Key()), "listener %s serves no rule", l.Addr)
		}
	}
}

// FuzzNormalizeHost checks that NormalizeHost never leaves an ASCII
// capital or a trailing dot, and that a host it does not normalise once and
// for all (a later pass would change it again, so no request's Host could
// ever equal it) is refused as a rule's host.
func FuzzNormalizeHost(f *testing.F) {
	for _, h := range []string{"app.example.test", "App.Example.Test.:8080", "Bücher.Example.", "[::1]:443", "::1", "xn--bcher-kva.example", "a..", "ä。", "[a:1]:2", ""} {
		f.Add(h)
	}
	f.Fuzz(func(t *testing.T, host string) {
		n := rules.NormalizeHost(host)
		for _, c := range []byte(n) {
			require.False(t, c >= 'A' && c <= 'Z', "capital in %q", n)
		}
		require.False(t, strings.HasSuffix(n, "."), "trailing dot in %q", n)
		if rules.NormalizeHost(n) == n {
			return
		}
		r := rules.Rule{ID: "r", Client: "c", Direction: rules.Reverse, Host: host, Upstream: "http://127.0.0.1:1"}
		r.Normalize()
		err := r.Validate(0)
		require.Error(t, err, "host %q normalises to %q and then to %q, yet a rule may have it", host, n, rules.NormalizeHost(n))
		requireFieldError(t, err, 0)
	})
}

// FuzzNormalizePath checks NormalizePath on escaped paths, the only input
// it takes (the decode stage hands it url.URL.EscapedPath, rules their
// escaped prefix): from any string p, both p itself when it is a valid
// escaped path and the escaped form of p as a decoded path. The result is
// idempotent, rooted, holds no dot segment and no escaped unreserved
// character. Anything that is not a path is left alone.
func FuzzNormalizePath(f *testing.F) {
	for _, p := range []string{"/", "/api/users", "/api/../secret", "/api/%2e%2E/secret", "/a//b/../c", "/api%2F..%2Fsecret", "/%7Euser/%41", "/a%2", "*", "/..a/b", "/./", "//..", "/caf\u00e9/%C3%A9", ""} {
		f.Add(p)
	}
	f.Fuzz(func(t *testing.T, p string) {
		if !strings.HasPrefix(p, "/") {
			require.Equal(t, p, rules.NormalizePath(p), "not a path: left alone")
		}
		if _, err := url.PathUnescape(p); err == nil && strings.HasPrefix(p, "/") {
			requireNormalPath(t, p)
		}
		if strings.HasPrefix(p, "/") {
			requireNormalPath(t, (&url.URL{Path: p}).EscapedPath())
		}
	})
}

func requireNormalPath(t *testing.T, p string) {
	t.Helper()
	n := rules.NormalizePath(p)
	require.True(t, strings.HasPrefix(n, "/"), "%q became %q", p, n)
	require.Equal(t, n, rules.NormalizePath(n), "NormalizePath(%q) is not idempotent", p)
	segs := strings.Split(n[1:], "/")
	require.NotContains(t, segs, ".", "%q kept a dot segment", n)
	require.NotContains(t, segs, "..", "%q kept a dot segment", n)
	_, err := url.PathUnescape(n)
	require.NoError(t, err, "%q is no longer a valid escaped path", n)
	for i := 0; i+2 < len(n); i++ {
		if n[i] != '%' {
			continue
		}
		if c, ok := unhexPair(n[i+1], n[i+2]); ok {
			require.False(t, c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("-._~", c) >= 0,
				"%q keeps the unreserved %q escaped", n, c)
		}
	}
}

func unhexPair(a, b byte) (byte, bool) {
	v := func(c byte) (byte, bool) {
		switch {
		case c >= '0' && c <= '9':
			return c - '0', true
		case c >= 'a' && c <= 'f':
			return c - 'a' + 10, true
		case c >= 'A' && c <= 'F':
			return c - 'A' + 10, true
		}
		return 0, false
	}
	x, ok1 := v(a)
	y, ok2 := v(b)
	return x<<4 | y, ok1 && ok2
}

// splitList turns a fuzzed string into a list: nil if empty, else its
// lines.
func splitList(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

// FuzzRule builds one rule from fuzzed fields. Normalize is idempotent on
// rules that validate; Validate fails with a *FieldError naming a setting of the file, or the
// rule builds a table on its own that is consistent (see
// requireTableConsistent) and whose JSON encoding decodes to the same rules.
func FuzzRule(f *testing.F) {
	f.Add("web", "laptop", "reverse", "", "App.Example.Test.", "api", "", "http://127.0.0.1:3000", "", "", 0, false, false, "", "", int64(0))
	f.Add("fwd", "laptop", "forward", "http", "", "/", "127.0.0.1:9000", "", "https://a:1\nhttps://b:2/base", "least_requests", 2, true, true, "upstream.test", "/healthz?x=1", int64(time.Second))
	f.Add("db", "c", "reverse", "tcp", "", "", ":2222", "tcp://127.0.0.1:5432", "", "", 0, false, false, "", "", int64(0))
	f.Add("x", "c", "forward", "tcp", "", "", "127.0.0.1:6000", "db.internal:5432", "", "", 0, false, false, "", "", int64(0))
	f.Add("idn", "c", "reverse", "", "Bücher.Example.:8443", "/caf%C3%A9/%2e%2e/x", "", "https://[::1]:8443/base", "", "round_robin", 5, false, false, "", "/", int64(-1))
	f.Fuzz(func(t *testing.T, id, client, dir, proto, host, prefix, listen, upstream, upstreams, lb string,
		retries int, listenTLS, h2 bool, hostHeader, hcPath string, hcInterval int64) {
		r := rules.Rule{
			ID: id, Client: client, Direction: rules.Direction(dir), Protocol: proto,
			Host: host, PathPrefix: prefix, Listen: listen, ListenTLS: listenTLS,
			Upstream: upstream, Upstreams: splitList(upstreams), LoadBalance: lb, Retries: retries,
			UpstreamHTTP2: h2, HostHeader: hostHeader,
		}
		if hcPath != "" || hcInterval != 0 {
			r.HealthCheck = &rules.HealthCheck{Path: hcPath, Interval: rules.Duration(hcInterval)}
		}
		orig := r
		orig.Upstreams = slices.Clone(r.Upstreams)
		if r.HealthCheck != nil {
			hc := *r.HealthCheck
			orig.HealthCheck = &hc
		}

		n := r
		n.Normalize()
		twice := n
		twice.Normalize()
		verr := n.Validate(3)
		if verr != nil {
			requireFieldError(t, verr, 3)
		} else {
			require.Equal(t, n, twice, "normalising a valid rule twice changes it")
		}

		tab, err := rules.NewTable(7, []rules.Rule{r})
		require.Equal(t, orig, r, "NewTable changed its input")
		if verr != nil {
			require.Error(t, err, "NewTable accepted a rule that does not validate")
			requireFieldError(t, err, 0)
			return
		}
		require.NoError(t, err, "one valid rule always makes a table")
		require.Equal(t, uint64(7), tab.Version())
		require.Equal(t, []rules.Rule{n}, tab.Rules())
		requireTableConsistent(t, tab)

		back, err := rules.Decode(rules.Encode(tab.Rules()))
		require.NoError(t, err)
		require.Equal(t, tab.Rules(), back, "the JSON encoding round-trips")
	})
}

// FuzzDecode treats its input as the rules of a SNAPSHOT or DELTA, as a
// client receives them: Decode fails cleanly or gives rules whose
// canonical encoding is a fixed point and whose hash ignores their order;
// if they build a table, it is consistent and building it again from its
// own rules gives the same hash.
func FuzzDecode(f *testing.F) {
	f.Add(rules.Encode(nil))
	f.Add(rules.Encode([]rules.Rule{
		rev("root", "c1", "App.Example.test.", ""), rev("api", "c1", "app.example.test", "/api"),
		rev("api-v2", "c1", "app.example.test", "/api/v2/"), fwd("db", "c1", "127.0.0.1:9000"),
		tcpWith(func(r *rules.Rule) {}),
	}))
	f.Add(rules.Encode([]rules.Rule{check(rules.HealthCheck{Path: "/healthz", Interval: rules.Duration(time.Second), ExpectStatus: 204})}))
	f.Add([]byte(`[{"id":"a","client":"c","direction":"reverse","host":"h","upstream":"http://x:1","health_check":{"path":"/","interval":"1m30s"}}]`))
	f.Add([]byte(`[{"id":"a","client":"c","direction":"forward","listen":"127.0.0.1:1","upstream":"http://x:1"},{"id":"b","client":"c","direction":"forward","listen":"127.0.0.1:1","upstream":"http://x:1","path_prefix":"/b"}]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		rs, err := rules.Decode(data)
		if err != nil {
			require.ErrorContains(t, err, "rules: decode")
			return
		}
		enc := rules.Encode(rs)
		again, err := rules.Decode(enc)
		require.NoError(t, err)
		require.Equal(t, string(enc), string(rules.Encode(again)), "the canonical encoding is a fixed point")
		ids := map[string]bool{}
		for _, r := range rs {
			ids[r.ID] = true
		}
		if len(ids) == len(rs) {
			reversed := slices.Clone(rs)
			slices.Reverse(reversed)
			require.Equal(t, rules.Hash(rs), rules.Hash(reversed), "the hash ignores the order of the rules")
		}

		tab, err := rules.NewTable(1, rs)
		if err != nil {
			var fe *rules.FieldError
			require.True(t, errors.As(err, &fe), "want a *rules.FieldError, got %T: %v", err, err)
			require.True(t, fe.Index >= 0 && fe.Index < len(rs), "index %d of %d rules", fe.Index, len(rs))
			return
		}
		requireTableConsistent(t, tab)
		rebuilt, err := rules.NewTable(2, tab.Rules())
		require.NoError(t, err, "a table's own rules build a table")
		require.Equal(t, tab.Hash(), rebuilt.Hash())
	})
}

// FuzzDuration checks the text form of a health-check duration: what parses
// prints in the canonical form, which parses to the same value.
func FuzzDuration(f *testing.F) {
	for _, s := range []string{"5s", "1m30s", "250ms", "1.5h", "-2s", "0", "9223372036854775807ns", "1e3s", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var d rules.Duration
		if err := d.UnmarshalText([]byte(s)); err != nil {
			require.ErrorContains(t, err, "is not a duration")
			return
		}
		want, err := time.ParseDuration(s)
		require.NoError(t, err)
		require.Equal(t, rules.Duration(want), d)
		text, err := d.MarshalText()
		require.NoError(t, err)
		var again rules.Duration
		require.NoError(t, again.UnmarshalText(text))
		require.Equal(t, d, again)
		require.Equal(t, d.String(), string(text))
	})
}
