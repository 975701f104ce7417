package encode_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/codec"
	"github.com/qtunnel/qtunnel/internal/httpx"
	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/pipeline/pipelinetest"
	"github.com/qtunnel/qtunnel/stages/encode"
	"github.com/qtunnel/qtunnel/transport"
)

func TestMain(m *testing.M) { pipelinetest.VerifyNoLeaks(m) }

func newEncoder(t *testing.T, cfg encode.Config) *encode.Encoder {
	t.Helper()
	e, err := encode.New(cfg)
	require.NoError(t, err)
	return e
}

// next records that it ran, and runs check if set.
type next struct {
	called bool
	check  func(x *pipeline.Exchange)
}

func (n *next) Handle(_ context.Context, x *pipeline.Exchange) error {
	n.called = true
	if n.check != nil {
		n.check(x)
	}
	return nil
}

// chunks returns its chunks one Read at a time, then io.EOF; when it hits
// the end it runs atEOF, the way net/http fills Response.Trailer only once
// the body has been read.
type chunks struct {
	parts [][]byte
	atEOF func()
	// before, if set, is called before each Read with the index of the
	// chunk about to be returned.
	before func(i int)
	i      int
}

func (c *chunks) Read(p []byte) (int, error) {
	if c.before != nil {
		c.before(c.i)
	}
	if c.i == len(c.parts) {
		if c.atEOF != nil {
			c.atEOF()
			c.atEOF = nil
		}
		return 0, io.EOF
	}
	n := copy(p, c.parts[c.i])
	c.parts[c.i] = c.parts[c.i][n:]
	if len(c.parts[c.i]) == 0 {
		c.i++
	}
	return n, nil
}

func (c *chunks) Close() error { return nil }

func body(parts ...string) *chunks {
	c := &chunks{}
	for _, p := range parts {
		c.parts = append(c.parts, []byte(p))
	}
	return c
}

func TestNew(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		cfg     encode.Config
		wantErr bool
	}{
		{"zero is default", encode.Config{}, false},
		{"explicit", encode.Config{MaxFrameSize: 1024, CopyBufferSize: 512}, false},
		{"negative frame", encode.Config{MaxFrameSize: -1}, true},
		{"frame too large", encode.Config{MaxFrameSize: codec.MaxPayload + 1}, true},
		{"negative copy buffer", encode.Config{CopyBufferSize: -1}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e, err := encode.New(tt.cfg)
			if tt.wantErr {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, "encode", e.Name())
		})
	}
}

// TestNoResponse: a chain whose stages returned no answer and no error is
// a broken chain; encode says so to the user (502) and to the caller
// (ErrNoResponse), on both sides, after the stages inside it ran.
func TestNoResponse(t *testing.T) {
	t.Parallel()
	for _, side := range []pipeline.Side{pipeline.Ingress, pipeline.Egress} {
		t.Run(side.String(), func(t *testing.T) {
			t.Parallel()
			rec := httptest.NewRecorder()
			s := pipelinetest.NewStream()
			defer s.Shutdown()
			x := pipeline.Acquire(side)
			defer x.Release()
			x.ID = "req-1"
			x.Writer, x.Stream = rec, s
			frames := make(chan codec.FrameType, 1)
			go func() {
				typ, _, err := codec.NewReader(s.Peer(), 64<<10).Next()
				if err != nil {
					typ = 0
				}
				frames <- typ
			}()
			n := &next{}
			err := newEncoder(t, encode.Config{}).Handle(context.Background(), x, n)
			require.ErrorIs(t, err, encode.ErrNoResponse)
			require.True(t, n.called, "the stages inside encode run first")
			if side == pipeline.Ingress {
				require.Equal(t, http.StatusBadGateway, rec.Code)
				require.Equal(t, "req-1", rec.Header().Get("X-Request-Id"))
				s.Shutdown()
			}
			typ := <-frames
			if side == pipeline.Egress {
				require.Equal(t, codec.FrameError, typ)
				require.True(t, s.Closed())
			}
		})
	}
}

// TestEgressWithoutStream: on the egress side the answer goes to the tunnel
// stream; without one, encode says so instead of failing on a nil stream,
// whether the answer has a body or switched protocols (whose far end it
// closes, as on any failure to splice).
func TestEgressWithoutStream(t *testing.T) {
	t.Parallel()
	for _, upgraded := range []bool{false, true} {
		t.Run(map[bool]string{false: "body", true: "upgraded"}[upgraded], func(t *testing.T) {
			t.Parallel()
			x := pipeline.Acquire(pipeline.Egress)
			defer x.Release()
			resp := x.NewResponse()
			resp.StatusCode, resp.ContentLength = http.StatusOK, 2
			resp.Header = http.Header{}
			resp.Body = io.NopCloser(strings.NewReader("ok"))
			far := &closeCounter{}
			if upgraded {
				resp.StatusCode = http.StatusSwitchingProtocols
				x.Upgraded = far
			}
			n := &next{}
			var err error
			require.NotPanics(t, func() { err = newEncoder(t, encode.Config{}).Handle(context.Background(), x, n) })
			require.ErrorIs(t, err, encode.ErrNoStream)
			require.EqualError(t, err, "encode: an egress exchange needs a Stream")
			require.True(t, n.called, "the stages inside encode run first")
			require.Zero(t, x.Status, "nothing was delivered")
			require.Equal(t, map[bool]int{false: 0, true: 1}[upgraded], far.closed)
		})
	}
}

// closeCounter is an upgraded connection that counts its Close calls.
type closeCounter struct {
	io.ReadWriter
	closed int
}

func (c *closeCounter) Close() error { c.closed++; return nil }

// ---- ingress side: to the user ----

// toUser returns an ingress exchange that answers on w, released when the
// test ends, and its response with status, length and header set.
func toUser(t *testing.T, w http.ResponseWriter, status int, length int64, h http.Header) (*pipeline.Exchange, *http.Response) {
	t.Helper()
	x := pipeline.Acquire(pipeline.Ingress)
	t.Cleanup(x.Release)
	x.Writer = w
	resp := x.NewResponse()
	resp.StatusCode, resp.ContentLength, resp.Header = status, length, h
	return x, resp
}

func TestIngressWritesResponse(t *testing.T) {
	t.Parallel()
	rec := httptest.NewRecorder()
	x, resp := toUser(t, rec, http.StatusCreated, 5, http.Header{
		"Content-Type":      {"text/plain"},
		"X-Up":              {"1", "2"},
		"Connection":        {"close, X-Hop"},
		"X-Hop":             {"h"},
		"Keep-Alive":        {"timeout=5"},
		"Transfer-Encoding": {"chunked"},
		"X-Request-Id":      {"upstream-chose-this"},
	})
	x.ID = "req-7"
	resp.Body = io.NopCloser(strings.NewReader("hello"))
	n := &next{check: func(*pipeline.Exchange) {
		require.Zero(t, rec.Body.Len(), "the answer is written after the stages inside encode return")
	}}
	require.NoError(t, newEncoder(t, encode.Config{}).Handle(context.Background(), x, n))
	require.True(t, n.called)
	require.Equal(t, http.StatusCreated, x.Status)

	res := rec.Result()
	require.Equal(t, http.StatusCreated, res.StatusCode)
	require.Equal(t, "text/plain", res.Header.Get("Content-Type"))
	require.Equal(t, []string{"1", "2"}, res.Header.Values("X-Up"))
	for _, k := range []string{"Connection", "X-Hop", "Keep-Alive", "Transfer-Encoding"} {
		require.NotContains(t, res.Header, k)
	}
	require.Equal(t, []string{"req-7"}, res.Header.Values(httpx.RequestIDHeader), "the user sees the gateway's request id")
	require.Equal(t, "5", res.Header.Get("Content-Length"))
	require.Equal(t, "hello", rec.Body.String())
	require.False(t, rec.Flushed, "a body of known length is not flushed chunk by chunk")
}

func TestIngressContentLength(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		status int
		length int64
		want   string // "" for no Content-Length
	}{
		{"known", http.StatusOK, 12, "12"},
		{"empty", http.StatusOK, 0, "0"},
		{"unknown", http.StatusOK, -1, ""},
		{"204 has none", http.StatusNoContent, 0, ""},
		{"304 has none", http.StatusNotModified, 42, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rec := httptest.NewRecorder()
			x, resp := toUser(t, rec, tt.status, tt.length, http.Header{})
			resp.Body = http.NoBody
			if tt.length > 0 && tt.status == http.StatusOK {
				resp.Body = io.NopCloser(strings.NewReader(strings.Repeat("x", int(tt.length))))
			}
			require.NoError(t, newEncoder(t, encode.Config{}).Handle(context.Background(), x, &next{}))
			require.Equal(t, tt.status, rec.Code)
			if tt.want == "" {
				require.NotContains(t, rec.Header(), "Content-Length")
			} else {
				require.Equal(t, tt.want, rec.Header().Get("Content-Length"))
			}
		})
	}
}

func TestIngressTrailers(t *testing.T) {
	t.Parallel()
	rec := httptest.NewRecorder()
	x, resp := toUser(t, rec, http.StatusOK, -1, http.Header{"Content-Type": {"application/grpc"}})
	// Declared, with values only once the body is read, as net/http does.
	resp.Trailer = http.Header{"Grpc-Status": nil, "Grpc-Message": nil, "X-Unset": nil}
	b := body("\x00\x00\x00\x00\x02hi")
	b.atEOF = func() {
		resp.Trailer.Set("Grpc-Status", "0")
		resp.Trailer.Set("Grpc-Message", "ok")
	}
	resp.Body = b
	require.NoError(t, newEncoder(t, encode.Config{}).Handle(context.Background(), x, &next{}))
	res := rec.Result()
	require.Equal(t, "\x00\x00\x00\x00\x02hi", rec.Body.String())
	require.Equal(t, http.Header{"Grpc-Status": {"0"}, "Grpc-Message": {"ok"}}, res.Trailer)
}

// flushRecorder records the body length at every Flush.
type flushRecorder struct {
	*httptest.ResponseRecorder
	flushes []int
}

func (f *flushRecorder) Flush() {
	f.flushes = append(f.flushes, f.Body.Len())
	f.ResponseRecorder.Flush()
}

func TestIngressStreamingFlushes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		length      int64
		wantFlushes []int
	}{
		{"unknown length: head and every chunk", -1, []int{0, 5, 11, 18}},
		{"known length: never", 18, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			w := &flushRecorder{ResponseRecorder: httptest.NewRecorder()}
			x, resp := toUser(t, w, http.StatusOK, tt.length, http.Header{})
			resp.Body = body("data1", "data:2", "data::3")
			require.NoError(t, newEncoder(t, encode.Config{}).Handle(context.Background(), x, &next{}))
			require.Equal(t, tt.wantFlushes, w.flushes)
			require.Equal(t, tt.wantFlushes != nil, w.Flushed)
			require.Equal(t, "data1data:2data::3", w.Body.String())
		})
	}
}

func TestIngressStreamingFlushesRecorder(t *testing.T) {
	t.Parallel()
	rec := httptest.NewRecorder()
	x, resp := toUser(t, rec, http.StatusOK, -1, http.Header{"Content-Type": {"text/event-stream"}})
	resp.Body = body("data: 1\n\n", "data: 2\n\n")
	require.NoError(t, newEncoder(t, encode.Config{}).Handle(context.Background(), x, &next{}))
	require.True(t, rec.Flushed)
	require.NotContains(t, rec.Header(), "Content-Length")
	require.Equal(t, "data: 1\n\ndata: 2\n\n", rec.Body.String())
}

func TestIngressBodyReadError(t *testing.T) {
	t.Parallel()
	boom := errors.New("stream reset by peer")
	rec := httptest.NewRecorder()
	x, resp := toUser(t, rec, http.StatusOK, 100, http.Header{})
	resp.Body = io.NopCloser(io.MultiReader(strings.NewReader("part"), iotest.ErrReader(boom)))
	n := &next{}
	err := newEncoder(t, encode.Config{}).Handle(context.Background(), x, n)
	require.ErrorIs(t, err, boom)
	var gone pipeline.UserGoneError
	require.NotErrorAs(t, err, &gone, "a failing answer is not the user's fault")
	require.True(t, n.called, "the stages inside encode run first")
}

// failingWriter is a ResponseWriter whose connection is gone.
type failingWriter struct {
	h   http.Header
	err error
}

func (f *failingWriter) Header() http.Header       { return f.h }
func (f *failingWriter) WriteHeader(int)           {}
func (f *failingWriter) Write([]byte) (int, error) { return 0, f.err }

func TestIngressUserGone(t *testing.T) {
	t.Parallel()
	gone := errors.New("broken pipe")
	x, resp := toUser(t, &failingWriter{h: http.Header{}, err: gone}, http.StatusOK, 5, http.Header{})
	resp.Body = io.NopCloser(strings.NewReader("hello"))
	err := newEncoder(t, encode.Config{}).Handle(context.Background(), x, &next{})
	var ug pipeline.UserGoneError
	require.ErrorAs(t, err, &ug)
	require.ErrorIs(t, err, gone)
}

// ---- egress side: to the tunnel stream ----

type parsed struct {
	types    []codec.FrameType
	head     codec.ResponseHead
	body     []byte
	trailers http.Header
	dataLens []int
	err      error
}

// readFrames parses what the encoder wrote to s, as the ingress side would,
// until the stream ends.
func readFrames(s *pipelinetest.Stream, onHead func()) <-chan parsed {
	out := make(chan parsed, 1)
	go func() {
		var p parsed
		defer func() { out <- p }()
		r := codec.NewReader(s.Peer(), 1<<20)
		for {
			t, payload, err := r.Next()
			if err == io.EOF {
				return
			}
			if err != nil {
				p.err = err
				return
			}
			p.types = append(p.types, t)
			switch t {
			case codec.FrameResponse:
				if p.err = codec.ParseResponse(payload, &p.head); p.err != nil {
					return
				}
				if onHead != nil {
					onHead()
				}
			case codec.FrameData:
				p.dataLens = append(p.dataLens, r.DataLeft())
				buf := make([]byte, r.DataLeft())
				for off := 0; off < len(buf); {
					n, err := r.ReadData(buf[off:])
					if err != nil {
						p.err = err
						return
					}
					off += n
				}
				p.body = append(p.body, buf...)
			case codec.FrameTrailers:
				if p.trailers, p.err = codec.ParseTrailers(payload); p.err != nil {
					return
				}
			}
		}
	}()
	return out
}

// runEgress encodes resp to a fake stream and returns what the peer parsed.
func runEgress(t *testing.T, cfg encode.Config, resp func(x *pipeline.Exchange), onHead func()) (*pipeline.Exchange, *pipelinetest.Stream, parsed, error) {
	t.Helper()
	s := pipelinetest.NewStream()
	x := pipeline.Acquire(pipeline.Egress)
	t.Cleanup(x.Release)
	x.Stream = s
	resp(x)
	got := readFrames(s, onHead)
	err := newEncoder(t, cfg).Handle(context.Background(), x, &next{})
	if !s.Closed() {
		s.Shutdown() // without a FIN the peer would wait forever for the rest
	}
	p := <-got
	s.Shutdown()
	return x, s, p, err
}

func TestEgressFrames(t *testing.T) {
	t.Parallel()
	x, s, p, err := runEgress(t, encode.Config{}, func(x *pipeline.Exchange) {
		resp := x.NewResponse()
		resp.StatusCode, resp.ContentLength = http.StatusOK, -1
		resp.Header = http.Header{"X-Up": {"1"}, "Connection": {"close"}, "Content-Length": {"11"}}
		resp.Trailer = http.Header{"X-Checksum": nil}
		b := body("hello ", "world")
		b.atEOF = func() { resp.Trailer.Set("X-Checksum", "abc") }
		resp.Body = b
	}, nil)
	require.NoError(t, err)
	require.NoError(t, p.err)
	require.Equal(t, http.StatusOK, x.Status)
	require.Equal(t, codec.FrameResponse, p.types[0])
	for _, typ := range p.types[1 : len(p.types)-2] {
		require.Equal(t, codec.FrameData, typ)
	}
	require.Equal(t, []codec.FrameType{codec.FrameTrailers, codec.FrameEnd}, p.types[len(p.types)-2:])
	require.Equal(t, http.StatusOK, p.head.Status)
	require.EqualValues(t, -1, p.head.ContentLength)
	require.Equal(t, "1", p.head.Header.Get("X-Up"))
	require.NotContains(t, p.head.Header, "Connection")
	require.NotContains(t, p.head.Header, "Content-Length", "the length travels in the head")
	require.Equal(t, []string{"X-Checksum"}, p.head.Header.Values("Trailer"), "trailers are declared for HTTP/1.1 users")
	require.Equal(t, "hello world", string(p.body))
	require.Equal(t, http.Header{"X-Checksum": {"abc"}}, p.trailers)
	require.True(t, s.Closed(), "the answer ends with FIN")
	require.Empty(t, s.AbortCodes())
}

func TestEgressSmallResponseIsOneWrite(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		setup func(resp *http.Response)
		want  []codec.FrameType
	}{
		{"known length", func(resp *http.Response) {
			resp.StatusCode, resp.ContentLength = http.StatusOK, 5
			// net/http returns io.EOF together with the last bytes of a
			// body of known length; DataErrReader does the same.
			resp.Body = io.NopCloser(iotest.DataErrReader(strings.NewReader("hello")))
		}, []codec.FrameType{codec.FrameResponse, codec.FrameData, codec.FrameEnd}},
		{"no body", func(resp *http.Response) {
			resp.StatusCode, resp.ContentLength, resp.Body = http.StatusNoContent, 0, http.NoBody
		}, []codec.FrameType{codec.FrameResponse, codec.FrameEnd}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, s, p, err := runEgress(t, encode.Config{}, func(x *pipeline.Exchange) {
				resp := x.NewResponse()
				resp.Header = http.Header{"Content-Type": {"text/plain"}}
				tt.setup(resp)
			}, nil)
			require.NoError(t, err)
			require.NoError(t, p.err)
			require.Equal(t, tt.want, p.types)
			require.Len(t, s.Writes(), 1, "head, body and END leave in one write")
			require.True(t, s.Closed())
		})
	}
}

func TestEgressStreamingSendsHeadFirst(t *testing.T) {
	t.Parallel()
	headSeen := make(chan struct{})
	var waited error
	_, s, p, err := runEgress(t, encode.Config{}, func(x *pipeline.Exchange) {
		resp := x.NewResponse()
		resp.StatusCode, resp.ContentLength, resp.Header = http.StatusOK, -1, http.Header{"Content-Type": {"text/event-stream"}}
		b := body("event 1\n\n", "event 2\n\n")
		// A streaming upstream may send nothing until the client has the
		// head: the body does not produce a byte until the peer saw it.
		b.before = func(i int) {
			if i != 0 || waited != nil {
				return
			}
			select {
			case <-headSeen:
			case <-time.After(10 * time.Second):
				waited = errors.New("the peer never got the head before the body")
			}
		}
		resp.Body = b
	}, func() { close(headSeen) })
	require.NoError(t, err)
	require.NoError(t, waited)
	require.NoError(t, p.err)
	require.Equal(t, "event 1\n\nevent 2\n\n", string(p.body))
	writes := s.Writes()
	require.GreaterOrEqual(t, len(writes), 3, "head, each chunk as it comes, then END")
	r := codec.NewReader(bytes.NewReader(writes[0]), 1<<20)
	typ, _, err := r.Next()
	require.NoError(t, err)
	require.Equal(t, codec.FrameResponse, typ)
	_, _, err = r.Next()
	require.ErrorIs(t, err, io.EOF, "the first write is the head alone")
}

func TestEgressLargeBodySplitsAtFrameSize(t *testing.T) {
	t.Parallel()
	payload := strings.Repeat("0123456789", 500) // 5000 bytes
	_, s, p, err := runEgress(t, encode.Config{MaxFrameSize: 1024}, func(x *pipeline.Exchange) {
		resp := x.NewResponse()
		resp.StatusCode, resp.ContentLength, resp.Header = http.StatusOK, int64(len(payload)), http.Header{}
		resp.Body = io.NopCloser(strings.NewReader(payload))
	}, nil)
	require.NoError(t, err)
	require.NoError(t, p.err)
	require.Equal(t, payload, string(p.body))
	require.EqualValues(t, len(payload), p.head.ContentLength)
	for _, n := range p.dataLens {
		require.LessOrEqual(t, n, 1024)
	}
	require.True(t, s.Closed())
}

func TestEgressDeclaredButUnsetTrailers(t *testing.T) {
	t.Parallel()
	_, _, p, err := runEgress(t, encode.Config{}, func(x *pipeline.Exchange) {
		resp := x.NewResponse()
		resp.StatusCode, resp.ContentLength, resp.Header = http.StatusOK, 2, http.Header{}
		resp.Trailer = http.Header{"X-Never": nil}
		resp.Body = io.NopCloser(strings.NewReader("ok"))
	}, nil)
	require.NoError(t, err)
	require.NoError(t, p.err)
	require.NotContains(t, p.types, codec.FrameTrailers, "no values, no TRAILERS frame")
	require.Equal(t, codec.FrameEnd, p.types[len(p.types)-1])
}

func TestEgressWriteFailure(t *testing.T) {
	t.Parallel()
	s := pipelinetest.NewStream()
	s.Shutdown() // the peer reset the stream before the answer
	x := pipeline.Acquire(pipeline.Egress)
	defer x.Release()
	x.Stream = s
	resp := x.NewResponse()
	resp.StatusCode, resp.ContentLength, resp.Header = http.StatusOK, 2, http.Header{}
	resp.Body = io.NopCloser(iotest.DataErrReader(strings.NewReader("ok")))
	n := &next{}
	err := newEncoder(t, encode.Config{}).Handle(context.Background(), x, n)
	var we transport.WriteError
	require.ErrorAs(t, err, &we, "the stream's fault is marked as such")
	require.True(t, n.called, "the stages inside encode run first")
}

// An upstream body that fails after the head (the upstream died mid-answer)
// ends with an ERROR frame after the bytes read so far, and a FIN: a reset
// could make QUIC drop the head itself.
func TestEgressBodyCutSendsErrorFrame(t *testing.T) {
	t.Parallel()
	for _, length := range []int64{-1, 1 << 20} {
		x, s, p, err := runEgress(t, encode.Config{}, func(x *pipeline.Exchange) {
			resp := x.NewResponse()
			resp.StatusCode, resp.ContentLength, resp.Header = http.StatusOK, length, http.Header{}
			// Data and the error in one Read, as net/http's chunked reader does.
			resp.Body = io.NopCloser(iotest.DataErrReader(io.MultiReader(strings.NewReader("partial"), iotest.ErrReader(io.ErrUnexpectedEOF))))
		}, nil)
		var cut encode.BodyCutError
		require.ErrorAs(t, err, &cut, "length %d", length)
		require.ErrorIs(t, err, io.ErrUnexpectedEOF)
		require.NoError(t, p.err)
		require.Equal(t, codec.FrameResponse, p.types[0])
		require.Equal(t, codec.FrameError, p.types[len(p.types)-1], "length %d: %v", length, p.types)
		require.Equal(t, "partial", string(p.body), "what was read before the cut reaches the peer")
		require.Equal(t, http.StatusOK, x.Status)
		require.True(t, s.Closed(), "the stream ends with FIN, not a reset")
		require.Empty(t, s.AbortCodes())
	}
}
