package codec

import (
	"errors"
	"fmt"
)

// FrameType identifies a frame. Data-stream frames use 0x01-0x0f, control
// messages 0x10-0x1f.
type FrameType uint8

// Data-stream frames, in the order they appear on a stream: a head, DATA
// frames, optional TRAILERS, then END. ERROR replaces the response head (or
// ends a body) when the far side cannot answer.
const (
	FrameRequest  FrameType = 0x01 // RequestHead
	FrameResponse FrameType = 0x02 // ResponseHead
	FrameData     FrameType = 0x03 // body bytes
	FrameTrailers FrameType = 0x04 // trailer fields
	FrameEnd      FrameType = 0x05 // end of the message, empty payload
	FrameError    FrameType = 0x06 // Error
)

// Control-stream messages.
const (
	MsgHello     FrameType = 0x10 // client -> server: Hello
	MsgHelloAck  FrameType = 0x11 // server -> client: HelloAck
	MsgSnapshot  FrameType = 0x12 // server -> client: full rule set
	MsgDelta     FrameType = 0x13 // server -> client: incremental update
	MsgHashCheck FrameType = 0x14 // client -> server: my version and hash
	MsgApplied   FrameType = 0x15 // client -> server: applied (or refused) a version
	MsgPing      FrameType = 0x16 // either way
	MsgPong      FrameType = 0x17 // either way
	MsgGoAway    FrameType = 0x18 // either way: drain, open no new streams
	MsgReject    FrameType = 0x19 // server -> client: Error, then the connection closes
	MsgDeclare   FrameType = 0x1a // client -> server: the rules this client claims
	MsgDeclared  FrameType = 0x1b // server -> client: each claim accepted or refused
)

var typeNames = [...]string{
	FrameRequest: "REQUEST", FrameResponse: "RESPONSE", FrameData: "DATA",
	FrameTrailers: "TRAILERS", FrameEnd: "END", FrameError: "ERROR",
	MsgHello: "HELLO", MsgHelloAck: "HELLO_ACK", MsgSnapshot: "SNAPSHOT",
	MsgDelta: "DELTA", MsgHashCheck: "HASH_CHECK", MsgApplied: "APPLIED",
	MsgPing: "PING", MsgPong: "PONG", MsgGoAway: "GOAWAY", MsgReject: "REJECT",
	MsgDeclare: "DECLARE", MsgDeclared: "DECLARED",
}

func (t FrameType) String() string {
	if int(t) < len(typeNames) && typeNames[t] != "" {
		return typeNames[t]
	}
	return fmt.Sprintf("FrameType(0x%02x)", uint8(t))
}

// Errors returned by the parsers. Test with errors.Is.
var (
	// ErrShort means the input ends before the frame or value does; read more.
	ErrShort = errors.New("codec: input too short")
	// ErrMalformed means the input can never be a valid frame.
	ErrMalformed = errors.New("codec: malformed frame")
	// ErrTooLarge means a frame's declared length exceeds the configured maximum.
	ErrTooLarge = errors.New("codec: frame exceeds maximum size")
)

// FrameHeaderLen is the size of the frame header this package writes: the
// type byte and a four-byte length. Parsers accept any valid varint length.
const FrameHeaderLen = 5

// DataHeaderLen is the room to reserve in front of a DATA payload.
const DataHeaderLen = FrameHeaderLen

// MaxPayload is the largest payload this package writes in one frame: the
// largest value of a four-byte varint. Configured limits are far smaller.
const MaxPayload = 1<<30 - 1

// DefaultMaxFrameSize is the default limit on a data-stream frame's payload
// (S9: 64 KiB). It is a setting; see Reader.
const DefaultMaxFrameSize = 64 << 10

// ParseFrameHeader decodes a frame header from the front of b. It returns the
// frame type, the payload length and the header's size in bytes. It returns
// ErrShort if b holds less than a whole header and ErrTooLarge (wrapped) if
// the length exceeds max.
func ParseFrameHeader(b []byte, max int) (FrameType, int, int, error) {
	if len(b) == 0 {
		return 0, 0, 0, ErrShort
	}
	l, n, err := ParseVarint(b[1:])
	if err != nil {
		return 0, 0, 0, err
	}
	if l > uint64(max) {
		return 0, 0, 0, fmt.Errorf("%w: %s frame of %d bytes, limit %d", ErrTooLarge, FrameType(b[0]), l, max)
	}
	return FrameType(b[0]), int(l), 1 + n, nil
}

// AppendFrameHeader appends the header of a frame of type t whose payload is
// length bytes long. length must not exceed MaxPayload.
func AppendFrameHeader(b []byte, t FrameType, length int) []byte {
	b = append(b, byte(t), 0, 0, 0, 0)
	putVarint4(b[len(b)-4:], uint64(length))
	return b
}

// PutDataHeader writes a DATA frame header for a payload of n bytes into
// b[0:DataHeaderLen]. It is how a writer that reserved the room fills it in.
func PutDataHeader(b []byte, n int) {
	b[0] = byte(FrameData)
	putVarint4(b[1:FrameHeaderLen], uint64(n))
}

// AppendData appends a DATA frame carrying p.
func AppendData(b, p []byte) []byte {
	return append(AppendFrameHeader(b, FrameData, len(p)), p...)
}

// AppendEnd appends an END frame.
func AppendEnd(b []byte) []byte {
	return AppendFrameHeader(b, FrameEnd, 0)
}

// beginFrame appends a header with a placeholder length; endFrame patches it
// once the payload is known. Together they spare every message a Len method.
func beginFrame(b []byte, t FrameType) ([]byte, int) {
	return append(b, byte(t), 0, 0, 0, 0), len(b)
}

func endFrame(b []byte, start int) []byte {
	n := len(b) - start - FrameHeaderLen
	if n > MaxPayload {
		panic("codec: frame payload exceeds MaxPayload")
	}
	putVarint4(b[start+1:start+FrameHeaderLen], uint64(n))
	return b
}
