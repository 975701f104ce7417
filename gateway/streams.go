package gateway

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"go.opentelemetry.io/otel/trace"

	"github.com/qtunnel/qtunnel/codec"
	"github.com/qtunnel/qtunnel/metrics"
	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/stages/decode"
	"github.com/qtunnel/qtunnel/stages/encode"
	"github.com/qtunnel/qtunnel/transport"
)

// streamServer runs the egress chain for the request streams the peer opens
// on tunnel connections, on a bounded worker pool (S3).
type streamServer struct {
	streamServerConfig
	workers  *pipeline.WorkerPool[*streamTask]
	inflight sync.WaitGroup  // tasks handed to workers and not finished
	refusing atomic.Bool     // set by refuse: the side is shutting down
	refuser  *encode.Encoder // answers what the chain could not
}

// streamServerConfig is what newStreamServer builds a streamServer from.
type streamServerConfig struct {
	chain      pipeline.Handler // the side's egress chain
	maxStreams int              // streams served at once (limits.max_concurrent_streams); more are refused
	maxFrame   int              // limits.max_frame_size
	tracer     trace.Tracer     // nil: no request spans
	metrics    *metrics.Metrics // streams served, refusals and panics
	log        *slog.Logger
	access     *atomic.Bool // log.access: each stream's record at info (changes live)
}

// refuse makes every stream opened from now on refused at once with
// codec.StreamRefused (503 and Retry-After on the other side), while the
// streams in flight go on: called first thing when the side shuts down, so
// that a stream the peer opens before it has read the GOAWAY does not
// start work the drain would then have to wait for.
func (ss *streamServer) refuse() { ss.refusing.Store(true) }

type streamTask struct {
	srv  *streamServer
	s    *quic.Stream
	conn *pipeline.Conn
}

var taskPool = sync.Pool{New: func() any { return new(streamTask) }}

func newStreamServer(c streamServerConfig) (*streamServer, error) {
	ss := &streamServer{streamServerConfig: c}
	var err error
	if ss.refuser, err = encode.New(encode.Config{MaxFrameSize: c.maxFrame}); err != nil {
		return nil, err
	}
	w, err := pipeline.NewWorkerPool(c.maxStreams, (*streamTask).run, func(v any) {
		c.metrics.CountError(pipeline.Egress, metrics.KindInternal)
		c.log.Error("stream handler panicked", "panic", v)
	})
	if err != nil {
		return nil, err
	}
	ss.workers = w
	return ss, nil
}

// serve accepts streams on qc until the connection ends. A stream that finds
// every worker busy, or that arrives after refuse, is refused at once with
// codec.StreamRefused, which the ingress side turns into 503 with
// Retry-After: the work is never queued.
func (ss *streamServer) serve(qc *quic.Conn, info *pipeline.Conn) {
	for {
		s, err := qc.AcceptStream(qc.Context())
		if err != nil {
			return // the connection is gone: nothing to retry on it
		}
		if ss.refusing.Load() {
			s.CancelRead(quic.StreamErrorCode(codec.StreamRefused))
			s.CancelWrite(quic.StreamErrorCode(codec.StreamRefused))
			ss.log.Debug("stream refused: shutting down", "client", info.ClientID)
			continue
		}
		t := taskPool.Get().(*streamTask)
		t.srv, t.s, t.conn = ss, s, info
		ss.inflight.Add(1)
		if err := ss.workers.Invoke(t); err != nil {
			ss.inflight.Done()
			s.CancelRead(quic.StreamErrorCode(codec.StreamRefused))
			s.CancelWrite(quic.StreamErrorCode(codec.StreamRefused))
			*t = streamTask{}
			taskPool.Put(t)
			if errors.Is(err, pipeline.ErrOverloaded) {
				ss.metrics.CountError(pipeline.Egress, metrics.KindOverload)
			}
			ss.log.Debug("stream refused", "client", info.ClientID, "err", err)
		}
	}
}

func (t *streamTask) run() {
	ss, s, conn := t.srv, t.s, t.conn
	*t = streamTask{}
	taskPool.Put(t)
	defer ss.inflight.Done()
	ss.metrics.StreamOpened()
	defer ss.metrics.StreamClosed() // a panic in the chain ends the stream's count too
	defer func() {
		if v := recover(); v != nil {
			// Tell the ingress side at once (it answers 502) instead of
			// leaving it to its timeout; the pool logs and counts the panic.
			s.CancelWrite(quic.StreamErrorCode(codec.StreamInternal))
			s.CancelRead(quic.StreamErrorCode(codec.StreamInternal))
			panic(v)
		}
	}()

	_ = ss.serveStream(s.Context(), transport.Stream{S: s}, conn)
}

// serveStream runs one request stream of conn through the egress chain,
// with its request span and its record, and answers or resets the stream
// if the chain fails. It returns the chain's error, already dealt with.
// ctx is the stream's context.
func (ss *streamServer) serveStream(ctx context.Context, s pipeline.Stream, conn *pipeline.Conn) error {
	x := pipeline.Acquire(pipeline.Egress)
	x.Stream, x.Conn = s, conn
	var err error
	var span trace.Span
	if ss.tracer != nil {
		// The head carries the ingress side's span: read it first, so that
		// every span of this side joins that trace.
		if err = decode.ReadHead(x, ss.maxFrame); err == nil {
			tctx := pipeline.ExtractHead(ctx, &x.Head)
			tctx, span = ss.tracer.Start(tctx, spanName(pipeline.Egress, x.Head.Method), trace.WithSpanKind(trace.SpanKindServer))
			err = ss.chain.Handle(tctx, x)
		}
	} else {
		err = ss.chain.Handle(ctx, x)
	}
	if err != nil && !x.Answered {
		// The head could not be read, or the chain has no encode (which
		// answers the errors of the stages inside it): answer here.
		ss.refuser.Refuse(ctx, x, err)
	}
	if span != nil {
		endRequestSpan(span, x, err)
	}
	if level, msg := requestRecord(ss.access.Load(), "stream"); ss.log.Enabled(ctx, level) {
		ss.log.LogAttrs(ctx, level, msg,
			slog.String("request_id", x.ID), slog.String("client", conn.ClientID), slog.String("rule", x.Head.RuleID),
			slog.String("method", x.Head.Method), slog.String("path", x.Head.Path), slog.Int("status", x.Status),
			slog.Duration("took", timeSince(x)), errAttr(err))
	}
	x.Release()
	return err
}

// close stops taking streams and waits, until ctx is done, for the running
// ones.
func (ss *streamServer) close(ctx context.Context) error { return ss.workers.Close(ctx) }

// wait waits for every task, however long: call it once the connections are
// closed, which ends the tasks' contexts.
func (ss *streamServer) wait() { ss.inflight.Wait() }

func timeSince(x *pipeline.Exchange) time.Duration { return time.Since(x.Start) }
