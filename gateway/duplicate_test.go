package gateway_test

import (
	"context"
	"log/slog"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/gateway"
	"github.com/qtunnel/qtunnel/rules"
)

// TestSecondClientWithATakenIDIsRefused: a second client started with the
// id (and token) of a connected one does not push it out: the server
// refuses it and says so on both sides, the first keeps its connection and
// session, and the second gets the id once the first leaves.
func TestSecondClientWithATakenIDIsRefused(t *testing.T) {
	t.Parallel()
	up := upstream(t, echoInfo("u"))
	serverLog := newRecordKeeper(slog.LevelInfo)
	p := startPair(t, pairOpts{rules: []rules.Rule{reverseRule("rev", appHost, up.URL)},
		serverOpts: []gateway.Option{gateway.WithLogger(slog.New(serverLog))}})
	first := p.Server.Sessions().Conn(clientID)
	require.NotNil(t, first)

	secondLog := newRecordKeeper(slog.LevelInfo)
	cc := clientConfig(p.Server.TunnelAddr().String(), p.Server.Pin())
	cc.SetDefaults()
	second, err := gateway.NewClient(cc, gateway.WithLogger(slog.New(secondLog)))
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- second.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	refusedRecord := "server refused this connection: another client is connected with this id; retrying"
	eventually(t, time.Minute, func() bool {
		return secondLog.has(refusedRecord) && serverLog.has("refused a second connection for a client id in use")
	},
		"the second client is refused, and both sides say why")
	var reason string
	for _, r := range secondLog.records() {
		if r.msg == refusedRecord {
			reason = r.attrs["reason"]
		}
	}
	require.Contains(t, reason, "client id "+clientID+" is already connected from")
	require.Same(t, first, p.Server.Sessions().Conn(clientID), "the first client keeps its connection")
	require.False(t, serverLog.has("client reconnected; closing its previous connection"))
	require.False(t, second.Connected())
	resp, _ := get(t, h1Client(t), p.publicURL("/x"), appHost)
	require.Equal(t, http.StatusOK, resp.StatusCode, "the first client serves on")

	// Once the first leaves, the id is free.
	p.stopClient(t)
	select {
	case <-second.Ready():
	case <-time.After(time.Minute):
		t.Fatal("the second client did not get the id once the first left")
	}
	resp, _ = get(t, h1Client(t), p.publicURL("/x"), appHost)
	require.Equal(t, http.StatusOK, resp.StatusCode)
}
