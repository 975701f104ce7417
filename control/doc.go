// Package control runs the control stream: the first bidirectional stream a
// client opens on each tunnel connection. Over it the client says who it is
// (HELLO with its token), the server accepts (HELLO_ACK) or refuses (REJECT,
// then it closes the connection), and the server sends the client its rules
// (SNAPSHOT); the client answers with the version it applied (APPLIED).
// Either side can ask the other to drain (GOAWAY) and check liveness
// (PING/PONG). A client may declare rules of its own (DECLARE), which the
// server checks against what it lets that client claim and answers
// (DECLARED); the RuleStore keeps them as its third source, after the
// configuration file's and the admin API's (declare.go).
//
// The server keeps one Session per client in a Registry: the connection
// context made at handshake, looked up by client id in O(1) (S2), with
// created and last-seen times and a sweep of idle sessions (S7).
package control
