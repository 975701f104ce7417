package codec

// Stream reset codes: the QUIC application error codes this protocol puts in
// RESET_STREAM and STOP_SENDING. They say whether the request may be retried.
const (
	// StreamCancelled: the requester went away or gave up. Nothing to answer.
	StreamCancelled uint64 = 0x10
	// StreamRefused: refused before any processing (overload, draining).
	// Safe to retry; the ingress side answers 503 with Retry-After.
	StreamRefused uint64 = 0x11
	// StreamInternal: failed part-way; not safe to retry.
	StreamInternal uint64 = 0x12
	// StreamProtocol: the peer sent frames that break this protocol.
	StreamProtocol uint64 = 0x13
)

// Connection close codes: the QUIC application error codes in
// CONNECTION_CLOSE.
const (
	// ConnNormal: clean shutdown after draining.
	ConnNormal uint64 = 0x00
	// ConnAuthFailed: the server refused the client's identity. Retrying
	// with the same credentials cannot succeed.
	ConnAuthFailed uint64 = 0x01
	// ConnProtocol: the peer broke the control protocol.
	ConnProtocol uint64 = 0x02
	// ConnReplaced: a newer connection of the same client took over.
	ConnReplaced uint64 = 0x03
	// ConnInternal: the sender failed.
	ConnInternal uint64 = 0x04
	// ConnThrottled: the server refused the login without checking the
	// credentials, because of too many failed logins from the client's
	// address (or, from an address the client id never logged in from,
	// for its id). Retryable: the reason says when to try again.
	ConnThrottled uint64 = 0x05
	// ConnDuplicate: another connection of the same client id is alive
	// (it answered the server's probe): two clients cannot share an id.
	// Retryable, with backoff: the id is free once the other one leaves.
	ConnDuplicate uint64 = 0x06
)
