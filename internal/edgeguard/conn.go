// Package edgeguard guards the connections of the gateway's user-facing
// HTTP listeners below net/http, where the raw bytes still show what the
// parsed requests no longer do:
//
//   - HTTP/1.x framing: a request with both Content-Length and
//     Transfer-Encoding, or with Transfer-Encoding on HTTP/1.0, is found
//     (see h1Scanner) so that the handler refuses it with 400 and closes
//     the connection instead of serving it as net/http framed it.
//   - HTTP/2 abuse: rapid reset and CONTINUATION floods (see h2Watcher)
//     end the connection with GOAWAY (ENHANCE_YOUR_CALM), which the guard
//     writes itself between two of the server's frames.
//   - Slow readers on HTTP/1: a write to the socket that makes no progress
//     for Config.SendTimeout fails, which cuts the answer (HTTP/2 has its
//     own per-connection write timeout, http.HTTP2Config.WriteByteTimeout).
//   - TLS: the listener terminates TLS itself (when Config.TLS is set), so
//     that the guard sees the plain bytes of HTTPS connections too; the
//     handshake's state (SNI, ALPN) is kept on the connection.
//
// It works with whichever HTTP/2 server net/http runs: it needs nothing of
// it but to stop when a read fails.
package edgeguard

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Config configures a guarded listener. The zero value guards framing
// only.
type Config struct {
	// MaxHeaderBytes is the http.Server's MaxHeaderBytes (0: net/http's
	// default), so that the framing scanner stops where net/http does.
	MaxHeaderBytes int
	// H2MaxResets is how many streams an HTTP/2 client may reset within
	// ResetWindow; past it the connection gets GOAWAY. 0: no limit.
	H2MaxResets int
	// SendTimeout is the longest an HTTP/1 write may make no progress; 0:
	// no limit.
	SendTimeout time.Duration
	// TLS, if set, makes the listener terminate TLS with it. It should
	// offer "h2" and "http/1.1" by ALPN (TLSConfig does).
	TLS *tls.Config
	// OnAbuse, if set, is called once for each connection ended for
	// abuse, with what it did ("rapid reset", "CONTINUATION flood"). It
	// runs on the connection's reader and must not block.
	OnAbuse func(kind string, remote net.Addr)
}

// TLSConfig returns a server TLS configuration for a guarded listener:
// certs picked by SNI, TLS 1.2 or newer, HTTP/2 and HTTP/1.1 by ALPN.
func TLSConfig(certs []tls.Certificate) *tls.Config {
	return &tls.Config{Certificates: certs, MinVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1"}}
}

// NewListener returns a listener whose connections are guarded.
func NewListener(ln net.Listener, cfg Config) net.Listener {
	return &listener{Listener: ln, cfg: cfg}
}

type listener struct {
	net.Listener
	cfg Config
}

func (l *listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	gc := &Conn{Conn: c, cfg: &l.cfg, h1: newH1Scanner(l.cfg.MaxHeaderBytes)}
	gc.h2.maxResets = l.cfg.H2MaxResets
	if l.cfg.TLS != nil {
		tc := tls.Server(c, l.cfg.TLS)
		gc.Conn, gc.tlsConn = tc, tc
	}
	return gc, nil
}

// Protocol modes of a connection, found from its first bytes.
const (
	modeUnknown uint32 = iota
	modeH1
	modeH2
)

// preface opens every HTTP/2 connection (RFC 9113, section 3.4).
const preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// Conn is a guarded connection. Its Read and Write are each used by one
// goroutine at a time, as net/http does; its other methods are safe for
// concurrent use.
type Conn struct {
	net.Conn
	cfg     *Config
	tlsConn *tls.Conn // nil on a plain listener
	tls     atomic.Pointer[tls.ConnectionState]

	// Read side.
	mode  atomic.Uint32
	pre   int // bytes of the preface matched so far
	h1    h1Scanner
	h2    h2Watcher
	abuse error // set once the connection is ended for abuse

	// Write side of an HTTP/2 connection: where the server's frames end,
	// so that a GOAWAY of the guard's goes between two of them.
	wmu     sync.Mutex
	wframes frameTracker
	goAway  []byte        // a GOAWAY waiting for a frame boundary; nil: none
	goneOut chan struct{} // closed once the GOAWAY is written

	// What the handler reads.
	bad       atomic.Int64 // ordinal of the first ambiguous HTTP/1 head
	badReason atomic.Pointer[string]
	served    atomic.Int64 // HTTP/1 requests the handler was given

	armed atomic.Int64 // when the write deadline was last set (unix ns); 0: not set
}

// errAbuse is what reads return once the connection was ended for abuse:
// net/http's servers take io.EOF for a client gone and close quietly (any
// other error would get an HTTP/1.1 400 written on an HTTP/1 connection).
var errAbuse = io.EOF

// kindNoPreface is what inspect reports for a TLS connection that chose
// HTTP/2 by ALPN and did not open with the HTTP/2 preface.
const kindNoPreface = "no preface"

// HTTP/2 error codes the guard sends (RFC 9113, section 7).
const (
	errCodeProtocol        = 0x1
	errCodeEnhanceYourCalm = 0xb
)

// goAwayFrame returns a GOAWAY frame with lastStream and code.
func goAwayFrame(lastStream uint32, code uint32) []byte {
	f := []byte{0, 0, 8, 0x7, 0, 0, 0, 0, 0}
	f = binary.BigEndian.AppendUint32(f, lastStream&(1<<31-1))
	return binary.BigEndian.AppendUint32(f, code)
}

// Read reads from the connection and follows what it reads.
func (c *Conn) Read(p []byte) (int, error) {
	if c.abuse != nil {
		return 0, c.abuse
	}
	n, err := c.Conn.Read(p)
	if c.tlsConn != nil && c.tls.Load() == nil {
		if st := c.tlsConn.ConnectionState(); st.HandshakeComplete {
			c.tls.Store(&st)
		}
	}
	if n > 0 {
		if kind := c.inspect(p[:n]); kind == kindNoPreface {
			// ALPN chose HTTP/2 and the client sent something else:
			// net/http would read it as HTTP/1.1. Nothing was written
			// yet, so a GOAWAY can go first (RFC 9113, section 3.4).
			c.wmu.Lock()
			_, _ = c.Conn.Write(goAwayFrame(0, errCodeProtocol))
			c.wmu.Unlock()
			c.abuse = errAbuse
			return 0, c.abuse
		} else if kind != "" {
			c.abuse = errAbuse
			if c.cfg.OnAbuse != nil {
				c.cfg.OnAbuse(kind, c.RemoteAddr())
			}
			c.sendGoAway(goAwayFrame(c.h2.lastStream, errCodeEnhanceYourCalm))
			c.linger(p)
			// The failed read makes the HTTP/2 server close the connection.
			return 0, c.abuse
		}
	}
	return n, err
}

// inspect follows p; it returns the kind of abuse found, or "".
func (c *Conn) inspect(p []byte) string {
	switch c.mode.Load() {
	case modeUnknown:
		m := min(len(p), len(preface)-c.pre)
		if string(p[:m]) == preface[c.pre:c.pre+m] {
			c.pre += m
			if c.pre < len(preface) {
				return ""
			}
			c.mode.Store(modeH2)
			return c.h2.feed(p[m:], time.Now)
		}
		if st := c.tls.Load(); st != nil && st.NegotiatedProtocol == "h2" {
			return kindNoPreface
		}
		c.mode.Store(modeH1)
		c.h1.feed([]byte(preface[:c.pre]))
		c.feedH1(p)
	case modeH1:
		c.feedH1(p)
	case modeH2:
		return c.h2.feed(p, time.Now)
	}
	return ""
}

func (c *Conn) feedH1(p []byte) {
	if c.h1.stopped() {
		return
	}
	c.h1.feed(p)
	if c.h1.bad != 0 && c.bad.Load() == 0 {
		reason := c.h1.badReason
		c.badReason.Store(&reason)
		c.bad.Store(int64(c.h1.bad))
	}
}

// NextRequest is called by the handler for each HTTP/1 request it is
// given, in order. It reports whether the request is one whose framing is
// ambiguous (it must be refused with 400 and the connection closed), and
// why.
func (c *Conn) NextRequest() (refuse bool, reason string) {
	n := c.served.Add(1)
	if bad := c.bad.Load(); bad != 0 && n >= bad {
		if r := c.badReason.Load(); r != nil {
			reason = *r
		}
		return true, reason
	}
	return false, ""
}

// TLS returns the state of the connection's TLS handshake, or nil for a
// plain connection (or one whose handshake has not completed).
func (c *Conn) TLS() *tls.ConnectionState { return c.tls.Load() }

// sendGoAway writes frame between two of the HTTP/2 server's frames: at
// once if the server's last write ended one, else by the server's next
// write that ends one (waiting at most a second for it).
func (c *Conn) sendGoAway(frame []byte) {
	c.wmu.Lock()
	if c.wframes.atBoundary() {
		_, _ = c.Conn.Write(frame)
		c.wmu.Unlock()
		return
	}
	c.goAway, c.goneOut = frame, make(chan struct{})
	done := c.goneOut
	c.wmu.Unlock()
	t := time.NewTimer(time.Second)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	}
}

// lingerTime is how long an abusive connection is read (and what it sends
// thrown away) after its GOAWAY, before it is closed.
const lingerTime = time.Second

// linger reads and discards what the client still sends, for lingerTime
// or until it stops: a connection closed with unread bytes is reset, and a
// reset can destroy the GOAWAY before the client reads it.
func (c *Conn) linger(buf []byte) {
	_ = c.Conn.SetReadDeadline(time.Now().Add(lingerTime))
	for {
		if _, err := c.Conn.Read(buf); err != nil {
			return
		}
	}
}

// Write writes to the connection. On HTTP/1 connections a write that
// makes no progress for Config.SendTimeout fails.
func (c *Conn) Write(p []byte) (int, error) {
	if c.mode.Load() == modeH2 {
		c.wmu.Lock()
		defer c.wmu.Unlock()
		n, err := c.Conn.Write(p)
		c.wframes.feed(p[:n])
		if c.goAway != nil && c.wframes.atBoundary() {
			_, _ = c.Conn.Write(c.goAway)
			c.goAway = nil
			close(c.goneOut)
		}
		return n, err
	}
	if d := c.cfg.SendTimeout; d > 0 {
		// Setting a deadline costs a timer update: it is moved only once
		// a quarter of the timeout has passed, so a write always has at
		// least three quarters of it.
		now := time.Now()
		if now.UnixNano()-c.armed.Load() > int64(d/4) {
			c.armed.Store(now.UnixNano())
			_ = c.Conn.SetWriteDeadline(now.Add(d))
		}
	}
	return c.Conn.Write(p)
}

// SetDeadline implements net.Conn.
func (c *Conn) SetDeadline(t time.Time) error {
	c.armed.Store(0) // the next write sets its own
	return c.Conn.SetDeadline(t)
}

// SetWriteDeadline implements net.Conn.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	c.armed.Store(0)
	return c.Conn.SetWriteDeadline(t)
}

// CloseWrite half-closes the connection (TCP, TLS), so that an answer sent
// before closing reaches the client before the connection is reset.
func (c *Conn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

type ctxKey struct{}

// ConnContext is an http.Server ConnContext: it makes the guarded
// connection reachable from its requests' contexts (FromContext).
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	if gc, ok := c.(*Conn); ok {
		return context.WithValue(ctx, ctxKey{}, gc)
	}
	return ctx
}

// FromContext returns the guarded connection a request arrived on, or nil.
func FromContext(ctx context.Context) *Conn {
	gc, _ := ctx.Value(ctxKey{}).(*Conn)
	return gc
}
