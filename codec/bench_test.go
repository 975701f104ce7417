package codec_test

import (
	"bytes"
	"io"
	"net/http"
	"testing"

	"github.com/qtunnel/qtunnel/codec"
)

func benchHead() *codec.RequestHead {
	return &codec.RequestHead{
		Kind: codec.KindHTTP, RuleID: "app", RequestID: "0123456789abcdef",
		Method: "GET", Scheme: "http", Authority: "app.example.test", Path: "/api/users?page=2",
		ContentLength: 0,
		Header: http.Header{
			"Accept": {"*/*"}, "User-Agent": {"bench/1.0"}, "X-Request-Id": {"0123456789abcdef"},
			"X-Forwarded-For": {"127.0.0.1"}, "X-Forwarded-Proto": {"http"}, "X-Forwarded-Host": {"app.example.test"},
		},
	}
}

func BenchmarkAppendRequest(b *testing.B) {
	h := benchHead()
	buf := make([]byte, 0, 4096)
	b.ReportAllocs()
	for b.Loop() {
		buf = codec.AppendRequest(buf[:0], h)
	}
	b.SetBytes(int64(len(buf)))
}

func BenchmarkParseRequest(b *testing.B) {
	wire := codec.AppendRequest(nil, benchHead())
	_, l, n, _ := codec.ParseFrameHeader(wire, 1<<20)
	payload := wire[n : n+l]
	var h codec.RequestHead
	b.ReportAllocs()
	b.SetBytes(int64(len(wire)))
	for b.Loop() {
		if err := codec.ParseRequest(payload, &h); err != nil {
			b.Fatal(err)
		}
	}
}

// drain reads body to its end through dst.
func drain(b *testing.B, body *codec.Body, dst []byte) {
	for {
		_, err := body.Read(dst)
		if err == io.EOF {
			return
		}
		if err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBodyRead reads a 1 MiB body framed in 64 KiB DATA frames.
func BenchmarkBodyRead(b *testing.B) {
	chunk := bytes.Repeat([]byte("x"), 64<<10)
	var wire []byte
	for range 16 {
		wire = codec.AppendData(wire, chunk)
	}
	wire = codec.AppendEnd(wire)
	src := bytes.NewReader(wire)
	r := codec.NewReader(src, codec.DefaultMaxFrameSize)
	var body codec.Body
	dst := make([]byte, 32<<10)
	b.ReportAllocs()
	b.SetBytes(16 << 16)
	for b.Loop() {
		src.Reset(wire)
		r.Reset(src, codec.DefaultMaxFrameSize)
		body.Reset(r, nil)
		drain(b, &body, dst)
	}
}

// BenchmarkBodyTrailers reads a small gRPC-style answer body: one DATA
// frame, TRAILERS and END, with no trailer map set up front (the tunnel
// side's answers).
func BenchmarkBodyTrailers(b *testing.B) {
	wire := codec.AppendData(nil, []byte("\x00\x00\x00\x00\x02hi"))
	wire = codec.AppendTrailers(wire, http.Header{"Grpc-Status": {"0"}, "Grpc-Message": {"ok"}})
	wire = codec.AppendEnd(wire)
	src := bytes.NewReader(wire)
	r := codec.NewReader(src, codec.DefaultMaxFrameSize)
	var body codec.Body
	dst := make([]byte, 512)
	b.ReportAllocs()
	b.SetBytes(int64(len(wire)))
	for b.Loop() {
		src.Reset(wire)
		r.Reset(src, codec.DefaultMaxFrameSize)
		body.Reset(r, nil)
		drain(b, &body, dst)
		if body.Trailer.Get("Grpc-Status") != "0" {
			b.Fatal("trailers lost")
		}
	}
}
