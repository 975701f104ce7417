package pipelinetest

import (
	"fmt"
	"io"
	"sync"

	"github.com/qtunnel/qtunnel/pipeline"
)

// Stream is an in-memory pipeline.Stream for tests, made of two io.Pipe
// halves: what the test's "peer" writes (PeerWrite) is what the code under
// test reads (Read), and what the code under test writes (Write) is what the
// peer reads (PeerRead). Close, CancelRead and Abort are recorded, and also
// take effect on the pipes the way they would on a QUIC stream, so that a
// goroutine blocked on the other end wakes up.
//
// Like io.Pipe, Stream has no buffer: every Write blocks until the other
// end reads it. A test therefore runs the peer in its own goroutine (see
// PeerSend) and calls Shutdown when it is done, which unblocks whoever is
// still waiting. All methods are safe for concurrent use.
type Stream struct {
	inR  *io.PipeReader // read by the code under test
	inW  *io.PipeWriter // written by the peer
	outR *io.PipeReader // read by the peer
	outW *io.PipeWriter // written by the code under test

	mu         sync.Mutex
	writes     [][]byte
	closed     bool
	cancelRead []uint64
	aborts     []uint64
}

// NewStream returns a connected Stream.
func NewStream() *Stream {
	s := &Stream{}
	s.inR, s.inW = io.Pipe()
	s.outR, s.outW = io.Pipe()
	return s
}

// CodeError is the error the far end of a pipe sees after CancelRead or
// Abort: the operation and its application error code.
type CodeError struct {
	Op   string // "cancel read" or "abort"
	Code uint64
}

func (e *CodeError) Error() string {
	return fmt.Sprintf("pipelinetest: stream %s with code 0x%x", e.Op, e.Code)
}

// Read implements pipeline.Stream: it reads what the peer wrote.
func (s *Stream) Read(p []byte) (int, error) { return s.inR.Read(p) }

// Write implements pipeline.Stream. Each call is recorded (see Writes) and
// blocks until the peer has read all of p.
func (s *Stream) Write(p []byte) (int, error) {
	s.mu.Lock()
	s.writes = append(s.writes, append([]byte(nil), p...))
	s.mu.Unlock()
	return s.outW.Write(p)
}

// Close implements pipeline.Stream: the peer's reads return io.EOF once it
// has read everything written before.
func (s *Stream) Close() error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	return s.outW.Close()
}

// CancelRead implements pipeline.Stream: the code's later reads fail and the
// peer's writes fail with a *CodeError.
func (s *Stream) CancelRead(code uint64) {
	s.mu.Lock()
	s.cancelRead = append(s.cancelRead, code)
	s.mu.Unlock()
	_ = s.inR.CloseWithError(&CodeError{Op: "cancel read", Code: code})
}

// Abort implements pipeline.Stream: both directions fail with a *CodeError.
func (s *Stream) Abort(code uint64) {
	s.mu.Lock()
	s.aborts = append(s.aborts, code)
	s.mu.Unlock()
	err := &CodeError{Op: "abort", Code: code}
	_ = s.inR.CloseWithError(err)
	_ = s.outW.CloseWithError(err)
}

// PeerWrite writes p as the peer: the code under test reads it. It blocks
// until all of p has been read or the read side is cancelled.
func (s *Stream) PeerWrite(p []byte) (int, error) { return s.inW.Write(p) }

// PeerClose ends the peer's direction cleanly (a FIN): once the code under
// test has read everything, its reads return io.EOF.
func (s *Stream) PeerClose() error { return s.inW.Close() }

// PeerReset ends the peer's direction with err (a RESET_STREAM): the code
// under test's reads return err once the data written before is consumed.
func (s *Stream) PeerReset(err error) { _ = s.inW.CloseWithError(err) }

// PeerRead reads, as the peer, what the code under test wrote.
func (s *Stream) PeerRead(p []byte) (int, error) { return s.outR.Read(p) }

// Peer returns the peer's end as an io.Reader of what the code under test
// wrote, for use with io.ReadAll or a codec.Reader.
func (s *Stream) Peer() io.Reader { return peerReader{s} }

type peerReader struct{ s *Stream }

func (p peerReader) Read(b []byte) (int, error) { return p.s.outR.Read(b) }

// PeerSend writes b as the peer from a new goroutine, then, if fin, closes
// the peer's direction. The returned channel (buffered) receives the write's
// error, or that of the close, once both are done; receive from it before the
// test ends so that the goroutine is known to be gone.
func (s *Stream) PeerSend(b []byte, fin bool) <-chan error {
	done := make(chan error, 1)
	go func() {
		_, err := s.inW.Write(b)
		if err == nil && fin {
			err = s.inW.Close()
		}
		done <- err
	}()
	return done
}

// Remote returns the peer's end of s as a pipeline.Stream: what it writes,
// s reads, and the other way round. It lets the code of the other side of
// the tunnel (an egress chain) serve as the peer of the code under test.
// Calls on it are not recorded.
func (s *Stream) Remote() pipeline.Stream { return remote{s} }

type remote struct{ s *Stream }

func (r remote) Read(p []byte) (int, error)  { return r.s.outR.Read(p) }
func (r remote) Write(p []byte) (int, error) { return r.s.inW.Write(p) }
func (r remote) Close() error                { return r.s.inW.Close() }

func (r remote) CancelRead(code uint64) {
	_ = r.s.outR.CloseWithError(&CodeError{Op: "cancel read", Code: code})
}

func (r remote) Abort(code uint64) {
	err := &CodeError{Op: "abort", Code: code}
	_ = r.s.outR.CloseWithError(err)
	_ = r.s.inW.CloseWithError(err)
}

// Shutdown closes every end of both pipes, so that no goroutine stays
// blocked on the stream. Use it in t.Cleanup or at the end of a test.
func (s *Stream) Shutdown() {
	_ = s.inR.CloseWithError(io.ErrClosedPipe)
	_ = s.inW.CloseWithError(io.ErrClosedPipe)
	_ = s.outR.CloseWithError(io.ErrClosedPipe)
	_ = s.outW.CloseWithError(io.ErrClosedPipe)
}

// Writes returns a copy of the byte slices passed to Write, one per call.
func (s *Stream) Writes() [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([][]byte, len(s.writes))
	for i, w := range s.writes {
		out[i] = append([]byte(nil), w...)
	}
	return out
}

// Closed reports whether Close was called.
func (s *Stream) Closed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// CancelReadCodes returns the codes passed to CancelRead, in call order.
func (s *Stream) CancelReadCodes() []uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]uint64(nil), s.cancelRead...)
}

// AbortCodes returns the codes passed to Abort, in call order.
func (s *Stream) AbortCodes() []uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]uint64(nil), s.aborts...)
}

var (
	_ pipeline.Stream = (*Stream)(nil)
	_ pipeline.Stream = remote{}
)
