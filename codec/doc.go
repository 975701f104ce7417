// Package codec is the tunnel's wire format: the frames that carry one
// request per QUIC stream and the messages of the control stream.
//
// Every frame is a one-byte type, a QUIC variable-length integer (RFC 9000,
// section 16) giving the payload length, and the payload:
//
//	+--------+----------------+-----------------+
//	| type 8 | length (varint)| payload (length)|
//	+--------+----------------+-----------------+
//
// The package follows the append/parse style: AppendX(b, ...) appends the
// encoding of X to b and returns the extended slice; ParseX(b) decodes X from a
// complete payload. Parsers never panic and reject malformed input with an
// error that wraps ErrMalformed; each is fuzzed (see the Fuzz tests).
//
// DATA frames are written with a fixed four-byte length (a valid, non-minimal
// varint) so that a writer can reserve DataHeaderLen bytes in front of a
// buffer, read a body chunk straight into the space behind them and fill the
// header in afterwards: the body bytes are never moved to make room for it.
//
// The package imports only the standard library.
package codec
