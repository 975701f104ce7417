package transport

import (
	"context"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/qtunnel/qtunnel/codec"
	"github.com/qtunnel/qtunnel/pipeline"
)

// Config holds the QUIC settings of one side. The zero value gives the
// documented defaults.
type Config struct {
	// HandshakeTimeout bounds the QUIC and TLS handshake. If zero, 10s.
	HandshakeTimeout time.Duration `yaml:"handshake_timeout"`
	// IdleTimeout is the liveness timeout: a connection on which nothing
	// was received for this long is dead (a peer killed, a network cut),
	// and is closed; the requests on it fail at once with 502, a client's
	// /readyz turns not ready and it reconnects. Both sides send keep-alives
	// (KeepAlive) well inside it, so a live peer is never taken for dead.
	// If zero, 5s.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// KeepAlive is how often a quiet connection sends a keep-alive packet.
	// The client also sends its control-stream heartbeat this often. At
	// most half of IdleTimeout. If zero, 1.5s.
	KeepAlive time.Duration `yaml:"keep_alive"`
	// MaxStreams is how many concurrent request streams the peer may open
	// on one connection (S3). If zero, 1000.
	MaxStreams int64 `yaml:"max_streams"`
	// StreamWindow is the largest per-stream receive window in bytes: how
	// much of one request or answer may wait unread on this side. The
	// window starts at 512 KiB (or StreamWindow if smaller) and grows while
	// the stream is read promptly. If zero, 1 MiB.
	StreamWindow uint64 `yaml:"stream_window"`
	// ConnWindow is the per-connection receive window in bytes, granted in
	// full from the start: what all the streams of one connection may hold
	// unread together. Data waiting for a stalled reader (a user who stops
	// reading an answer) holds its stream's window and this one, so it is
	// kept far above StreamWindow: 128 stalled streams are needed to fill
	// it, more than one source may hold (limits.max_streams_per_source),
	// and limits.send_timeout frees stalled ones. It bounds the memory a
	// connection's unread data can take. If zero, 128 MiB.
	ConnWindow uint64 `yaml:"conn_window"`
}

// Default liveness timeout and keep-alive period (see Config).
const (
	DefaultIdleTimeout = 5 * time.Second
	DefaultKeepAlive   = 1500 * time.Millisecond
)

// Default receive windows (see Config).
const (
	DefaultStreamWindow = 1 << 20
	DefaultConnWindow   = 128 << 20
)

func orDuration(v, d time.Duration) time.Duration {
	if v > 0 {
		return v
	}
	return d
}

// KeepAlivePeriod returns KeepAlive or its default.
func (c Config) KeepAlivePeriod() time.Duration {
	return min(orDuration(c.KeepAlive, DefaultKeepAlive), orDuration(c.IdleTimeout, DefaultIdleTimeout)/2)
}

// QUIC returns the quic-go configuration for c.
func (c Config) QUIC() *quic.Config {
	streams := c.MaxStreams
	if streams <= 0 {
		streams = 1000
	}
	sw, cw := c.StreamWindow, c.ConnWindow
	if sw == 0 {
		sw = DefaultStreamWindow
	}
	if cw == 0 {
		cw = DefaultConnWindow
	}
	return &quic.Config{
		HandshakeIdleTimeout:  orDuration(c.HandshakeTimeout, 10*time.Second),
		MaxIdleTimeout:        orDuration(c.IdleTimeout, DefaultIdleTimeout),
		KeepAlivePeriod:       c.KeepAlivePeriod(),
		MaxIncomingStreams:    streams,
		MaxIncomingUniStreams: -1,
		// quic-go's own starting stream window, unless ours is smaller.
		InitialStreamReceiveWindow: min(sw, 512<<10),
		MaxStreamReceiveWindow:     sw,
		// The connection window is granted whole from the start: grown
		// only as streams are read (quic-go's auto-tuning), it would stay
		// small exactly when some streams stall, and a few stalled
		// streams would then hold every other stream of the connection.
		InitialConnectionReceiveWindow: cw,
		MaxConnectionReceiveWindow:     cw,
	}
}

// Listener accepts tunnel connections on one UDP socket.
type Listener struct {
	tr *quic.Transport
	ln *quic.Listener
}

// Listen opens a UDP socket on addr and accepts QUIC connections on it.
func Listen(addr string, tlsConf *tls.Config, c Config) (*Listener, error) {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("tunnel listen address %q: %w", addr, err)
	}
	pc, err := net.ListenUDP("udp", ua)
	if err != nil {
		return nil, fmt.Errorf("tunnel listen: %w", err)
	}
	tr := &quic.Transport{Conn: pc, StatelessResetKey: resetKey(tlsConf)}
	ln, err := tr.Listen(tlsConf, c.QUIC())
	if err != nil {
		_ = tr.Close()
		_ = pc.Close()
		return nil, err
	}
	return &Listener{tr: tr, ln: ln}, nil
}

// resetKey derives the stateless reset key from the server's private key,
// so that a server restarted with the same identity (after a crash or
// SIGKILL) answers packets of its predecessor's connections with a
// stateless reset: clients learn at their next packet that the connection
// is gone, instead of waiting for the idle timeout. With no usable key
// (such as a certificate made at start, whose pin changes anyway) there
// is no reset key, and clients notice by timeout.
func resetKey(tlsConf *tls.Config) *quic.StatelessResetKey {
	if tlsConf == nil || len(tlsConf.Certificates) == 0 {
		return nil
	}
	der, err := x509.MarshalPKCS8PrivateKey(tlsConf.Certificates[0].PrivateKey)
	if err != nil {
		return nil
	}
	k, err := hkdf.Key(sha256.New, der, nil, "qtunnel stateless reset key", 32)
	if err != nil {
		return nil
	}
	var key quic.StatelessResetKey
	copy(key[:], k)
	return &key
}

// Accept waits for the next connection whose handshake completed.
func (l *Listener) Accept(ctx context.Context) (*quic.Conn, error) { return l.ln.Accept(ctx) }

// Addr returns the UDP address the listener is bound to.
func (l *Listener) Addr() net.Addr { return l.ln.Addr() }

// StopAccepting refuses new connections; established ones carry on.
func (l *Listener) StopAccepting() error { return l.ln.Close() }

// Close stops accepting and releases the UDP socket. Close connections
// cleanly (CloseWithError) first: after Close their peers only notice by
// timeout.
func (l *Listener) Close() error {
	err := l.ln.Close()
	if cerr := l.tr.Close(); cerr != nil {
		err = errors.Join(err, cerr)
	}
	if cerr := l.tr.Conn.Close(); cerr != nil && !errors.Is(cerr, net.ErrClosed) {
		err = errors.Join(err, cerr)
	}
	return err
}

// ClientConn is a dialled tunnel connection that owns its UDP socket.
type ClientConn struct {
	*quic.Conn
	tr *quic.Transport
}

// Dial connects to a tunnel server at addr. The local socket binds to the
// loopback address when addr is a loopback address, else to any address.
func Dial(ctx context.Context, addr string, tlsConf *tls.Config, c Config) (*ClientConn, error) {
	ra, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("server address %q: %w", addr, err)
	}
	local := &net.UDPAddr{}
	if ra.IP.IsLoopback() {
		local.IP = ra.IP
	}
	pc, err := net.ListenUDP("udp", local)
	if err != nil {
		return nil, err
	}
	tr := &quic.Transport{Conn: pc}
	conn, err := tr.Dial(ctx, ra, tlsConf, c.QUIC())
	if err != nil {
		_ = tr.Close()
		_ = pc.Close()
		return nil, err
	}
	return &ClientConn{Conn: conn, tr: tr}, nil
}

// Close closes the connection with code and reason, then releases the socket.
func (c *ClientConn) Close(code uint64, reason string) error {
	err := c.CloseWithError(quic.ApplicationErrorCode(code), reason)
	if cerr := c.tr.Close(); cerr != nil {
		err = errors.Join(err, cerr)
	}
	if cerr := c.tr.Conn.Close(); cerr != nil && !errors.Is(cerr, net.ErrClosed) {
		err = errors.Join(err, cerr)
	}
	return err
}

// Stream adapts a QUIC stream to pipeline.Stream. It is pointer-shaped, so
// storing it in an interface allocates nothing.
type Stream struct{ S *quic.Stream }

// Read implements io.Reader.
func (s Stream) Read(p []byte) (int, error) { return s.S.Read(p) }

// Write implements io.Writer.
func (s Stream) Write(p []byte) (int, error) { return s.S.Write(p) }

// Close ends the write direction with FIN.
func (s Stream) Close() error { return s.S.Close() }

// CancelRead stops the peer's sending with code.
func (s Stream) CancelRead(code uint64) { s.S.CancelRead(quic.StreamErrorCode(code)) }

// Abort resets both directions with code.
func (s Stream) Abort(code uint64) {
	s.S.CancelRead(quic.StreamErrorCode(code))
	s.S.CancelWrite(quic.StreamErrorCode(code))
}

// Opener opens request streams on a connection; it implements
// pipeline.StreamOpener.
type Opener struct {
	C *quic.Conn
	// Wait bounds how long OpenStream waits for the peer to allow another
	// stream when its limit is reached (S3, S19). If zero, 10s.
	Wait time.Duration
}

// OpenStream opens a bidirectional stream. When the peer's stream limit is
// reached it waits, up to o.Wait or until ctx is done, for a slot; a wait
// that times out returns an error wrapping pipeline.ErrOverloaded.
func (o Opener) OpenStream(ctx context.Context) (pipeline.Stream, error) {
	s, err := o.C.OpenStream()
	if err == nil {
		return Stream{S: s}, nil
	}
	if !IsStreamLimit(err) {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, orDuration(o.Wait, 10*time.Second))
	defer cancel()
	s, err = o.C.OpenStreamSync(ctx)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return nil, fmt.Errorf("no stream slot free on the tunnel: %w", pipeline.ErrOverloaded)
		}
		return nil, err
	}
	return Stream{S: s}, nil
}

// IsStreamLimit reports whether err says that the peer's limit of
// concurrent streams is reached. quic-go returns the error as a pointer;
// the value form is accepted too.
func IsStreamLimit(err error) bool {
	if _, ok := errors.AsType[*quic.StreamLimitReachedError](err); ok {
		return true
	}
	_, ok := errors.AsType[quic.StreamLimitReachedError](err)
	return ok
}

// ConnLost reports whether err says that the stream's connection is gone
// without a word from the peer: its liveness (idle) timeout passed, or a
// stateless reset came from a peer that lost its state.
func ConnLost(err error) bool {
	if _, ok := errors.AsType[*quic.IdleTimeoutError](err); ok {
		return true
	}
	_, ok := errors.AsType[*quic.StatelessResetError](err)
	return ok
}

// StreamCode returns the reset code of a stream error, if err is one.
func StreamCode(err error) (uint64, bool) {
	var se *quic.StreamError
	if errors.As(err, &se) {
		return uint64(se.ErrorCode), true
	}
	return 0, false
}

// CloseCode returns the application close code of a connection error, and
// whether the peer sent it.
func CloseCode(err error) (code uint64, remote, ok bool) {
	var ae *quic.ApplicationError
	if errors.As(err, &ae) {
		return uint64(ae.ErrorCode), ae.Remote, true
	}
	return 0, false, false
}

// Retryable classifies a connection error (S4): false for errors that the
// same attempt can never get past (the server refused our credentials, the
// server's key does not match the pin, the TLS handshake failed), true for
// everything else (timeouts, resets, refused connections, the server going
// away).
func Retryable(err error) bool {
	if code, remote, ok := CloseCode(err); ok && remote && code == codec.ConnAuthFailed {
		return false
	}
	if errors.Is(err, ErrPinMismatch) {
		return false
	}
	var te *quic.TransportError
	if errors.As(err, &te) && te.ErrorCode >= 0x100 && te.ErrorCode < 0x200 {
		return false // a TLS alert: certificate, ALPN or version trouble
	}
	return true
}

var (
	_ pipeline.Stream       = Stream{}
	_ pipeline.StreamOpener = Opener{}
)
