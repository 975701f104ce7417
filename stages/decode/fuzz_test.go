package decode_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/textproto"
	"net/url"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/codec"
	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/stages/decode"
)

// readStream is a tunnel stream whose peer sent in and finished; writes go
// nowhere.
type readStream struct{ r io.Reader }

func (s *readStream) Read(p []byte) (int, error)  { return s.r.Read(p) }
func (s *readStream) Write(p []byte) (int, error) { return len(p), nil }
func (s *readStream) Close() error                { return nil }
func (s *readStream) CancelRead(uint64)           {}
func (s *readStream) Abort(uint64)                {}

const fuzzMaxFrame = 1024

// FuzzEgressDecode feeds arbitrary bytes, as a tunnel peer could send them
// on a request stream, to the decode stage of the egress side. A stream
// that does not open with a well-formed REQUEST, or whose request target is
// not one, is refused with 400 before the next stage runs; otherwise the
// next stage gets the head the stream carried (TCP: no request; upgrade: no
// body) and a body that reads as exactly the DATA payloads that follow the
// head. testdata/fuzz/FuzzEgressDecode holds more seeds.
func FuzzEgressDecode(f *testing.F) {
	head := codec.RequestHead{
		Kind: codec.KindHTTP, RuleID: "site", RequestID: "rid-1", Method: http.MethodPost, Scheme: "https",
		Authority: "app.example.test", Path: "/up/load?x=1&y=%2F", ContentLength: 11,
		Header: http.Header{"Trailer": {"X-Checksum, x-other"}, "Content-Type": {"text/plain"}},
	}
	var b []byte
	b = codec.AppendRequest(b, &head)
	b = codec.AppendData(b, []byte("hello "))
	b = codec.AppendData(b, []byte("world"))
	b = codec.AppendTrailers(b, http.Header{"X-Checksum": {"abc"}})
	f.Add(codec.AppendEnd(b))
	f.Add(codec.AppendEnd(codec.AppendRequest(nil, &codec.RequestHead{Kind: codec.KindHTTP, Method: "GET", Path: "/", ContentLength: 0})))
	f.Add(codec.AppendRequest(nil, &codec.RequestHead{Kind: codec.KindUpgrade, Method: "GET", Path: "/ws", Header: http.Header{"Upgrade": {"websocket"}}}))
	f.Add(append(codec.AppendRequest(nil, &codec.RequestHead{Kind: codec.KindTCP, RuleID: "db", ContentLength: -1}), "raw"...))
	f.Add(codec.AppendEnd(codec.AppendRequest(nil, &codec.RequestHead{Kind: codec.KindHTTP, Method: "GET", Path: "*", ContentLength: -1,
		Header: http.Header{"Content-Type": {"application/grpc"}}})))
	d, err := decode.New(decode.Config{MaxFrameSize: fuzzMaxFrame})
	require.NoError(f, err)
	f.Fuzz(func(t *testing.T, in []byte) {
		x := pipeline.Acquire(pipeline.Egress)
		defer x.Release()
		x.Stream = &readStream{r: bytes.NewReader(in)}
		var req *http.Request
		var body []byte
		var bodyErr error
		called := false
		err := d.Handle(context.Background(), x, pipeline.HandlerFunc(func(_ context.Context, x *pipeline.Exchange) error {
			called = true
			req = x.Request
			if req != nil {
				body, bodyErr = io.ReadAll(req.Body)
			}
			return nil
		}))

		r := codec.NewReader(bytes.NewReader(in), fuzzMaxFrame)
		typ, p, rerr := r.Next()
		if rerr != nil {
			require.False(t, called)
			require.ErrorContains(t, err, "decode: read request head")
			return
		}
		var want codec.RequestHead
		if typ != codec.FrameRequest || codec.ParseRequest(p, &want) != nil {
			require.False(t, called)
			requireReject400(t, err)
			return
		}
		if want.Kind == codec.KindTCP {
			require.True(t, called)
			require.NoError(t, err)
			require.Nil(t, req, "a TCP stream has no HTTP request")
			require.Equal(t, pipeline.ProtoTCP, x.Protocol)
			return
		}
		if _, perr := url.ParseRequestURI(want.Path); perr != nil {
			require.False(t, called)
			requireReject400(t, err)
			return
		}
		if !called {
			// Only a bodiless HTTP request whose stream holds more than
			// its END is refused this late.
			require.Equal(t, codec.KindHTTP, want.Kind)
			require.Zero(t, want.ContentLength)
			requireReject400(t, err)
			return
		}
		require.NoError(t, err)
		require.NotNil(t, req)
		require.NotEmpty(t, x.ID, "every request has an id")
		require.Equal(t, want.Method, req.Method)
		require.Equal(t, want.Authority, req.Host)
		require.NotContains(t, req.Header, "Trailer", "declared trailers move to Request.Trailer")
		for k := range req.Trailer {
			require.Equal(t, textproto.CanonicalMIMEHeaderKey(k), k)
		}
		if want.Kind == codec.KindUpgrade || want.ContentLength == 0 {
			require.Equal(t, http.NoBody, req.Body)
			return
		}
		var data []byte
		for {
			typ, _, err := r.Next()
			if err != nil || typ != codec.FrameData {
				break
			}
			chunk := make([]byte, r.DataLeft())
			n, _ := io.ReadFull(readerOf(r.ReadData), chunk)
			data = append(data, chunk[:n]...)
		}
		require.Equal(t, string(data), string(body), "the body is the DATA that follows the head")
		if bodyErr != nil {
			var peer *codec.Error
			ok := errors.As(bodyErr, &peer) || errors.Is(bodyErr, codec.ErrMalformed) ||
				errors.Is(bodyErr, codec.ErrTooLarge) || errors.Is(bodyErr, io.ErrUnexpectedEOF)
			require.True(t, ok, "body error of an unexpected kind: %v", bodyErr)
		}
	})
}

func requireReject400(t *testing.T, err error) {
	t.Helper()
	var rj *pipeline.Reject
	require.ErrorAs(t, err, &rj)
	require.Equal(t, http.StatusBadRequest, rj.Status)
}

type readerOf func([]byte) (int, error)

func (f readerOf) Read(p []byte) (int, error) { return f(p) }
