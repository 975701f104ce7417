package decode_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/codec"
	"github.com/qtunnel/qtunnel/internal/httpx"
	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/pipeline/pipelinetest"
	"github.com/qtunnel/qtunnel/stages/decode"
)

func TestMain(m *testing.M) { pipelinetest.VerifyNoLeaks(m) }

var idShape = regexp.MustCompile(`^[0-9a-f]{16}$`)

func newDecoder(t *testing.T, cfg decode.Config) *decode.Decoder {
	t.Helper()
	d, err := decode.New(cfg)
	require.NoError(t, err)
	return d
}

// capture is a next handler that records whether it ran and what it saw.
type capture struct {
	called bool
	fn     func(ctx context.Context, x *pipeline.Exchange) error
}

func (c *capture) Handle(ctx context.Context, x *pipeline.Exchange) error {
	c.called = true
	if c.fn != nil {
		return c.fn(ctx, x)
	}
	return nil
}

func requireReject(t *testing.T, err error, status int) *pipeline.Reject {
	t.Helper()
	var rj *pipeline.Reject
	require.ErrorAs(t, err, &rj)
	require.Equal(t, status, rj.Status, "reject: %v", rj)
	return rj
}

func TestNew(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		cfg     decode.Config
		wantErr bool
	}{
		{"zero is default", decode.Config{}, false},
		{"explicit", decode.Config{MaxFrameSize: 16 << 10}, false},
		{"largest", decode.Config{MaxFrameSize: codec.MaxPayload}, false},
		{"negative", decode.Config{MaxFrameSize: -1}, true},
		{"too large", decode.Config{MaxFrameSize: codec.MaxPayload + 1}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			d, err := decode.New(tt.cfg)
			if tt.wantErr {
				require.Error(t, err)
				require.Nil(t, d)
				return
			}
			require.NoError(t, err)
			require.Equal(t, "decode", d.Name())
		})
	}
}

// ---- ingress side ----

func runIngress(t *testing.T, r *http.Request) (*pipeline.Exchange, *capture, error) {
	t.Helper()
	return runIngressWith(t, decode.Config{}, r)
}

// trustLoopback trusts the peer httptest.NewRequest gives (192.0.2.1) and
// 10.0.0.0/8 as proxies.
var trustProxies = decode.Config{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("192.0.2.1/32"), netip.MustParsePrefix("10.0.0.0/8")}}

func runIngressWith(t *testing.T, cfg decode.Config, r *http.Request) (*pipeline.Exchange, *capture, error) {
	t.Helper()
	d := newDecoder(t, cfg)
	x := pipeline.Acquire(pipeline.Ingress)
	t.Cleanup(x.Release)
	x.Request = r
	next := &capture{}
	err := d.Handle(context.Background(), x, next)
	return x, next, err
}

func TestIngressRequestID(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		header   []string // X-Request-Id values sent; nil for none
		wantKept string   // "" when a new id must be assigned
	}{
		{"valid id from a trusted proxy kept", []string{"client-req.42:a_b"}, "client-req.42:a_b"},
		{"invalid id replaced", []string{"bad id with spaces"}, ""},
		{"too long id replaced", []string{strings.Repeat("a", 129)}, ""},
		{"missing id assigned", nil, ""},
		{"empty id replaced", []string{""}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := httptest.NewRequest(http.MethodGet, "/", nil)
			for _, v := range tt.header {
				r.Header.Add(httpx.RequestIDHeader, v)
			}
			x, next, err := runIngressWith(t, trustProxies, r)
			require.NoError(t, err)
			require.True(t, next.called)
			if tt.wantKept != "" {
				require.Equal(t, tt.wantKept, x.ID)
			} else {
				require.Regexp(t, idShape, x.ID)
			}
			require.Equal(t, x.ID, x.Head.RequestID)
			require.Equal(t, []string{x.ID}, x.Head.Header.Values(httpx.RequestIDHeader),
				"the id that crosses the tunnel is the one the exchange uses, and only it")
		})
	}
}

// TestIngressDuplicateRequestIDs sends two X-Request-Id fields: the exchange
// keeps the first, and the upstream must see that one only, not also an id
// that appears in no log of the gateway.
func TestIngressDuplicateRequestIDs(t *testing.T) {
	t.Parallel()
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	r.Header.Add(httpx.RequestIDHeader, "first-id")
	r.Header.Add(httpx.RequestIDHeader, "second-id")
	x, _, err := runIngressWith(t, trustProxies, r)
	require.NoError(t, err)
	require.Equal(t, "first-id", x.ID)
	require.Equal(t, []string{"first-id"}, x.Head.Header.Values(httpx.RequestIDHeader))
}

func TestIngressHopByHopRemoved(t *testing.T) {
	t.Parallel()
	r := httptest.NewRequest(http.MethodPost, "/upload", strings.NewReader("hello"))
	r.Header.Set("Connection", "keep-alive, X-Hop")
	r.Header.Set("X-Hop", "1")
	r.Header.Set("Keep-Alive", "timeout=5")
	r.Header.Set("Proxy-Authorization", "Basic Zm9vOmJhcg==")
	r.Header.Set("Transfer-Encoding", "chunked")
	r.Header.Set("Te", "trailers")
	r.Header.Set("Content-Length", "5")
	r.Header.Set("X-End", "kept")
	x, _, err := runIngress(t, r)
	require.NoError(t, err)
	h := x.Head.Header
	for _, k := range []string{"Connection", "X-Hop", "Keep-Alive", "Proxy-Authorization", "Transfer-Encoding", "Content-Length"} {
		require.NotContains(t, h, k)
	}
	require.Equal(t, "kept", h.Get("X-End"))
	require.Equal(t, "trailers", h.Get("Te"))
}

// TestIngressForwardedHeaders: from a trusted proxy X-Forwarded-For is
// appended to and X-Forwarded-Proto and -Host are kept; from anyone else
// all three are replaced, whatever the user sent.
func TestIngressForwardedHeaders(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		target     string
		remote     string
		prior      []string
		trusted    bool
		wantFor    string
		wantProto  string
		wantHost   string
		wantSource string
	}{
		{"no prior", "http://app.example.test/", "192.0.2.1:1234", nil, true, "192.0.2.1", "spoofed", "spoofed.test", "192.0.2.1"},
		{"trusted: appended to one prior", "http://app.example.test/", "192.0.2.1:1234", []string{"203.0.113.7"}, true,
			"203.0.113.7, 192.0.2.1", "spoofed", "spoofed.test", "203.0.113.7"},
		{"trusted: appended to several priors, source skips trusted hops", "http://app.example.test/", "192.0.2.1:1234",
			[]string{"203.0.113.7", "198.51.100.2, 10.1.2.3"}, true,
			"203.0.113.7, 198.51.100.2, 10.1.2.3, 192.0.2.1", "spoofed", "spoofed.test", "198.51.100.2"},
		{"untrusted: prior replaced", "http://app.example.test/", "192.0.2.99:1234", []string{"203.0.113.7"}, false,
			"192.0.2.99", "http", "app.example.test", "192.0.2.99"},
		{"untrusted IPv6 client", "http://app.example.test/", "[::1]:5555", []string{"1.2.3.4"}, false, "::1", "http", "app.example.test", "::1"},
		{"untrusted TLS listener", "https://app.example.test/", "192.0.2.99:1234", nil, false, "192.0.2.99", "https", "app.example.test", "192.0.2.99"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := httptest.NewRequest(http.MethodGet, tt.target, nil)
			r.RemoteAddr = tt.remote
			for _, v := range tt.prior {
				r.Header.Add("X-Forwarded-For", v)
			}
			r.Header.Set("X-Forwarded-Proto", "spoofed")
			r.Header.Set("X-Forwarded-Host", "spoofed.test")
			x, _, err := runIngressWith(t, trustProxies, r)
			require.NoError(t, err)
			h := x.Head.Header
			require.Equal(t, []string{tt.wantFor}, h.Values("X-Forwarded-For"))
			require.Equal(t, []string{tt.wantProto}, h.Values("X-Forwarded-Proto"))
			require.Equal(t, []string{tt.wantHost}, h.Values("X-Forwarded-Host"))
			require.Equal(t, tt.wantSource, x.Source.String())
		})
	}
}

// TestIngressUntrustedRequestIDReplaced: an id from a user who is not a
// trusted proxy is never kept, and a Connection header cannot remove the
// gateway's own fields.
func TestIngressUntrustedRequestIDReplaced(t *testing.T) {
	t.Parallel()
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	r.Header.Set(httpx.RequestIDHeader, "chosen-by-the-user")
	r.Header.Set("Connection", "X-Request-Id, X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host")
	x, _, err := runIngress(t, r)
	require.NoError(t, err)
	require.Regexp(t, idShape, x.ID)
	h := x.Head.Header
	require.Equal(t, []string{x.ID}, h.Values(httpx.RequestIDHeader))
	require.Equal(t, []string{"192.0.2.1"}, h.Values("X-Forwarded-For"))
	require.Equal(t, []string{"http"}, h.Values("X-Forwarded-Proto"))
	require.Equal(t, []string{"example.com"}, h.Values("X-Forwarded-Host"))
}

// TestIngressHostChecked: a Host that is not a host[:port] is refused with
// 400 before routing; so is a name outside ASCII, which HTTP/1.1 refuses
// and an HTTP/2 :authority must not get past either.
func TestIngressHostChecked(t *testing.T) {
	t.Parallel()
	for _, host := range []string{"app.example:abc", "app.example:99999", "app.example:1:2", "ａｐｐ.example", "app example", "[::1", "[zz]:80", ":80"} {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.Host = host
		_, next, err := runIngress(t, r)
		var rej *pipeline.Reject
		require.ErrorAs(t, err, &rej, "host %q", host)
		require.Equal(t, http.StatusBadRequest, rej.Status, "host %q", host)
		require.False(t, next.called)
	}
	for _, host := range []string{"app.example", "App.Example:8080", "127.0.0.1:80", "[::1]:443", "[::1]", "xn--caf-dma.example", ""} {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.Host = host
		_, next, err := runIngress(t, r)
		require.NoError(t, err, "host %q", host)
		require.True(t, next.called)
	}
}

// TestIngressSNIHostMismatch: over TLS, a Host other than the name of the
// handshake gets 421 unless allowed.
func TestIngressSNIHostMismatch(t *testing.T) {
	t.Parallel()
	req := func(sni, host string) *http.Request {
		r := httptest.NewRequest(http.MethodGet, "https://"+host+"/", nil)
		r.TLS = &tls.ConnectionState{ServerName: sni}
		return r
	}
	_, _, err := runIngress(t, req("a.example", "b.example"))
	var rej *pipeline.Reject
	require.ErrorAs(t, err, &rej)
	require.Equal(t, http.StatusMisdirectedRequest, rej.Status)
	for _, host := range []string{"a.example", "A.Example:8443", "a.example."} {
		_, next, err := runIngress(t, req("a.example", host))
		require.NoError(t, err, host)
		require.True(t, next.called)
	}
	_, next, err := runIngress(t, req("", "b.example"))
	require.NoError(t, err, "no SNI (an IP address): nothing to compare")
	require.True(t, next.called)
	_, next, err = runIngressWith(t, decode.Config{AllowSNIMismatch: true}, req("a.example", "b.example"))
	require.NoError(t, err)
	require.True(t, next.called)
}

// TestIngressPathNormalised: dot segments and escaped dots are resolved
// before routing, and the upstream gets the path that was routed.
func TestIngressPathNormalised(t *testing.T) {
	t.Parallel()
	tests := []struct{ target, wantPath, wantURLPath string }{
		{"/api/../secret", "/secret", "/secret"},
		{"/api/%2e%2e/secret?x=1", "/secret?x=1", "/secret"},
		{"/api/./v1/%7Euser", "/api/v1/~user", "/api/v1/~user"},
		{"/api%2F..%2Fsecret", "/api%2F..%2Fsecret", "/api/../secret"},
		{"/plain?q=a%2Fb", "/plain?q=a%2Fb", "/plain"},
	}
	for _, tt := range tests {
		r := httptest.NewRequest(http.MethodGet, tt.target, nil)
		x, _, err := runIngress(t, r)
		require.NoError(t, err, tt.target)
		require.Equal(t, tt.wantPath, x.Head.Path, tt.target)
		require.Equal(t, tt.wantURLPath, r.URL.Path, tt.target)
	}
}

func TestIngressHead(t *testing.T) {
	t.Parallel()
	r := httptest.NewRequest(http.MethodPut, "/p/a?q=1&x=y", strings.NewReader("hello"))
	r.Host = "App.Example.Test:8443"
	r.Header.Set("Content-Length", "5")
	r.Header.Set("Traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	r.Header.Set("Tracestate", "vendor=1")
	r.Header.Set("X-App", "v")
	x, next, err := runIngress(t, r)
	require.NoError(t, err)
	require.True(t, next.called)
	require.Equal(t, pipeline.ProtoHTTP1, x.Protocol)
	h := x.Head
	require.Equal(t, codec.KindHTTP, h.Kind)
	require.Equal(t, http.MethodPut, h.Method)
	require.Equal(t, "App.Example.Test:8443", h.Authority)
	require.Equal(t, "/p/a?q=1&x=y", h.Path)
	require.EqualValues(t, 5, h.ContentLength)
	require.Equal(t, "http", h.Scheme)
	require.Equal(t, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", h.TraceParent)
	require.Equal(t, "vendor=1", h.TraceState)
	require.Empty(t, h.RuleID, "route sets the rule, not decode")
	require.NotContains(t, h.Header, "Content-Length", "the length travels in the head")
	require.Equal(t, "v", h.Header.Get("X-App"))

	// The head must survive the wire: what decode builds is what the codec
	// can carry.
	b := codec.AppendRequest(nil, &h)
	var back codec.RequestHead
	require.NoError(t, codec.ParseRequest(b[codec.FrameHeaderLen:], &back))
	require.Equal(t, h.Path, back.Path)
	require.Equal(t, h.Header, back.Header)
}

func TestIngressContentLength(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		req  func() *http.Request
		want int64
	}{
		{"no body", func() *http.Request { return httptest.NewRequest(http.MethodGet, "/", nil) }, 0},
		{"known length", func() *http.Request {
			return httptest.NewRequest(http.MethodPost, "/", strings.NewReader("0123456789"))
		}, 10},
		{"unknown length (chunked)", func() *http.Request {
			r := httptest.NewRequest(http.MethodPost, "/", io.MultiReader(strings.NewReader("x")))
			r.ContentLength = -1
			return r
		}, -1},
		{"NoBody with a stale length", func() *http.Request {
			r := httptest.NewRequest(http.MethodPost, "/", nil)
			r.Body, r.ContentLength = http.NoBody, 7
			return r
		}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			x, _, err := runIngress(t, tt.req())
			require.NoError(t, err)
			require.Equal(t, tt.want, x.Head.ContentLength)
		})
	}
}

func TestIngressWebSocketUpgrade(t *testing.T) {
	t.Parallel()
	r := httptest.NewRequest(http.MethodGet, "/ws", nil)
	r.Header.Set("Connection", "Upgrade")
	r.Header.Set("Upgrade", "WebSocket")
	r.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	r.Header.Set("Sec-WebSocket-Protocol", "chat")
	x, next, err := runIngress(t, r)
	require.NoError(t, err)
	require.True(t, next.called)
	require.Equal(t, pipeline.ProtoWebSocket, x.Protocol)
	require.Equal(t, codec.KindUpgrade, x.Head.Kind, "an upgrade crosses as an upgrade stream")
	require.Equal(t, []string{"WebSocket"}, x.Head.Header["Upgrade"], "the protocol asked for crosses in the head")
	require.NotContains(t, x.Head.Header, "Connection")
	require.Equal(t, "chat", x.Head.Header.Get("Sec-WebSocket-Protocol"), "end-to-end fields cross unchanged")
}

func TestEgressTCPKindHasNoRequest(t *testing.T) {
	t.Parallel()
	d := newDecoder(t, decode.Config{})
	s := pipelinetest.NewStream()
	t.Cleanup(s.Shutdown)
	go func() {
		_, _ = s.PeerWrite(codec.AppendRequest(nil, &codec.RequestHead{Kind: codec.KindTCP, RuleID: "db", RequestID: "r1"}))
	}()
	x := pipeline.Acquire(pipeline.Egress)
	defer x.Release()
	x.Stream = s
	called := false
	err := d.Handle(context.Background(), x, pipeline.HandlerFunc(func(_ context.Context, x *pipeline.Exchange) error {
		called = true
		require.Nil(t, x.Request, "raw bytes follow; there is no HTTP request")
		require.Equal(t, pipeline.ProtoTCP, x.Protocol)
		require.Equal(t, "db", x.Head.RuleID)
		return nil
	}))
	require.NoError(t, err)
	require.True(t, called)
}

func TestIngressProtocolDetection(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		major       int
		contentType string
		upgrade     string
		want        pipeline.Protocol
	}{
		{"HTTP/1.1", 1, "text/plain", "", pipeline.ProtoHTTP1},
		{"HTTP/2", 2, "application/json", "", pipeline.ProtoHTTP2},
		{"gRPC", 2, "application/grpc", "", pipeline.ProtoGRPC},
		{"gRPC with subtype", 2, "application/grpc+proto", "", pipeline.ProtoGRPC},
		{"gRPC content type over HTTP/1.1 is not gRPC", 1, "application/grpc", "", pipeline.ProtoHTTP1},
		{"Upgrade header over HTTP/2 is ignored", 2, "", "websocket", pipeline.ProtoHTTP2},
		{"h2c upgrade is not a WebSocket", 1, "", "h2c", pipeline.ProtoHTTP1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := httptest.NewRequest(http.MethodPost, "/svc.Greeter/SayHello", nil)
			r.ProtoMajor, r.ProtoMinor = tt.major, 0
			r.Proto = fmt.Sprintf("HTTP/%d.0", tt.major)
			if tt.contentType != "" {
				r.Header.Set("Content-Type", tt.contentType)
			}
			if tt.upgrade != "" {
				r.Header.Set("Upgrade", tt.upgrade)
			}
			x, _, err := runIngress(t, r)
			require.NoError(t, err)
			require.Equal(t, tt.want, x.Protocol)
		})
	}
}

func TestIngressWithoutRequest(t *testing.T) {
	t.Parallel()
	x, next, err := runIngress(t, nil)
	require.Error(t, err)
	require.False(t, next.called)
	require.Empty(t, x.ID)
}

// ---- egress side ----

// frames builds a byte stream of frames.
type frames []byte

func (f frames) request(h codec.RequestHead) frames {
	if h.Kind == 0 {
		h.Kind = codec.KindHTTP
	}
	return codec.AppendRequest(f, &h)
}
func (f frames) data(s string) frames          { return codec.AppendData(f, []byte(s)) }
func (f frames) trailers(h http.Header) frames { return codec.AppendTrailers(f, h) }
func (f frames) end() frames                   { return codec.AppendEnd(f) }

// runEgress runs the decode stage on a stream carrying b (followed by FIN if
// fin), with next as the following handler. It returns once Handle has
// returned and the peer's goroutine has finished.
func runEgress(t *testing.T, d *decode.Decoder, b []byte, fin bool, next pipeline.Handler) (*pipeline.Exchange, *pipelinetest.Stream, error, error) {
	t.Helper()
	s := pipelinetest.NewStream()
	x := pipeline.Acquire(pipeline.Egress)
	t.Cleanup(x.Release)
	x.Stream = s
	sent := s.PeerSend(b, fin)
	err := x.Finish(d.Handle(context.Background(), x, next)) // as encode, outermost, does
	// Whatever decode left unread, nobody reads now.
	s.Shutdown()
	return x, s, err, <-sent
}

func TestEgressRebuildsRequest(t *testing.T) {
	t.Parallel()
	type ctxKey struct{}
	d := newDecoder(t, decode.Config{})
	b := frames(nil).request(codec.RequestHead{
		RuleID:        "site",
		RequestID:     "rid-1",
		Method:        http.MethodPost,
		Scheme:        "https",
		Authority:     "app.example.test",
		Path:          "/up/load?x=1&y=%2F",
		ContentLength: 11,
		Header: http.Header{
			"Trailer":      {"X-Checksum, x-other"},
			"X-A":          {"1", "2"},
			"Content-Type": {"text/plain"},
		},
	}).data("hello ").data("world").trailers(http.Header{"X-Checksum": {"abc"}, "X-Other": {"z"}}).end()

	s := pipelinetest.NewStream()
	x := pipeline.Acquire(pipeline.Egress)
	defer x.Release()
	x.Stream = s
	sent := s.PeerSend(b, true)
	ctx := context.WithValue(context.Background(), ctxKey{}, "v")
	var body string
	var trailerBefore, trailerAfter http.Header
	next := &capture{fn: func(_ context.Context, x *pipeline.Exchange) error {
		r := x.Request
		require.Equal(t, "v", r.Context().Value(ctxKey{}), "the request carries the stage's context")
		require.Equal(t, http.MethodPost, r.Method)
		require.Equal(t, "/up/load", r.URL.Path)
		require.Equal(t, "x=1&y=%2F", r.URL.RawQuery)
		require.Equal(t, "app.example.test", r.Host)
		require.Equal(t, 1, r.ProtoMajor)
		require.EqualValues(t, 11, r.ContentLength)
		require.Equal(t, []string{"1", "2"}, r.Header.Values("X-A"))
		require.NotContains(t, r.Header, "Trailer", "declared trailers move to Request.Trailer")
		trailerBefore = r.Trailer.Clone()
		p, err := io.ReadAll(r.Body)
		require.NoError(t, err)
		body = string(p)
		trailerAfter = r.Trailer.Clone()
		return nil
	}}
	err := d.Handle(ctx, x, next)
	require.NoError(t, err)
	require.NoError(t, <-sent)
	s.Shutdown()
	require.True(t, next.called)
	require.Equal(t, "hello world", body)
	require.Equal(t, http.Header{"X-Checksum": nil, "X-Other": nil}, trailerBefore)
	require.Equal(t, http.Header{"X-Checksum": {"abc"}, "X-Other": {"z"}}, trailerAfter)
	require.Equal(t, "rid-1", x.ID)
	require.Equal(t, "site", x.Head.RuleID)
	require.Equal(t, pipeline.ProtoHTTP1, x.Protocol)
	require.Empty(t, s.CancelReadCodes(), "a body read to its end needs no cancel")
	require.Empty(t, s.AbortCodes())
}

func TestEgressRequestIDAndProtocol(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		id        string
		ctype     string
		wantID    string // "" for a fresh one
		wantProto pipeline.Protocol
	}{
		{"valid id kept", "abc-1", "text/plain", "abc-1", pipeline.ProtoHTTP1},
		{"missing id replaced", "", "", "", pipeline.ProtoHTTP1},
		{"invalid id replaced", "a b", "", "", pipeline.ProtoHTTP1},
		{"gRPC", "g-1", "application/grpc+proto", "g-1", pipeline.ProtoGRPC},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := http.Header{}
			if tt.ctype != "" {
				h.Set("Content-Type", tt.ctype)
			}
			b := frames(nil).request(codec.RequestHead{RequestID: tt.id, Method: "GET", Authority: "a.test", Path: "/", ContentLength: 0, Header: h}).end()
			next := &capture{}
			x, _, err, sendErr := runEgress(t, newDecoder(t, decode.Config{}), b, true, next)
			require.NoError(t, err)
			require.NoError(t, sendErr)
			require.True(t, next.called)
			if tt.wantID != "" {
				require.Equal(t, tt.wantID, x.ID)
			} else {
				require.Regexp(t, idShape, x.ID)
			}
			require.Equal(t, tt.wantProto, x.Protocol)
		})
	}
}

func TestEgressMalformed(t *testing.T) {
	t.Parallel()
	okHead := codec.RequestHead{Kind: codec.KindHTTP, Method: "GET", Authority: "a.test", Path: "/", Header: http.Header{}}
	withPath := okHead
	withPath.Path = "no-slash"
	noMethod := okHead
	noMethod.Method = ""
	garbage := codec.AppendFrameHeader(nil, codec.FrameRequest, 3)
	garbage = append(garbage, byte(codec.KindHTTP), 0x3f, 'x') // a string that overruns the payload
	tests := []struct {
		name   string
		b      []byte
		status int
	}{
		{"DATA first", frames(nil).data("x").end(), http.StatusBadRequest},
		{"RESPONSE first", codec.AppendResponse(nil, &codec.ResponseHead{Status: 200}), http.StatusBadRequest},
		{"END first", frames(nil).end(), http.StatusBadRequest},
		{"truncated head fields", garbage, http.StatusBadRequest},
		{"empty method", frames(nil).request(noMethod).end(), http.StatusBadRequest},
		{"target not a path", frames(nil).request(withPath).end(), http.StatusBadRequest},
		{"body after a zero length", frames(nil).request(okHead).data("x").end(), http.StatusBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			next := &capture{}
			_, _, err, _ := runEgress(t, newDecoder(t, decode.Config{}), tt.b, true, next)
			requireReject(t, err, tt.status)
			require.False(t, next.called)
		})
	}
}

func TestEgressStreamErrors(t *testing.T) {
	t.Parallel()
	big := frames(nil).request(codec.RequestHead{Method: "GET", Authority: "a.test", Path: "/" + strings.Repeat("a", 200), Header: http.Header{}}).end()
	tests := []struct {
		name    string
		cfg     decode.Config
		b       []byte
		fin     bool
		wantErr error
	}{
		{"empty stream", decode.Config{}, nil, true, io.EOF},
		{"cut inside the head", decode.Config{}, big[:20], true, io.ErrUnexpectedEOF},
		{"head over the frame limit", decode.Config{MaxFrameSize: 64}, big, true, codec.ErrTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			next := &capture{}
			_, _, err, _ := runEgress(t, newDecoder(t, tt.cfg), tt.b, tt.fin, next)
			require.ErrorIs(t, err, tt.wantErr)
			require.False(t, next.called)
		})
	}
}

func TestEgressNoStream(t *testing.T) {
	t.Parallel()
	x := pipeline.Acquire(pipeline.Egress)
	defer x.Release()
	next := &capture{}
	require.Error(t, newDecoder(t, decode.Config{}).Handle(context.Background(), x, next))
	require.False(t, next.called)
}

func TestEgressZeroLengthConsumesEnd(t *testing.T) {
	t.Parallel()
	b := frames(nil).request(codec.RequestHead{Method: "GET", Authority: "a.test", Path: "/", ContentLength: 0, Header: http.Header{}}).end()
	var gotBody io.ReadCloser
	next := &capture{fn: func(_ context.Context, x *pipeline.Exchange) error {
		gotBody = x.Request.Body
		return nil
	}}
	x, s, err, sendErr := runEgress(t, newDecoder(t, decode.Config{}), b, true, next)
	require.NoError(t, err)
	require.NoError(t, sendErr, "the peer's head, END and FIN were all read")
	require.Equal(t, http.NoBody, gotBody)
	require.True(t, x.Body.Done())
	require.ErrorIs(t, x.Body.Err(), io.EOF, "END and the end of the stream were consumed before next ran")
	require.Empty(t, s.CancelReadCodes())
}

func TestEgressUnreadBodyCancelsRead(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		read int // bytes next reads from the body
	}{
		{"body not touched", 0},
		{"body partly read", 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			// The peer sends the head and part of a 100 000-byte body and
			// keeps the stream open, as a large upload would.
			b := frames(nil).request(codec.RequestHead{Method: "POST", Authority: "a.test", Path: "/", ContentLength: 100000, Header: http.Header{}}).
				data(strings.Repeat("x", 1000))
			var kept io.Reader
			next := &capture{fn: func(_ context.Context, x *pipeline.Exchange) error {
				kept = x.Request.Body
				if tt.read > 0 {
					p := make([]byte, tt.read)
					_, err := io.ReadFull(x.Request.Body, p)
					require.NoError(t, err)
				}
				return nil
			}}
			_, s, err, _ := runEgress(t, newDecoder(t, decode.Config{}), b, false, next)
			require.NoError(t, err)
			require.Equal(t, []uint64{codec.StreamCancelled}, s.CancelReadCodes())
			require.Empty(t, s.AbortCodes())
			// net/http may still hold the body after the chain returned: it
			// must fail, and never read the (pooled) exchange again.
			n, rerr := kept.Read(make([]byte, 10))
			require.Zero(t, n)
			require.Error(t, rerr)
			require.NotErrorIs(t, rerr, io.EOF, "a detached body must not look complete")
		})
	}
}

func TestEgressNextErrorIsReturned(t *testing.T) {
	t.Parallel()
	boom := errors.New("upstream failed")
	b := frames(nil).request(codec.RequestHead{Method: "GET", Authority: "a.test", Path: "/", Header: http.Header{}}).end()
	_, _, err, _ := runEgress(t, newDecoder(t, decode.Config{}), b, true, &capture{fn: func(context.Context, *pipeline.Exchange) error { return boom }})
	require.ErrorIs(t, err, boom)
}

// TestRequestTrailersCrossTheTunnel sends a chunked request with trailers to a
// real net/http server, runs the ingress decode on it, carries the head, body
// and trailers across a fake stream the way the tunnel does, and runs the
// egress decode: the upstream-bound request must end with the same trailers.
func TestRequestTrailersCrossTheTunnel(t *testing.T) {
	t.Parallel()
	type result struct {
		head     codec.RequestHead
		body     []byte
		trailers http.Header
		err      error
	}
	got := make(chan result, 1)
	d := newDecoder(t, decode.Config{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		x := pipeline.Acquire(pipeline.Ingress)
		defer x.Release()
		x.Request = r
		var res result
		res.err = d.Handle(r.Context(), x, &capture{})
		if res.err == nil {
			res.head = x.Head
			res.head.Header = x.Head.Header.Clone()
			res.body, res.err = io.ReadAll(r.Body)
			res.trailers = r.Trailer.Clone()
		}
		got <- res
	}))
	defer srv.Close()
	defer srv.Client().Transport.(*http.Transport).CloseIdleConnections()

	req, err := http.NewRequest(http.MethodPost, srv.URL+"/up", io.MultiReader(strings.NewReader("payload")))
	require.NoError(t, err)
	req.ContentLength = -1
	req.Trailer = http.Header{"X-Checksum": {"abc"}}
	resp, err := srv.Client().Do(req)
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	in := <-got
	require.NoError(t, in.err)
	require.Equal(t, http.Header{"X-Checksum": {"abc"}}, in.trailers, "net/http delivered the trailers to the ingress side")

	// What the tunnel sends for it: head, body, trailers, END.
	wire := frames(nil).request(in.head).data(string(in.body)).trailers(in.trailers).end()
	var upstreamTrailers http.Header
	next := &capture{fn: func(_ context.Context, x *pipeline.Exchange) error {
		_, err := io.Copy(io.Discard, x.Request.Body)
		require.NoError(t, err)
		upstreamTrailers = x.Request.Trailer.Clone()
		return nil
	}}
	_, _, err, sendErr := runEgress(t, newDecoder(t, decode.Config{}), wire, true, next)
	require.NoError(t, err)
	require.NoError(t, sendErr)
	require.Equal(t, http.Header{"X-Checksum": {"abc"}}, upstreamTrailers)
}

func TestEgressLargeBodyAcrossFrames(t *testing.T) {
	t.Parallel()
	// A body larger than one frame and than the reader's buffer, in many
	// DATA frames of the configured maximum size.
	const frameSize = 1 << 10
	payload := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB
	b := frames(nil).request(codec.RequestHead{Method: "PUT", Authority: "a.test", Path: "/blob", ContentLength: int64(len(payload)), Header: http.Header{}})
	for p := payload; len(p) > 0; p = p[frameSize:] {
		b = codec.AppendData(b, p[:frameSize])
	}
	b = b.end()
	var got []byte
	next := &capture{fn: func(_ context.Context, x *pipeline.Exchange) error {
		var err error
		got, err = io.ReadAll(x.Request.Body)
		return err
	}}
	_, s, err, sendErr := runEgress(t, newDecoder(t, decode.Config{MaxFrameSize: frameSize}), b, true, next)
	require.NoError(t, err)
	require.NoError(t, sendErr)
	require.Equal(t, payload, got)
	require.Empty(t, s.CancelReadCodes())
}
