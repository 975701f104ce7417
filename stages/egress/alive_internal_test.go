//go:build unix && !aix

package egress

import (
	"context"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// alivePair returns the two ends of a loopback TCP connection.
func alivePair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	server = <-accepted
	require.NotNil(t, server)
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

func TestAliveSeesWhatTheUpstreamDid(t *testing.T) {
	t.Parallel()
	var open atomic.Int64
	wrap := func(c net.Conn) net.Conn { return &countedConn{Conn: c, open: &open} }

	c, _ := alivePair(t)
	require.True(t, alive(c), "a silent live connection")
	require.True(t, alive(wrap(c)), "seen through the pool's wrapper")
	require.True(t, alive(c), "peeking consumes nothing and leaves no deadline")

	c, s := alivePair(t)
	require.NoError(t, s.Close())
	require.Eventually(t, func() bool { return !alive(wrap(c)) }, 5*time.Second, time.Millisecond,
		"closed by the upstream (EOF)")

	c, s = alivePair(t)
	_, err := s.Write([]byte("HTTP/1.1 408 Request Timeout\r\n\r\n"))
	require.NoError(t, err)
	require.Eventually(t, func() bool { return !alive(c) }, 5*time.Second, time.Millisecond,
		"the upstream said something unasked")
	buf := make([]byte, 8)
	n, err := c.Read(buf)
	require.NoError(t, err)
	require.Equal(t, "HTTP/1.1", string(buf[:n]), "the peek left the bytes in place")

	p1, p2 := net.Pipe()
	defer p1.Close()
	defer p2.Close()
	require.True(t, alive(p1), "no socket to look at: assumed alive, the retry covers it")
}

// An idle connection that the upstream closed while it sat in the pool is
// seen for what it is and dropped: the next request gets a new one.
func TestH1IdleConnectionTheUpstreamClosedIsNotTaken(t *testing.T) {
	t.Parallel()
	srv, cl := h1Server(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") }))
	h := newTestH1(t, srv.Listener.Addr().String(), nil)
	do(t, h, http.MethodGet, srv.URL+"/", nil)
	require.Equal(t, 1, h.idleConns())
	srv.CloseClientConnections()
	h.mu.Lock()
	parked := h.idle[0]
	parked.idleAt = parked.idleAt.Add(-2 * time.Second) // idle long enough to be looked at
	h.mu.Unlock()
	require.Eventually(t, func() bool { return !alive(parked.c) }, 5*time.Second, time.Millisecond)

	pc, err := h.get(context.Background())
	require.NoError(t, err)
	defer pc.c.Close()
	require.NotSame(t, parked, pc, "the closed connection is not handed out")
	require.Zero(t, h.idleConns())
	require.Eventually(t, func() bool { return cl.n.Load() == 2 }, 5*time.Second, time.Millisecond,
		"a new connection instead")
}
