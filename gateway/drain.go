package gateway

import (
	"context"
	"time"

	"github.com/qtunnel/qtunnel/codec"
	"github.com/qtunnel/qtunnel/pipeline"
)

// How a connection drains (S1), whichever side starts it:
//
//   - the side that stops sends GOAWAY, stops its listeners (their
//     requests finish first), lets its stream workers finish what they
//     serve, then waits for the peer to close the connection (closeWhenIdle
//     on the peer) for what is left of its grace, and only then closes it
//     itself;
//   - the side told GOAWAY opens no new streams on the connection (503 to
//     new requests) and closes it as soon as the streams it opened are
//     done: by then every answer they carried has been read whole.
//
// Closing a QUIC connection throws away stream data not yet delivered, so
// the side that sent the last answers must not be the one that closes
// first: the reader of the last bytes is.

// closeWhenIdle closes conn once no stream this side opened on it is left
// (Conn.Active), or once grace has passed, or when the connection ends
// anyway. It is run by the side told to drain, on its own goroutine.
func closeWhenIdle(ctx context.Context, conn *pipeline.Conn, grace time.Duration) {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	deadline := time.NewTimer(grace)
	defer deadline.Stop()
	for conn.Active.Load() > 0 {
		select {
		case <-ctx.Done():
			return
		case <-deadline.C:
			_ = conn.Close(codec.ConnNormal, "drain grace over")
			return
		case <-t.C:
		}
	}
	_ = conn.Close(codec.ConnNormal, "drained")
}

// waitClosed waits until done is closed (the peer closed the connection
// after its drain) or ctx ends.
func waitClosed(ctx context.Context, done <-chan struct{}) {
	select {
	case <-done:
	case <-ctx.Done():
	}
}
