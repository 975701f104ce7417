package control_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/codec"
	"github.com/qtunnel/qtunnel/control"
	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/pipeline/pipelinetest"
	"github.com/qtunnel/qtunnel/rules"
)

func TestMain(m *testing.M) { pipelinetest.VerifyNoLeaks(m) }

// wait bounds every wait of these tests: long enough for a loaded CI
// machine, short enough to fail a hung test with a message.
const wait = 10 * time.Second

var tokens = control.Tokens{"c1": control.HashToken("tok")}

// recv returns the next value of ch, failing the test after wait.
func recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(wait):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// pipe returns the client and server ends of an in-memory stream; both are
// closed when the test ends.
func pipe(t *testing.T) (client, server net.Conn) {
	t.Helper()
	client, server = net.Pipe()
	t.Cleanup(func() {
		_ = client.Close()
		_ = server.Close()
	})
	return client, server
}

type handshakeResult struct {
	peer *control.ServerPeer
	err  error
}

// serve runs Handshake (and Accept with ack, if it succeeds and ack is not
// nil) on s in a goroutine.
func serve(s control.Stream, timeout time.Duration, ack *codec.HelloAck) <-chan handshakeResult {
	done := make(chan handshakeResult, 1)
	go func() {
		p, err := control.Handshake(context.Background(), s, tokens, timeout)
		if err == nil && ack != nil {
			err = p.Accept(ack)
		}
		done <- handshakeResult{p, err}
	}()
	return done
}

// link is a control stream after a successful handshake.
type link struct {
	server       *control.ServerPeer
	client       *control.ClientPeer
	cconn, sconn net.Conn
}

var testAck = &codec.HelloAck{SessionID: "sess-1", HashCheckInterval: 15 * time.Second, FullSyncInterval: 5 * time.Minute}

func connect(t *testing.T) link {
	t.Helper()
	cconn, sconn := pipe(t)
	done := serve(sconn, wait, testAck)
	cp, err := control.Hello(context.Background(), cconn, &codec.Hello{ClientID: "c1", Token: "tok"}, wait)
	require.NoError(t, err)
	r := recv(t, done, "handshake")
	require.NoError(t, r.err)
	return link{server: r.peer, client: cp, cconn: cconn, sconn: sconn}
}

// clientEvents records what a ClientPeer's Run reports.
type clientEvents struct {
	snapshotErr error
	snapshots   chan snapshotCall
	deltas      chan deltaCall
	goaways     chan string
	deltaErr    error
	version     uint64
	hash        []byte
}

type deltaCall struct {
	from, to uint64
	hash     []byte
	d        control.ClientDelta
}

type snapshotCall struct {
	version uint64
	hash    []byte
	rules   []rules.Rule
}

func newClientEvents(snapshotErr error) *clientEvents {
	return &clientEvents{snapshotErr: snapshotErr, snapshots: make(chan snapshotCall, 8), deltas: make(chan deltaCall, 8), goaways: make(chan string, 8)}
}

func (e *clientEvents) Delta(from, to uint64, hash []byte, d control.ClientDelta) error {
	e.deltas <- deltaCall{from, to, hash, d}
	return e.deltaErr
}

func (e *clientEvents) State() (uint64, []byte) { return e.version, e.hash }

func (e *clientEvents) Snapshot(version uint64, hash []byte, rs []rules.Rule) error {
	e.snapshots <- snapshotCall{version, hash, rs}
	return e.snapshotErr
}

func (e *clientEvents) GoAway(reason string) { e.goaways <- reason }

// serverEvents records what a ServerPeer's Run reports.
type serverEvents struct {
	applied    chan *codec.Applied
	hashChecks chan *codec.HashCheck
	goaways    chan string
}

func newServerEvents() *serverEvents {
	return &serverEvents{applied: make(chan *codec.Applied, 8), hashChecks: make(chan *codec.HashCheck, 8), goaways: make(chan string, 8)}
}

func (e *serverEvents) Applied(m *codec.Applied)     { e.applied <- m }
func (e *serverEvents) HashCheck(m *codec.HashCheck) { e.hashChecks <- m }
func (e *serverEvents) GoAway(reason string)         { e.goaways <- reason }

var (
	_ control.ClientEvents = (*clientEvents)(nil)
	_ control.ServerEvents = (*serverEvents)(nil)
)

// running is a Run in a goroutine; the test's cleanup cancels it and waits
// for it to return.
type running struct {
	cancel context.CancelFunc
	done   chan error
}

func start(t *testing.T, run func(context.Context) error) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(wait):
			t.Error("Run did not return after its context was cancelled")
		}
	})
	return r
}

// result waits for Run to return and gives its error. Use it once.
func (r *running) result(t *testing.T) error {
	t.Helper()
	err := recv(t, r.done, "Run to return")
	r.done <- err // for the cleanup
	return err
}

// write writes raw bytes to c from a goroutine (net.Pipe writes block until
// the peer reads) and returns the write's outcome.
func write(c net.Conn, b []byte) <-chan error {
	done := make(chan error, 1)
	go func() {
		_, err := c.Write(b)
		done <- err
	}()
	return done
}

// readMsg reads one control message from r.
func readMsg(t *testing.T, r *codec.Reader) (codec.FrameType, []byte) {
	t.Helper()
	type msg struct {
		t   codec.FrameType
		p   []byte
		err error
	}
	ch := make(chan msg, 1)
	go func() {
		ft, p, err := r.Next()
		ch <- msg{ft, append([]byte(nil), p...), err}
	}()
	m := recv(t, ch, "a control message")
	require.NoError(t, m.err)
	return m.t, m.p
}

func TestHandshakeAndHello(t *testing.T) {
	t.Parallel()
	cconn, sconn := pipe(t)
	done := serve(sconn, wait, testAck)
	hello := &codec.Hello{ClientID: "c1", Token: "tok", AppliedVersion: 7, Hash: []byte{1, 2, 3}}
	cp, err := control.Hello(context.Background(), cconn, hello, wait)
	require.NoError(t, err)
	require.Equal(t, testAck, cp.Ack)

	r := recv(t, done, "handshake")
	require.NoError(t, r.err)
	require.Equal(t, &codec.Hello{
		Version:        codec.ProtocolVersion,
		ClientID:       "c1",
		Token:          "", // cleared once checked
		AppliedVersion: 7,
		Hash:           []byte{1, 2, 3},
	}, r.peer.Hello)
}

func TestHandshakeRejectsBadCredentials(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		clientID string
		token    string
	}{
		{name: "wrong token", clientID: "c1", token: "nope"},
		{name: "empty token", clientID: "c1", token: ""},
		{name: "unknown client", clientID: "c2", token: "tok"},
		{name: "empty client id", clientID: "", token: "tok"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cconn, sconn := pipe(t)
			done := serve(sconn, wait, testAck)
			cp, err := control.Hello(context.Background(), cconn, &codec.Hello{ClientID: tt.clientID, Token: tt.token}, wait)
			require.Nil(t, cp)
			var rej *control.RejectedError
			require.ErrorAs(t, err, &rej)
			require.Equal(t, "unknown client id or invalid token", rej.Reason,
				"the reason does not say whether the id or the token was wrong")
			require.EqualError(t, err, "server rejected this client: unknown client id or invalid token")

			r := recv(t, done, "handshake")
			require.Nil(t, r.peer)
			require.ErrorIs(t, r.err, control.ErrUnauthenticated)
			require.Contains(t, r.err.Error(), fmt.Sprintf("%q", tt.clientID))
			require.NotContains(t, r.err.Error(), "tok", "the token is not logged")
		})
	}
}

func TestHandshakeRejectsOtherVersions(t *testing.T) {
	t.Parallel()
	for _, v := range []uint64{0, 2, 99} {
		t.Run(fmt.Sprint(v), func(t *testing.T) {
			t.Parallel()
			cconn, sconn := pipe(t)
			done := serve(sconn, wait, testAck)
			// The right credentials, but a version this server does not speak.
			wrote := write(cconn, codec.AppendHello(nil, &codec.Hello{Version: v, ClientID: "c1", Token: "tok"}))

			ft, p := readMsg(t, codec.NewReader(cconn, control.MaxMessageSize))
			require.NoError(t, recv(t, wrote, "HELLO write"))
			require.Equal(t, codec.MsgReject, ft)
			rej, err := codec.ParseReject(p)
			require.NoError(t, err)
			require.Equal(t, http.StatusUpgradeRequired, rej.Status)
			require.Equal(t, fmt.Sprintf("control protocol version %d is not supported (want %d)", v, codec.ProtocolVersion), rej.Message)

			r := recv(t, done, "handshake")
			require.Nil(t, r.peer)
			require.ErrorIs(t, r.err, codec.ErrMalformed)
			require.NotErrorIs(t, r.err, control.ErrUnauthenticated)
		})
	}
}

func TestHandshakeRejectsBadFirstMessage(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		msg     []byte
		wantIs  error
		wantMsg string
	}{
		{
			name:    "PING before HELLO",
			msg:     codec.AppendPing(nil, codec.Ping{Nonce: 1}, false),
			wantIs:  codec.ErrMalformed,
			wantMsg: "want HELLO, got PING",
		},
		{
			name:    "DATA frame",
			msg:     codec.AppendData(nil, []byte("x")),
			wantIs:  codec.ErrMalformed,
			wantMsg: "DATA frame on the control stream",
		},
		{
			name:    "truncated HELLO payload",
			msg:     append(codec.AppendFrameHeader(nil, codec.MsgHello, 1), 0x40),
			wantIs:  codec.ErrMalformed,
			wantMsg: "truncated integer",
		},
		{
			name:    "frame larger than MaxMessageSize",
			msg:     codec.AppendFrameHeader(nil, codec.MsgHello, control.MaxMessageSize+1),
			wantIs:  codec.ErrTooLarge,
			wantMsg: "limit 16777216",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cconn, sconn := pipe(t)
			done := serve(sconn, wait, testAck)
			wrote := write(cconn, tt.msg)
			r := recv(t, done, "handshake")
			require.Nil(t, r.peer)
			require.ErrorIs(t, r.err, tt.wantIs)
			require.ErrorContains(t, r.err, tt.wantMsg)
			_ = cconn.Close() // unblock the write if the server stopped reading
			<-wrote
		})
	}
}

func TestHandshakeTimeout(t *testing.T) {
	t.Parallel()
	_, sconn := pipe(t)
	const timeout = 50 * time.Millisecond
	begin := time.Now()
	r := recv(t, serve(sconn, timeout, testAck), "handshake")
	require.Nil(t, r.peer)
	require.ErrorIs(t, r.err, os.ErrDeadlineExceeded)
	require.ErrorContains(t, r.err, "read HELLO")
	require.GreaterOrEqual(t, time.Since(begin), timeout)
}

func TestHandshakeContextCancelled(t *testing.T) {
	t.Parallel()
	_, sconn := pipe(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	p, err := control.Handshake(ctx, sconn, tokens, time.Hour)
	require.Nil(t, p)
	require.ErrorIs(t, err, context.Canceled)
}

func TestHelloTimeout(t *testing.T) {
	t.Parallel()
	cconn, sconn := pipe(t)
	// A server that reads the HELLO and never answers.
	read := make(chan codec.FrameType, 1)
	go func() {
		ft, _, _ := codec.NewReader(sconn, control.MaxMessageSize).Next()
		read <- ft
	}()
	cp, err := control.Hello(context.Background(), cconn, &codec.Hello{ClientID: "c1", Token: "tok"}, 50*time.Millisecond)
	require.Nil(t, cp)
	require.ErrorIs(t, err, os.ErrDeadlineExceeded)
	require.ErrorContains(t, err, "wait for HELLO_ACK")
	require.Equal(t, codec.MsgHello, recv(t, read, "the server to read HELLO"))
}

func TestHelloUnexpectedAnswer(t *testing.T) {
	t.Parallel()
	cconn, sconn := pipe(t)
	go func() {
		if _, _, err := codec.NewReader(sconn, control.MaxMessageSize).Next(); err == nil {
			_, _ = sconn.Write(codec.AppendGoAway(nil, &codec.GoAway{Reason: "x"}))
		}
	}()
	cp, err := control.Hello(context.Background(), cconn, &codec.Hello{ClientID: "c1", Token: "tok"}, wait)
	require.Nil(t, cp)
	require.ErrorIs(t, err, codec.ErrMalformed)
	require.ErrorContains(t, err, "want HELLO_ACK, got GOAWAY")
}

func twoClientTable(t *testing.T) *rules.Table {
	t.Helper()
	tab, err := rules.NewTable(42, []rules.Rule{
		{ID: "web", Client: "c1", Direction: rules.Reverse, Host: "App.test", Upstream: "http://127.0.0.1:3000"},
		{ID: "other", Client: "c2", Direction: rules.Reverse, Host: "other.test", Upstream: "http://127.0.0.1:3001"},
		{ID: "db", Client: "c1", Direction: rules.Forward, Listen: "127.0.0.1:9000", Upstream: "http://127.0.0.1:4000"},
	})
	require.NoError(t, err)
	return tab
}

func TestSnapshotApplied(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		snapshotErr error
		wantError   string
	}{
		{name: "applied", snapshotErr: nil, wantError: ""},
		{name: "refused", snapshotErr: errors.New("listen 127.0.0.1:9000: address already in use"), wantError: "listen 127.0.0.1:9000: address already in use"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			l := connect(t)
			cev, sev := newClientEvents(tt.snapshotErr), newServerEvents()
			start(t, func(ctx context.Context) error { return l.client.Run(ctx, cev) })
			start(t, func(ctx context.Context) error { return l.server.Run(ctx, sev) })

			tab := twoClientTable(t)
			require.NoError(t, l.server.SendSnapshot(tab, "c1"))

			want := tab.ForClient("c1")
			wantHash := rules.Hash(want)
			got := recv(t, cev.snapshots, "Snapshot")
			require.Equal(t, uint64(42), got.version)
			require.Equal(t, wantHash[:], got.hash)
			require.ElementsMatch(t, want, got.rules)
			for _, r := range got.rules {
				require.Equal(t, "c1", r.Client, "only the client's own rules are sent")
			}
			require.Len(t, got.rules, 2)

			applied := recv(t, sev.applied, "APPLIED")
			require.Equal(t, &codec.Applied{Version: 42, Hash: wantHash[:], Error: tt.wantError}, applied)
		})
	}
}

// A delta reaches ClientEvents.Delta as the server made it, its outcome
// goes back as APPLIED, and a client that does not hold the version the
// delta starts from asks for a full snapshot (a hash check without a hash)
// right after.
func TestDeltaApplied(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		deltaErr error
		resync   bool
	}{
		{name: "applied"},
		{name: "refused", deltaErr: errors.New("listen 127.0.0.1:9000: address already in use")},
		{name: "out of sequence", deltaErr: fmt.Errorf("%w: have version 40", control.ErrOutOfSequence), resync: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			l := connect(t)
			cev, sev := newClientEvents(nil), newServerEvents()
			cev.deltaErr, cev.version, cev.hash = tt.deltaErr, 40, []byte{4, 0}
			start(t, func(ctx context.Context) error { return l.client.Run(ctx, cev) })
			start(t, func(ctx context.Context) error { return l.server.Run(ctx, sev) })

			tab := twoClientTable(t)
			want := tab.ForClient("c1")
			old := []rules.Rule{want[0], {ID: "gone", Client: "c1", Direction: rules.Reverse, Host: "gone.test", Upstream: "http://127.0.0.1:3002"}}
			old[0].Upstream = "http://127.0.0.1:3999"
			d := control.Diff(old, want)
			require.Len(t, d.Upsert, 2, "the changed rule and the new one")
			require.Equal(t, []string{"gone"}, d.Delete)
			require.NoError(t, l.server.SendDelta(41, tab, "c1", d))

			wantHash := rules.Hash(want)
			got := recv(t, cev.deltas, "Delta")
			require.Equal(t, uint64(41), got.from)
			require.Equal(t, uint64(42), got.to)
			require.Equal(t, wantHash[:], got.hash)
			require.Equal(t, d.Delete, got.d.Delete)
			require.ElementsMatch(t, d.Upsert, got.d.Upsert)
			require.Equal(t, wantHash, rules.Hash(control.ApplyDelta(old, got.d)), "the delta turns the old rules into the new")

			wantError := ""
			if tt.deltaErr != nil {
				wantError = tt.deltaErr.Error()
			}
			require.Equal(t, &codec.Applied{Version: 42, Hash: wantHash[:], Error: wantError}, recv(t, sev.applied, "APPLIED"))

			// Run handles one message at a time: once the next message's
			// APPLIED is in, whatever the delta made the client send is too.
			require.NoError(t, l.server.SendSnapshot(tab, "c1"))
			recv(t, cev.snapshots, "Snapshot")
			require.Equal(t, "", recv(t, sev.applied, "APPLIED of the snapshot").Error)
			if !tt.resync {
				require.Len(t, sev.hashChecks, 0, "no snapshot asked for")
				return
			}
			hc := recv(t, sev.hashChecks, "the request for a snapshot")
			require.Equal(t, uint64(40), hc.Version, "the version the client holds")
			require.Empty(t, hc.Hash, "no hash: a request for a full snapshot")
		})
	}
}

func TestSnapshotForClientWithoutRules(t *testing.T) {
	t.Parallel()
	l := connect(t)
	cev, sev := newClientEvents(nil), newServerEvents()
	start(t, func(ctx context.Context) error { return l.client.Run(ctx, cev) })
	start(t, func(ctx context.Context) error { return l.server.Run(ctx, sev) })

	require.NoError(t, l.server.SendSnapshot(twoClientTable(t), "c9"))
	got := recv(t, cev.snapshots, "Snapshot")
	require.Empty(t, got.rules)
	empty := rules.Hash(nil)
	require.Equal(t, empty[:], got.hash)
	require.Equal(t, "", recv(t, sev.applied, "APPLIED").Error)
}

func TestSnapshotUndecodableRules(t *testing.T) {
	t.Parallel()
	l := connect(t)
	cev := newClientEvents(nil)
	start(t, func(ctx context.Context) error { return l.client.Run(ctx, cev) })

	wrote := write(l.sconn, codec.AppendSnapshot(nil, &codec.Snapshot{Version: 3, Hash: []byte{9}, Rules: []byte("not json")}))
	ft, p := readMsg(t, codec.NewReader(l.sconn, control.MaxMessageSize))
	require.NoError(t, recv(t, wrote, "SNAPSHOT write"))
	require.Equal(t, codec.MsgApplied, ft)
	m, err := codec.ParseApplied(p)
	require.NoError(t, err)
	require.Equal(t, uint64(3), m.Version)
	require.Equal(t, []byte{9}, m.Hash)
	require.Contains(t, m.Error, "rules: decode")
	select {
	case c := <-cev.snapshots:
		t.Fatalf("Snapshot was called with undecodable rules: %+v", c)
	default:
	}
}

func TestPingAnswered(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		// run starts the peer under test; raw returns the other end.
		run func(t *testing.T, l link) net.Conn
	}{
		{
			name: "server answers the client",
			run: func(t *testing.T, l link) net.Conn {
				start(t, func(ctx context.Context) error { return l.server.Run(ctx, newServerEvents()) })
				return l.cconn
			},
		},
		{
			name: "client answers the server",
			run: func(t *testing.T, l link) net.Conn {
				start(t, func(ctx context.Context) error { return l.client.Run(ctx, newClientEvents(nil)) })
				return l.sconn
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			l := connect(t)
			raw := tt.run(t, l)
			r := codec.NewReader(raw, control.MaxMessageSize)
			for _, nonce := range []uint64{0, 77, 1 << 40} {
				wrote := write(raw, codec.AppendPing(nil, codec.Ping{Nonce: nonce}, false))
				ft, p := readMsg(t, r)
				require.NoError(t, recv(t, wrote, "PING write"))
				require.Equal(t, codec.MsgPong, ft)
				pong, err := codec.ParsePing(p)
				require.NoError(t, err)
				require.Equal(t, nonce, pong.Nonce)
			}
		})
	}
}

func TestGoAwayDelivered(t *testing.T) {
	t.Parallel()
	l := connect(t)
	cev, sev := newClientEvents(nil), newServerEvents()
	start(t, func(ctx context.Context) error { return l.client.Run(ctx, cev) })
	start(t, func(ctx context.Context) error { return l.server.Run(ctx, sev) })

	require.NoError(t, l.client.GoAway("client draining"))
	require.Equal(t, "client draining", recv(t, sev.goaways, "server GoAway"))
	require.NoError(t, l.server.GoAway("server draining"))
	require.Equal(t, "server draining", recv(t, cev.goaways, "client GoAway"))
}

func TestServerRunReportsHashCheckAndIgnoresPong(t *testing.T) {
	t.Parallel()
	l := connect(t)
	sev := newServerEvents()
	start(t, func(ctx context.Context) error { return l.server.Run(ctx, sev) })

	// A PONG is accepted silently; the HASH_CHECK after it must still arrive.
	require.NoError(t, recv(t, write(l.cconn, codec.AppendPing(nil, codec.Ping{Nonce: 5}, true)), "PONG write"))
	require.NoError(t, recv(t, write(l.cconn, codec.AppendHashCheck(nil, &codec.HashCheck{Version: 8, Hash: []byte{1, 2}})), "HASH_CHECK write"))
	require.Equal(t, &codec.HashCheck{Version: 8, Hash: []byte{1, 2}}, recv(t, sev.hashChecks, "HashCheck"))
}

func TestClientRunIgnoresPong(t *testing.T) {
	t.Parallel()
	l := connect(t)
	cev := newClientEvents(nil)
	start(t, func(ctx context.Context) error { return l.client.Run(ctx, cev) })

	require.NoError(t, recv(t, write(l.sconn, codec.AppendPing(nil, codec.Ping{Nonce: 5}, true)), "PONG write"))
	require.NoError(t, recv(t, write(l.sconn, codec.AppendGoAway(nil, &codec.GoAway{Reason: "after pong"})), "GOAWAY write"))
	require.Equal(t, "after pong", recv(t, cev.goaways, "GoAway"))
}

func TestRunRejectsUnexpectedMessages(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		client  bool // run the client's end; else the server's
		msg     []byte
		wantMsg string
	}{
		{name: "server gets SNAPSHOT", msg: codec.AppendSnapshot(nil, &codec.Snapshot{Version: 1}), wantMsg: "unexpected SNAPSHOT from client"},
		{name: "server gets HELLO again", msg: codec.AppendHello(nil, &codec.Hello{Version: 1}), wantMsg: "unexpected HELLO from client"},
		{name: "server gets DATA", msg: codec.AppendData(nil, []byte("x")), wantMsg: "DATA frame on the control stream"},
		{name: "server gets bad APPLIED", msg: codec.AppendFrameHeader(nil, codec.MsgApplied, 0), wantMsg: "truncated integer"},
		{name: "client gets APPLIED", client: true, msg: codec.AppendApplied(nil, &codec.Applied{Version: 1}), wantMsg: "unexpected APPLIED from server"},
		{name: "client gets HELLO_ACK again", client: true, msg: codec.AppendHelloAck(nil, testAck), wantMsg: "unexpected HELLO_ACK from server"},
		{name: "client gets bad SNAPSHOT", client: true, msg: codec.AppendFrameHeader(nil, codec.MsgSnapshot, 0), wantMsg: "truncated integer"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			l := connect(t)
			var r *running
			raw := l.cconn
			if tt.client {
				raw = l.sconn
				r = start(t, func(ctx context.Context) error { return l.client.Run(ctx, newClientEvents(nil)) })
			} else {
				r = start(t, func(ctx context.Context) error { return l.server.Run(ctx, newServerEvents()) })
			}
			require.NoError(t, recv(t, write(raw, tt.msg), "write"))
			err := r.result(t)
			require.ErrorIs(t, err, codec.ErrMalformed)
			require.ErrorContains(t, err, tt.wantMsg)
		})
	}
}

func TestRunReturns(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		client bool
		// stop ends the Run: it cancels the context or closes the other end.
		stop    func(r *running, l link)
		wantErr error
	}{
		{name: "server: context cancelled", stop: func(r *running, _ link) { r.cancel() }, wantErr: context.Canceled},
		{name: "client: context cancelled", client: true, stop: func(r *running, _ link) { r.cancel() }, wantErr: context.Canceled},
		{name: "server: client closed the stream", stop: func(_ *running, l link) { _ = l.cconn.Close() }, wantErr: nil},
		{name: "client: server closed the stream", client: true, stop: func(_ *running, l link) { _ = l.sconn.Close() }, wantErr: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			l := connect(t)
			var r *running
			if tt.client {
				r = start(t, func(ctx context.Context) error { return l.client.Run(ctx, newClientEvents(nil)) })
			} else {
				r = start(t, func(ctx context.Context) error { return l.server.Run(ctx, newServerEvents()) })
			}
			tt.stop(r, l)
			err := r.result(t)
			if tt.wantErr == nil {
				require.NoError(t, err)
			} else {
				require.ErrorIs(t, err, tt.wantErr)
			}
		})
	}
}

func TestRunWithCancelledContext(t *testing.T) {
	t.Parallel()
	l := connect(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	require.ErrorIs(t, l.server.Run(ctx, newServerEvents()), context.Canceled)
	require.ErrorIs(t, l.client.Run(ctx, newClientEvents(nil)), context.Canceled)
}

func TestConcurrentSendsDoNotInterleave(t *testing.T) {
	t.Parallel()
	l := connect(t)
	sev := newServerEvents()
	start(t, func(ctx context.Context) error { return l.server.Run(ctx, sev) })
	// Several goroutines send on one ClientPeer; every message must arrive whole.
	const n = 20
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := l.client.GoAway(fmt.Sprintf("reason-%02d-%s", i, strings.Repeat("x", 100))); err != nil {
				t.Error(err)
			}
		}()
	}
	seen := map[string]bool{}
	for range n {
		seen[recv(t, sev.goaways, "GoAway")] = true
	}
	wg.Wait()
	require.Len(t, seen, n)
	for i := range n {
		require.True(t, seen[fmt.Sprintf("reason-%02d-%s", i, strings.Repeat("x", 100))])
	}
}

func TestTokensCheck(t *testing.T) {
	t.Parallel()
	ts := control.Tokens{"c1": control.HashToken("tok"), "c2": control.HashToken("other")}
	tests := []struct {
		name     string
		tokens   control.Tokens
		clientID string
		token    string
		want     bool
	}{
		{name: "right token", tokens: ts, clientID: "c1", token: "tok", want: true},
		{name: "second client", tokens: ts, clientID: "c2", token: "other", want: true},
		{name: "wrong token", tokens: ts, clientID: "c1", token: "tok2", want: false},
		{name: "another client's token", tokens: ts, clientID: "c1", token: "other", want: false},
		{name: "unknown client with a valid token", tokens: ts, clientID: "c3", token: "tok", want: false},
		{name: "empty token", tokens: ts, clientID: "c1", token: "", want: false},
		{name: "nil tokens", tokens: nil, clientID: "c1", token: "tok", want: false},
		{name: "case matters", tokens: ts, clientID: "C1", token: "tok", want: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, tt.tokens.Check(tt.clientID, tt.token))
		})
	}
}

func TestHashToken(t *testing.T) {
	t.Parallel()
	want := sha256.Sum256([]byte("tok"))
	h := control.HashToken("tok")
	require.Equal(t, want[:], h[:])
	require.Equal(t, hex.EncodeToString(want[:]), h.String())
	require.Len(t, h.String(), 64)

	back, err := control.ParseTokenHash(h.String())
	require.NoError(t, err)
	require.Equal(t, h, back, "String round-trips through ParseTokenHash")

	upper, err := control.ParseTokenHash(strings.ToUpper(h.String()))
	require.NoError(t, err)
	require.Equal(t, h, upper, "upper-case hex is accepted")
}

func TestParseTokenHashErrors(t *testing.T) {
	t.Parallel()
	valid := control.HashToken("tok").String()
	tests := []struct {
		name string
		in   string
	}{
		{name: "empty", in: ""},
		{name: "not hex", in: strings.Repeat("zz", 32)},
		{name: "too short", in: valid[:62]},
		{name: "too long", in: valid + "00"},
		{name: "odd length", in: valid[:63]},
		{name: "prefixed", in: "sha256:" + valid},
		{name: "spaces", in: " " + valid + " "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h, err := control.ParseTokenHash(tt.in)
			require.EqualError(t, err, "want 64 hex digits (the SHA-256 of the token; see 'tunnel hash-token')")
			require.Equal(t, control.TokenHash{}, h)
		})
	}
}

var t0 = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

func TestRegistryAttach(t *testing.T) {
	t.Parallel()
	var reg control.Registry
	c1 := &pipeline.Conn{ClientID: "c1"}
	s, resumed, replaced := reg.Attach("c1", c1, t0)
	require.False(t, resumed)
	require.Nil(t, replaced)
	require.Equal(t, "c1", s.ClientID)
	require.Len(t, s.ID, 16, "session ids are 8 random bytes in hex")
	require.Equal(t, s.ID, c1.SessionID, "Attach stamps the connection with its session")
	require.Equal(t, t0, s.Created)
	require.True(t, t0.Equal(s.LastSeen()))
	require.Same(t, c1, s.Conn())
	require.Same(t, c1, reg.Conn("c1"))

	// The same client again: the session is resumed and the old conn handed back.
	c2 := &pipeline.Conn{ClientID: "c1"}
	s2, resumed, replaced := reg.Attach("c1", c2, t0.Add(time.Minute))
	require.True(t, resumed)
	require.Same(t, s, s2)
	require.Same(t, c1, replaced)
	require.Same(t, c2, reg.Conn("c1"))
	require.Equal(t, s.ID, c2.SessionID)
	require.Equal(t, t0, s2.Created, "Created does not move on resume")
	require.True(t, t0.Add(time.Minute).Equal(s2.LastSeen()))

	// Another client gets its own session.
	other := &pipeline.Conn{ClientID: "c2"}
	s3, resumed, replaced := reg.Attach("c2", other, t0)
	require.False(t, resumed)
	require.Nil(t, replaced)
	require.NotEqual(t, s.ID, s3.ID)
	require.Same(t, other, reg.Conn("c2"))
	require.Nil(t, reg.Conn("c3"))
}

func TestRegistryDetach(t *testing.T) {
	t.Parallel()
	var reg control.Registry
	old, cur := &pipeline.Conn{ClientID: "c1"}, &pipeline.Conn{ClientID: "c1"}
	s, _, _ := reg.Attach("c1", old, t0)
	_, resumed, replaced := reg.Attach("c1", cur, t0.Add(time.Second))
	require.True(t, resumed)
	require.Same(t, old, replaced)

	// The replaced connection closing later must not unbind the current one.
	reg.Detach(s, old, t0.Add(time.Hour))
	require.Same(t, cur, s.Conn())
	require.Same(t, cur, reg.Conn("c1"))
	require.True(t, t0.Add(time.Second).Equal(s.LastSeen()), "a stale Detach does not touch the session")

	reg.Detach(s, cur, t0.Add(2*time.Second))
	require.Nil(t, s.Conn())
	require.Nil(t, reg.Conn("c1"))
	require.True(t, t0.Add(2*time.Second).Equal(s.LastSeen()))
	require.Len(t, reg.Sessions(), 1, "the session outlives its connection")

	// Reattaching resumes the same session with nothing to replace.
	again := &pipeline.Conn{ClientID: "c1"}
	s2, resumed, replaced := reg.Attach("c1", again, t0.Add(3*time.Second))
	require.True(t, resumed)
	require.Nil(t, replaced)
	require.Same(t, s, s2)
}

func TestRegistrySweep(t *testing.T) {
	t.Parallel()
	const ttl = time.Minute
	var reg control.Registry
	// live: connected since t0, never detached.
	reg.Attach("live", &pipeline.Conn{}, t0)
	// early: disconnected at t0+10s.
	ce := &pipeline.Conn{}
	se, _, _ := reg.Attach("early", ce, t0)
	reg.Detach(se, ce, t0.Add(10*time.Second))
	// late: disconnected at t0+100s.
	cl := &pipeline.Conn{}
	sl, _, _ := reg.Attach("late", cl, t0)
	reg.Detach(sl, cl, t0.Add(100*time.Second))
	// touched: disconnected at t0+10s, then activity at t0+90s.
	ct := &pipeline.Conn{}
	st, _, _ := reg.Attach("touched", ct, t0)
	reg.Detach(st, ct, t0.Add(10*time.Second))
	st.Touch(t0.Add(90 * time.Second))

	ids := func() []string {
		var out []string
		for _, s := range reg.Sessions() {
			out = append(out, s.ClientID)
		}
		return out
	}
	steps := []struct {
		name    string
		now     time.Time
		removed []string
		left    []string
	}{
		{name: "exactly ttl idle is kept", now: t0.Add(10*time.Second + ttl), removed: nil, left: []string{"early", "late", "live", "touched"}},
		{name: "past ttl is removed", now: t0.Add(10*time.Second + ttl + time.Nanosecond), removed: []string{"early"}, left: []string{"late", "live", "touched"}},
		{name: "touch postpones", now: t0.Add(90*time.Second + ttl + 1), removed: []string{"touched"}, left: []string{"late", "live"}},
		{name: "much later: only the connected one stays", now: t0.Add(24 * time.Hour), removed: []string{"late"}, left: []string{"live"}},
		{name: "nothing more to remove", now: t0.Add(48 * time.Hour), removed: nil, left: []string{"live"}},
	}
	// The steps share the registry, so they run in order.
	for _, st := range steps {
		require.Equal(t, st.removed, reg.Sweep(st.now, ttl), st.name)
		require.Equal(t, st.left, ids(), st.name)
	}
	require.NotNil(t, reg.Conn("live"))
	require.Nil(t, reg.Conn("early"))

	// A swept client starts a new session.
	s, resumed, _ := reg.Attach("early", &pipeline.Conn{}, t0.Add(49*time.Hour))
	require.False(t, resumed)
	require.NotEqual(t, se.ID, s.ID)
}

func TestRegistrySweepOrder(t *testing.T) {
	t.Parallel()
	var reg control.Registry
	for _, id := range []string{"d", "b", "a", "c"} {
		c := &pipeline.Conn{}
		s, _, _ := reg.Attach(id, c, t0)
		reg.Detach(s, c, t0)
	}
	require.Equal(t, []string{"a", "b", "c", "d"}, reg.Sweep(t0.Add(time.Hour), time.Minute))
	require.Empty(t, reg.Sessions())
}

func TestRegistrySessionsAndConns(t *testing.T) {
	t.Parallel()
	var reg control.Registry
	require.Empty(t, reg.Sessions(), "the zero Registry is empty")
	require.Empty(t, reg.Conns())
	require.Nil(t, reg.Conn("x"))
	require.Empty(t, reg.Sweep(t0, 0))

	conns := map[string]*pipeline.Conn{}
	for _, id := range []string{"zeta", "alpha", "mid", "beta"} {
		conns[id] = &pipeline.Conn{ClientID: id}
		reg.Attach(id, conns[id], t0)
	}
	s, _, _ := reg.Attach("mid", conns["mid"], t0) // same conn again
	reg.Detach(s, conns["mid"], t0)

	var ids []string
	for _, s := range reg.Sessions() {
		ids = append(ids, s.ClientID)
	}
	require.Equal(t, []string{"alpha", "beta", "mid", "zeta"}, ids, "sessions are sorted by client id")
	require.Equal(t, []*pipeline.Conn{conns["alpha"], conns["beta"], conns["zeta"]}, reg.Conns(),
		"Conns lists live connections only, in client id order")
}

func TestSessionApplied(t *testing.T) {
	t.Parallel()
	var reg control.Registry
	s, _, _ := reg.Attach("c1", &pipeline.Conn{}, t0)
	require.Nil(t, s.Applied())
	a := control.AppliedState{Version: 3, Hash: "abc", At: t0}
	s.SetApplied(a)
	a.Version = 99 // SetApplied keeps its own copy
	require.Equal(t, &control.AppliedState{Version: 3, Hash: "abc", At: t0}, s.Applied())
	require.Nil(t, s.Refused())
	s.SetApplied(control.AppliedState{Version: 4, Error: "bad rules", At: t0.Add(time.Second)})
	require.Equal(t, uint64(3), s.Applied().Version, "a refusal leaves the rule set in force as it was")
	require.Equal(t, uint64(4), s.Refused().Version)
	require.Equal(t, "bad rules", s.Refused().Error)
	s.SetApplied(control.AppliedState{Version: 5, Hash: "def", At: t0.Add(2 * time.Second)})
	require.Equal(t, uint64(5), s.Applied().Version)
	require.Nil(t, s.Refused(), "a later rule set in force clears the refusal")
}

func TestRegistryConcurrentUse(t *testing.T) {
	t.Parallel()
	var reg control.Registry
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("c%d", g%4)
			for i := range 200 {
				now := t0.Add(time.Duration(i) * time.Second)
				c := &pipeline.Conn{ClientID: id}
				s, _, _ := reg.Attach(id, c, now)
				_ = reg.Conn(id)
				_ = reg.Conns()
				_ = reg.Sessions()
				s.Touch(now)
				reg.Detach(s, c, now)
				reg.Sweep(now, time.Hour)
			}
		}()
	}
	wg.Wait()
	// Every connection was detached, so a late sweep removes everyone.
	require.Equal(t, []string{"c0", "c1", "c2", "c3"}, reg.Sweep(t0.Add(48*time.Hour), time.Hour))
}

// The server does not answer a heartbeat (a padded PING): QUIC's
// acknowledgement is the answer, and a PONG would double an idle server's
// packets. An unpadded PING is still answered.
func TestServerLeavesHeartbeatsUnanswered(t *testing.T) {
	t.Parallel()
	l := connect(t)
	start(t, func(ctx context.Context) error { return l.server.Run(ctx, newServerEvents()) })
	r := codec.NewReader(l.cconn, control.MaxMessageSize)
	require.NoError(t, recv(t, write(l.cconn, codec.AppendPing(nil, codec.Ping{Nonce: 1, Padding: 32}, false)), "heartbeat write"))
	require.NoError(t, recv(t, write(l.cconn, codec.AppendPing(nil, codec.Ping{Nonce: 2}, false)), "PING write"))
	ft, p := readMsg(t, r)
	require.Equal(t, codec.MsgPong, ft)
	pong, err := codec.ParsePing(p)
	require.NoError(t, err)
	require.Equal(t, uint64(2), pong.Nonce, "the first message back answers the unpadded PING: the heartbeat got none")
}

// The client's heartbeat: padded PINGs at its interval, so that a packet
// large enough to draw a stateless reset from a restarted server goes out
// even when no request does.
func TestClientHeartbeat(t *testing.T) {
	t.Parallel()
	l := connect(t)
	l.client.Heartbeat = 20 * time.Millisecond
	start(t, func(ctx context.Context) error { return l.client.Run(ctx, newClientEvents(nil)) })
	r := codec.NewReader(l.sconn, control.MaxMessageSize)
	for want := uint64(1); want <= 3; want++ {
		ft, p := readMsg(t, r)
		require.Equal(t, codec.MsgPing, ft)
		ping, err := codec.ParsePing(p)
		require.NoError(t, err)
		require.Equal(t, want, ping.Nonce, "one nonce per heartbeat")
		require.GreaterOrEqual(t, len(p), 32, "padded above quic-go's stateless-reset threshold")
	}
}

// After a crowd of clients has come and gone past the TTL, the sweep gives
// the memory back: the heap returns to its baseline. Not parallel: it
// measures the heap.
func TestRegistrySweepReturnsMemory(t *testing.T) {
	const clients = 50000
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	var reg control.Registry
	reg.Attach("stays", &pipeline.Conn{}, t0)
	base := heap()
	for i := range clients {
		c := &pipeline.Conn{}
		s, _, _ := reg.Attach(fmt.Sprintf("client-%06d", i), c, t0)
		reg.Detach(s, c, t0)
	}
	full := heap()
	require.Greater(t, full, base+4<<20, "%d sessions take room (%d -> %d bytes)", clients, base, full)
	require.Len(t, reg.Sweep(t0.Add(time.Hour), time.Minute), clients)
	after := heap()
	t.Logf("heap: %d KiB before, %d KiB with %d sessions, %d KiB after the sweep", base>>10, full>>10, clients, after>>10)
	require.Less(t, after, base+256<<10, "the sweep returns the memory")
	require.NotNil(t, reg.Conn("stays"), "the connected client keeps its session")
}
