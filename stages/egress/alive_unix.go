//go:build unix && !aix

package egress

import (
	"errors"
	"net"
	"syscall"
)

// alive reports, without blocking, whether a connection that sat idle is
// still usable: the upstream has not closed it (EOF), reset it, or sent
// anything unasked (a 408, say). It peeks at the socket with a
// non-blocking recv. A read with a deadline already past would not do:
// Go fails such a read before it reaches the socket, so it would call
// every connection alive.
func alive(c net.Conn) bool {
	for {
		u, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			break
		}
		c = u.NetConn()
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return true // cannot tell: a failure before the answer is retried
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	live := false
	err = rc.Read(func(fd uintptr) bool {
		var one [1]byte
		// Nothing to read is the one good answer: EOF, bytes or an
		// error all make the connection unfit for the next request.
		_, _, rerr := syscall.Recvfrom(int(fd), one[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		live = errors.Is(rerr, syscall.EAGAIN) || errors.Is(rerr, syscall.EWOULDBLOCK)
		return true // done, whatever it found: never wait for readiness
	})
	return err == nil && live
}
