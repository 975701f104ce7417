package transport_test

import (
	"bytes"
	"io"
	"net/http"
	"testing"

	"github.com/qtunnel/qtunnel/codec"
	"github.com/qtunnel/qtunnel/transport"
)

// writeCounter discards bytes and counts Write calls (syscalls, on a stream).
type writeCounter struct{ n int }

func (w *writeCounter) Write(p []byte) (int, error) { w.n++; return len(p), nil }

// BenchmarkFrameWriterSmallResponse encodes a 1 KiB response: head, body and
// END must leave in one write, with no allocation.
func BenchmarkFrameWriterSmallResponse(b *testing.B) {
	body := bytes.Repeat([]byte("x"), 1024)
	head := &codec.ResponseHead{Status: 200, ContentLength: 1024, Header: http.Header{"Content-Type": {"text/plain"}}}
	var dst writeCounter
	src := &eofWithData{bytes.NewReader(body)}
	b.ReportAllocs()
	b.SetBytes(1024)
	for b.Loop() {
		src.Reset(body)
		w := transport.GetFrameWriter(&dst, codec.DefaultMaxFrameSize)
		w.Response(head)
		if _, err := w.CopyBody(src); err != nil {
			b.Fatal(err)
		}
		w.End()
		if err := w.Flush(); err != nil {
			b.Fatal(err)
		}
		transport.PutFrameWriter(w)
	}
	b.ReportMetric(float64(dst.n)/float64(b.N), "writes/op")
}

// eofWithData returns io.EOF with the last bytes, as net/http bodies of known
// length do.
type eofWithData struct{ *bytes.Reader }

func (r *eofWithData) Read(p []byte) (int, error) {
	n, err := r.Reader.Read(p)
	if err == nil && r.Len() == 0 {
		err = io.EOF
	}
	return n, err
}

// BenchmarkFrameWriterBulk streams 1 MiB through the writer.
func BenchmarkFrameWriterBulk(b *testing.B) {
	body := bytes.Repeat([]byte("x"), 1<<20)
	src := bytes.NewReader(body)
	b.ReportAllocs()
	b.SetBytes(1 << 20)
	for b.Loop() {
		src.Reset(body)
		w := transport.GetFrameWriter(io.Discard, codec.DefaultMaxFrameSize)
		if _, err := w.CopyBody(src); err != nil {
			b.Fatal(err)
		}
		w.End()
		_ = w.Flush()
		transport.PutFrameWriter(w)
	}
}
