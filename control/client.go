package control

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
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
	// Heartbeat, if positive, is how often Run sends a padded PING. QUIC's
	// own keep-alive packets are too small to draw a stateless reset from a
	// restarted server, so without a heartbeat a client whose server came
	// back at once would notice only at its idle timeout. Set it before Run.
	Heartbeat time.Duration
}

// heartbeatPadding makes a heartbeat's packet larger than the 42 bytes below
// which quic-go sends no stateless reset.
const heartbeatPadding = 32

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
	// Delta must apply an incremental update from version from to to, or
	// return why it cannot (ErrOutOfSequence when the client does not hold
	// version from: a full sync follows).
	Delta(from, to uint64, hash []byte, d ClientDelta) error
	// State returns the version and hash of the rules in force, for the
	// periodic hash check.
	State() (version uint64, hash []byte)
	// GoAway reports that the server is draining this connection.
	GoAway(reason string)
}

// ErrOutOfSequence is returned by ClientEvents.Delta when the client does
// not hold the version the delta starts from.
var ErrOutOfSequence = errors.New("delta does not start from the version in force")

// Run reads the server's messages until the stream ends or ctx is done,
// applies snapshots and deltas and reports the outcome (APPLIED), answers
// PINGs, and checks the rule set with the server: a hash check at the
// server's hash-check interval, a request for a full snapshot at its
// full-sync interval.
func (p *ClientPeer) Run(ctx context.Context, ev ClientEvents) error {
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(ctx, func() { _ = p.w.s.SetReadDeadline(time.Now()) })
	defer stop()
	var checks sync.WaitGroup
	defer checks.Wait()
	defer cancel() // before Wait: stops the checker
	checks.Go(func() { p.check(ctx, ev) })
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
			rs, err := rules.Decode(m.Rules)
			if err == nil {
				err = ev.Snapshot(m.Version, m.Hash, rs)
			}
			if serr := p.sendApplied(m.Version, m.Hash, err); serr != nil {
				return serr
			}
		case codec.MsgDelta:
			m, err := codec.ParseDelta(payload)
			if err != nil {
				return err
			}
			up, err := rules.Decode(m.Upsert)
			if err == nil {
				err = ev.Delta(m.From, m.To, m.Hash, ClientDelta{Upsert: up, Delete: m.Delete})
			}
			if serr := p.sendApplied(m.To, m.Hash, err); serr != nil {
				return serr
			}
			if errors.Is(err, ErrOutOfSequence) {
				if err := p.requestSnapshot(ev); err != nil {
					return err
				}
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
		case codec.MsgDeclared:
			m, err := codec.ParseDeclared(payload)
			if err != nil {
				return err
			}
			if d, ok := ev.(DeclaredEvents); ok {
				d.Declared(m)
			}
		default:
			return fmt.Errorf("%w: unexpected %s from server", codec.ErrMalformed, t)
		}
	}
}

// sendApplied reports to the server the outcome of applying version: err,
// if not nil, is why the rules were not applied.
func (p *ClientPeer) sendApplied(version uint64, hash []byte, err error) error {
	applied := &codec.Applied{Version: version, Hash: hash}
	if err != nil {
		applied.Error = err.Error()
	}
	return p.w.send(func(b []byte) []byte { return codec.AppendApplied(b, applied) })
}

// check sends a hash check every hash-check interval, asks for a full
// snapshot every full-sync interval and sends the heartbeat, until ctx
// ends.
func (p *ClientPeer) check(ctx context.Context, ev ClientEvents) {
	// The checks are jittered: clients that connected together (after a
	// server restart, say) do not check, or ask for snapshots, together.
	hashT, fullT, beatT := newJittered(p.Ack.HashCheckInterval), newJittered(p.Ack.FullSyncInterval), ticker(p.Heartbeat)
	defer hashT.Stop()
	defer fullT.Stop()
	defer beatT.Stop()
	var nonce uint64
	for {
		var err error
		select {
		case <-ctx.Done():
			return
		case <-beatT.C:
			nonce++
			err = p.w.send(func(b []byte) []byte {
				return codec.AppendPing(b, codec.Ping{Nonce: nonce, Padding: heartbeatPadding}, false)
			})
		case <-hashT.C:
			hashT.next()
			v, h := ev.State()
			err = p.w.send(func(b []byte) []byte { return codec.AppendHashCheck(b, &codec.HashCheck{Version: v, Hash: h}) })
		case <-fullT.C:
			fullT.next()
			err = p.requestSnapshot(ev)
		}
		if err != nil {
			return // the stream is gone; Run sees it too
		}
	}
}

// ticker returns a ticker every d, or one that never ticks if d is not
// positive (the server asked for no checks, or no heartbeat is set).
func ticker(d time.Duration) *time.Ticker {
	if d <= 0 {
		t := time.NewTicker(time.Hour)
		t.Stop()
		return t
	}
	return time.NewTicker(d)
}

// jittered fires about every d: each wait is d times a random factor in
// [0.75, 1.25), the first a random part of d. A d that is not positive
// never fires.
type jittered struct {
	*time.Timer
	d time.Duration
}

func newJittered(d time.Duration) *jittered {
	if d <= 0 {
		t := time.NewTimer(time.Hour)
		t.Stop()
		return &jittered{Timer: t}
	}
	return &jittered{Timer: time.NewTimer(time.Duration(rand.Int64N(int64(d)) + 1)), d: d}
}

// next arms the timer for the following wait, after it fired.
func (j *jittered) next() {
	if j.d > 0 {
		j.Reset(j.d*3/4 + time.Duration(rand.Int64N(int64(j.d)/2+1)))
	}
}

// requestSnapshot asks for a full snapshot: a hash check without a hash.
func (p *ClientPeer) requestSnapshot(ev ClientEvents) error {
	v, _ := ev.State()
	return p.w.send(func(b []byte) []byte { return codec.AppendHashCheck(b, &codec.HashCheck{Version: v}) })
}

// DeclaredEvents is implemented by ClientEvents that declare rules: Run
// hands them the server's answer to Declare.
type DeclaredEvents interface {
	Declared(m *codec.Declared)
}

// Declare sends the rules this client claims (each named by its ID, with
// no client), replacing those it declared before on this connection. The
// server answers with DECLARED (DeclaredEvents) and, for the claims it
// accepts, the usual rule update.
func (p *ClientPeer) Declare(rs []rules.Rule) error {
	m := &codec.Declare{Rules: rules.Encode(rs)}
	return p.w.send(func(b []byte) []byte { return codec.AppendDeclare(b, m) })
}

// GoAway tells the server that this client is draining.
func (p *ClientPeer) GoAway(reason string) error {
	return p.w.send(func(b []byte) []byte { return codec.AppendGoAway(b, &codec.GoAway{Reason: reason}) })
}
