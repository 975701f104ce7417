package gateway

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/time/rate"

	"github.com/qtunnel/qtunnel/codec"
	"github.com/qtunnel/qtunnel/config"
	"github.com/qtunnel/qtunnel/control"
	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/rules"
)

// TestDeclarationsAreRateLimited: a client flipping its claims cannot
// make a new rule-set version for every client at will.
func TestDeclarationsAreRateLimited(t *testing.T) {
	cfg := config.Server{Listen: "127.0.0.1:0", PublicHTTP: "127.0.0.1:0",
		Clients: []config.ClientEntry{{ID: "c1", TokenSHA256: control.HashToken("t").String(), Declare: &rules.Claims{BaseDomain: "localhost"}}}}
	s, err := NewServer(cfg)
	require.NoError(t, err)
	ev := &serverEvents{s: s, conn: &serverConn{info: &pipeline.Conn{ClientID: "c1"}, declares: rate.NewLimiter(rate.Every(declareEvery), declareBurst)}}
	declare := func(host string) codec.DeclaredRule {
		out := ev.Declare(&codec.Declare{Rules: rules.Encode([]rules.Rule{{ID: "web", Direction: rules.Reverse, Host: host, Upstream: "http://127.0.0.1:1"}})})
		require.Len(t, out.Results, 1)
		return out.Results[0]
	}
	for i := range declareBurst {
		r := declare([]string{"a", "b"}[i%2])
		require.Empty(t, r.Error, "declaration %d", i)
	}
	v := s.store.Table().Version()
	r := declare("c")
	assert.Contains(t, r.Error, "too many declarations")
	assert.Equal(t, v, s.store.Table().Version(), "a refused declaration makes no version")
}
