package gateway_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/config"
	"github.com/qtunnel/qtunnel/control"
	"github.com/qtunnel/qtunnel/gateway"
	"github.com/qtunnel/qtunnel/rules"
)

// declared waits for the client's declared rules to be answered and in
// force, and returns the answer by name.
func declared(t *testing.T, c *gateway.Client) map[string]gateway.Declaration {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ds, err := c.Declared(ctx)
	require.NoError(t, err, "the server answers the declared rules")
	out := map[string]gateway.Declaration{}
	for _, d := range ds {
		out[d.Name] = d
	}
	return out
}

func TestClientDeclaresRulesWithinItsClaims(t *testing.T) {
	up := upstream(t, echoInfo("declared"))
	p := startPair(t, pairOpts{
		serverMutate: func(c *config.Server) {
			c.Clients[0].Declare = &rules.Claims{BaseDomain: "localhost", ForwardTargets: []string{"127.0.0.1:*"}}
			c.Admin.Listen = "127.0.0.1:0"
		},
		clientMutate: func(c *config.Client) {
			c.Declare = []rules.Rule{
				{ID: "web", Direction: rules.Reverse, Upstream: up.URL},
				{ID: "named", Direction: rules.Reverse, Host: "shop", Upstream: up.URL},
				{ID: "outside", Direction: rules.Reverse, Host: "app.example.com", Upstream: up.URL},
				{ID: "fwd", Direction: rules.Forward, Listen: "127.0.0.1:0", Upstream: up.URL},
				{ID: "far", Direction: rules.Forward, Listen: "127.0.0.1:0", Upstream: "http://10.1.2.3:80"},
			}
		},
	})
	ds := declared(t, p.Client)

	// A reverse rule without a host gets one under the base domain, with
	// the URL the public reaches it at.
	web := ds["web"]
	require.Empty(t, web.Error)
	assert.Equal(t, clientID+".web", web.ID)
	require.NotEmpty(t, web.URLs)
	assert.Equal(t, "http://"+clientID+".localhost:"+portOf(t, p.Server.PublicAddr().String())+"/", web.URLs[0])
	resp, body := get(t, h1Client(t), p.publicURL("/x"), clientID+".localhost")
	require.Equal(t, http.StatusOK, resp.StatusCode, body)
	assert.Equal(t, "declared", field(t, body, "upstream"))

	// One label is taken under the base domain.
	assert.Empty(t, ds["named"].Error)
	resp, _ = get(t, h1Client(t), p.publicURL("/"), "shop.localhost")
	assert.Equal(t, http.StatusOK, resp.StatusCode)

	// A host outside the claims is refused, saying which claim.
	assert.Empty(t, ds["outside"].ID)
	assert.Contains(t, ds["outside"].Error, "outside what this client may declare")
	assert.Contains(t, ds["outside"].Error, `base_domain "localhost"`)
	resp, _ = get(t, h1Client(t), p.publicURL("/"), "app.example.com")
	assert.Equal(t, http.StatusNotFound, resp.StatusCode, "a refused claim routes nothing")

	// A forward rule reaches a target the claims list; another is refused.
	require.Empty(t, ds["fwd"].Error)
	resp, body = get(t, h1Client(t), p.forwardURL(t, "127.0.0.1:0", "/f"), "")
	require.Equal(t, http.StatusOK, resp.StatusCode, body)
	assert.Contains(t, ds["far"].Error, "forward_targets")

	// The server marks the declared rules, and the API cannot change them.
	store := p.Server.Rules()
	assert.Equal(t, "declared", store.Source(clientID+".web"))
	assert.Equal(t, clientID, store.DeclaredBy(clientID+".web"))
	_, err := store.Delete(clientID + ".web")
	require.ErrorIs(t, err, control.ErrDeclared)
	var listed struct {
		Rules []struct {
			ID, Client, Source string
		}
	}
	getJSON(t, "http://"+p.Server.AdminAddr().String()+"/rules", &listed)
	sources := map[string]string{}
	for _, r := range listed.Rules {
		sources[r.ID] = r.Source + " by " + r.Client
	}
	assert.Equal(t, "declared by "+clientID, sources[clientID+".web"], "GET /rules marks a declared rule and its client")

	// A client that leaves takes its declared rules with it.
	p.stopClient(t)
	assert.Nil(t, store.Table().ByID(clientID+".web"), "the declared rule went with the client")
	assert.Empty(t, store.Declared())
}

func TestAnotherClientCannotClaimATakenHost(t *testing.T) {
	up := upstream(t, echoInfo("first"))
	const other, otherToken = "desktop", "other-token-456"
	claims := &rules.Claims{BaseDomain: "localhost"}
	p := startPair(t, pairOpts{
		serverMutate: func(c *config.Server) {
			c.Clients[0].Declare = claims
			c.Clients = append(c.Clients, config.ClientEntry{ID: other, TokenSHA256: control.HashToken(otherToken).String(), Declare: claims})
		},
		clientMutate: func(c *config.Client) {
			c.Declare = []rules.Rule{{ID: "web", Direction: rules.Reverse, Host: "demo", Upstream: up.URL}}
		},
	})
	require.Empty(t, declared(t, p.Client)["web"].Error)

	cc := clientConfig(p.Server.TunnelAddr().String(), p.Server.Pin())
	cc.ID, cc.Token = other, otherToken
	cc.Declare = []rules.Rule{
		{ID: "web", Direction: rules.Reverse, Host: "demo", Upstream: up.URL},
		{ID: "auto", Direction: rules.Reverse, Upstream: up.URL},
	}
	second, err := gateway.NewClient(cc, gateway.WithLogger(testLogger(t)))
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- second.Run(ctx) }()
	defer func() {
		cancel()
		require.NoError(t, <-done)
	}()
	ds := declared(t, second)
	assert.Contains(t, ds["web"].Error, `host "demo.localhost" belongs to client "laptop"`)
	require.Empty(t, ds["auto"].Error)
	assert.Equal(t, other+".auto", ds["auto"].ID)

	// The first client's host still reaches the first client.
	resp, body := get(t, h1Client(t), p.publicURL("/"), "demo.localhost")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "first", field(t, body, "upstream"))
}

func TestClientWithoutClaimsDeclaresNothing(t *testing.T) {
	up := upstream(t, okOrMissing)
	p := startPair(t, pairOpts{
		clientMutate: func(c *config.Client) {
			c.Declare = []rules.Rule{{ID: "web", Direction: rules.Reverse, Host: "x.localhost", Upstream: up.URL}}
		},
	})
	ds := declared(t, p.Client)
	assert.Contains(t, ds["web"].Error, "may declare no rules")
	assert.Empty(t, p.Server.Rules().Table().Rules())
}

func portOf(t *testing.T, addr string) string {
	t.Helper()
	_, port, err := net.SplitHostPort(addr)
	require.NoError(t, err)
	return port
}

// TestDeclaredTCPRuleGetsAFreePort: a reverse TCP rule declared without a
// port gets the first free one of tcp_ports, on the server's public
// address, and carries bytes; one asking for a port outside is refused.
func TestDeclaredTCPRuleGetsAFreePort(t *testing.T) {
	up := tcpUpstream(t)
	port := portOf(t, closedPort(t))
	p := startPair(t, pairOpts{
		serverMutate: func(c *config.Server) {
			c.Clients[0].Declare = &rules.Claims{TCPPorts: []string{port}}
		},
		clientMutate: func(c *config.Client) {
			c.Declare = []rules.Rule{
				{ID: "db", Direction: rules.Reverse, Protocol: rules.ProtoTCP, Upstream: up},
				{ID: "ssh", Direction: rules.Reverse, Protocol: rules.ProtoTCP, Listen: ":22", Upstream: up},
			}
		},
	})
	ds := declared(t, p.Client)
	require.Empty(t, ds["db"].Error)
	assert.Equal(t, []string{"tcp://127.0.0.1:" + port}, ds["db"].URLs)
	assert.Contains(t, ds["ssh"].Error, `port 22 is not in tcp_ports`)

	c, err := net.Dial("tcp", "127.0.0.1:"+port)
	require.NoError(t, err)
	defer c.Close()
	_, err = c.Write([]byte("hello"))
	require.NoError(t, err)
	require.NoError(t, c.(*net.TCPConn).CloseWrite())
	require.NoError(t, c.SetReadDeadline(time.Now().Add(10*time.Second)))
	got, err := io.ReadAll(c)
	require.NoError(t, err)
	assert.Equal(t, "got hello", string(got))
}
