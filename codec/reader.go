package codec

import (
	"bufio"
	"fmt"
	"io"
	"maps"
	"net/http"
	"sync/atomic"
)

// readerBufSize is the read-ahead buffer of a Reader. Reads larger than it
// bypass it and go straight into the caller's buffer.
const readerBufSize = 4 << 10

// Reader reads frames from a byte stream. The zero value is not usable; call
// Reset or NewReader. A Reader is not safe for concurrent use.
type Reader struct {
	br   *bufio.Reader
	max  int
	buf  []byte // payload of the last non-DATA frame
	left int    // unread payload bytes of the current DATA frame
}

// NewReader returns a Reader of src that rejects frames whose payload exceeds
// max bytes.
func NewReader(src io.Reader, max int) *Reader {
	r := &Reader{}
	r.Reset(src, max)
	return r
}

// Reset makes r read from src with limit max, keeping its buffers.
func (r *Reader) Reset(src io.Reader, max int) {
	if r.br == nil {
		r.br = bufio.NewReaderSize(src, readerBufSize)
	} else {
		r.br.Reset(src)
	}
	r.max = max
	r.left = 0
}

// Next reads the next frame header. For a DATA frame it returns a nil payload
// and leaves the payload to ReadData; any DATA payload left unread from the
// frame before is skipped. For any other frame it reads and returns the whole
// payload, which stays valid until the next call. A stream that ends cleanly
// between frames returns io.EOF; one that ends inside a frame returns
// io.ErrUnexpectedEOF.
func (r *Reader) Next() (FrameType, []byte, error) {
	if r.left > 0 {
		if _, err := r.br.Discard(r.left); err != nil {
			return 0, nil, noEOF(err)
		}
		r.left = 0
	}
	t, err := r.br.ReadByte()
	if err != nil {
		return 0, nil, err
	}
	first, err := r.br.ReadByte()
	if err != nil {
		return 0, nil, noEOF(err)
	}
	l := uint64(first & 0x3f)
	for i := 1; i < 1<<(first>>6); i++ {
		c, err := r.br.ReadByte()
		if err != nil {
			return 0, nil, noEOF(err)
		}
		l = l<<8 | uint64(c)
	}
	if l > uint64(r.max) {
		return 0, nil, fmt.Errorf("%w: %s frame of %d bytes, limit %d", ErrTooLarge, FrameType(t), l, r.max)
	}
	if FrameType(t) == FrameData {
		r.left = int(l)
		return FrameData, nil, nil
	}
	if cap(r.buf) < int(l) {
		r.buf = make([]byte, l)
	}
	r.buf = r.buf[:l]
	if _, err := io.ReadFull(r.br, r.buf); err != nil {
		return 0, nil, noEOF(err)
	}
	return FrameType(t), r.buf, nil
}

// DataLeft returns how many payload bytes of the current DATA frame are unread.
func (r *Reader) DataLeft() int { return r.left }

// ReadData reads payload bytes of the current DATA frame into p. It returns
// 0, nil when the frame is used up.
func (r *Reader) ReadData(p []byte) (int, error) {
	if r.left == 0 {
		return 0, nil
	}
	if len(p) > r.left {
		p = p[:r.left]
	}
	n, err := r.br.Read(p)
	r.left -= n
	if err != nil {
		return n, noEOF(err)
	}
	return n, nil
}

// Buffered returns the bytes read ahead of the current frame: a stream that
// switches to raw bytes after its heads must take these first.
func (r *Reader) Buffered() []byte {
	b, _ := r.br.Peek(r.br.Buffered())
	return b
}

// Raw returns the underlying buffered reader, for streams that carry raw bytes
// after their heads. Using it while a DATA frame is partly unread breaks the
// framing.
func (r *Reader) Raw() io.Reader { return r.br }

func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// Body reads a message body from a Reader: DATA frames until END, with
// optional TRAILERS before END, and then the end of the stream. An ERROR
// frame ends the body with that *Error. Read returns io.EOF only after END
// and the end of the stream, so a stream cut short is an error, not a
// shorter body.
type Body struct {
	r *Reader
	// Trailer receives the fields of a TRAILERS frame. If nil when they
	// arrive, a new map is made; set it beforehand to share a map, such as
	// http.Request.Trailer, with the code that reads the body.
	Trailer http.Header
	err     error
	done    atomic.Bool // err != nil, readable from other goroutines
}

// Reset makes b read the body that starts at r's next frame.
func (b *Body) Reset(r *Reader, trailer http.Header) {
	b.r, b.Trailer, b.err = r, trailer, nil
	b.done.Store(false)
}

// Read implements io.Reader.
func (b *Body) Read(p []byte) (int, error) {
	// The error is checked before the unread DATA count: a failed body
	// may have a DATA frame open (one that came after END or TRAILERS),
	// and its bytes are not part of the body.
	for b.err == nil && b.r.left == 0 {
		if b.err = b.next(); b.err != nil {
			b.done.Store(true)
		}
	}
	if b.err != nil {
		return 0, b.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	n, err := b.r.ReadData(p)
	if err != nil {
		b.err = err
		b.done.Store(true)
	}
	return n, err
}

// Close does nothing: what happens to an unread rest of the stream is the
// stream owner's decision. It lets a Body serve as an http.Response.Body.
func (b *Body) Close() error { return nil }

// Done reports whether the body has been read to its end (or failed).
// It may be called while another goroutine reads the body.
func (b *Body) Done() bool { return b.done.Load() }

// Err returns io.EOF after a complete body, the error that ended it, or nil
// while it is still being read.
func (b *Body) Err() error { return b.err }

func (b *Body) next() error {
	t, payload, err := b.r.Next()
	if err != nil {
		return noEOF(err)
	}
	switch t {
	case FrameData:
		return nil
	case FrameEnd:
		return b.finish(payload)
	case FrameTrailers:
		tr, err := ParseTrailers(payload)
		if err != nil {
			return err
		}
		if b.Trailer == nil {
			b.Trailer = tr // parsed into a map of its own
		} else {
			maps.Copy(b.Trailer, tr)
		}
		t, payload, err := b.r.Next()
		if err != nil {
			return noEOF(err)
		}
		if t != FrameEnd {
			return fmt.Errorf("%w: %s after TRAILERS", ErrMalformed, t)
		}
		return b.finish(payload)
	case FrameError:
		e, err := ParseError(payload)
		if err != nil {
			return err
		}
		return e
	}
	return fmt.Errorf("%w: unexpected %s in a body", ErrMalformed, t)
}

// finish checks that END (whose payload is end) is empty and that the
// stream ends right after it: a sender writes END and closes its direction
// together. Reading that end (rather than leaving it unread) is also what
// lets a QUIC stream complete and free its credit.
func (b *Body) finish(end []byte) error {
	if len(end) != 0 {
		return fmt.Errorf("%w: END with a %d-byte payload", ErrMalformed, len(end))
	}
	t, _, err := b.r.Next()
	switch {
	case err == io.EOF:
		return io.EOF
	case err != nil:
		return err
	}
	return fmt.Errorf("%w: %s after END", ErrMalformed, t)
}
