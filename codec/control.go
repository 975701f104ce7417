package codec

import (
	"fmt"
	"time"
)

// ProtocolVersion is the control protocol version a client announces in
// Hello. A server refuses versions it does not speak.
const ProtocolVersion = 1

// Hello is the first message on the control stream: who the client is, its
// credential, and the rule set it already has (zero values when it has none).
type Hello struct {
	Version        uint64 // ProtocolVersion
	ClientID       string
	Token          string
	AppliedVersion uint64
	Hash           []byte
}

// HelloAck accepts a Hello. The server owns the sync intervals and tells the
// client what to use.
type HelloAck struct {
	SessionID         string
	Resumed           bool // the server kept this client's session from an earlier connection
	HashCheckInterval time.Duration
	FullSyncInterval  time.Duration
}

// Snapshot is a full rule set. Rules is the rule set's own encoding (JSON,
// owned by package rules), opaque to the codec.
type Snapshot struct {
	Version uint64
	Hash    []byte
	Rules   []byte
}

// Delta turns the rule set at version From into version To: rules in Upsert
// (encoded like Snapshot.Rules) are added or replaced, ids in Delete removed.
// Hash is the hash of the resulting set.
type Delta struct {
	From, To uint64
	Hash     []byte
	Upsert   []byte
	Delete   []string
}

// HashCheck is the client's periodic statement of what it holds.
type HashCheck struct {
	Version uint64
	Hash    []byte
}

// Applied reports the outcome of a Snapshot or Delta. Error is empty on
// success; otherwise the client kept its previous rules and says why.
type Applied struct {
	Version uint64
	Hash    []byte
	Error   string
}

// Ping asks for a Pong with the same nonce, unless it is padded: a padded
// Ping is a client's heartbeat, which the server does not answer (QUIC's
// acknowledgement of its packet is the answer).
type Ping struct {
	Nonce uint64
	// Padding is a number of zero bytes sent after the nonce and ignored by
	// the receiver. A heartbeat is padded so that its QUIC packet is large
	// enough for a restarted server to answer it with a stateless reset
	// (quic-go answers only packets above 42 bytes).
	Padding int
}

// GoAway asks the peer to open no new streams: the sender is draining.
type GoAway struct{ Reason string }

// AppendHello appends a HELLO message.
func AppendHello(b []byte, m *Hello) []byte {
	b, s := beginFrame(b, MsgHello)
	b = AppendVarint(b, m.Version)
	b = appendString(b, m.ClientID)
	b = appendString(b, m.Token)
	b = AppendVarint(b, m.AppliedVersion)
	b = appendBytes(b, m.Hash)
	return endFrame(b, s)
}

// ParseHello decodes a HELLO payload.
func ParseHello(p []byte) (*Hello, error) {
	d := decoder{b: p}
	m := &Hello{Version: d.varint(), ClientID: d.str(), Token: d.str(), AppliedVersion: d.varint()}
	m.Hash = clone(d.bytes())
	return m, d.done()
}

// AppendHelloAck appends a HELLO_ACK message.
func AppendHelloAck(b []byte, m *HelloAck) []byte {
	b, s := beginFrame(b, MsgHelloAck)
	b = appendString(b, m.SessionID)
	r := byte(0)
	if m.Resumed {
		r = 1
	}
	b = append(b, r)
	b = AppendVarint(b, uint64(m.HashCheckInterval/time.Millisecond))
	b = AppendVarint(b, uint64(m.FullSyncInterval/time.Millisecond))
	return endFrame(b, s)
}

// ParseHelloAck decodes a HELLO_ACK payload.
func ParseHelloAck(p []byte) (*HelloAck, error) {
	d := decoder{b: p}
	m := &HelloAck{SessionID: d.str()}
	switch d.u8() {
	case 0:
	case 1:
		m.Resumed = true
	default:
		d.fail("bad flag")
	}
	m.HashCheckInterval = millis(&d)
	m.FullSyncInterval = millis(&d)
	return m, d.done()
}

func millis(d *decoder) time.Duration {
	v := d.varint()
	if v > uint64(1<<63-1)/uint64(time.Millisecond) {
		d.fail("interval %d ms out of range", v)
		return 0
	}
	return time.Duration(v) * time.Millisecond
}

// AppendSnapshot appends a SNAPSHOT message.
func AppendSnapshot(b []byte, m *Snapshot) []byte {
	b, s := beginFrame(b, MsgSnapshot)
	b = AppendVarint(b, m.Version)
	b = appendBytes(b, m.Hash)
	b = appendBytes(b, m.Rules)
	return endFrame(b, s)
}

// ParseSnapshot decodes a SNAPSHOT payload. The result does not alias p.
func ParseSnapshot(p []byte) (*Snapshot, error) {
	d := decoder{b: p}
	m := &Snapshot{Version: d.varint(), Hash: clone(d.bytes()), Rules: clone(d.bytes())}
	return m, d.done()
}

// AppendDelta appends a DELTA message.
func AppendDelta(b []byte, m *Delta) []byte {
	b, s := beginFrame(b, MsgDelta)
	b = AppendVarint(b, m.From)
	b = AppendVarint(b, m.To)
	b = appendBytes(b, m.Hash)
	b = appendBytes(b, m.Upsert)
	b = AppendVarint(b, uint64(len(m.Delete)))
	for _, id := range m.Delete {
		b = appendString(b, id)
	}
	return endFrame(b, s)
}

// ParseDelta decodes a DELTA payload. The result does not alias p.
func ParseDelta(p []byte) (*Delta, error) {
	d := decoder{b: p}
	m := &Delta{From: d.varint(), To: d.varint(), Hash: clone(d.bytes()), Upsert: clone(d.bytes())}
	n := d.varint()
	if n > uint64(len(d.b)) {
		d.fail("delete count %d overruns payload", n)
	}
	for i := uint64(0); i < n && d.err == nil; i++ {
		m.Delete = append(m.Delete, d.str())
	}
	if err := d.done(); err != nil {
		return nil, err
	}
	if m.To <= m.From {
		return nil, fmt.Errorf("%w: delta from version %d to %d", ErrMalformed, m.From, m.To)
	}
	return m, nil
}

// AppendHashCheck appends a HASH_CHECK message.
func AppendHashCheck(b []byte, m *HashCheck) []byte {
	b, s := beginFrame(b, MsgHashCheck)
	b = AppendVarint(b, m.Version)
	b = appendBytes(b, m.Hash)
	return endFrame(b, s)
}

// ParseHashCheck decodes a HASH_CHECK payload.
func ParseHashCheck(p []byte) (*HashCheck, error) {
	d := decoder{b: p}
	m := &HashCheck{Version: d.varint(), Hash: clone(d.bytes())}
	return m, d.done()
}

// AppendApplied appends an APPLIED message.
func AppendApplied(b []byte, m *Applied) []byte {
	b, s := beginFrame(b, MsgApplied)
	b = AppendVarint(b, m.Version)
	b = appendBytes(b, m.Hash)
	b = appendString(b, m.Error)
	return endFrame(b, s)
}

// ParseApplied decodes an APPLIED payload.
func ParseApplied(p []byte) (*Applied, error) {
	d := decoder{b: p}
	m := &Applied{Version: d.varint(), Hash: clone(d.bytes()), Error: d.str()}
	return m, d.done()
}

// AppendPing appends a PING (pong false) or PONG (pong true) message.
func AppendPing(b []byte, m Ping, pong bool) []byte {
	t := MsgPing
	if pong {
		t = MsgPong
	}
	b, s := beginFrame(b, t)
	b = AppendVarint(b, m.Nonce)
	if m.Padding > 0 {
		b = AppendVarint(b, uint64(m.Padding))
		b = append(b, make([]byte, m.Padding)...)
	}
	return endFrame(b, s)
}

// ParsePing decodes a PING or PONG payload.
func ParsePing(p []byte) (Ping, error) {
	d := decoder{b: p}
	m := Ping{Nonce: d.varint()}
	if len(d.b) > 0 {
		m.Padding = len(d.bytes())
	}
	return m, d.done()
}

// AppendGoAway appends a GOAWAY message.
func AppendGoAway(b []byte, m *GoAway) []byte {
	b, s := beginFrame(b, MsgGoAway)
	b = appendString(b, m.Reason)
	return endFrame(b, s)
}

// ParseGoAway decodes a GOAWAY payload.
func ParseGoAway(p []byte) (*GoAway, error) {
	d := decoder{b: p}
	m := &GoAway{Reason: d.str()}
	return m, d.done()
}

// AppendReject appends a REJECT message: the server refuses the client (bad
// token, unknown client, unsupported version) and closes the connection.
func AppendReject(b []byte, e *Error) []byte {
	return appendErrorFrame(b, MsgReject, e)
}

// ParseReject decodes a REJECT payload.
func ParseReject(p []byte) (*Error, error) { return ParseError(p) }

func clone(p []byte) []byte {
	if p == nil {
		return nil
	}
	return append([]byte(nil), p...)
}

// Declare is a client's claim on rules of its own (sent after HELLO_ACK,
// again on every connection): Rules holds them, encoded like
// Snapshot.Rules, each named by its ID and without a client. The server
// checks every claim against what its configuration lets the client
// declare, and answers DECLARED. A new Declare replaces the previous one.
type Declare struct {
	Rules []byte
}

// Declared answers a Declare: one result per claimed rule, in order.
type Declared struct {
	Results []DeclaredRule
}

// DeclaredRule is the outcome of one claim.
type DeclaredRule struct {
	Name string // the ID the client gave the rule
	ID   string // the id of the rule in force; empty when refused
	// Error says why the claim was refused (which policy, or which rule it
	// conflicts with); empty when accepted.
	Error string
	// URLs are where the public reaches an accepted reverse rule.
	URLs []string
}

// AppendDeclare appends a DECLARE message.
func AppendDeclare(b []byte, m *Declare) []byte {
	b, s := beginFrame(b, MsgDeclare)
	b = appendBytes(b, m.Rules)
	return endFrame(b, s)
}

// ParseDeclare decodes a DECLARE payload. The result does not alias p.
func ParseDeclare(p []byte) (*Declare, error) {
	d := decoder{b: p}
	m := &Declare{Rules: clone(d.bytes())}
	return m, d.done()
}

// AppendDeclared appends a DECLARED message.
func AppendDeclared(b []byte, m *Declared) []byte {
	b, s := beginFrame(b, MsgDeclared)
	b = AppendVarint(b, uint64(len(m.Results)))
	for _, r := range m.Results {
		b = appendString(b, r.Name)
		b = appendString(b, r.ID)
		b = appendString(b, r.Error)
		b = AppendVarint(b, uint64(len(r.URLs)))
		for _, u := range r.URLs {
			b = appendString(b, u)
		}
	}
	return endFrame(b, s)
}

// ParseDeclared decodes a DECLARED payload.
func ParseDeclared(p []byte) (*Declared, error) {
	d := decoder{b: p}
	m := &Declared{}
	n := d.count()
	for i := uint64(0); i < n && d.err == nil; i++ {
		r := DeclaredRule{Name: d.str(), ID: d.str(), Error: d.str()}
		k := d.count()
		for j := uint64(0); j < k && d.err == nil; j++ {
			r.URLs = append(r.URLs, d.str())
		}
		m.Results = append(m.Results, r)
	}
	return m, d.done()
}
