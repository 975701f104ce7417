package transport

import (
	"io"
	"net/http"
	"sync"

	"github.com/qtunnel/qtunnel/codec"
	"github.com/qtunnel/qtunnel/pipeline"
)

// FrameWriter batches the frames of one stream direction into few writes
// (S15) and moves body bytes without copying them (S14).
//
// Heads, trailers and END are appended to a pooled buffer (S16) and go out
// together with the next body chunk, or at Flush. Body chunks are read
// straight into the same buffer, behind room reserved for their DATA header,
// so a small response (head, body, END) leaves in one Write and a large body
// is never copied between the source and the stream.
//
// A FrameWriter is not safe for concurrent use. The zero value is unusable;
// call Reset.
type FrameWriter struct {
	dst   io.Writer
	buf   *pipeline.Buffer
	chunk int
}

var writerPool = sync.Pool{New: func() any { return new(FrameWriter) }}

// GetFrameWriter returns a pooled FrameWriter reset to dst and chunk. Give it
// back with PutFrameWriter.
func GetFrameWriter(dst io.Writer, chunk int) *FrameWriter {
	w := writerPool.Get().(*FrameWriter)
	w.Reset(dst, chunk)
	return w
}

// PutFrameWriter releases w's buffer and returns w to the pool.
func PutFrameWriter(w *FrameWriter) {
	w.Release()
	writerPool.Put(w)
}

// headRoom is the buffer space kept for frames that precede a body chunk
// (heads), so that a head and a full chunk still leave in one Write.
const headRoom = 4 << 10

// Reset makes w write to dst with body chunks of at most chunk bytes (the
// peer's maximum frame size). It takes a pooled buffer; Release returns it.
func (w *FrameWriter) Reset(dst io.Writer, chunk int) {
	if chunk <= 0 || chunk > codec.MaxPayload {
		chunk = codec.DefaultMaxFrameSize
	}
	w.dst, w.chunk = dst, chunk
	if w.buf == nil {
		w.buf = pipeline.GetBuffer(codec.DataHeaderLen + chunk + headRoom)
	}
	w.buf.B = w.buf.B[:0]
}

// Release returns the buffer to the pool. Pending frames are dropped.
func (w *FrameWriter) Release() {
	if w.buf != nil {
		pipeline.PutBuffer(w.buf)
		w.buf = nil
	}
	w.dst = nil
}

// Attach makes w write to dst from now on, keeping what is pending: a
// writer can collect a head and the start of a body before its stream
// exists.
func (w *FrameWriter) Attach(dst io.Writer) { w.dst = dst }

// Fill reads src into one DATA frame, without writing anything, until src
// ends (eof), max bytes were read, or, if first is set, some bytes were
// read. max is cut to the room the buffer has left for one frame. A read
// error is returned as is, with what was read before it kept pending.
func (w *FrameWriter) Fill(src io.Reader, max int, first bool) (n int, eof bool, err error) {
	b := w.buf.B
	start := len(b)
	max = min(max, w.chunk, cap(b)-start-codec.DataHeaderLen)
	if max <= 0 {
		return 0, false, nil
	}
	room := b[start+codec.DataHeaderLen : start+codec.DataHeaderLen+max]
	for n < max {
		var m int
		m, err = src.Read(room[n:])
		n += m
		if err == io.EOF {
			eof, err = true, nil
			break
		}
		if err != nil || (first && n > 0) {
			break
		}
	}
	if n > 0 {
		codec.PutDataHeader(b[start:start+codec.DataHeaderLen], n)
		w.buf.B = b[:start+codec.DataHeaderLen+n]
	}
	return n, eof, err
}

// Pending returns the number of bytes waiting for Flush.
func (w *FrameWriter) Pending() int { return len(w.buf.B) }

// Request appends a REQUEST frame.
func (w *FrameWriter) Request(h *codec.RequestHead) { w.buf.B = codec.AppendRequest(w.buf.B, h) }

// Response appends a RESPONSE frame.
func (w *FrameWriter) Response(h *codec.ResponseHead) { w.buf.B = codec.AppendResponse(w.buf.B, h) }

// Trailers appends a TRAILERS frame, unless no field of t has a value (a
// declared trailer that was never set): then there is nothing to send.
func (w *FrameWriter) Trailers(t http.Header) {
	for _, v := range t {
		if len(v) > 0 {
			w.buf.B = codec.AppendTrailers(w.buf.B, t)
			return
		}
	}
}

// End appends an END frame.
func (w *FrameWriter) End() { w.buf.B = codec.AppendEnd(w.buf.B) }

// Error appends an ERROR frame.
func (w *FrameWriter) Error(e *codec.Error) { w.buf.B = codec.AppendError(w.buf.B, e) }

// Data appends a DATA frame carrying a copy of p, split at the chunk size.
// Body copies should use CopyBody, which does not copy.
func (w *FrameWriter) Data(p []byte) error {
	for len(p) > 0 {
		n := min(len(p), w.chunk)
		w.buf.B = codec.AppendData(w.buf.B, p[:n])
		p = p[n:]
		if len(w.buf.B) >= w.chunk {
			if err := w.Flush(); err != nil {
				return err
			}
		}
	}
	return nil
}

// Flush writes the pending frames in one Write.
func (w *FrameWriter) Flush() error {
	if len(w.buf.B) == 0 {
		return nil
	}
	_, err := w.dst.Write(w.buf.B)
	w.buf.B = w.buf.B[:0]
	return err
}

// CopyBody reads src into DATA frames until src returns io.EOF, which it
// does not return as an error. Pending frames go out with the first chunk.
// Every chunk is written as soon as it is read, so streamed bodies (gRPC,
// server-sent events) are not held back; the last chunk, the one that came
// with io.EOF, stays pending, so that the caller's END (and trailers) join it
// in the same Write. A read error is returned as is; a write error is
// returned wrapped in WriteError so the caller can tell whose fault it was.
func (w *FrameWriter) CopyBody(src io.Reader) (int64, error) {
	var total int64
	for {
		b := w.buf.B
		if cap(b)-len(b) < codec.DataHeaderLen+w.chunk {
			if err := w.Flush(); err != nil {
				return total, WriteError{err}
			}
			b = w.buf.B
		}
		start := len(b)
		room := b[start+codec.DataHeaderLen : start+codec.DataHeaderLen+w.chunk]
		n, err := src.Read(room)
		if n > 0 {
			codec.PutDataHeader(b[start:start+codec.DataHeaderLen], n)
			w.buf.B = b[:start+codec.DataHeaderLen+n]
			total += int64(n)
		}
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
		if n > 0 {
			if ferr := w.Flush(); ferr != nil {
				return total, WriteError{ferr}
			}
		}
	}
}

// WriteError marks an error of the destination stream, as opposed to one of
// the body being copied.
type WriteError struct{ Err error }

func (e WriteError) Error() string { return "write to tunnel stream: " + e.Err.Error() }
func (e WriteError) Unwrap() error { return e.Err }
