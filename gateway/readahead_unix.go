//go:build unix

package gateway

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"

	"github.com/qtunnel/qtunnel/pipeline"
)

// withReadAhead makes ln's connections read ahead (see readahead.go).
func withReadAhead(ln net.Listener) net.Listener { return readAheadListener{ln} }

type readAheadListener struct{ net.Listener }

func (l readAheadListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return c, nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return c, nil
	}
	return &readAheadConn{Conn: c, raw: raw}, nil
}

// readAheadConn is a net.Conn that reads ahead. Like any net.Conn it is
// read by one goroutine at a time.
type readAheadConn struct {
	net.Conn
	raw syscall.RawConn
	buf *pipeline.Buffer // unread bytes in buf.B[r:]; nil when none
	r   int
}

func (c *readAheadConn) Read(p []byte) (int, error) {
	if c.buf == nil {
		if len(p) == 0 || len(p) >= readAheadMin {
			return c.Conn.Read(p)
		}
		if err := c.fill(); err != nil {
			return 0, err
		}
	}
	n := copy(p, c.buf.B[c.r:])
	c.r += n
	if c.r == len(c.buf.B) {
		pipeline.PutBuffer(c.buf)
		c.buf = nil
	}
	return n, nil
}

// fill waits until the socket is readable (or the read deadline passes, or
// the connection closes) and reads what it has into a pooled buffer, taken
// only once there is something to read.
func (c *readAheadConn) fill() error {
	var (
		b    *pipeline.Buffer
		n    int
		rerr error
	)
	err := c.raw.Read(func(fd uintptr) bool {
		b = pipeline.GetBuffer(readAheadSize)
		for {
			n, rerr = syscall.Read(int(fd), b.B[:readAheadSize])
			if rerr != syscall.EINTR {
				break
			}
		}
		if errors.Is(rerr, syscall.EAGAIN) || errors.Is(rerr, syscall.EWOULDBLOCK) {
			pipeline.PutBuffer(b)
			b = nil
			return false // park until readable, holding no buffer
		}
		return true
	})
	switch {
	case err != nil: // deadline or closed, as net.OpError
		rerr = err
	case rerr != nil:
		rerr = &net.OpError{Op: "read", Net: c.LocalAddr().Network(), Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError("read", rerr)}
	case n <= 0:
		rerr = io.EOF
	}
	if rerr != nil {
		if b != nil {
			pipeline.PutBuffer(b)
		}
		return rerr
	}
	b.B = b.B[:n]
	c.buf, c.r = b, 0
	return nil
}

// CloseWrite half-closes the connection (a spliced upgrade or TCP stream
// ending one way) when the connection underneath can.
func (c *readAheadConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}
