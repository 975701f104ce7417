package codec_test

import (
	"bytes"
	"io"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/codec"
)

func payloadOf(b []byte) []byte { return b[codec.FrameHeaderLen:] }

// FuzzParseRequest checks that any payload either fails cleanly or decodes to
// a head that re-encodes to something that decodes to the same head.
func FuzzParseRequest(f *testing.F) {
	f.Add(payloadOf(codec.AppendRequest(nil, &codec.RequestHead{Kind: codec.KindHTTP, Method: "GET", Path: "/", ContentLength: -1})))
	f.Add(payloadOf(codec.AppendRequest(nil, &codec.RequestHead{
		Kind: codec.KindUpgrade, RuleID: "r", RequestID: "id", Method: "GET", Scheme: "http",
		Authority: "h", Path: "/ws", Header: http.Header{"Upgrade": {"websocket"}, "X": {"1", "2"}},
	})))
	f.Fuzz(func(t *testing.T, p []byte) {
		var h codec.RequestHead
		if codec.ParseRequest(p, &h) != nil {
			return
		}
		var again codec.RequestHead
		require.NoError(t, codec.ParseRequest(payloadOf(codec.AppendRequest(nil, &h)), &again))
		require.Equal(t, h, again)
	})
}

func FuzzParseResponse(f *testing.F) {
	f.Add(payloadOf(codec.AppendResponse(nil, &codec.ResponseHead{Status: 200, ContentLength: 3, Header: http.Header{"A": {"b"}}})))
	f.Add(payloadOf(codec.AppendTrailers(nil, http.Header{"Grpc-Status": {"0"}})))
	f.Add(payloadOf(codec.AppendError(nil, &codec.Error{Status: 502, Message: "x"})))
	f.Fuzz(func(t *testing.T, p []byte) {
		var h codec.ResponseHead
		if codec.ParseResponse(p, &h) == nil {
			var again codec.ResponseHead
			require.NoError(t, codec.ParseResponse(payloadOf(codec.AppendResponse(nil, &h)), &again))
			require.Equal(t, h, again)
		}
		if tr, err := codec.ParseTrailers(p); err == nil {
			again, err := codec.ParseTrailers(payloadOf(codec.AppendTrailers(nil, tr)))
			require.NoError(t, err)
			require.Equal(t, tr, again)
		}
		if e, err := codec.ParseError(p); err == nil {
			again, err := codec.ParseError(payloadOf(codec.AppendError(nil, e)))
			require.NoError(t, err)
			require.Equal(t, e, again)
		}
	})
}

// FuzzControl feeds one payload to every control-message parser.
func FuzzControl(f *testing.F) {
	f.Add(payloadOf(codec.AppendHello(nil, &codec.Hello{Version: 1, ClientID: "c", Token: "t", Hash: []byte{1}})))
	f.Add(payloadOf(codec.AppendHelloAck(nil, &codec.HelloAck{SessionID: "s", HashCheckInterval: 1000})))
	f.Add(payloadOf(codec.AppendSnapshot(nil, &codec.Snapshot{Version: 1, Rules: []byte("[]")})))
	f.Add(payloadOf(codec.AppendDelta(nil, &codec.Delta{From: 1, To: 2, Delete: []string{"x"}})))
	f.Add(payloadOf(codec.AppendApplied(nil, &codec.Applied{Version: 2, Error: "no"})))
	f.Fuzz(func(t *testing.T, p []byte) {
		if m, err := codec.ParseHello(p); err == nil {
			again, err := codec.ParseHello(payloadOf(codec.AppendHello(nil, m)))
			require.NoError(t, err)
			require.Equal(t, m, again)
		}
		if m, err := codec.ParseHelloAck(p); err == nil {
			again, err := codec.ParseHelloAck(payloadOf(codec.AppendHelloAck(nil, m)))
			require.NoError(t, err)
			require.Equal(t, m, again)
		}
		if m, err := codec.ParseSnapshot(p); err == nil {
			again, err := codec.ParseSnapshot(payloadOf(codec.AppendSnapshot(nil, m)))
			require.NoError(t, err)
			require.Equal(t, m, again)
		}
		if m, err := codec.ParseDelta(p); err == nil {
			again, err := codec.ParseDelta(payloadOf(codec.AppendDelta(nil, m)))
			require.NoError(t, err)
			require.Equal(t, m, again)
		}
		_, _ = codec.ParseHashCheck(p)
		_, _ = codec.ParseApplied(p)
		_, _ = codec.ParsePing(p)
		_, _ = codec.ParseGoAway(p)
	})
}

// FuzzBody reads arbitrary bytes as a framed body: it must end in io.EOF or an
// error, never panic, and never return more bytes than the input holds.
func FuzzBody(f *testing.F) {
	var b []byte
	b = codec.AppendData(b, []byte("hello"))
	b = codec.AppendTrailers(b, http.Header{"X": {"y"}})
	f.Add(codec.AppendEnd(b))
	f.Add(codec.AppendError(codec.AppendData(nil, []byte("a")), &codec.Error{Status: 500}))
	f.Fuzz(func(t *testing.T, in []byte) {
		var body codec.Body
		body.Reset(codec.NewReader(bytes.NewReader(in), 1024), nil)
		got, err := io.ReadAll(&body)
		require.LessOrEqual(t, len(got), len(in))
		if err == nil {
			require.ErrorIs(t, body.Err(), io.EOF)
		}
	})
}
