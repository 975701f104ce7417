package gateway_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/config"
	"github.com/qtunnel/qtunnel/control"
)

// TestOneClientsChangeIsSentToThatClientOnly connects a few hundred clients,
// one rule each, and changes one client's rule: the server sends that
// client one delta and nothing to the others, whose rules did not change
// (before, the global version made every client get a delta for any
// change).
func TestOneClientsChangeIsSentToThatClientOnly(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: connects 200 clients")
	}
	const n = 200
	up := upstream(t, okOrMissing)
	sc := serverConfig(nil)
	sc.Admin.Listen = "127.0.0.1:0"
	sc.Sync.HashCheckInterval, sc.Sync.FullSyncInterval = time.Hour, time.Hour // only pushes send updates here
	sc.Clients = nil
	for i := range n {
		id := fmt.Sprintf("c%03d", i)
		sc.Clients = append(sc.Clients, config.ClientEntry{ID: id, TokenSHA256: control.HashToken("token-" + id).String()})
		sc.Rules = append(sc.Rules, reverseRule("r"+id, id+".test", up.URL))
		sc.Rules[i].Client = id
	}
	srv := startServer(t, sc)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		require.NoError(t, srv.Shutdown(ctx))
	})

	clients := make([]*runningClient, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			cc := clientConfig(srv.TunnelAddr().String(), srv.Pin())
			cc.ID, cc.Token = fmt.Sprintf("c%03d", i), fmt.Sprintf("token-c%03d", i)
			clients[i] = runClient(t, cc)
		})
	}
	wg.Wait()
	for i, c := range clients {
		select {
		case <-c.Ready():
		case <-time.After(2 * time.Minute):
			t.Fatalf("client %d did not get its rules", i)
		}
	}
	before := make([]uint64, n)
	for i, c := range clients {
		before[i] = c.AppliedVersion()
	}
	sent := func() float64 {
		return sum(scrapeMetrics(t, srv.AdminAddr()), "qtunnel_rule_updates_sent_total", nil)
	}
	s0 := sent()

	const target = 123
	r := *srv.Rules().Table().ByID(fmt.Sprintf("rc%03d", target))
	r.PathPrefix = "/changed"
	tab, err := srv.Rules().Put(r)
	require.NoError(t, err)
	eventually(t, time.Minute, func() bool { return clients[target].AppliedVersion() == tab.Version() },
		"the changed client applies the new version")
	require.Equal(t, s0+1, sent(), "one update sent, to the one client whose rules changed")
	for i, c := range clients {
		if i != target {
			assert.Equal(t, before[i], c.AppliedVersion(), "client %d got nothing", i)
		}
	}
	assert.Equal(t, "/changed", clients[target].Rules().ByID(r.ID).PathPrefix)

	// A new rule for another client, and a deletion: again one client each.
	nr := reverseRule("extra", "extra.test", up.URL)
	nr.Client = "c007"
	_, err = srv.Rules().Put(nr)
	require.NoError(t, err)
	_, err = srv.Rules().Delete("rc050")
	require.NoError(t, err)
	eventually(t, time.Minute, func() bool {
		return clients[7].Rules().ByID("extra") != nil && clients[50].Rules().ByID("rc050") == nil
	}, "the two clients apply their changes")
	assert.Equal(t, s0+3, sent())
	assert.Equal(t, before[1], clients[1].AppliedVersion())
}
