package codec_test

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/textproto"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/codec"
)

// The fuzz targets of this package. Each is seeded here with valid frames
// and messages; testdata/fuzz/<name>/ holds more seeds, found inputs and
// regressions. Plain 'go test' runs all of them; 'make fuzz' mutates them.

func payloadOf(b []byte) []byte { return b[codec.FrameHeaderLen:] }

// requireCleanHeader checks what PROTOCOL.md promises of every parsed field
// list: canonical token names and values without CR, LF or NUL, so that
// nothing can smuggle a header across the tunnel.
func requireCleanHeader(t *testing.T, h http.Header) {
	t.Helper()
	for k, vs := range h {
		require.True(t, isToken(k), "field name %q is not a token", k)
		require.Equal(t, textproto.CanonicalMIMEHeaderKey(k), k, "field name not canonical")
		require.NotEmpty(t, vs, "field %q without values", k)
		for _, v := range vs {
			require.False(t, strings.ContainsAny(v, "\r\n\x00"), "field %q value %q", k, v)
		}
	}
}

// isToken is RFC 9110's token, written out again here so that the test
// does not share the parser's table.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range []byte(s) {
		ok := c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' ||
			strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
		if !ok {
			return false
		}
	}
	return true
}

// FuzzParseRequest checks that any payload either fails with ErrMalformed
// or decodes to a clean head that re-encodes to something that decodes to
// the same head.
func FuzzParseRequest(f *testing.F) {
	f.Add(payloadOf(codec.AppendRequest(nil, &codec.RequestHead{Kind: codec.KindHTTP, Method: "GET", Path: "/", ContentLength: -1})))
	f.Add(payloadOf(codec.AppendRequest(nil, &codec.RequestHead{
		Kind: codec.KindUpgrade, RuleID: "r", RequestID: "id", Method: "GET", Scheme: "http",
		Authority: "h", Path: "/ws", Header: http.Header{"Upgrade": {"websocket"}, "X": {"1", "2"}},
	})))
	f.Add(payloadOf(codec.AppendRequest(nil, &codec.RequestHead{Kind: codec.KindTCP, RuleID: "db", ContentLength: -1})))
	f.Add(payloadOf(codec.AppendRequest(nil, &codec.RequestHead{
		Kind: codec.KindHTTP, RuleID: "web", RequestID: "0123456789abcdef",
		TraceParent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", TraceState: "k=v",
		Method: "POST", Scheme: "https", Authority: "app.example.test:8443", Path: "/a?b=1",
		ContentLength: 1 << 40, Header: http.Header{"Content-Type": {"application/grpc"}, "Te": {"trailers"}},
	})))
	f.Fuzz(func(t *testing.T, p []byte) {
		var h codec.RequestHead
		if err := codec.ParseRequest(p, &h); err != nil {
			require.ErrorIs(t, err, codec.ErrMalformed)
			return
		}
		require.True(t, h.Kind >= codec.KindHTTP && h.Kind <= codec.KindTCP, "kind %d", h.Kind)
		require.GreaterOrEqual(t, h.ContentLength, int64(-1))
		if h.Kind != codec.KindTCP {
			require.True(t, isToken(h.Method), "method %q", h.Method)
		}
		requireCleanHeader(t, h.Header)
		var again codec.RequestHead
		require.NoError(t, codec.ParseRequest(payloadOf(codec.AppendRequest(nil, &h)), &again))
		require.Equal(t, h, again)
	})
}

// FuzzParseResponse feeds one payload to the RESPONSE, TRAILERS and ERROR
// parsers: each fails with ErrMalformed or round-trips.
func FuzzParseResponse(f *testing.F) {
	f.Add(payloadOf(codec.AppendResponse(nil, &codec.ResponseHead{Status: 200, ContentLength: 3, Header: http.Header{"A": {"b"}}})))
	f.Add(payloadOf(codec.AppendResponse(nil, &codec.ResponseHead{Status: 101, ContentLength: -1, Header: http.Header{"Upgrade": {"websocket"}}})))
	f.Add(payloadOf(codec.AppendTrailers(nil, http.Header{"Grpc-Status": {"0"}})))
	f.Add(payloadOf(codec.AppendError(nil, &codec.Error{Status: 502, Message: "x"})))
	f.Add(payloadOf(codec.AppendError(nil, &codec.Error{Status: 503, RetryAfter: 1<<32 - 1, Message: "busy"})))
	f.Fuzz(func(t *testing.T, p []byte) {
		var h codec.ResponseHead
		if err := codec.ParseResponse(p, &h); err == nil {
			require.True(t, h.Status >= 100 && h.Status <= 999, "status %d", h.Status)
			require.GreaterOrEqual(t, h.ContentLength, int64(-1))
			requireCleanHeader(t, h.Header)
			var again codec.ResponseHead
			require.NoError(t, codec.ParseResponse(payloadOf(codec.AppendResponse(nil, &h)), &again))
			require.Equal(t, h, again)
		} else {
			require.ErrorIs(t, err, codec.ErrMalformed)
		}
		if tr, err := codec.ParseTrailers(p); err == nil {
			requireCleanHeader(t, tr)
			again, err := codec.ParseTrailers(payloadOf(codec.AppendTrailers(nil, tr)))
			require.NoError(t, err)
			require.Equal(t, tr, again)
		} else {
			require.ErrorIs(t, err, codec.ErrMalformed)
		}
		if e, err := codec.ParseError(p); err == nil {
			require.True(t, e.Status >= 100 && e.Status <= 999, "status %d", e.Status)
			again, err := codec.ParseError(payloadOf(codec.AppendError(nil, e)))
			require.NoError(t, err)
			require.Equal(t, e, again)
		} else {
			require.ErrorIs(t, err, codec.ErrMalformed)
		}
	})
}

// roundTrip checks one control-message parser on p: it fails with
// ErrMalformed, or its result re-encodes (as a frame of type typ whose
// length covers the payload) to a payload that parses to the same value.
func roundTrip[M any](t *testing.T, p []byte, typ codec.FrameType, parse func([]byte) (M, error), encode func([]byte, M) []byte) {
	t.Helper()
	m, err := parse(p)
	if err != nil {
		require.ErrorIs(t, err, codec.ErrMalformed)
		return
	}
	b := encode(nil, m)
	gotType, l, n, err := codec.ParseFrameHeader(b, codec.MaxPayload)
	require.NoError(t, err)
	require.Equal(t, typ, gotType)
	require.Equal(t, len(b), n+l, "the frame's length covers its payload")
	again, err := parse(b[n:])
	require.NoError(t, err)
	require.Equal(t, m, again)
}

// FuzzControl feeds one payload to every control-message parser of
// control.go: each fails with ErrMalformed or round-trips.
func FuzzControl(f *testing.F) {
	hash := bytes.Repeat([]byte{0xab}, 32)
	f.Add(payloadOf(codec.AppendHello(nil, &codec.Hello{Version: 1, ClientID: "c", Token: "t", Hash: []byte{1}})))
	f.Add(payloadOf(codec.AppendHelloAck(nil, &codec.HelloAck{SessionID: "s", Resumed: true, HashCheckInterval: 15 * time.Second, FullSyncInterval: 5 * time.Minute})))
	f.Add(payloadOf(codec.AppendSnapshot(nil, &codec.Snapshot{Version: 1, Hash: hash, Rules: []byte("[]")})))
	f.Add(payloadOf(codec.AppendDelta(nil, &codec.Delta{From: 1, To: 2, Hash: hash, Upsert: []byte("[]"), Delete: []string{"x", "y"}})))
	f.Add(payloadOf(codec.AppendHashCheck(nil, &codec.HashCheck{Version: 9, Hash: hash})))
	f.Add(payloadOf(codec.AppendApplied(nil, &codec.Applied{Version: 2, Hash: hash, Error: "no"})))
	f.Add(payloadOf(codec.AppendPing(nil, codec.Ping{Nonce: 7, Padding: 32}, false)))
	f.Add(payloadOf(codec.AppendGoAway(nil, &codec.GoAway{Reason: "shutdown"})))
	f.Add(payloadOf(codec.AppendReject(nil, &codec.Error{Status: 401, Message: "unknown client id or invalid token"})))
	f.Fuzz(func(t *testing.T, p []byte) {
		roundTrip(t, p, codec.MsgHello, codec.ParseHello, codec.AppendHello)
		roundTrip(t, p, codec.MsgHelloAck, codec.ParseHelloAck, codec.AppendHelloAck)
		roundTrip(t, p, codec.MsgSnapshot, codec.ParseSnapshot, codec.AppendSnapshot)
		roundTrip(t, p, codec.MsgDelta, codec.ParseDelta, codec.AppendDelta)
		roundTrip(t, p, codec.MsgHashCheck, codec.ParseHashCheck, codec.AppendHashCheck)
		roundTrip(t, p, codec.MsgApplied, codec.ParseApplied, codec.AppendApplied)
		roundTrip(t, p, codec.MsgPing, codec.ParsePing, func(b []byte, m codec.Ping) []byte { return codec.AppendPing(b, m, false) })
		roundTrip(t, p, codec.MsgPong, codec.ParsePing, func(b []byte, m codec.Ping) []byte { return codec.AppendPing(b, m, true) })
		roundTrip(t, p, codec.MsgGoAway, codec.ParseGoAway, codec.AppendGoAway)
		roundTrip(t, p, codec.MsgReject, codec.ParseReject, codec.AppendReject)
		roundTrip(t, p, codec.MsgDeclare, codec.ParseDeclare, codec.AppendDeclare)
		roundTrip(t, p, codec.MsgDeclared, codec.ParseDeclared, codec.AppendDeclared)

		if m, err := codec.ParseDelta(p); err == nil {
			require.Greater(t, m.To, m.From, "a delta moves forward")
		}
		if m, err := codec.ParseHelloAck(p); err == nil {
			require.GreaterOrEqual(t, m.HashCheckInterval, time.Duration(0))
			require.GreaterOrEqual(t, m.FullSyncInterval, time.Duration(0))
		}
		if m, err := codec.ParsePing(p); err == nil {
			require.LessOrEqual(t, m.Padding, len(p), "padding is bytes the payload holds")
		}
	})
}

// FuzzBody reads arbitrary bytes, delivered in reads of fuzzed sizes, as a
// framed body. It must return exactly the DATA payloads that precede the
// first other frame, end in io.EOF only after a well-formed end (optional
// TRAILERS, END, end of stream), and otherwise fail with an error of a
// documented kind.
func FuzzBody(f *testing.F) {
	var b []byte
	b = codec.AppendData(b, []byte("hello"))
	b = codec.AppendTrailers(b, http.Header{"X": {"y"}})
	f.Add(codec.AppendEnd(b), []byte{1, 2, 3}, uint16(1024))
	f.Add(codec.AppendError(codec.AppendData(nil, []byte("a")), &codec.Error{Status: 500}), []byte{0}, uint16(64))
	f.Add(codec.AppendEnd(codec.AppendData(codec.AppendData(nil, []byte("ab")), nil)), []byte{}, uint16(2))
	f.Add(codec.AppendData(nil, []byte("cut short")), []byte{4}, uint16(64))
	f.Fuzz(func(t *testing.T, in, chunks []byte, max uint16) {
		var body codec.Body
		body.Reset(codec.NewReader(&chunkReader{data: in, sizes: chunks}, int(max)), nil)
		got, err := io.ReadAll(&body)
		require.True(t, body.Done(), "a body read to its end is done")
		if err == nil {
			require.ErrorIs(t, body.Err(), io.EOF)
		} else {
			require.Equal(t, err, body.Err())
		}

		frames, tail := parseAll(in, int(max))
		var data []byte
		i := 0
		for ; i < len(frames) && frames[i].typ == codec.FrameData; i++ {
			data = append(data, frames[i].payload...)
		}
		require.Equal(t, string(data), string(got), "the body is the leading DATA payloads")
		if err == nil {
			// A clean end: [TRAILERS] END, then nothing.
			rest := frames[i:]
			if len(rest) > 0 && rest[0].typ == codec.FrameTrailers {
				tr, perr := codec.ParseTrailers(rest[0].payload)
				require.NoError(t, perr)
				require.Equal(t, tr, body.Trailer)
				rest = rest[1:]
			}
			require.Len(t, rest, 1)
			require.Equal(t, codec.FrameEnd, rest[0].typ)
			require.Empty(t, rest[0].payload, "END is empty")
			require.ErrorIs(t, tail, io.EOF, "nothing after END")
			return
		}
		var peer *codec.Error
		switch {
		case errors.As(err, &peer):
			require.Equal(t, codec.FrameError, frames[i].typ)
		case errors.Is(err, codec.ErrMalformed), errors.Is(err, codec.ErrTooLarge), errors.Is(err, io.ErrUnexpectedEOF):
		default:
			t.Fatalf("body error of an undocumented kind: %v", err)
		}
	})
}
