package gateway

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"sync/atomic"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

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

// recordedAnswer is the frames of the tunnel's answer to the benchmarks'
// GET: a 200 with 1 KiB.
func recordedAnswer() []byte {
	var answer []byte
	answer = codec.AppendResponse(answer, &codec.ResponseHead{Status: 200, ContentLength: 1024,
		Header: http.Header{"Content-Type": {"application/octet-stream"}, "Date": {"Thu, 26 Nov 2026 07:00:00 GMT"}}})
	answer = codec.AppendData(answer, kib)
	return codec.AppendEnd(answer)
}

// recordedRequest is the frames of the benchmarks' GET as the ingress side
// sends it through the tunnel for the rule "app", with traceparent ("" for
// none).
func recordedRequest(traceparent string) []byte {
	var request []byte
	request = codec.AppendRequest(request, &codec.RequestHead{Kind: codec.KindHTTP, RuleID: "app", RequestID: "0123456789abcdef",
		Method: "GET", Scheme: "http", Authority: "app.test", Path: "/api/users?page=2", ContentLength: 0,
		TraceParent: traceparent,
		Header: http.Header{"Accept": {"*/*"}, "User-Agent": {"bench/1.0"}, "X-Request-Id": {"0123456789abcdef"},
			"X-Forwarded-For": {"127.0.0.1"}, "X-Forwarded-Proto": {"http"}, "X-Forwarded-Host": {"app.test"}}})
	return codec.AppendEnd(request)
}

// handleOne runs one exchange of side through chain, as prepare sets it up,
// and fails tb if the chain fails.
func handleOne(tb testing.TB, chain pipeline.Handler, side pipeline.Side, prepare func(*pipeline.Exchange)) {
	x := pipeline.Acquire(side)
	prepare(x)
	err := chain.Handle(context.Background(), x)
	x.Release()
	if err != nil {
		tb.Fatal(err)
	}
}

// BenchmarkIngressStages: decode (from the user's request), route, egress
// (open a stream, send the head, read the answer) and encode (to the user),
// for a GET answered with 1 KiB.
func BenchmarkIngressStages(b *testing.B) {
	answer := recordedAnswer()
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
	prepare := func(x *pipeline.Exchange) { x.Request, x.Writer = req, w }
	b.ReportAllocs()
	for b.Loop() {
		clear(req.Header)
		for k, v := range base {
			req.Header[k] = v
		}
		clear(w.h)
		stream.r.Reset(answer)
		handleOne(b, chain, pipeline.Ingress, prepare)
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
	request := recordedRequest("")
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
	prepare := func(x *pipeline.Exchange) { x.Stream, x.Conn = stream, conn }
	b.ReportAllocs()
	for b.Loop() {
		up.resp.Header = respHeader
		stream.r.Reset(request)
		handleOne(b, chain, pipeline.Egress, prepare)
	}
}

// Observability cost: the gateway's own chains (buildChains: observe,
// decode, route, ratelimit, then egress and encode, with the breaker on the
// egress side), run the way the gateway runs them (ingressHandler.ServeHTTP
// on the ingress side; on the egress side streamServer.serveStream, what
// streamTask.run does once it has the stream), with metrics and tracing
// each off or on:
//
//   - off: a nil *metrics.Metrics (its observe stage only calls next), no
//     tracer;
//   - metrics: the observe stage of a real metrics.Metrics, no tracer (the
//     default configuration);
//   - tracing: no metrics; a tracer on the chain (a span per stage) and the
//     request span around it, from an SDK provider that samples every
//     request and hands the spans to a batcher whose exporter drops them,
//     so that the cost is making and ending the spans, not shipping them;
//   - metrics+tracing: both;
//   - metrics+unsampled: both, with a sampler that records nothing (a
//     request left out by tracing.sample_ratio): the spans are made but
//     do not record.
//
// The tunnel stream and the upstream are the stand-ins above.

type obsVariant struct {
	name    string
	metrics bool
	sampler sdktrace.Sampler // nil: no tracer
}

var obsVariants = []obsVariant{
	{"off", false, nil},
	{"metrics", true, nil},
	{"tracing", false, sdktrace.AlwaysSample()},
	{"metrics+tracing", true, sdktrace.AlwaysSample()},
	{"metrics+unsampled", true, sdktrace.NeverSample()},
}

// dropExporter is a span exporter that drops everything.
type dropExporter struct{}

func (dropExporter) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (dropExporter) Shutdown(context.Context) error                             { return nil }

// benchTracerOf returns the gateway's tracer, as WithTracerProvider takes
// it, from a provider with sampler whose spans are dropped once batched.
func benchTracerOf(tb testing.TB, sampler sdktrace.Sampler) trace.Tracer {
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sampler), sdktrace.WithBatcher(dropExporter{}))
	tb.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	var o options
	WithTracerProvider(tp)(&o)
	return o.tracer
}

var quietLog = slog.New(slog.NewTextHandler(io.Discard, nil)) // info: request records are off

// obsChains builds one side's chains as NewServer and NewClient do, with
// egressDir's rules served on the egress side, and the upstream stage
// replaced by up.
func obsChains(tb testing.TB, v obsVariant, egressDir rules.Direction, conn *pipeline.Conn, up pipeline.Stage) (*chains, trace.Tracer) {
	tb.Helper()
	var c config.Common
	c.SetDefaults()
	k, err := newKit(kitConfig{role: "bench", settings: &c, store: benchRules, log: quietLog})
	if err != nil {
		tb.Fatal(err)
	}
	if !v.metrics {
		k.m = nil
	}
	o := options{log: quietLog}
	if v.sampler != nil {
		o.tracer = benchTracerOf(tb, v.sampler)
	}
	o.egressEdits = []pipeline.Edit{pipeline.Replace(egress.Name, pipeline.Name(egress.Name, up))}
	pool, err := egress.NewPool(egress.PoolConfig{Logger: quietLog})
	if err != nil {
		tb.Fatal(err)
	}
	conns := egress.ConnSourceFunc(func(*rules.Rule) (*pipeline.Conn, error) { return conn, nil })
	ch, err := buildChains(context.Background(), chainSpec{settings: &c, store: benchRules, egressDir: egressDir, conns: conns, pool: pool, kit: k, opts: o})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		_ = ch.close(context.Background())
		pool.Close()
	})
	return ch, o.tracer
}

// obsIngress returns one request of the server's ingress side for a
// reverse rule: the user's GET, answered with 1 KiB from the tunnel.
func obsIngress(tb testing.TB, v obsVariant) func() {
	answer := recordedAnswer()
	stream := &replayStream{}
	conn := &pipeline.Conn{ClientID: "c", Opener: replayOpener{stream}}
	ch, tracer := obsChains(tb, v, rules.Forward, conn, &fakeUpstream{})
	h := &ingressHandler{chain: &ch.ingress, log: quietLog, tracer: tracer, access: new(atomic.Bool)}
	req, _ := http.NewRequest(http.MethodGet, "http://app.test/api/users?page=2", nil)
	req.RemoteAddr = "127.0.0.1:50000"
	req.RequestURI = "/api/users?page=2"
	base := http.Header{"Accept": {"*/*"}, "User-Agent": {"bench/1.0"}}
	w := &statusWriter{discardWriter: discardWriter{h: http.Header{}}}
	return func() {
		clear(req.Header)
		for k, v := range base {
			req.Header[k] = v
		}
		clear(w.h)
		w.status = 0
		stream.r.Reset(answer)
		h.ServeHTTP(w, req)
		if w.status != http.StatusOK {
			tb.Fatalf("status %d", w.status)
		}
	}
}

// statusWriter remembers the status, to check that every request worked.
type statusWriter struct {
	discardWriter
	status int
}

func (w *statusWriter) WriteHeader(status int) { w.status = status }

// obsEgress returns one request of the client's egress side for the same
// rule: the head from the stream (with the ingress side's traceparent, as
// a traced server sends it, in every variant), the stand-in upstream's
// 1 KiB, frames back to the stream.
func obsEgress(tb testing.TB, v obsVariant) func() {
	request := recordedRequest("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	stream := &replayStream{}
	conn := &pipeline.Conn{ClientID: "c"}
	up := &fakeUpstream{resp: http.Response{StatusCode: 200, ContentLength: 1024}}
	respHeader := http.Header{"Content-Type": {"application/octet-stream"}}
	ch, tracer := obsChains(tb, v, rules.Reverse, conn, up)
	ss := &streamServer{streamServerConfig: streamServerConfig{chain: &ch.egress, log: quietLog, maxFrame: 64 << 10, tracer: tracer, access: new(atomic.Bool)}}
	ctx := context.Background()
	if ss.log.Enabled(ctx, slog.LevelDebug) {
		tb.Fatal("the benchmark logs at info")
	}
	return func() {
		up.resp.Header = respHeader
		stream.r.Reset(request)
		// What streamTask.run does once it has the stream.
		if err := ss.serveStream(ctx, stream, conn); err != nil {
			tb.Fatal(err)
		}
	}
}

// obsSides are the two sides whose chains the benchmark and the test
// below run.
var obsSides = []struct {
	name string
	make func(testing.TB, obsVariant) func()
}{{"ingress", obsIngress}, {"egress", obsEgress}}

// BenchmarkChainObservability: per-request cost of each side's chain with
// metrics and tracing off and on (see obsVariants).
func BenchmarkChainObservability(b *testing.B) {
	for _, side := range obsSides {
		for _, v := range obsVariants {
			b.Run(side.name+"/"+v.name, func(b *testing.B) {
				run := side.make(b, v)
				run() // the metrics series of this label set exist from here on
				b.ReportAllocs()
				for b.Loop() {
					run()
				}
			})
		}
	}
}

// TestObservabilityAllocations: with tracing off, the observe stage adds
// no allocation per request to either side's chain; tracing on does
// allocate (the benchmark above says how much).
func TestObservabilityAllocations(t *testing.T) {
	if raceDetector {
		t.Skip("the race detector makes sync.Pool drop items at random: allocation counts vary")
	}
	for _, side := range obsSides {
		t.Run(side.name, func(t *testing.T) {
			allocs := map[string]float64{}
			for _, v := range obsVariants {
				run := side.make(t, v)
				run()
				allocs[v.name] = testing.AllocsPerRun(1000, run)
			}
			t.Logf("allocs/request: %v", allocs)
			if allocs["metrics"] != allocs["off"] {
				t.Errorf("metrics on, tracing off: %v allocs/request, want %v as with both off", allocs["metrics"], allocs["off"])
			}
			if allocs["tracing"] <= allocs["off"] {
				t.Errorf("tracing on: %v allocs/request, want more than %v (is the tracer used?)", allocs["tracing"], allocs["off"])
			}
		})
	}
}
