package gateway_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/config"
	"github.com/qtunnel/qtunnel/rules"
)

// TestClientStopFinishesReverseRequestsInFlight: a client told to stop
// (SIGTERM, Ctrl-C) with reverse requests in flight tells the server,
// gets no new streams, and answers every request it has, within its
// shutdown grace.
func TestClientStopFinishesReverseRequestsInFlight(t *testing.T) {
	t.Parallel()
	const n = 200
	arrived := make(chan struct{}, n)
	release := make(chan struct{})
	up := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-release
		_, _ = io.WriteString(w, "done")
	}))
	p := startPair(t, pairOpts{rules: []rules.Rule{reverseRule("rev", appHost, up.URL)},
		// All the requests come from one address.
		serverMutate: func(c *config.Server) { c.Limits.MaxStreamsPerSource = -1 }})
	c := &http.Client{Transport: &http.Transport{MaxConnsPerHost: n, MaxIdleConnsPerHost: n}, Timeout: time.Minute}
	type result struct {
		status int
		body   string
		err    error
	}
	results := make(chan result, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			resp, err := c.Do(newRequest(t, http.MethodGet, p.publicURL("/slow"), appHost, nil))
			if err != nil {
				results <- result{err: err}
				return
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			results <- result{status: resp.StatusCode, body: string(b), err: err}
		})
	}
	deadline := time.After(time.Minute)
	for i := range n {
		select {
		case <-arrived:
		case <-deadline:
			t.Fatalf("%d of %d requests reached the upstream", i, n)
		}
	}
	stopped := make(chan struct{})
	go func() { p.stopClient(t); close(stopped) }()
	// The client is draining: the server learns of it, and new requests
	// are refused at once rather than sent to a client that is leaving.
	eventually(t, 30*time.Second, func() bool {
		resp, err := http.DefaultClient.Do(newRequest(t, http.MethodGet, p.publicURL("/new"), appHost, nil))
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusServiceUnavailable || resp.StatusCode == http.StatusBadGateway
	}, "new requests are refused once the client drains")
	close(release)
	wg.Wait()
	close(results)
	counts := map[int]int{}
	for r := range results {
		require.NoError(t, r.err)
		counts[r.status]++
		require.Equal(t, "done", r.body)
	}
	require.Equal(t, map[int]int{http.StatusOK: n}, counts, "every request in flight is answered")
	<-stopped
}

// TestServerStopFinishesForwardRequestsInFlight is the same the other way:
// a server told to stop answers every forward request it serves before
// the connection closes.
func TestServerStopFinishesForwardRequestsInFlight(t *testing.T) {
	t.Parallel()
	const n = 200
	arrived := make(chan struct{}, n)
	release := make(chan struct{})
	up := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-release
		_, _ = io.WriteString(w, "done")
	}))
	p := startPair(t, pairOpts{rules: []rules.Rule{forwardRule("fwd", "127.0.0.1:0", up.URL)},
		clientMutate: func(c *config.Client) { c.Limits.MaxStreamsPerSource = -1 }})
	url := p.forwardURL(t, "127.0.0.1:0", "/slow")
	c := &http.Client{Transport: &http.Transport{MaxConnsPerHost: n, MaxIdleConnsPerHost: n}, Timeout: time.Minute}
	results := make(chan string, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			resp, err := c.Do(newRequest(t, http.MethodGet, url, "", nil))
			if err != nil {
				results <- err.Error()
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			results <- fmt.Sprintf("%d %s", resp.StatusCode, b)
		})
	}
	deadline := time.After(time.Minute)
	for i := range n {
		select {
		case <-arrived:
		case <-deadline:
			t.Fatalf("%d of %d requests reached the upstream", i, n)
		}
	}
	p.stopOnce.Do(func() {}) // the test stops the server itself
	t.Cleanup(func() { p.stopClient(t) })
	stopped := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		stopped <- p.Server.Shutdown(ctx)
	}()
	// The server is shutting down: its public listener refuses.
	eventually(t, 30*time.Second, func() bool {
		conn, err := net.Dial("tcp", p.Server.PublicAddr().String())
		if err == nil {
			conn.Close()
		}
		return err != nil
	}, "the server stops accepting")
	close(release)
	wg.Wait()
	close(results)
	counts := map[string]int{}
	for r := range results {
		counts[r]++
	}
	require.Equal(t, map[string]int{"200 done": n}, counts, "every request in flight is answered")
	require.NoError(t, <-stopped)
}
