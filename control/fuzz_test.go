package control_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/codec"
	"github.com/qtunnel/qtunnel/control"
	"github.com/qtunnel/qtunnel/rules"
)

// The fuzz targets of this package: the token hashes of the server's file,
// and each end of the control stream reading whatever its peer sends.
// testdata/fuzz/<name>/ holds more seeds.

// FuzzParseTokenHash checks token_sha256 values: what parses is 64 hex
// digits (either case), printed back in lower case; nothing else parses.
func FuzzParseTokenHash(f *testing.F) {
	valid := control.HashToken("tok").String()
	for _, s := range []string{valid, strings.ToUpper(valid), valid[:63], valid + "0", "sha256:" + valid, " " + valid, ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		h, err := control.ParseTokenHash(s)
		if err != nil {
			require.EqualError(t, err, "want 64 hex digits (the SHA-256 of the token; see 'tunnel hash-token')")
			require.Equal(t, control.TokenHash{}, h)
			require.False(t, len(s) == 64 && strings.Trim(strings.ToLower(s), "0123456789abcdef") == "", "%q is 64 hex digits", s)
			return
		}
		require.Equal(t, strings.ToLower(s), h.String())
		again, err := control.ParseTokenHash(h.String())
		require.NoError(t, err)
		require.Equal(t, h, again)
	})
}

// fuzzStream is a control stream whose peer has sent in (delivered in reads
// of at most 7 bytes, so that messages arrive in pieces) and closed its
// side; what is written to it is kept.
type fuzzStream struct {
	in  io.Reader
	mu  sync.Mutex
	out bytes.Buffer
}

func newFuzzStream(in []byte) *fuzzStream {
	return &fuzzStream{in: &shortReader{b: in}}
}

func (s *fuzzStream) Read(p []byte) (int, error) { return s.in.Read(p) }

func (s *fuzzStream) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.out.Write(p)
}

func (s *fuzzStream) SetReadDeadline(time.Time) error { return nil }

// written returns the messages written to s, which must be well-formed
// frames.
func (s *fuzzStream) written(t *testing.T) []message {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	msgs, err := readAllMessages(s.out.Bytes())
	require.ErrorIs(t, err, io.EOF, "what an end writes is whole frames")
	return msgs
}

type shortReader struct{ b []byte }

func (r *shortReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), 7)], r.b)
	r.b = r.b[n:]
	return n, nil
}

type message struct {
	t codec.FrameType
	p []byte
}

// readAllMessages reads b as the control stream does, and returns the
// messages up to the error that ends it (io.EOF for a clean end).
func readAllMessages(b []byte) ([]message, error) {
	r := codec.NewReader(bytes.NewReader(b), control.MaxMessageSize)
	var out []message
	for {
		t, p, err := r.Next()
		if err != nil {
			return out, err
		}
		out = append(out, message{t, bytes.Clone(p)})
	}
}

// requireEndError checks an error that ended a control stream: one of the
// kinds a peer's bytes can cause.
func requireEndError(t *testing.T, err error) {
	t.Helper()
	ok := errors.Is(err, codec.ErrMalformed) || errors.Is(err, codec.ErrTooLarge) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF)
	require.True(t, ok, "error of an unexpected kind: %v", err)
}

// fuzzClientEvents is a client's rule state, as a gateway client keeps it.
type fuzzClientEvents struct {
	version uint64
	hash    []byte
	rules   []rules.Rule
	calls   []string
}

func (e *fuzzClientEvents) install(version uint64, hash []byte, rs []rules.Rule) error {
	t, err := rules.NewTable(version, rs)
	if err != nil {
		return err
	}
	if h := t.Hash(); !bytes.Equal(h[:], hash) {
		return errors.New("hash mismatch")
	}
	e.version, e.hash, e.rules = version, hash, rs
	return nil
}

func (e *fuzzClientEvents) Snapshot(version uint64, hash []byte, rs []rules.Rule) error {
	e.calls = append(e.calls, fmt.Sprintf("snapshot %d %x %d", version, hash, len(rs)))
	return e.install(version, hash, rs)
}

func (e *fuzzClientEvents) Delta(from, to uint64, hash []byte, d control.ClientDelta) error {
	e.calls = append(e.calls, fmt.Sprintf("delta %d %d %x %d %q", from, to, hash, len(d.Upsert), d.Delete))
	if from != e.version {
		return control.ErrOutOfSequence
	}
	return e.install(to, hash, control.ApplyDelta(e.rules, d))
}

func (e *fuzzClientEvents) State() (uint64, []byte) { return e.version, e.hash }

func (e *fuzzClientEvents) GoAway(reason string) {
	e.calls = append(e.calls, "goaway "+reason)
}

// clientModel is what the client end must do with the server's messages
// msgs (after HELLO_ACK), read off the protocol's description: the events
// it reports, the messages it answers with (with no periodic check due),
// and whether it stops at a bad message.
func clientModel(msgs []message) (ev *fuzzClientEvents, answers []message, stopped bool) {
	ev = &fuzzClientEvents{}
	applied := func(version uint64, hash []byte, err error) {
		a := &codec.Applied{Version: version, Hash: hash}
		if err != nil {
			a.Error = err.Error()
		}
		answers = append(answers, message{codec.MsgApplied, codec.AppendApplied(nil, a)[codec.FrameHeaderLen:]})
	}
	for _, m := range msgs {
		switch m.t {
		case codec.MsgSnapshot:
			s, err := codec.ParseSnapshot(m.p)
			if err != nil {
				return ev, answers, true
			}
			rs, err := rules.Decode(s.Rules)
			if err == nil {
				err = ev.Snapshot(s.Version, s.Hash, rs)
			}
			applied(s.Version, s.Hash, err)
		case codec.MsgDelta:
			d, err := codec.ParseDelta(m.p)
			if err != nil {
				return ev, answers, true
			}
			up, err := rules.Decode(d.Upsert)
			if err == nil {
				err = ev.Delta(d.From, d.To, d.Hash, control.ClientDelta{Upsert: up, Delete: d.Delete})
			}
			applied(d.To, d.Hash, err)
			if errors.Is(err, control.ErrOutOfSequence) {
				// A full sync follows: a HASH_CHECK without a hash.
				answers = append(answers, message{codec.MsgHashCheck, codec.AppendHashCheck(nil, &codec.HashCheck{Version: ev.version})[codec.FrameHeaderLen:]})
			}
		case codec.MsgPing:
			p, err := codec.ParsePing(m.p)
			if err != nil {
				return ev, answers, true
			}
			answers = append(answers, message{codec.MsgPong, codec.AppendPing(nil, p, true)[codec.FrameHeaderLen:]})
		case codec.MsgPong:
		case codec.MsgGoAway:
			g, err := codec.ParseGoAway(m.p)
			if err != nil {
				return ev, answers, true
			}
			ev.GoAway(g.Reason)
		case codec.MsgDeclared:
			// The answer to a DECLARE; these events declare nothing.
			if _, err := codec.ParseDeclared(m.p); err != nil {
				return ev, answers, true
			}
		default:
			return ev, answers, true
		}
	}
	return ev, answers, false
}

// clientSeed is a server's side of a control stream: HELLO_ACK, then msgs.
func clientSeed(msgs ...[]byte) []byte {
	b := codec.AppendHelloAck(nil, &codec.HelloAck{SessionID: "s1", HashCheckInterval: time.Hour, FullSyncInterval: time.Hour})
	for _, m := range msgs {
		b = append(b, m...)
	}
	return b
}

var fuzzRules = []rules.Rule{
	{ID: "web", Client: "c1", Direction: rules.Reverse, Host: "app.example.test", Upstream: "http://127.0.0.1:3000"},
	{ID: "db", Client: "c1", Direction: rules.Forward, Listen: "127.0.0.1:6000", Upstream: "http://127.0.0.1:5432"},
}

// FuzzClientPeer runs the client end of the control stream (Hello, then
// Run) against whatever the server sends. The handshake succeeds only on a
// HELLO_ACK and reports a REJECT as *RejectedError; Run reports exactly the
// events, and answers with exactly the APPLIED and PONG messages, that the
// protocol's description gives for the messages it read, and ends with nil
// at a clean end of the stream or with an error of a documented kind at
// the first bad message.
func FuzzClientPeer(f *testing.F) {
	hash := func(rs []rules.Rule) []byte { h := rules.Hash(rs); return h[:] }
	f.Add(clientSeed(
		codec.AppendSnapshot(nil, &codec.Snapshot{Version: 1, Hash: hash(fuzzRules), Rules: rules.Encode(fuzzRules)}),
		codec.AppendPing(nil, codec.Ping{Nonce: 9, Padding: 32}, false),
		codec.AppendDelta(nil, &codec.Delta{From: 1, To: 2, Hash: hash(fuzzRules[:1]), Upsert: rules.Encode(nil), Delete: []string{"db"}}),
		codec.AppendDelta(nil, &codec.Delta{From: 7, To: 8, Hash: hash(nil), Upsert: rules.Encode(nil)}),
		codec.AppendGoAway(nil, &codec.GoAway{Reason: "shutdown"}),
	))
	f.Add(clientSeed(codec.AppendSnapshot(nil, &codec.Snapshot{Version: 3, Hash: []byte{1}, Rules: []byte("not json")})))
	f.Add(codec.AppendReject(nil, &codec.Error{Status: 401, Message: control.RejectReason}))
	f.Add(clientSeed(codec.AppendData(nil, []byte("no DATA here"))))
	f.Fuzz(func(t *testing.T, in []byte) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s := newFuzzStream(in)
		peer, err := control.Hello(ctx, s, &codec.Hello{ClientID: "c1", Token: "tok"}, 10*time.Second)
		msgs, tail := readAllMessages(in)
		out := s.written(t)
		require.NotEmpty(t, out)
		require.Equal(t, codec.MsgHello, out[0].t, "the client speaks first")
		hello, herr := codec.ParseHello(out[0].p)
		require.NoError(t, herr)
		require.Equal(t, &codec.Hello{Version: codec.ProtocolVersion, ClientID: "c1", Token: "tok"}, hello)
		if err != nil {
			var rej *control.RejectedError
			if errors.As(err, &rej) {
				require.Equal(t, codec.MsgReject, msgs[0].t)
				e, perr := codec.ParseReject(msgs[0].p)
				require.NoError(t, perr)
				require.Equal(t, e.Message, rej.Reason)
			} else {
				requireEndError(t, err)
			}
			return
		}
		require.Equal(t, codec.MsgHelloAck, msgs[0].t)
		ack, perr := codec.ParseHelloAck(msgs[0].p)
		require.NoError(t, perr)
		require.Equal(t, ack, peer.Ack)

		// No periodic check falls due while Run reads a fuzzed input, so
		// that what the client writes does not depend on time.
		peer.Ack.HashCheckInterval, peer.Ack.FullSyncInterval = time.Hour, time.Hour
		ev := &fuzzClientEvents{}
		runErr := peer.Run(ctx, ev)
		want, answers, stopped := clientModel(msgs[1:])
		require.Equal(t, want.calls, ev.calls, "the events reported")
		got := s.written(t)[1:]
		if len(got) == 0 {
			got = nil
		}
		require.Equal(t, answers, got, "the messages answered")
		switch {
		case stopped:
			require.ErrorIs(t, runErr, codec.ErrMalformed, "a bad message ends Run")
		case errors.Is(tail, io.EOF):
			require.NoError(t, runErr, "a clean end of the stream ends Run with nil")
		default:
			requireEndError(t, runErr)
		}
	})
}

// fuzzServerEvents records what a ServerPeer reports.
type fuzzServerEvents struct{ calls []string }

func (e *fuzzServerEvents) Applied(m *codec.Applied) {
	e.calls = append(e.calls, fmt.Sprintf("applied %d %x %q", m.Version, m.Hash, m.Error))
}

func (e *fuzzServerEvents) HashCheck(m *codec.HashCheck) {
	e.calls = append(e.calls, fmt.Sprintf("hash-check %d %x", m.Version, m.Hash))
}

func (e *fuzzServerEvents) GoAway(reason string) { e.calls = append(e.calls, "goaway "+reason) }

// serverSeed is a client's side of a control stream: a HELLO, then msgs.
func serverSeed(token string, msgs ...[]byte) []byte {
	b := codec.AppendHello(nil, &codec.Hello{Version: codec.ProtocolVersion, ClientID: "c1", Token: token, AppliedVersion: 3, Hash: []byte{7}})
	for _, m := range msgs {
		b = append(b, m...)
	}
	return b
}

// FuzzServerPeer runs the server end of the control stream (Handshake,
// then Run) against whatever a client sends. The handshake admits exactly
// a well-formed HELLO of this protocol version with a known id and its
// token, answers every other HELLO with a REJECT that does not say what was
// wrong, and keeps no token; Run reports exactly the APPLIED, HASH_CHECK
// and GOAWAY messages it read, answers each PING with its PONG, and ends
// like FuzzClientPeer's.
func FuzzServerPeer(f *testing.F) {
	f.Add(serverSeed("tok",
		codec.AppendApplied(nil, &codec.Applied{Version: 4, Hash: []byte{1, 2}}),
		codec.AppendHashCheck(nil, &codec.HashCheck{Version: 4, Hash: []byte{1, 2}}),
		codec.AppendHashCheck(nil, &codec.HashCheck{Version: 4}),
		codec.AppendPing(nil, codec.Ping{Nonce: 1, Padding: 32}, false),
		codec.AppendPing(nil, codec.Ping{Nonce: 1}, true),
		codec.AppendGoAway(nil, &codec.GoAway{Reason: "draining"}),
	))
	f.Add(serverSeed("wrong"))
	f.Add(codec.AppendHello(nil, &codec.Hello{Version: 2, ClientID: "c1", Token: "tok"}))
	f.Add(serverSeed("tok", codec.AppendSnapshot(nil, &codec.Snapshot{Version: 1})))
	f.Fuzz(func(t *testing.T, in []byte) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s := newFuzzStream(in)
		peer, err := control.Handshake(ctx, s, tokens, 10*time.Second)
		msgs, tail := readAllMessages(in)
		out := s.written(t)
		if err != nil {
			if len(out) == 0 {
				requireEndError(t, err) // no HELLO to answer
				return
			}
			require.Len(t, out, 1, "a refused client gets one REJECT")
			require.Equal(t, codec.MsgReject, out[0].t)
			rej, perr := codec.ParseReject(out[0].p)
			require.NoError(t, perr)
			hello, perr := codec.ParseHello(msgs[0].p)
			require.NoError(t, perr, "only a well-formed HELLO is answered")
			if hello.Version != codec.ProtocolVersion {
				require.Equal(t, 426, rej.Status)
				require.ErrorIs(t, err, codec.ErrMalformed)
			} else {
				require.Equal(t, &codec.Error{Status: 401, Message: control.RejectReason}, rej)
				require.ErrorIs(t, err, control.ErrUnauthenticated)
				require.False(t, hello.ClientID == "c1" && hello.Token == "tok", "the right token was refused")
			}
			return
		}
		require.Empty(t, out, "an admitted client is answered by the caller (Accept)")
		hello, perr := codec.ParseHello(msgs[0].p)
		require.NoError(t, perr)
		require.Equal(t, codec.ProtocolVersion, int(hello.Version))
		require.Equal(t, "c1", hello.ClientID)
		require.Equal(t, "tok", hello.Token, "admitted with another token")
		hello.Token = ""
		require.Equal(t, hello, peer.Hello, "the peer keeps the HELLO without its token")

		ev := &fuzzServerEvents{}
		runErr := peer.Run(ctx, ev)
		var want fuzzServerEvents
		var pongs []message
		stopped := false
	model:
		for _, m := range msgs[1:] {
			switch m.t {
			case codec.MsgApplied:
				a, err := codec.ParseApplied(m.p)
				if err != nil {
					stopped = true
					break model
				}
				want.Applied(a)
			case codec.MsgHashCheck:
				h, err := codec.ParseHashCheck(m.p)
				if err != nil {
					stopped = true
					break model
				}
				want.HashCheck(h)
			case codec.MsgPing:
				p, err := codec.ParsePing(m.p)
				if err != nil {
					stopped = true
					break model
				}
				if p.Padding == 0 { // a padded PING is a heartbeat: not answered
					pongs = append(pongs, message{codec.MsgPong, codec.AppendPing(nil, p, true)[codec.FrameHeaderLen:]})
				}
			case codec.MsgDeclare:
				d, err := codec.ParseDeclare(m.p)
				if err != nil {
					stopped = true
					break model
				}
				// These events take no declared rules: every claim is
				// refused.
				out := &codec.Declared{}
				rs, err := rules.Decode(d.Rules)
				for _, r := range rs {
					out.Results = append(out.Results, codec.DeclaredRule{Name: r.ID, Error: control.ErrNoDeclare})
				}
				if err != nil {
					out.Results = append(out.Results, codec.DeclaredRule{Error: err.Error()})
				}
				pongs = append(pongs, message{codec.MsgDeclared, codec.AppendDeclared(nil, out)[codec.FrameHeaderLen:]})
			case codec.MsgPong:
			case codec.MsgGoAway:
				g, err := codec.ParseGoAway(m.p)
				if err != nil {
					stopped = true
					break model
				}
				want.GoAway(g.Reason)
			default:
				stopped = true
				break model
			}
		}
		require.Equal(t, want.calls, ev.calls, "the events reported")
		require.Equal(t, pongs, s.written(t), "the PONGs and DECLAREDs answered")
		switch {
		case stopped:
			require.ErrorIs(t, runErr, codec.ErrMalformed, "a bad message ends Run")
		case errors.Is(tail, io.EOF):
			require.NoError(t, runErr, "a clean end of the stream ends Run with nil")
		default:
			requireEndError(t, runErr)
		}
	})
}
