package codec_test

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/qtunnel/qtunnel/codec"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestVarintRoundTrip(t *testing.T) {
	t.Parallel()
	for _, v := range []uint64{0, 1, 63, 64, 16383, 16384, 1<<30 - 1, 1 << 30, codec.MaxVarint} {
		b := codec.AppendVarint(nil, v)
		require.Len(t, b, codec.VarintLen(v))
		got, n, err := codec.ParseVarint(b)
		require.NoError(t, err)
		require.Equal(t, len(b), n)
		require.Equal(t, v, got)
		_, _, err = codec.ParseVarint(b[:len(b)-1])
		require.ErrorIs(t, err, codec.ErrShort)
	}
}

func frame(t *testing.T, b []byte, max int) (codec.FrameType, []byte) {
	t.Helper()
	typ, l, n, err := codec.ParseFrameHeader(b, max)
	require.NoError(t, err)
	require.Equal(t, len(b), n+l, "frame length must cover the rest of the buffer")
	return typ, b[n:]
}

func TestRequestHeadRoundTrip(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		head codec.RequestHead
	}{
		{"minimal", codec.RequestHead{Kind: codec.KindHTTP, Method: "GET", Path: "/", ContentLength: -1, Header: http.Header{}}},
		{"full", codec.RequestHead{
			Kind: codec.KindHTTP, RuleID: "web", RequestID: "0123456789abcdef",
			TraceParent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", TraceState: "k=v",
			Method: "POST", Scheme: "https", Authority: "app.example.test:8443", Path: "/a/b?x=1&y=%20",
			ContentLength: 1 << 40,
			Header:        http.Header{"Accept": {"*/*"}, "X-Multi": {"a", "b"}, "Te": {"trailers"}},
		}},
		{"upgrade", codec.RequestHead{Kind: codec.KindUpgrade, Method: "GET", Path: "/ws", ContentLength: 0, Header: http.Header{"Upgrade": {"websocket"}}}},
		{"tcp", codec.RequestHead{Kind: codec.KindTCP, RuleID: "db", ContentLength: -1, Header: http.Header{}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := codec.AppendRequest([]byte("prefix"), &tt.head)
			require.Equal(t, "prefix", string(b[:6]), "append must keep what was there")
			typ, payload := frame(t, b[6:], codec.DefaultMaxFrameSize)
			require.Equal(t, codec.FrameRequest, typ)
			var got codec.RequestHead
			require.NoError(t, codec.ParseRequest(payload, &got))
			require.Equal(t, tt.head, got)
		})
	}
}

func TestResponseTrailersErrorRoundTrip(t *testing.T) {
	t.Parallel()
	rh := codec.ResponseHead{Status: 200, ContentLength: 5, Header: http.Header{"Content-Type": {"text/plain"}, "Set-Cookie": {"a=1", "b=2"}}}
	typ, p := frame(t, codec.AppendResponse(nil, &rh), 1<<20)
	require.Equal(t, codec.FrameResponse, typ)
	var got codec.ResponseHead
	require.NoError(t, codec.ParseResponse(p, &got))
	require.Equal(t, rh, got)

	tr := http.Header{"Grpc-Status": {"0"}, "Grpc-Message": {""}}
	typ, p = frame(t, codec.AppendTrailers(nil, tr), 1<<20)
	require.Equal(t, codec.FrameTrailers, typ)
	gotTr, err := codec.ParseTrailers(p)
	require.NoError(t, err)
	require.Equal(t, tr, gotTr)

	e := &codec.Error{Status: 503, RetryAfter: 2, Message: "overloaded"}
	typ, p = frame(t, codec.AppendError(nil, e), 1<<20)
	require.Equal(t, codec.FrameError, typ)
	gotE, err := codec.ParseError(p)
	require.NoError(t, err)
	require.Equal(t, e, gotE)
	require.Contains(t, gotE.Error(), "503")
}

func TestControlRoundTrip(t *testing.T) {
	t.Parallel()
	hash := bytes.Repeat([]byte{0xab}, 32)
	tests := []struct {
		name  string
		typ   codec.FrameType
		b     []byte
		parse func([]byte) (any, error)
		want  any
	}{
		{"hello", codec.MsgHello, codec.AppendHello(nil, &codec.Hello{Version: 1, ClientID: "laptop", Token: "s3cret", AppliedVersion: 7, Hash: hash}),
			func(p []byte) (any, error) { return codec.ParseHello(p) },
			&codec.Hello{Version: 1, ClientID: "laptop", Token: "s3cret", AppliedVersion: 7, Hash: hash}},
		{"hello-ack", codec.MsgHelloAck, codec.AppendHelloAck(nil, &codec.HelloAck{SessionID: "s1", Resumed: true, HashCheckInterval: 15 * time.Second, FullSyncInterval: 5 * time.Minute}),
			func(p []byte) (any, error) { return codec.ParseHelloAck(p) },
			&codec.HelloAck{SessionID: "s1", Resumed: true, HashCheckInterval: 15 * time.Second, FullSyncInterval: 5 * time.Minute}},
		{"snapshot", codec.MsgSnapshot, codec.AppendSnapshot(nil, &codec.Snapshot{Version: 3, Hash: hash, Rules: []byte(`[{"id":"a"}]`)}),
			func(p []byte) (any, error) { return codec.ParseSnapshot(p) },
			&codec.Snapshot{Version: 3, Hash: hash, Rules: []byte(`[{"id":"a"}]`)}},
		{"delta", codec.MsgDelta, codec.AppendDelta(nil, &codec.Delta{From: 3, To: 5, Hash: hash, Upsert: []byte(`[]`), Delete: []string{"a", "b"}}),
			func(p []byte) (any, error) { return codec.ParseDelta(p) },
			&codec.Delta{From: 3, To: 5, Hash: hash, Upsert: []byte(`[]`), Delete: []string{"a", "b"}}},
		{"hash-check", codec.MsgHashCheck, codec.AppendHashCheck(nil, &codec.HashCheck{Version: 9, Hash: hash}),
			func(p []byte) (any, error) { return codec.ParseHashCheck(p) },
			&codec.HashCheck{Version: 9, Hash: hash}},
		{"applied", codec.MsgApplied, codec.AppendApplied(nil, &codec.Applied{Version: 9, Hash: hash, Error: "listen tcp: address in use"}),
			func(p []byte) (any, error) { return codec.ParseApplied(p) },
			&codec.Applied{Version: 9, Hash: hash, Error: "listen tcp: address in use"}},
		{"ping", codec.MsgPing, codec.AppendPing(nil, codec.Ping{Nonce: 42}, false),
			func(p []byte) (any, error) { return codec.ParsePing(p) }, codec.Ping{Nonce: 42}},
		{"pong", codec.MsgPong, codec.AppendPing(nil, codec.Ping{Nonce: 43}, true),
			func(p []byte) (any, error) { return codec.ParsePing(p) }, codec.Ping{Nonce: 43}},
		{"goaway", codec.MsgGoAway, codec.AppendGoAway(nil, &codec.GoAway{Reason: "shutdown"}),
			func(p []byte) (any, error) { return codec.ParseGoAway(p) }, &codec.GoAway{Reason: "shutdown"}},
		{"reject", codec.MsgReject, codec.AppendReject(nil, &codec.Error{Status: 401, Message: "invalid token"}),
			func(p []byte) (any, error) { return codec.ParseReject(p) }, &codec.Error{Status: 401, Message: "invalid token"}},
		{"declare", codec.MsgDeclare, codec.AppendDeclare(nil, &codec.Declare{Rules: []byte(`[{"id":"web"}]`)}),
			func(p []byte) (any, error) { return codec.ParseDeclare(p) }, &codec.Declare{Rules: []byte(`[{"id":"web"}]`)}},
		{"declared", codec.MsgDeclared, codec.AppendDeclared(nil, &codec.Declared{Results: []codec.DeclaredRule{
			{Name: "web", ID: "c1.web", URLs: []string{"http://c1.localhost:8080/", "https://c1.localhost:8443/"}},
			{Name: "db", Error: "port 5432 is not in tcp_ports"}}}),
			func(p []byte) (any, error) { return codec.ParseDeclared(p) },
			&codec.Declared{Results: []codec.DeclaredRule{
				{Name: "web", ID: "c1.web", URLs: []string{"http://c1.localhost:8080/", "https://c1.localhost:8443/"}},
				{Name: "db", Error: "port 5432 is not in tcp_ports"}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			typ, p := frame(t, tt.b, 1<<20)
			require.Equal(t, tt.typ, typ)
			got, err := tt.parse(p)
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
			// Every proper prefix of a payload is rejected, never misread.
			for i := 0; i < len(p); i++ {
				_, err := tt.parse(p[:i])
				require.ErrorIs(t, err, codec.ErrMalformed, "prefix of %d bytes", i)
			}
		})
	}
}

func TestParseRejectsBadInput(t *testing.T) {
	t.Parallel()
	good := codec.RequestHead{Kind: codec.KindHTTP, Method: "GET", Path: "/", Header: http.Header{}}
	tests := []struct {
		name   string
		mutate func(h *codec.RequestHead)
	}{
		{"kind", func(h *codec.RequestHead) { h.Kind = 9 }},
		{"empty method", func(h *codec.RequestHead) { h.Method = "" }},
		{"method with space", func(h *codec.RequestHead) { h.Method = "GET /" }},
		{"header name", func(h *codec.RequestHead) { h.Header = http.Header{"Bad Name": {"x"}} }},
		{"header value CRLF", func(h *codec.RequestHead) { h.Header = http.Header{"X": {"a\r\nInjected: 1"}} }},
		{"header value NUL", func(h *codec.RequestHead) { h.Header = http.Header{"X": {"a\x00"}} }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := good
			tt.mutate(&h)
			_, p := frame(t, codec.AppendRequest(nil, &h), 1<<20)
			var got codec.RequestHead
			require.ErrorIs(t, codec.ParseRequest(p, &got), codec.ErrMalformed)
		})
	}
	_, p := frame(t, codec.AppendRequest(nil, &good), 1<<20)
	var got codec.RequestHead
	require.ErrorIs(t, codec.ParseRequest(append(p, 0), &got), codec.ErrMalformed, "trailing bytes")
	require.ErrorIs(t, codec.ParseResponse([]byte{0x00, 0x00, 0x00}, &codec.ResponseHead{}), codec.ErrMalformed, "status 0")
	_, err := codec.ParseDelta(codec.AppendVarint(codec.AppendVarint(nil, 5), 5)[0:2])
	require.Error(t, err)
}

func TestReaderEnforcesMaxFrameSize(t *testing.T) {
	t.Parallel()
	b := codec.AppendData(nil, make([]byte, 100))
	r := codec.NewReader(bytes.NewReader(b), 99)
	_, _, err := r.Next()
	require.ErrorIs(t, err, codec.ErrTooLarge)

	_, _, _, err = codec.ParseFrameHeader(b, 99)
	require.ErrorIs(t, err, codec.ErrTooLarge)

	r = codec.NewReader(bytes.NewReader(b), 100)
	typ, _, err := r.Next()
	require.NoError(t, err)
	require.Equal(t, codec.FrameData, typ)
	require.Equal(t, 100, r.DataLeft())
}

func TestBodyStreamsFramesAndTrailers(t *testing.T) {
	t.Parallel()
	var b []byte
	b = codec.AppendData(b, []byte("hello "))
	b = codec.AppendData(b, nil) // empty DATA frames are legal and skipped
	b = codec.AppendData(b, []byte("world"))
	b = codec.AppendTrailers(b, http.Header{"Grpc-Status": {"0"}})
	b = codec.AppendEnd(b)

	r := codec.NewReader(bytes.NewReader(b), 64)
	trailer := http.Header{"Grpc-Status": nil}
	var body codec.Body
	body.Reset(r, trailer)
	got, err := io.ReadAll(&body)
	require.NoError(t, err)
	require.Equal(t, "hello world", string(got))
	require.Equal(t, "0", trailer.Get("Grpc-Status"), "trailers land in the shared map")
	require.True(t, body.Done())
	require.ErrorIs(t, body.Err(), io.EOF)
}

func TestBodyErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		input []byte
		check func(t *testing.T, err error)
	}{
		{"cut after data", codec.AppendData(nil, []byte("abc")), func(t *testing.T, err error) {
			require.ErrorIs(t, err, io.ErrUnexpectedEOF)
		}},
		{"cut inside data", codec.AppendData(nil, []byte("abc"))[:6], func(t *testing.T, err error) {
			require.ErrorIs(t, err, io.ErrUnexpectedEOF)
		}},
		{"error frame", codec.AppendError(codec.AppendData(nil, []byte("a")), &codec.Error{Status: 502, Message: "upstream reset"}), func(t *testing.T, err error) {
			var e *codec.Error
			require.True(t, errors.As(err, &e))
			require.Equal(t, 502, e.Status)
		}},
		{"head inside body", codec.AppendResponse(nil, &codec.ResponseHead{Status: 200}), func(t *testing.T, err error) {
			require.ErrorIs(t, err, codec.ErrMalformed)
		}},
		{"bytes after END", append(codec.AppendEnd(nil), 0x03, 0x00), func(t *testing.T, err error) {
			require.ErrorIs(t, err, codec.ErrMalformed)
		}},
		{"data after trailers", codec.AppendData(codec.AppendTrailers(nil, http.Header{"A": {"b"}}), nil), func(t *testing.T, err error) {
			require.ErrorIs(t, err, codec.ErrMalformed)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var body codec.Body
			body.Reset(codec.NewReader(bytes.NewReader(tt.input), 64), nil)
			_, err := io.ReadAll(&body)
			require.Error(t, err)
			tt.check(t, err)
		})
	}
}

// A DATA frame after END (or after TRAILERS) fails the body, and none of
// its bytes are returned as body bytes, not even before the error: FuzzBody
// found that Body.Read went on to read the payload of such a frame because
// it looked at the unread DATA count before its error.
func TestBodyReturnsNoDataAfterItsEnd(t *testing.T) {
	t.Parallel()
	for name, input := range map[string][]byte{
		"after END":          codec.AppendData(codec.AppendEnd(codec.AppendData(nil, []byte("body"))), []byte("smuggled")),
		"after TRAILERS":     codec.AppendData(codec.AppendTrailers(codec.AppendData(nil, []byte("body")), http.Header{"A": {"b"}}), []byte("smuggled")),
		"END with a payload": append(codec.AppendFrameHeader(codec.AppendData(nil, []byte("body")), codec.FrameEnd, 8), "smuggled"...),
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			var body codec.Body
			body.Reset(codec.NewReader(bytes.NewReader(input), 64), nil)
			got, err := io.ReadAll(&body)
			require.ErrorIs(t, err, codec.ErrMalformed)
			require.Equal(t, "body", string(got))
			n, err := body.Read(make([]byte, 16))
			require.Zero(t, n, "a failed body stays failed")
			require.ErrorIs(t, err, codec.ErrMalformed)
		})
	}
}

func TestPutDataHeaderMatchesAppendData(t *testing.T) {
	t.Parallel()
	payload := []byte(strings.Repeat("x", 1000))
	buf := make([]byte, codec.DataHeaderLen+len(payload))
	copy(buf[codec.DataHeaderLen:], payload)
	codec.PutDataHeader(buf, len(payload))
	require.Equal(t, codec.AppendData(nil, payload), buf)
}

func TestFrameTypeString(t *testing.T) {
	t.Parallel()
	require.Equal(t, "DATA", codec.FrameData.String())
	require.Equal(t, "FrameType(0xee)", codec.FrameType(0xee).String())
	require.Equal(t, "upgrade", codec.KindUpgrade.String())
}

// A PING's padding is optional: the nonce alone is a whole PING, and a
// padding field cut short is malformed.
func TestPaddedPing(t *testing.T) {
	t.Parallel()
	typ, p := frame(t, codec.AppendPing(nil, codec.Ping{Nonce: 7, Padding: 32}, false), 1<<20)
	require.Equal(t, codec.MsgPing, typ)
	got, err := codec.ParsePing(p)
	require.NoError(t, err)
	require.Equal(t, codec.Ping{Nonce: 7, Padding: 32}, got)
	got, err = codec.ParsePing(p[:1])
	require.NoError(t, err)
	require.Equal(t, codec.Ping{Nonce: 7}, got)
	for i := 2; i < len(p); i++ {
		_, err := codec.ParsePing(p[:i])
		require.ErrorIs(t, err, codec.ErrMalformed, "prefix of %d bytes", i)
	}
}
