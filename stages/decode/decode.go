// Package decode is the first stage of a chain: it brings the request into
// the exchange in one canonical form, whichever side it arrived on.
//
// On the ingress side it takes the user's *http.Request: it keeps or assigns
// the request id, removes hop-by-hop fields, sets X-Forwarded-For, -Proto and
// -Host, detects the protocol, and builds the request head that will cross
// the tunnel. On the egress side it reads that head from the tunnel stream
// and rebuilds an *http.Request whose body streams from the stream.
package decode

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/textproto"
	"net/url"
	"strings"
	"sync"

	"github.com/qtunnel/qtunnel/codec"
	"github.com/qtunnel/qtunnel/internal/httpx"
	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/rules"
)

// Config configures the decode stage. The zero value is the default.
type Config struct {
	// MaxFrameSize is the largest frame accepted from the tunnel, in bytes
	// (S9). If zero, 64 KiB.
	MaxFrameSize int
	// TrustedProxies are the peers whose X-Forwarded-For, -Proto, -Host and
	// X-Request-Id are kept (X-Forwarded-For appended to) and whose
	// forwarded address is the request's source. From any other peer
	// those headers are replaced. If empty, nobody is trusted.
	TrustedProxies []netip.Prefix
	// AllowSNIMismatch routes a request over TLS whose Host differs from
	// the name the client gave in its handshake (SNI). If false, such a
	// request is answered 421 Misdirected Request.
	AllowSNIMismatch bool
}

// Decoder is the decode stage. Safe for concurrent use.
type Decoder struct {
	maxFrame      int
	trusted       []netip.Prefix
	allowMismatch bool
}

// New returns a decode stage.
func New(cfg Config) (*Decoder, error) {
	if cfg.MaxFrameSize < 0 || cfg.MaxFrameSize > codec.MaxPayload {
		return nil, fmt.Errorf("decode: max frame size %d out of range", cfg.MaxFrameSize)
	}
	if cfg.MaxFrameSize == 0 {
		cfg.MaxFrameSize = codec.DefaultMaxFrameSize
	}
	return &Decoder{maxFrame: cfg.MaxFrameSize, trusted: cfg.TrustedProxies, allowMismatch: cfg.AllowSNIMismatch}, nil
}

// Name implements pipeline.Namer.
func (d *Decoder) Name() string { return Name }

// Name is the stage's name in the chains' order.
const Name = "decode"

// Handle implements pipeline.Stage.
func (d *Decoder) Handle(ctx context.Context, x *pipeline.Exchange, next pipeline.Handler) error {
	if x.Side == pipeline.Ingress {
		if err := d.fromHTTP(x); err != nil {
			return err
		}
		return next.Handle(ctx, x)
	}
	body, err := d.fromStream(ctx, x)
	if err != nil {
		return err
	}
	if body != nil {
		x.Defer(body)
	}
	return next.Handle(ctx, x)
}

func (d *Decoder) fromHTTP(x *pipeline.Exchange) error {
	r := x.Request
	if r == nil {
		if x.Downstream != nil {
			return fromTCP(x)
		}
		return errors.New("decode: ingress exchange without a request")
	}
	if !httpx.ValidHost(r.Host) {
		return pipeline.Rejectf(http.StatusBadRequest, "malformed Host %q", r.Host)
	}
	if r.TLS != nil && r.TLS.ServerName != "" && !d.allowMismatch && !sameHost(r.TLS.ServerName, r.Host) {
		return pipeline.Rejectf(http.StatusMisdirectedRequest, "this connection is for %q, not %q: open one for the host you want", r.TLS.ServerName, r.Host)
	}
	h := r.Header
	peer := httpx.AddrOf(r.RemoteAddr)
	trusted := len(d.trusted) > 0 && httpx.Trusted(peer, d.trusted)
	id := ""
	var prior, proto, fhost []string
	if trusted {
		// A trusted proxy's view of the request is kept: the id it gave,
		// the chain of addresses, and the scheme and host the user asked
		// for.
		id = h.Get(httpx.RequestIDHeader)
		prior, proto, fhost = h["X-Forwarded-For"], h["X-Forwarded-Proto"], h["X-Forwarded-Host"]
		x.Source = httpx.ForwardedSource(prior, peer, d.trusted)
	} else {
		x.Source = peer
	}
	if !httpx.ValidRequestID(id) {
		id = httpx.NewRequestID()
	}
	x.ID = id
	x.Protocol = protocolOf(r)
	kind := codec.KindHTTP
	var upgrade []string
	if x.Protocol == pipeline.ProtoWebSocket {
		// Upgrade is hop-by-hop, but it is what the far side must ask its
		// upstream for: it crosses in the head of an upgrade stream.
		kind, upgrade = codec.KindUpgrade, h["Upgrade"]
	}
	// Hop-by-hop fields go first, so that a Connection header naming the
	// gateway's own fields cannot remove them: they are set after.
	httpx.RemoveHopByHop(h)
	if upgrade != nil {
		h["Upgrade"] = upgrade
	}
	delete(h, "Content-Length") // the head carries it
	if len(r.Trailer) > 0 {
		// net/http moved the declaration into r.Trailer; the far side
		// needs it to expect the TRAILERS frame.
		names := make([]string, 0, len(r.Trailer))
		for k := range r.Trailer {
			names = append(names, k)
		}
		h["Trailer"] = []string{strings.Join(names, ", ")}
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	// The four fields the gateway sets share the exchange's strings: the
	// request is sent (encoded) before the exchange ends.
	vals := x.Strings(4)
	// Exactly one id crosses: the one in the logs.
	vals[0] = id
	h[httpx.RequestIDHeader] = vals[0:1:1]
	ip := httpx.ClientIP(r.RemoteAddr) // a substring: no allocation
	if len(prior) > 0 {
		vals[1] = strings.Join(prior, ", ") + ", " + ip
	} else {
		vals[1] = ip
	}
	h["X-Forwarded-For"] = vals[1:2:2]
	if len(proto) > 0 {
		h["X-Forwarded-Proto"] = proto
	} else {
		vals[2] = scheme
		h["X-Forwarded-Proto"] = vals[2:3:3]
	}
	if len(fhost) > 0 {
		h["X-Forwarded-Host"] = fhost
	} else {
		vals[3] = r.Host
		h["X-Forwarded-Host"] = vals[3:4:4]
	}
	target := requestTarget(r)
	x.Head = codec.RequestHead{
		Kind:          kind,
		RequestID:     id,
		TraceParent:   h.Get("Traceparent"),
		TraceState:    h.Get("Tracestate"),
		Method:        r.Method,
		Scheme:        scheme,
		Authority:     r.Host,
		Path:          target,
		ContentLength: r.ContentLength,
		Header:        h,
	}
	if r.Body == nil || r.Body == http.NoBody {
		x.Head.ContentLength = 0
	}
	return nil
}

// requestTarget normalises r's path (rules.NormalizePath), makes r.URL
// match it, and returns the target that crosses the tunnel: the normalised
// path and the query as the user sent it. Routing and the upstream see the
// same path.
func requestTarget(r *http.Request) string {
	u := r.URL
	if u.Opaque != "" || r.RequestURI == "*" {
		return r.RequestURI
	}
	ep := u.EscapedPath()
	np := rules.NormalizePath(ep)
	if np == ep && strings.HasPrefix(r.RequestURI, "/") {
		return r.RequestURI // the common case: nothing to build
	}
	if p, err := url.PathUnescape(np); err == nil {
		u.Path, u.RawPath = p, np
	}
	if u.RawQuery == "" && !u.ForceQuery {
		return np
	}
	return np + "?" + u.RawQuery
}

// sameHost reports whether the Host of a request names the TLS server name
// (SNI): equal without the port, in any case, without a trailing dot.
func sameHost(sni, host string) bool {
	if i := strings.LastIndexByte(host, ':'); i >= 0 && !strings.HasSuffix(host, "]") {
		host = host[:i]
	}
	host = strings.TrimSuffix(host, ".")
	return strings.EqualFold(strings.TrimSuffix(sni, "."), host)
}

// fromTCP heads an exchange for a raw TCP connection.
func fromTCP(x *pipeline.Exchange) error {
	x.ID = httpx.NewRequestID()
	x.Protocol = pipeline.ProtoTCP
	if a, ok := x.Downstream.RemoteAddr().(*net.TCPAddr); ok {
		x.Source = a.AddrPort().Addr().Unmap()
	}
	x.Head = codec.RequestHead{Kind: codec.KindTCP, RequestID: x.ID, ContentLength: -1, Header: http.Header{}}
	return nil
}

func protocolOf(r *http.Request) pipeline.Protocol {
	if r.ProtoMajor == 1 {
		for _, v := range r.Header["Upgrade"] {
			if strings.EqualFold(strings.TrimSpace(v), "websocket") {
				return pipeline.ProtoWebSocket
			}
		}
	}
	if r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
		return pipeline.ProtoGRPC
	}
	if r.ProtoMajor == 2 {
		return pipeline.ProtoHTTP2
	}
	return pipeline.ProtoHTTP1
}

func malformed(err error) error {
	return &pipeline.Reject{Status: http.StatusBadRequest, Message: "malformed request from the tunnel peer", Err: err}
}

func (d *Decoder) fromStream(ctx context.Context, x *pipeline.Exchange) (*streamBody, error) {
	if x.Stream == nil {
		return nil, errors.New("decode: egress exchange without a stream")
	}
	if !x.HeadRead {
		if err := ReadHead(x, d.maxFrame); err != nil {
			return nil, err
		}
	}
	head := &x.Head
	x.ID = head.RequestID
	if !httpx.ValidRequestID(x.ID) {
		x.ID = httpx.NewRequestID()
	}
	if head.Kind == codec.KindTCP {
		// Raw bytes follow once the upstream answers: no HTTP request.
		x.Protocol = pipeline.ProtoTCP
		return nil, nil
	}
	x.Protocol = pipeline.ProtoHTTP1
	if strings.HasPrefix(head.Header.Get("Content-Type"), "application/grpc") {
		x.Protocol = pipeline.ProtoGRPC
	}
	u, err := url.ParseRequestURI(head.Path)
	if err != nil {
		return nil, malformed(fmt.Errorf("request target %q: %w", head.Path, err))
	}
	req := &http.Request{
		Method:        head.Method,
		URL:           u,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        head.Header,
		Host:          head.Authority,
		ContentLength: head.ContentLength,
	}
	if declared := head.Header["Trailer"]; len(declared) > 0 {
		req.Trailer = make(http.Header, len(declared))
		for _, v := range declared {
			for name := range strings.SplitSeq(v, ",") {
				if name = textproto.TrimString(name); name != "" {
					req.Trailer[textproto.CanonicalMIMEHeaderKey(name)] = nil
				}
			}
		}
		delete(head.Header, "Trailer")
	}
	x.Body.Reset(&x.Frames, req.Trailer)
	var body *streamBody
	if head.Kind == codec.KindUpgrade {
		// The upgrade request has no body; raw bytes follow on the stream
		// only once the upstream agreed (101).
		x.Protocol = pipeline.ProtoWebSocket
		req.Header["Connection"] = []string{"Upgrade"}
		req.Body = http.NoBody
		req.ContentLength = 0
		x.Request = req.WithContext(ctx)
		return nil, nil
	}
	if head.ContentLength == 0 {
		// No body: the END frame follows the head at once; consume it so
		// the stream completes, and give net/http the body it expects.
		var one [1]byte
		if n, err := x.Body.Read(one[:]); n != 0 || err != io.EOF {
			if err == nil || err == io.EOF {
				err = errors.New("body longer than its Content-Length of 0")
			}
			return nil, malformed(err)
		}
		req.Body = http.NoBody
	} else {
		body = &streamBody{src: &x.Body}
		req.Body = body
	}
	x.Request = req.WithContext(ctx)
	return body, nil
}

// ReadHead reads and parses the request head that opens x.Stream into
// x.Head. Malformed input is a *pipeline.Reject with status 400.
func ReadHead(x *pipeline.Exchange, maxFrame int) error {
	if maxFrame <= 0 {
		maxFrame = codec.DefaultMaxFrameSize
	}
	x.Frames.Reset(x.Stream, maxFrame)
	t, p, err := x.Frames.Next()
	if err != nil {
		return fmt.Errorf("decode: read request head: %w", err)
	}
	if t != codec.FrameRequest {
		return malformed(fmt.Errorf("want REQUEST, got %s", t))
	}
	if err := codec.ParseRequest(p, &x.Head); err != nil {
		return malformed(err)
	}
	x.HeadRead = true
	return nil
}

// streamBody hands the request body to net/http. net/http may read and close
// a request body from its own goroutine, even after RoundTrip returns, so the
// body goes through this small wrapper, made per request: once detached it
// never touches the (pooled) exchange again.
type streamBody struct {
	mu  sync.Mutex
	src *codec.Body
	n   int64 // bytes read
}

var errDetached = errors.New("request body: exchange finished")

func (b *streamBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.src == nil {
		return 0, errDetached
	}
	n, err := b.src.Read(p)
	b.n += int64(n)
	return n, err
}

// Close is called by net/http when it is done with the body. The exchange
// decides what happens to the unread rest (see Handle).
func (b *streamBody) Close() error { return nil }

// Finish implements pipeline.Finisher. Once the answer is delivered, the
// upstream may not have read the whole body: it tells the peer to stop
// sending, then makes sure net/http, which may still hold the body in its
// own goroutine, never reads the exchange again.
func (b *streamBody) Finish(x *pipeline.Exchange, err error) error {
	if !x.Body.Done() {
		x.Stream.CancelRead(codec.StreamCancelled)
	}
	b.mu.Lock()
	b.src = nil
	x.BytesIn = b.n
	b.mu.Unlock()
	return err
}

var _ pipeline.Stage = (*Decoder)(nil)
