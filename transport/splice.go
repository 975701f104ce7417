package transport

import (
	"bufio"
	"errors"
	"io"
	"net"
	"sync"

	"github.com/qtunnel/qtunnel/codec"
	"github.com/qtunnel/qtunnel/pipeline"
)

// Duplex is one end of a spliced pair: bytes in and out, a way to end the
// outgoing direction while still reading, and a way to tear both down.
type Duplex interface {
	io.Reader
	io.Writer
	// CloseWrite ends the outgoing direction (FIN), keeping the incoming one.
	CloseWrite() error
	// Close tears both directions down.
	Close() error
}

// spliceBuf is the copy buffer of one direction.
const spliceBuf = 32 << 10

// Splice copies a to b and b to a until both directions have ended, and
// returns the bytes copied each way. When one side's input ends cleanly the
// other side's output is closed (half-close), so each direction ends on its
// own terms, as TCP does. If either direction fails, both sides are closed
// (Close) so that the other direction ends too, and the first error is
// returned. After a clean end nothing is closed but the write directions:
// the caller closes what it owns.
func Splice(a, b Duplex) (aToB, bToA int64, err error) {
	var wg sync.WaitGroup
	var errOnce sync.Once
	var first error
	fail := func(e error) {
		errOnce.Do(func() {
			first = e
			_ = a.Close()
			_ = b.Close()
		})
	}
	copyDir := func(dst, src Duplex, n *int64) {
		buf := pipeline.GetBuffer(spliceBuf)
		defer pipeline.PutBuffer(buf)
		c, err := io.CopyBuffer(writerOnly{dst}, readerOnly{src}, buf.B[:spliceBuf])
		*n = c
		if err != nil {
			fail(err)
			return
		}
		if err := dst.CloseWrite(); err != nil && !errors.Is(err, net.ErrClosed) {
			fail(err)
		}
	}
	wg.Go(func() { copyDir(b, a, &aToB) })
	copyDir(a, b, &bToA)
	wg.Wait()
	return aToB, bToA, first
}

// readerOnly and writerOnly hide ReadFrom/WriteTo, so that io.CopyBuffer
// uses the pooled buffer rather than a path that allocates its own.
type readerOnly struct{ io.Reader }
type writerOnly struct{ io.Writer }

// StreamDuplex is a tunnel stream carrying raw bytes after its heads: reads
// come from r (the frame reader's buffer first, then the stream).
type StreamDuplex struct {
	R io.Reader
	S pipeline.Stream
}

// Read implements io.Reader.
func (d StreamDuplex) Read(p []byte) (int, error) { return d.R.Read(p) }

// Write implements io.Writer.
func (d StreamDuplex) Write(p []byte) (int, error) { return d.S.Write(p) }

// CloseWrite sends FIN.
func (d StreamDuplex) CloseWrite() error { return d.S.Close() }

// Close resets the stream both ways.
func (d StreamDuplex) Close() error {
	d.S.Abort(codec.StreamInternal)
	return nil
}

// ConnDuplex is a network connection as a Duplex; reads come from R when
// set (a hijacked connection's buffered reader), else from the connection.
type ConnDuplex struct {
	net.Conn
	R *bufio.Reader
}

// Read implements io.Reader.
func (d ConnDuplex) Read(p []byte) (int, error) {
	if d.R != nil {
		return d.R.Read(p)
	}
	return d.Conn.Read(p)
}

// CloseWrite half-closes connections that can (TCP, TLS); others stay open
// until Close.
func (d ConnDuplex) CloseWrite() error {
	if cw, ok := d.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// RWCDuplex adapts an io.ReadWriteCloser (such as the body net/http gives a
// 101 response) to a Duplex; it half-closes if the value can.
type RWCDuplex struct{ io.ReadWriteCloser }

// CloseWrite half-closes if the underlying value can, else does nothing.
func (d RWCDuplex) CloseWrite() error {
	if cw, ok := d.ReadWriteCloser.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
