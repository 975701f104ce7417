package limit_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/stages/limit"
)

// failingBody gives some bytes, then fails with err.
type failingBody struct {
	data string
	err  error
}

func (b *failingBody) Read(p []byte) (int, error) {
	if b.data == "" {
		return 0, b.err
	}
	n := copy(p, b.data)
	b.data = b.data[n:]
	return n, nil
}

func (b *failingBody) Close() error { return nil }

// TestBodyFailuresAreAnsweredForWhatTheyAre: a request body that fails is
// the user's doing, and the exchange is answered for it (408, 400, 413)
// whatever the stage reading it then returned; a user who went away gets
// no answer at all.
func TestBodyFailuresAreAnsweredForWhatTheyAre(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		err    error
		gone   bool // the request's context is done
		status int  // 0: the body's error comes back as is
		cause  error
	}{
		{"read deadline: the user stopped sending", os.ErrDeadlineExceeded, false, http.StatusRequestTimeout, limit.ErrBodyTooSlow},
		{"read deadline with the context ended (net/http's HTTP/1 does)", os.ErrDeadlineExceeded, true, http.StatusRequestTimeout, limit.ErrBodyTooSlow},
		{"bad chunk", errors.New("malformed chunked encoding"), false, http.StatusBadRequest, limit.ErrMalformedBody},
		{"shorter than its length", io.ErrUnexpectedEOF, false, http.StatusBadRequest, limit.ErrMalformedBody},
		{"the user went away", errors.New("connection reset by peer"), true, 0, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			g := newGuard(t, limit.Config{RequestTimeout: time.Minute, BodyTimeout: time.Minute})
			x := ingress("", true, "web")
			defer x.Release()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tt.gone {
				cancel()
			}
			x.Request = x.Request.WithContext(ctx)
			x.Request.ContentLength = 10
			x.Request.Body = &failingBody{data: "abc", err: tt.err}
			// The next stage fails as the tunnel stage does when the body
			// fails: with an error of its own.
			err := g.Handle(context.Background(), x, pipeline.HandlerFunc(func(_ context.Context, x *pipeline.Exchange) error {
				_, err := io.ReadAll(x.Request.Body)
				require.Error(t, err)
				return errors.New("tunnel stream failed")
			}))
			if tt.status == 0 {
				require.EqualError(t, err, "tunnel stream failed", "no answer is owed to a user who left")
				return
			}
			rej, ok := errors.AsType[*pipeline.Reject](err)
			require.True(t, ok, "%v", err)
			require.Equal(t, tt.status, rej.Status)
			require.ErrorIs(t, err, tt.cause)
		})
	}
}

// TestBodyReadDeadlines: while the body is read, a read deadline is kept
// on the user's connection; it is lifted once the body ends, and once the
// answer starts (a streaming call's user may then be silent).
func TestBodyReadDeadlines(t *testing.T) {
	t.Parallel()
	g := newGuard(t, limit.Config{RequestTimeout: time.Minute, BodyTimeout: 30 * time.Second})
	x := ingress("hello", true, "web")
	defer x.Release()
	u := x.Writer.(*user)
	err := g.Handle(context.Background(), x, pipeline.HandlerFunc(func(_ context.Context, x *pipeline.Exchange) error {
		p := make([]byte, 2)
		_, err := x.Request.Body.Read(p)
		require.NoError(t, err)
		require.WithinDuration(t, time.Now().Add(30*time.Second), u.readDeadline, 10*time.Second, "a deadline while the body is read")
		_, err = io.ReadAll(x.Request.Body)
		require.NoError(t, err)
		require.True(t, u.readDeadline.IsZero(), "lifted at the body's end")
		return nil
	}))
	require.NoError(t, err)

	x2 := ingress(strings.Repeat("a", 100), true, "web")
	defer x2.Release()
	u2 := x2.Writer.(*user)
	err = g.Handle(context.Background(), x2, pipeline.HandlerFunc(func(_ context.Context, x *pipeline.Exchange) error {
		p := make([]byte, 2)
		_, err := x.Request.Body.Read(p)
		require.NoError(t, err)
		require.False(t, u2.readDeadline.IsZero())
		x.Writer.WriteHeader(http.StatusOK) // the answer starts before the body ends
		require.True(t, u2.readDeadline.IsZero(), "lifted once the answer starts")
		require.Equal(t, "close", u2.header.Get("Connection"), "an HTTP/1 answer before the body's end closes the connection after it")
		return nil
	}))
	require.NoError(t, err)
}
