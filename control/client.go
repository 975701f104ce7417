package control

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/qtunnel/qtunnel/codec"
	"github.com/qtunnel/qtunnel/rules"
)

// RejectedError is returned by Dial when the server refused the client. It
// is not retryable with the same credentials.
type RejectedError struct{ Reason string }

func (e *RejectedError) Error() string { return "server rejected this client: " + e.Reason }

// ClientPeer is the client's end of its control stream.
type ClientPeer struct {
	w   *wire
	Ack *codec.HelloAck
}

// Hello sends HELLO and waits (within timeout) for HELLO_ACK. A REJECT
// returns *RejectedError.
func Hello(ctx context.Context, s Stream, hello *codec.Hello, timeout time.Duration) (*ClientPeer, error) {
	w := newWire(s)
	hello.Version = codec.ProtocolVersion
	if err := w.send(func(b []byte) []byte { return codec.AppendHello(b, hello) }); err != nil {
		return nil, fmt.Errorf("send HELLO: %w", err)
	}
	t, p, err := w.recvWithin(ctx, timeout)
	if err != nil {
		return nil, fmt.Errorf("wait for HELLO_ACK: %w", err)
	}
	switch t {
	case codec.MsgHelloAck:
		ack, err := codec.ParseHelloAck(p)
		if err != nil {
			return nil, err
		}
		return &ClientPeer{w: w, Ack: ack}, nil
	case codec.MsgReject:
		e, err := codec.ParseReject(p)
		if err != nil {
			return nil, err
		}
		return nil, &RejectedError{Reason: e.Message}
	}
	return nil, fmt.Errorf("%w: want HELLO_ACK, got %s", codec.ErrMalformed, t)
}

// ClientEvents receives what the server says. Methods are called from the
// goroutine running Run, one at a time.
type ClientEvents interface {
	// Snapshot must build and install the rule set, or return why it cannot;
	// on error the client keeps its previous rules.
	Snapshot(version uint64, hash []byte, rs []rules.Rule) error
	// GoAway reports that the server is draining this connection.
	GoAway(reason string)
}

// Run reads the server's messages until the stream ends or ctx is done,
// applies snapshots and reports the outcome (APPLIED), and answers PINGs.
func (p *ClientPeer) Run(ctx context.Context, ev ClientEvents) error {
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
		switch t {
		case codec.MsgSnapshot:
			m, err := codec.ParseSnapshot(payload)
			if err != nil {
				return err
			}
			applied := &codec.Applied{Version: m.Version, Hash: m.Hash}
			rs, err := rules.Decode(m.Rules)
			if err == nil {
				err = ev.Snapshot(m.Version, m.Hash, rs)
			}
			if err != nil {
				applied.Error = err.Error()
			}
			if err := p.w.send(func(b []byte) []byte { return codec.AppendApplied(b, applied) }); err != nil {
				return err
			}
		case codec.MsgPing:
			m, err := codec.ParsePing(payload)
			if err != nil {
				return err
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
		default:
			return fmt.Errorf("%w: unexpected %s from server", codec.ErrMalformed, t)
		}
	}
}

// GoAway tells the server that this client is draining.
func (p *ClientPeer) GoAway(reason string) error {
	return p.w.send(func(b []byte) []byte { return codec.AppendGoAway(b, &codec.GoAway{Reason: reason}) })
}
