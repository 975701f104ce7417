//go:build unix

package egress

import (
	"net"
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
