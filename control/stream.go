package control

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/qtunnel/qtunnel/codec"
)

// MaxMessageSize bounds one control message. Snapshots of large rule sets
// are the biggest; 16 MiB holds tens of thousands of rules.
const MaxMessageSize = 16 << 20

// Stream is what the control protocol runs on.
type Stream interface {
	io.Reader
	io.Writer
	SetReadDeadline(time.Time) error
}

// wire reads messages from a control stream and serialises writes to it.
type wire struct {
	s   Stream
	r   *codec.Reader
	wmu sync.Mutex
	buf []byte
}

func newWire(s Stream) *wire {
	return &wire{s: s, r: codec.NewReader(s, MaxMessageSize)}
}

// send appends one message with build and writes it.
func (w *wire) send(build func([]byte) []byte) error {
	w.wmu.Lock()
	defer w.wmu.Unlock()
	w.buf = build(w.buf[:0])
	_, err := w.s.Write(w.buf)
	return err
}

// recv reads the next message. A DATA frame is a protocol error here.
func (w *wire) recv() (codec.FrameType, []byte, error) {
	t, p, err := w.r.Next()
	if err != nil {
		return 0, nil, err
	}
	if t == codec.FrameData {
		return 0, nil, fmt.Errorf("%w: DATA frame on the control stream", codec.ErrMalformed)
	}
	return t, p, nil
}

// recvWithin reads the next message, failing after d or when ctx is done.
func (w *wire) recvWithin(ctx context.Context, d time.Duration) (codec.FrameType, []byte, error) {
	if err := w.s.SetReadDeadline(time.Now().Add(d)); err != nil {
		return 0, nil, err
	}
	stop := context.AfterFunc(ctx, func() { _ = w.s.SetReadDeadline(time.Now()) })
	t, p, err := w.recv()
	stop()
	if cerr := ctx.Err(); cerr != nil && err != nil {
		err = cerr
	}
	_ = w.s.SetReadDeadline(time.Time{})
	return t, p, err
}

// TokenHash is the SHA-256 of a client token. The server stores only these.
type TokenHash [sha256.Size]byte

// HashToken returns the hash of token.
func HashToken(token string) TokenHash { return sha256.Sum256([]byte(token)) }

// ParseTokenHash decodes a hex token hash as written in the server config.
func ParseTokenHash(s string) (TokenHash, error) {
	var h TokenHash
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(h) {
		return h, errors.New("want 64 hex digits (the SHA-256 of the token; see 'tunnel hash-token')")
	}
	copy(h[:], b)
	return h, nil
}

func (h TokenHash) String() string { return hex.EncodeToString(h[:]) }

// Tokens maps client ids to token hashes.
type Tokens map[string]TokenHash

// Check reports whether token is clientID's token. It takes the same time
// whether the client is unknown or the token wrong, and compares in constant
// time.
func (t Tokens) Check(clientID, token string) bool {
	want, known := t[clientID]
	got := HashToken(token)
	ok := subtle.ConstantTimeCompare(got[:], want[:]) == 1
	return known && ok
}
