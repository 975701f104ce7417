package encode_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/codec"
	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/stages/encode"
	"github.com/qtunnel/qtunnel/transport"
)

// recordingStream is a tunnel stream that keeps what is written to it and
// how it was ended.
type recordingStream struct {
	out              bytes.Buffer
	closed           bool
	aborted          []uint64
	readsCancelledBy []uint64
}

func (s *recordingStream) Read([]byte) (int, error)    { return 0, io.EOF }
func (s *recordingStream) Write(p []byte) (int, error) { return s.out.Write(p) }
func (s *recordingStream) Close() error                { s.closed = true; return nil }
func (s *recordingStream) CancelRead(code uint64) {
	s.readsCancelledBy = append(s.readsCancelledBy, code)
}
func (s *recordingStream) Abort(code uint64) { s.aborted = append(s.aborted, code) }

// TestRefuseEndsTheStreamAsTheErrorSays drives Refuse with each kind of
// error a chain returns on the egress side and checks how the
// stream ends: an ERROR frame with the answer's status then a clean close,
// a reset, or nothing at all when the stream already carries the error.
func TestRefuseEndsTheStreamAsTheErrorSays(t *testing.T) {
	t.Parallel()
	const (
		answer = "answer" // an ERROR frame, then close
		reset  = "reset"  // Abort(StreamInternal), nothing written
		none   = "none"   // nothing written, neither closed nor reset
	)
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	upstreamEOF := &pipeline.Reject{Status: http.StatusBadGateway, Message: "upstream failed", Err: io.ErrUnexpectedEOF}
	for _, c := range []struct {
		name       string
		err        error
		status     int             // x.Status before fail
		ctx        context.Context // nil: live
		want       string
		wantStatus int // of the ERROR frame
		wantRetry  uint32
		wantMsg    string
	}{
		{name: "body cut", err: encode.BodyCutError{Err: io.ErrUnexpectedEOF}, status: http.StatusOK, want: none},
		{name: "write to stream failed", err: transport.WriteError{Err: errors.New("stream reset")}, want: reset},
		{name: "rejection wrapping a write failure", err: &pipeline.Reject{Status: 502, Err: transport.WriteError{Err: io.EOF}}, want: reset},
		{name: "rejection wrapping an upstream's unexpected EOF", err: upstreamEOF, want: answer,
			wantStatus: http.StatusBadGateway, wantMsg: "upstream failed"},
		{name: "stream cut short", err: fmt.Errorf("decode: %w", io.ErrUnexpectedEOF), want: reset},
		{name: "stream reset by the peer", err: fmt.Errorf("read: %w", &quic.StreamError{ErrorCode: 7, Remote: true}), want: reset},
		{name: "answer started", err: pipeline.Rejectf(http.StatusNotFound, "no route"), status: http.StatusOK, want: reset},
		{name: "requester gone", err: pipeline.Rejectf(http.StatusNotFound, "no route"), ctx: cancelled, want: reset},
		{name: "rejection", err: pipeline.Rejectf(http.StatusNotFound, "no route"), want: answer,
			wantStatus: http.StatusNotFound, wantMsg: "no route"},
		{name: "overload", err: &pipeline.Reject{Status: 503, Message: "busy", RetryAfter: 1500 * time.Millisecond}, want: answer,
			wantStatus: http.StatusServiceUnavailable, wantRetry: 2, wantMsg: "busy"},
		{name: "unknown error", err: errors.New("boom"), want: answer, wantStatus: http.StatusBadGateway, wantMsg: "tunnel error"},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx := c.ctx
			if ctx == nil {
				ctx = context.Background()
			}
			s := &recordingStream{}
			x := pipeline.Acquire(pipeline.Egress)
			defer x.Release()
			x.Stream, x.Status = s, c.status
			enc, err := encode.New(encode.Config{})
			require.NoError(t, err)
			require.False(t, enc.Refuse(ctx, x, c.err), "an egress answer is never left to abort")
			require.True(t, x.Answered, "nothing left to do")
			require.Equal(t, []uint64{codec.StreamCancelled}, s.readsCancelledBy, "the request body was not read to its end")
			switch c.want {
			case none:
				require.Empty(t, s.aborted, "reset")
				require.False(t, s.closed, "closed")
				require.Zero(t, s.out.Len(), "written")
				require.Equal(t, c.status, x.Status)
			case reset:
				require.Equal(t, []uint64{codec.StreamInternal}, s.aborted)
				require.False(t, s.closed, "closed")
				require.Zero(t, s.out.Len(), "written")
				require.Equal(t, c.status, x.Status)
			case answer:
				require.Empty(t, s.aborted, "reset")
				require.True(t, s.closed, "closed")
				typ, payload, err := codec.NewReader(&s.out, 64<<10).Next()
				require.NoError(t, err)
				require.Equal(t, codec.FrameError, typ)
				e, err := codec.ParseError(payload)
				require.NoError(t, err)
				require.Equal(t, c.wantStatus, e.Status)
				require.Equal(t, c.wantRetry, e.RetryAfter)
				require.Equal(t, c.wantMsg, e.Message)
				require.Equal(t, c.wantStatus, x.Status)
				require.Zero(t, s.out.Len(), "anything after the ERROR frame")
			}
		})
	}
}
