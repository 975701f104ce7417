package gateway

import (
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/qtunnel/qtunnel/config"
	"github.com/qtunnel/qtunnel/internal/edgeguard"
	"github.com/qtunnel/qtunnel/internal/httpx"
	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/stages/encode"
)

// ingressRefuser answers what a chain could not (a chain without encode),
// and says when an answer started must be cut short instead. On the
// ingress side Refuse uses none of the encoder's settings.
var ingressRefuser = func() *encode.Encoder {
	e, err := encode.New(encode.Config{})
	if err != nil {
		panic(err) // the zero Config is valid: a change of encode broke it
	}
	return e
}()

// ingressHandler serves the user requests of one listener through the
// ingress chain.
type ingressHandler struct {
	chain    pipeline.Handler
	listener string // routing key: "" for the public listener, else the listen address
	log      *slog.Logger
	access   *atomic.Bool   // log.access: each request's record at info
	tracer   trace.Tracer   // nil: no request spans
	inflight sync.WaitGroup // requests being handled, so shutdown can wait for them
	abuse    func(kind string, remote net.Addr)
}

func (h *ingressHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.inflight.Add(1)
	defer h.inflight.Done()
	if gc := edgeguard.FromContext(r.Context()); gc != nil {
		if r.TLS == nil {
			r.TLS = gc.TLS() // the listener, not net/http, ran the handshake
		}
		if r.ProtoMajor == 1 {
			if refuse, reason := gc.NextRequest(); refuse {
				// Served as net/http framed it, the request could differ
				// from what a proxy in front saw: refuse it, and close, so
				// that no byte after it is read as a request.
				if h.abuse != nil {
					h.abuse("ambiguous framing", gc.RemoteAddr())
				}
				httpx.WriteErrorClose(w, http.StatusBadRequest, "request framing is ambiguous ("+reason+")", 0, httpx.NewRequestID())
				_ = http.NewResponseController(w).SetReadDeadline(time.Now()) // nothing more is read
				return
			}
		}
	}
	body := r.Body // as net/http gave it; stages may wrap r.Body
	x := pipeline.Acquire(pipeline.Ingress)
	x.Request, x.Writer, x.Listener = r, w, h.listener
	ctx := r.Context()
	var span trace.Span
	if h.tracer != nil {
		ctx = pipeline.ExtractHeader(ctx, r.Header)
		ctx, span = h.tracer.Start(ctx, spanName(pipeline.Ingress, r.Method), trace.WithSpanKind(trace.SpanKindServer))
	}
	err := h.chain.Handle(ctx, x)
	// Encode has answered the chain's error, unless part of the answer
	// went out already (abort), or the chain has none.
	abort := err != nil && !x.Answered && ingressRefuser.Refuse(r.Context(), x, err)
	if span != nil {
		endRequestSpan(span, x, err)
	}
	if level, msg := requestRecord(h.access.Load(), "request"); h.log.Enabled(r.Context(), level) {
		h.log.LogAttrs(r.Context(), level, msg,
			slog.String("request_id", x.ID), slog.String("method", r.Method), slog.String("host", r.Host),
			slog.String("path", r.URL.Path), slog.Int("status", x.Status), slog.String("proto", x.Protocol.String()),
			slog.String("rule", ruleID(x)), slog.String("remote", r.RemoteAddr),
			slog.Int64("bytes_in", x.BytesIn), slog.Int64("bytes_out", x.BytesOut),
			slog.Duration("took", timeSince(x)), errAttr(err))
	}
	x.Release()
	if r.ProtoMajor == 1 && r.ContentLength != 0 && w.Header().Get("Connection") == "close" {
		lingerOnBody(w, body)
	}
	if abort {
		// The head is out; the only honest signal left is to cut the
		// response short (HTTP/1.1: close; HTTP/2: RST_STREAM).
		panic(http.ErrAbortHandler)
	}
}

// Lingering on an unread body: an HTTP/1 answer sent before the request's
// body was read to its end (a refusal: 413, 429, 503...) closes the
// connection. Closed with the rest of the body unread, the connection is
// reset, and a reset can reach the user while it is still sending, before
// it reads the answer: it sees "connection reset" instead of the answer.
// So the answer is sent first, then up to lingerBytes of the body are read
// and thrown away, for at most lingerTime (a slow sender costs no more),
// and only then is the connection closed.
const (
	lingerTime  = time.Second
	lingerBytes = 1 << 20
)

// lingerOnBody sends the answer written to w and reads what is left of
// body as said above; after it, nothing more is read from the connection
// (net/http would otherwise go on reading the body, to reuse a connection
// it is closing).
func lingerOnBody(w http.ResponseWriter, body io.Reader) {
	rc := http.NewResponseController(w)
	if rc.Flush() == nil && rc.SetReadDeadline(time.Now().Add(lingerTime)) == nil && body != nil {
		_, _ = io.CopyN(io.Discard, body, lingerBytes)
	}
	_ = rc.SetReadDeadline(time.Now())
}

// ruleID is the id of the rule x matched, "" when it matched none.
func ruleID(x *pipeline.Exchange) string {
	if x.Rule == nil {
		return ""
	}
	return x.Rule.ID
}

func errAttr(err error) slog.Attr {
	if err == nil {
		return slog.Attr{}
	}
	return slog.String("err", err.Error())
}

// newIngressServer returns the http.Server of an ingress listener: HTTP/1.1
// and HTTP/2 without TLS (prior knowledge), with the configured limits.
func newIngressServer(h http.Handler, lim config.Limits, log *slog.Logger) *http.Server {
	// HTTP/2 comes as h2c, or as h2 by ALPN over TLS, which the listener
	// terminates: net/http sees plain bytes either way, and serves HTTP/2
	// from the connection preface.
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{
		Handler:     h,
		Protocols:   &protos,
		ConnContext: edgeguard.ConnContext,
		// OPTIONS * goes to the handler, like every request: the framing
		// check counts every request the connection carries.
		DisableGeneralOptionsHandler: true,
		ReadHeaderTimeout:            lim.ReadHeaderTimeout,
		IdleTimeout:                  lim.IdleTimeout,
		// HTTP/1.1: a head over it is answered 431. HTTP/2: it is the
		// SETTINGS_MAX_HEADER_LIST_SIZE, and a larger head gets 431 too.
		MaxHeaderBytes: int(lim.MaxHeaderBytes),
		// HTTP/2 reads frames, not heads, so ReadHeaderTimeout stops a
		// slow preface but not a client that trickles a frame once the
		// connection is up (slowloris over h2c or h2): it would hold the
		// connection until IdleTimeout. A connection that delivers no
		// whole frame for ReadHeaderTimeout is pinged, and closed if the
		// ping is not answered within ReadHeaderTimeout. Any live client
		// answers pings on its own; the cost is one ping per silent
		// period.
		HTTP2: &http.HTTP2Config{
			SendPingTimeout: lim.ReadHeaderTimeout,
			PingTimeout:     lim.ReadHeaderTimeout,
			// Per connection: what one HTTP/2 client may have at once.
			MaxConcurrentStreams: lim.MaxStreamsPerConnection,
			// A connection whose writes make no progress (its reader
			// stopped reading the socket) is closed.
			WriteByteTimeout: lim.SendTimeout,
		},
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	return srv
}

// listenTCP binds a TCP listener with a clear error.
func listenTCP(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	return ln, nil
}
