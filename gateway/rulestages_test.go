package gateway_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"github.com/qtunnel/qtunnel/config"
	"github.com/qtunnel/qtunnel/gateway"
	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/rules"
	"github.com/qtunnel/qtunnel/stages/route"
)

// stageList parses a rule's stage list as the configuration file holds it.
func stageList(t *testing.T, text string) []rules.StageRef {
	t.Helper()
	var refs []rules.StageRef
	require.NoError(t, yaml.Unmarshal([]byte(text), &refs))
	return refs
}

func withStages(r rules.Rule, s []rules.StageRef) rules.Rule { r.Stages = s; return r }

func sha(s string) string { h := sha256.Sum256([]byte(s)); return hex.EncodeToString(h[:]) }

// TestRuleStagesRunWhereRequestsArrive: a rule's own stages (here the IP
// filter and bearer authentication) run on the side where its requests
// arrive: the server for a reverse rule, the client for a forward rule.
// A refused request never reaches the upstream; rules without stages on
// the same listener are not affected; credentials checked by the gateway
// are not passed on.
func TestRuleStagesRunWhereRequestsArrive(t *testing.T) {
	t.Parallel()
	var reached atomic.Int64
	up := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reached.Add(1)
		fmt.Fprintf(w, "authorization=%q", r.Header.Get("Authorization"))
	}))
	deny := stageList(t, "[{ipfilter: {deny: [127.0.0.0/8, '::1']}}]")
	auth := stageList(t, fmt.Sprintf("[{auth: {realm: tunnel-test, bearer: {tokens_sha256: [%s]}}}]", sha("t0k3n")))
	rs := []rules.Rule{
		withStages(reverseRule("rev-deny", "deny.test", up.URL), deny),
		withStages(reverseRule("rev-auth", "auth.test", up.URL), auth),
		reverseRule("rev-open", "open.test", up.URL),
	}
	for _, host := range []string{"deny.test", "auth.test", "open.test"} {
		r := forwardRule("fwd-"+host, "127.0.0.1:0", up.URL)
		r.Host = host
		switch host {
		case "deny.test":
			r.Stages = deny
		case "auth.test":
			r.Stages = auth
		}
		rs = append(rs, r)
	}
	p := startPair(t, pairOpts{rules: rs})
	c := h1Client(t)
	for _, d := range []struct{ name, base string }{
		{"reverse", p.publicURL("/")},
		{"forward", p.forwardURL(t, "127.0.0.1:0", "/")},
	} {
		t.Run(d.name, func(t *testing.T) {
			before := reached.Load()
			resp, body := get(t, c, d.base, "deny.test")
			require.Equal(t, http.StatusForbidden, resp.StatusCode, body)
			require.NotEmpty(t, resp.Header.Get("X-Request-Id"))

			resp, body = get(t, c, d.base, "auth.test")
			require.Equal(t, http.StatusUnauthorized, resp.StatusCode, body)
			require.Equal(t, `Bearer realm="tunnel-test"`, resp.Header.Get("Www-Authenticate"))
			req := newRequest(t, http.MethodGet, d.base, "auth.test", nil)
			req.Header.Set("Authorization", "Bearer wrong")
			resp, body = do(t, c, req)
			require.Equal(t, http.StatusUnauthorized, resp.StatusCode, body)
			require.Equal(t, before, reached.Load(), "refused requests never reach the upstream")

			req = newRequest(t, http.MethodGet, d.base, "auth.test", nil)
			req.Header.Set("Authorization", "Bearer t0k3n")
			resp, body = do(t, c, req)
			require.Equal(t, http.StatusOK, resp.StatusCode, body)
			require.Equal(t, `authorization=""`, body, "the gateway's credentials are not passed on")

			resp, body = get(t, c, d.base, "open.test")
			require.Equal(t, http.StatusOK, resp.StatusCode, body)
			require.Equal(t, before+2, reached.Load())
		})
	}
}

// TestRuleStageMistakesAreRefused: a stage the side does not know, a
// stage whose settings do not build, or an HTTP stage on a TCP rule is
// refused with the rule, the entry and the cause: at start, and when a
// change would bring it in (the rules in force stay).
func TestRuleStageMistakesAreRefused(t *testing.T) {
	t.Parallel()
	up := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	c := serverConfig([]rules.Rule{withStages(reverseRule("app", appHost, up.URL), stageList(t, "[{ipfilters: {}}]"))})
	c.SetDefaults()
	require.NoError(t, c.Validate())
	_, err := gateway.NewServer(c, gateway.WithLogger(testLogger(t)))
	require.EqualError(t, err, `rule "app": stages[0]: unknown stage "ipfilters" (known: [auth headers ipfilter])`)

	c = serverConfig([]rules.Rule{withStages(reverseRule("app", appHost, up.URL), stageList(t, "[{ipfilter: {allow: [10.0.0.0/33]}}]"))})
	c.SetDefaults()
	_, err = gateway.NewServer(c, gateway.WithLogger(testLogger(t)))
	require.ErrorContains(t, err, `rule "app": stages[0]: pipeline: stage "ipfilter": `)
	require.ErrorContains(t, err, `10.0.0.0/33`)

	s := startServer(t, serverConfig([]rules.Rule{reverseRule("app", appHost, up.URL)}))
	t.Cleanup(func() { require.NoError(t, s.Shutdown(context.Background())) })
	version := s.Rules().Table().Version()
	_, err = s.Rules().Put(withStages(reverseRule("app", appHost, up.URL), stageList(t, "[nope]")))
	require.ErrorContains(t, err, `unknown stage "nope"`)
	tcp := rules.Rule{ID: "ssh", Client: clientID, Direction: rules.Reverse, Protocol: rules.ProtoTCP, Listen: "127.0.0.1:0", Upstream: "127.0.0.1:22",
		Stages: stageList(t, "[{auth: {bearer: {tokens_sha256: ["+sha("x")+"]}}}]")}
	_, err = s.Rules().Put(tcp)
	require.ErrorContains(t, err, `rule "ssh": stages[0]: stage "auth" is for HTTP requests; a TCP rule cannot use it`)
	require.Equal(t, version, s.Rules().Table().Version(), "the rules in force stay")

	// The IP filter handles TCP rules too.
	tcp.Stages = stageList(t, "[{ipfilter: {allow: [127.0.0.1]}}]")
	_, err = s.Rules().Put(tcp)
	require.NoError(t, err)
}

// TestStagePanicOnATCPConnectionEndsOnlyIt: a stage that panics on a TCP
// rule's connection (here one that expected an HTTP request) closes that
// connection and is counted as an internal error; the server goes on
// serving, TCP and HTTP alike.
func TestStagePanicOnATCPConnectionEndsOnlyIt(t *testing.T) {
	t.Parallel()
	up := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok") }))
	var panics atomic.Int64
	careless := pipeline.Name("careless", pipeline.StageFunc(func(ctx context.Context, x *pipeline.Exchange, next pipeline.Handler) error {
		if x.Downstream != nil && panics.Add(1) == 1 {
			_ = x.Request.Header.Get("X-Api-Key") // no request on a TCP rule: a nil dereference
		}
		return next.Handle(ctx, x)
	}))
	p := startPair(t, pairOpts{
		rules: []rules.Rule{reverseRule("web", appHost, up.URL),
			{ID: "rev-tcp", Client: clientID, Direction: rules.Reverse, Protocol: rules.ProtoTCP, Listen: "127.0.0.1:0", Upstream: "tcp://" + strings.TrimPrefix(up.URL, "http://")}},
		serverMutate: func(c *config.Server) { withAdmin(&c.Common) },
		serverOpts:   []gateway.Option{gateway.WithIngressEdits(pipeline.After(route.Name, careless))},
	})
	addr := p.Server.ListenerAddr("127.0.0.1:0").String()
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	require.NoError(t, c.SetDeadline(time.Now().Add(30*time.Second)))
	_, err = c.Read(make([]byte, 1))
	require.ErrorIs(t, err, io.EOF, "the connection whose stage panicked is closed")
	c.Close()

	// The next TCP connection, and HTTP requests, are served.
	c, err = net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.SetDeadline(time.Now().Add(30*time.Second)))
	_, err = fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", appHost)
	require.NoError(t, err)
	b, err := io.ReadAll(c)
	require.NoError(t, err)
	require.Contains(t, string(b), "200 OK")
	resp, body := get(t, h1Client(t), p.publicURL("/"), appHost)
	require.Equal(t, http.StatusOK, resp.StatusCode, body)
	settle(t, "server", p.Server.AdminAddr(), []want{{"qtunnel_errors_total", lbl("side", "ingress", "kind", "internal"), 1}})
}
