//go:build unix

package gateway

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
)

// withReadAhead makes ln's TCP connections read ahead (see readahead.go).
func withReadAhead(ln net.Listener) net.Listener { return readAheadListener{ln} }

type readAheadListener struct{ net.Listener }

func (l readAheadListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	// Only a plain TCP connection: fill reads its descriptor directly,
	// which would skip whatever a wrapping type does in its own Read.
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c, nil
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return c, nil
	}
	return &readAheadConn{TCPConn: tc, raw: raw}, nil
}

var readAheadBufs = sync.Pool{New: func() any { return new([readAheadSize]byte) }}

// readAheadConn is a TCP connection that reads ahead. Its reads must not
// run concurrently (net/http never does: one goroutine reads each
// connection at a time). Hiding the *net.TCPConn costs its ReadFrom fast
// path when net/http copies a file into a response; the gateway's own
// copies do not use it. A connection closed with unread bytes leaves its
// buffer to the garbage collector.
type readAheadConn struct {
	*net.TCPConn
	raw syscall.RawConn
	buf *[readAheadSize]byte // unread bytes in buf[r:w]; nil when none
	r   int
	w   int
}

func (c *readAheadConn) Read(p []byte) (int, error) {
	if c.buf == nil {
		if len(p) == 0 || len(p) >= readAheadMin {
			return c.TCPConn.Read(p)
		}
		if err := c.fill(); err != nil {
			return 0, err
		}
	}
	n := copy(p, c.buf[c.r:c.w])
	c.r += n
	if c.r == c.w {
		readAheadBufs.Put(c.buf)
		c.buf = nil
	}
	return n, nil
}

// fill waits until the socket is readable (or the read deadline passes, or
// the connection closes) and reads what it has into a buffer, which it
// takes for each attempt and gives back when the socket has nothing yet.
func (c *readAheadConn) fill() error {
	var (
		b    *[readAheadSize]byte
		n    int
		rerr error
	)
	err := c.raw.Read(func(fd uintptr) bool {
		b = readAheadBufs.Get().(*[readAheadSize]byte)
		for {
			n, rerr = syscall.Read(int(fd), b[:])
			if rerr != syscall.EINTR {
				break
			}
		}
		if errors.Is(rerr, syscall.EAGAIN) || errors.Is(rerr, syscall.EWOULDBLOCK) {
			readAheadBufs.Put(b)
			b = nil
			return false // park until readable, holding no buffer
		}
		return true
	})
	switch {
	case err != nil:
		// A deadline or a closed connection. The error says "raw-read";
		// net/http tells ordinary read failures by Op "read" (a closed
		// connection would otherwise get a 400 written to it).
		var oe *net.OpError
		if errors.As(err, &oe) {
			oe.Op = "read"
		}
		rerr = err
	case rerr != nil:
		rerr = &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError("read", rerr)}
	case n <= 0:
		rerr = io.EOF
	}
	if rerr != nil {
		if b != nil {
			readAheadBufs.Put(b)
		}
		return rerr
	}
	c.buf, c.r, c.w = b, 0, n
	return nil
}

// WriteTo copies through Read, so that buffered bytes go first; the
// embedded TCPConn's WriteTo would read the socket past them.
func (c *readAheadConn) WriteTo(w io.Writer) (int64, error) {
	return io.Copy(w, struct{ io.Reader }{c})
}
