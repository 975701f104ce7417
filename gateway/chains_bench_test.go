package gateway

import (
	"bytes"
	"context"
	"net/http"
	"testing"

	"github.com/qtunnel/qtunnel/codec"
	"github.com/qtunnel/qtunnel/config"
	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/rules"
	"github.com/qtunnel/qtunnel/stages/decode"
	"github.com/qtunnel/qtunnel/stages/egress"
	"github.com/qtunnel/qtunnel/stages/encode"
	"github.com/qtunnel/qtunnel/stages/route"
)

// These benchmarks count what our own stages cost per request, on each side,
// with everything around them faked without allocating: the tunnel stream
// replays recorded frames, the user's ResponseWriter and the upstream are
// stand-ins. net/http's and quic-go's own allocations are not in them.

// replayStream is a tunnel stream that reads recorded bytes and discards
// what is written.
type replayStream struct{ r bytes.Reader }

func (s *replayStream) Read(p []byte) (int, error)  { return s.r.Read(p) }
func (s *replayStream) Write(p []byte) (int, error) { return len(p), nil }
func (s *replayStream) Close() error                { return nil }
func (s *replayStream) CancelRead(uint64)           {}
func (s *replayStream) Abort(uint64)                {}

type replayOpener struct{ s *replayStream }

func (o replayOpener) OpenStream(context.Context) (pipeline.Stream, error) { return o.s, nil }

type discardWriter struct{ h http.Header }

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *discardWriter) WriteHeader(int)             {}
func (w *discardWriter) Flush()                      {}

var benchRules = func() *rules.Store {
	var s rules.Store
	t, err := rules.NewTable(1, []rules.Rule{
		{ID: "app", Client: "c", Direction: rules.Reverse, Host: "app.test", Upstream: "http://127.0.0.1:1"},
		{ID: "fwd", Client: "c", Direction: rules.Forward, Listen: "127.0.0.1:1", Upstream: "http://127.0.0.1:1"},
	})
	if err != nil {
		panic(err)
	}
	s.Swap(t)
	return &s
}()

var kib = bytes.Repeat([]byte("x"), 1024)

// BenchmarkIngressStages: decode (from the user's request), route, egress
// (open a stream, send the head, read the answer) and encode (to the user),
// for a GET answered with 1 KiB.
func BenchmarkIngressStages(b *testing.B) {
	var answer []byte
	answer = codec.AppendResponse(answer, &codec.ResponseHead{Status: 200, ContentLength: 1024,
		Header: http.Header{"Content-Type": {"application/octet-stream"}, "Date": {"Thu, 26 Nov 2026 07:00:00 GMT"}}})
	answer = codec.AppendData(answer, kib)
	answer = codec.AppendEnd(answer)
	stream := &replayStream{}
	conn := &pipeline.Conn{ClientID: "c", Opener: replayOpener{stream}}
	var lim config.Limits
	dec, _ := decode.New(decode.Config{})
	rt, _ := route.New(route.Config{Rules: benchRules, Egress: rules.Reverse})
	tun, _ := egress.NewTunnel(egress.TunnelConfig{Conns: egress.ConnSourceFunc(func(*rules.Rule) (*pipeline.Conn, error) { return conn, nil })})
	enc, _ := encode.New(encode.Config{})
	chain, err := pipeline.New(context.Background(), []pipeline.Stage{dec, rt, tun, enc})
	if err != nil {
		b.Fatal(err)
	}
	_ = lim
	req, _ := http.NewRequest(http.MethodGet, "http://app.test/api/users?page=2", nil)
	req.RemoteAddr = "127.0.0.1:50000"
	req.RequestURI = "/api/users?page=2"
	base := http.Header{"Accept": {"*/*"}, "User-Agent": {"bench/1.0"}}
	w := &discardWriter{h: http.Header{}}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		clear(req.Header)
		for k, v := range base {
			req.Header[k] = v
		}
		clear(w.h)
		stream.r.Reset(answer)
		x := pipeline.Acquire(pipeline.Ingress)
		x.Request, x.Writer = req, w
		if err := chain.Handle(ctx, x); err != nil {
			b.Fatal(err)
		}
		x.Release()
	}
}

// fakeUpstream answers every exchange with the same 1 KiB response.
type fakeUpstream struct {
	resp http.Response
	body readCloser
}

type readCloser struct{ bytes.Reader }

func (*readCloser) Close() error { return nil }

func (u *fakeUpstream) Handle(ctx context.Context, x *pipeline.Exchange, next pipeline.Handler) error {
	u.body.Reset(kib)
	u.resp.Body = &u.body
	x.Response = &u.resp
	return next.Handle(ctx, x)
}

// BenchmarkEgressStages: decode (from the stream), route, a stand-in
// upstream, and encode (frames to the stream), for a GET answered with 1 KiB.
func BenchmarkEgressStages(b *testing.B) {
	var request []byte
	request = codec.AppendRequest(request, &codec.RequestHead{Kind: codec.KindHTTP, RuleID: "app", RequestID: "0123456789abcdef",
		Method: "GET", Scheme: "http", Authority: "app.test", Path: "/api/users?page=2", ContentLength: 0,
		Header: http.Header{"Accept": {"*/*"}, "User-Agent": {"bench/1.0"}, "X-Request-Id": {"0123456789abcdef"},
			"X-Forwarded-For": {"127.0.0.1"}, "X-Forwarded-Proto": {"http"}, "X-Forwarded-Host": {"app.test"}}})
	request = codec.AppendEnd(request)
	stream := &replayStream{}
	conn := &pipeline.Conn{ClientID: "c"}
	dec, _ := decode.New(decode.Config{})
	rt, _ := route.New(route.Config{Rules: benchRules, Egress: rules.Reverse})
	up := &fakeUpstream{resp: http.Response{StatusCode: 200, ContentLength: 1024}}
	respHeader := http.Header{"Content-Type": {"application/octet-stream"}}
	enc, _ := encode.New(encode.Config{})
	chain, err := pipeline.New(context.Background(), []pipeline.Stage{dec, rt, up, enc})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		up.resp.Header = respHeader
		stream.r.Reset(request)
		x := pipeline.Acquire(pipeline.Egress)
		x.Stream, x.Conn = stream, conn
		if err := chain.Handle(ctx, x); err != nil {
			b.Fatal(err)
		}
		x.Release()
	}
}
