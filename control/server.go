package control

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/qtunnel/qtunnel/codec"
	"github.com/qtunnel/qtunnel/rules"
)

// RejectReason is what a refused client is told: it does not say whether the
// id or the token was wrong.
const RejectReason = "unknown client id or invalid token"

// ErrUnauthenticated is returned by Handshake when the client's id or token
// is wrong. The client has been sent a REJECT.
var ErrUnauthenticated = errors.New("client authentication failed")

// ServerPeer is the server's end of one client's control stream.
type ServerPeer struct {
	w     *wire
	Hello *codec.Hello
	heard atomic.Int64 // when the client's last message arrived, unix ns
	nonce atomic.Uint64
}

// Handshake reads the client's HELLO (within timeout) and checks its version
// and token. On failure it sends REJECT and returns an error; the caller then
// closes the connection with codec.ConnAuthFailed (or ConnProtocol). With
// WithGate, the gate may refuse the attempt before the token is checked.
func Handshake(ctx context.Context, s Stream, tokens Tokens, timeout time.Duration, opts ...HandshakeOption) (*ServerPeer, error) {
	var o handshakeOptions
	for _, opt := range opts {
		opt(&o)
	}
	w := newWire(s)
	t, p, err := w.recvWithin(ctx, timeout)
	if err != nil {
		return nil, fmt.Errorf("read HELLO: %w", err)
	}
	if t != codec.MsgHello {
		return nil, fmt.Errorf("%w: want HELLO, got %s", codec.ErrMalformed, t)
	}
	hello, err := codec.ParseHello(p)
	if err != nil {
		return nil, err
	}
	if hello.Version != codec.ProtocolVersion {
		msg := fmt.Sprintf("control protocol version %d is not supported (want %d)", hello.Version, codec.ProtocolVersion)
		_ = w.send(func(b []byte) []byte {
			return codec.AppendReject(b, &codec.Error{Status: http.StatusUpgradeRequired, Message: msg})
		})
		return nil, fmt.Errorf("%w: %s", codec.ErrMalformed, msg)
	}
	if o.gate != nil {
		if err := o.gate(hello.ClientID); err != nil {
			return nil, fmt.Errorf("client %q refused before its token was checked: %w", hello.ClientID, err)
		}
	}
	if !tokens.Check(hello.ClientID, hello.Token) {
		_ = w.send(func(b []byte) []byte {
			return codec.AppendReject(b, &codec.Error{Status: http.StatusUnauthorized, Message: RejectReason})
		})
		return nil, fmt.Errorf("%w: client %q", ErrUnauthenticated, hello.ClientID)
	}
	hello.Token = "" // not kept past the check
	peer := &ServerPeer{w: w, Hello: hello}
	peer.heard.Store(time.Now().UnixNano())
	return peer, nil
}

// Alive reports whether the client answers: it sends a PING and waits, up
// to timeout, for any message from the client (its PONG, or anything else
// it sends meanwhile). Run must be reading the stream.
func (p *ServerPeer) Alive(ctx context.Context, timeout time.Duration) bool {
	sent := time.Now().UnixNano()
	ping := codec.Ping{Nonce: p.nonce.Add(1)}
	if err := p.w.send(func(b []byte) []byte { return codec.AppendPing(b, ping, false) }); err != nil {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for p.heard.Load() < sent {
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
	}
	return true
}

// Accept sends HELLO_ACK.
func (p *ServerPeer) Accept(ack *codec.HelloAck) error {
	return p.w.send(func(b []byte) []byte { return codec.AppendHelloAck(b, ack) })
}

// SendSnapshot sends the client its full rule set at t's version.
func (p *ServerPeer) SendSnapshot(t *rules.Table, client string) error {
	rs := t.ForClient(client)
	h := rules.Hash(rs)
	msg := &codec.Snapshot{Version: t.Version(), Hash: h[:], Rules: rules.Encode(rs)}
	return p.w.send(func(b []byte) []byte { return codec.AppendSnapshot(b, msg) })
}

// SendDelta sends the client its changes from version from to t.
func (p *ServerPeer) SendDelta(from uint64, t *rules.Table, client string, d ClientDelta) error {
	h := rules.Hash(t.ForClient(client))
	msg := &codec.Delta{From: from, To: t.Version(), Hash: h[:], Upsert: rules.Encode(d.Upsert), Delete: d.Delete}
	return p.w.send(func(b []byte) []byte { return codec.AppendDelta(b, msg) })
}

// GoAway tells the client to open no new streams on this connection.
func (p *ServerPeer) GoAway(reason string) error {
	return p.w.send(func(b []byte) []byte { return codec.AppendGoAway(b, &codec.GoAway{Reason: reason}) })
}

// ServerEvents receives what a client says on its control stream. Methods
// are called from the goroutine running Run, one at a time.
type ServerEvents interface {
	// Applied reports the outcome of a snapshot the client received.
	Applied(m *codec.Applied)
	// HashCheck reports the client's periodic statement of its rule set;
	// a check without a hash asks for a full snapshot.
	HashCheck(m *codec.HashCheck)
	// GoAway reports that the client is draining.
	GoAway(reason string)
}

// Declarer is implemented by ServerEvents that take the rules clients
// declare (DECLARE): Declare answers with the outcome of each claim, and Run
// sends it back as DECLARED. Without it, every claim is refused.
type Declarer interface {
	Declare(m *codec.Declare) *codec.Declared
}

// ErrNoDeclare is the refusal of claims sent to a server that takes none.
const ErrNoDeclare = "this server takes no declared rules"

// Run reads the client's messages until the stream ends or ctx is done, and
// answers PINGs. It returns nil when the client closed the stream cleanly.
func (p *ServerPeer) Run(ctx context.Context, ev ServerEvents) error {
	stop := context.AfterFunc(ctx, func() { _ = p.w.s.SetReadDeadline(time.Now()) })
	defer stop()
	for {
		t, payload, err := p.w.recv()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		p.heard.Store(time.Now().UnixNano())
		switch t {
		case codec.MsgApplied:
			m, err := codec.ParseApplied(payload)
			if err != nil {
				return err
			}
			ev.Applied(m)
		case codec.MsgHashCheck:
			m, err := codec.ParseHashCheck(payload)
			if err != nil {
				return err
			}
			ev.HashCheck(m)
		case codec.MsgPing:
			m, err := codec.ParsePing(payload)
			if err != nil {
				return err
			}
			if m.Padding > 0 {
				// A client's heartbeat: its purpose is a packet large
				// enough to draw a stateless reset from a restarted
				// server. QUIC's acknowledgement tells the client this
				// server is alive; a PONG would cost a packet each way
				// per client per heartbeat, the most of an idle
				// server's work.
				break
			}
			if err := p.w.send(func(b []byte) []byte { return codec.AppendPing(b, m, true) }); err != nil {
				return err
			}
		case codec.MsgPong:
		case codec.MsgGoAway:
			m, err := codec.ParseGoAway(payload)
			if err != nil {
				return err
			}
			ev.GoAway(m.Reason)
		case codec.MsgDeclare:
			m, err := codec.ParseDeclare(payload)
			if err != nil {
				return err
			}
			if err := p.declare(ev, m); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%w: unexpected %s from client", codec.ErrMalformed, t)
		}
	}
}

// declare answers a DECLARE with ev's outcome, or refuses every claim when
// ev takes none.
func (p *ServerPeer) declare(ev ServerEvents, m *codec.Declare) error {
	var out *codec.Declared
	if d, ok := ev.(Declarer); ok {
		out = d.Declare(m)
	} else {
		out = &codec.Declared{}
		rs, err := rules.Decode(m.Rules)
		for _, r := range rs {
			out.Results = append(out.Results, codec.DeclaredRule{Name: r.ID, Error: ErrNoDeclare})
		}
		if err != nil {
			out.Results = append(out.Results, codec.DeclaredRule{Error: err.Error()})
		}
	}
	return p.w.send(func(b []byte) []byte { return codec.AppendDeclared(b, out) })
}
