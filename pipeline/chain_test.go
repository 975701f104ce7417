package pipeline_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/qtunnel/qtunnel/codec"
	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/pipeline/pipelinetest"
)

func TestMain(m *testing.M) { pipelinetest.VerifyNoLeaks(m) }

func recorders(log *pipelinetest.Log, ids ...string) []pipeline.Stage {
	out := make([]pipeline.Stage, len(ids))
	for i, id := range ids {
		out[i] = &pipelinetest.Recorder{ID: id, Log: log}
	}
	return out
}

func TestChainOrderFirstStageIsOutermost(t *testing.T) {
	t.Parallel()
	log := &pipelinetest.Log{}
	c, err := pipeline.New(context.Background(), recorders(log, "a", "b", "c"))
	require.NoError(t, err)
	require.Equal(t, []string{"provision a", "provision b", "provision c", "validate a", "validate b", "validate c"}, log.Events())
	require.Equal(t, []string{"a", "b", "c"}, c.Names())

	log2 := &pipelinetest.Log{}
	c2, err := pipeline.New(context.Background(), []pipeline.Stage{
		&pipelinetest.Recorder{ID: "a", Log: log2}, &pipelinetest.Recorder{ID: "b", Log: log2}, &pipelinetest.Recorder{ID: "c", Log: log2},
	})
	require.NoError(t, err)
	x := pipeline.Acquire(pipeline.Ingress)
	defer x.Release()
	require.NoError(t, c2.Handle(context.Background(), x))
	require.Equal(t, []string{"provision a", "provision b", "provision c", "validate a", "validate b", "validate c",
		"a>", "b>", "c>", "<c", "<b", "<a"}, log2.Events())

	require.NoError(t, c.Close(context.Background()))
	require.Equal(t, []string{"close c", "close b", "close a"}, log.Events()[6:])
}

func TestChainStopsAtRejectingStage(t *testing.T) {
	t.Parallel()
	log := &pipelinetest.Log{}
	rj := pipeline.Rejectf(http.StatusNotFound, "no rule for %s", "x.test")
	c, err := pipeline.New(context.Background(), []pipeline.Stage{
		&pipelinetest.Recorder{ID: "a", Log: log}, pipelinetest.Fail{Err: rj}, &pipelinetest.Recorder{ID: "never", Log: log},
	})
	require.NoError(t, err)
	x := pipeline.Acquire(pipeline.Ingress)
	defer x.Release()
	err = c.Handle(context.Background(), x)
	require.ErrorIs(t, err, rj)
	require.NotContains(t, log.Events(), "never>")
	status, msg, _ := pipeline.Answer(err)
	require.Equal(t, http.StatusNotFound, status)
	require.Equal(t, "no rule for x.test", msg)
}

func TestNewFailuresCloseWhatWasProvisioned(t *testing.T) {
	t.Parallel()
	boom := errors.New("boom")
	tests := []struct {
		name      string
		failAt    string
		provision bool
		wantErr   string
		wantClose []string
	}{
		{"provision", "b", true, "provision b: boom", []string{"close b", "close a"}},
		{"validate", "b", false, "validate b: boom", []string{"close c", "close b", "close a"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			log := &pipelinetest.Log{}
			stages := recorders(log, "a", "b", "c")
			if tt.provision {
				stages[1].(*pipelinetest.Recorder).ProvisionErr = boom
			} else {
				stages[1].(*pipelinetest.Recorder).ValidateErr = boom
			}
			_, err := pipeline.New(context.Background(), stages)
			require.ErrorIs(t, err, boom)
			require.ErrorContains(t, err, tt.wantErr)
			var closes []string
			for _, e := range log.Events() {
				if len(e) > 6 && e[:6] == "close " {
					closes = append(closes, e)
				}
			}
			require.Equal(t, tt.wantClose, closes)
		})
	}
}

func TestNewRejectsBadInput(t *testing.T) {
	t.Parallel()
	_, err := pipeline.New(context.Background(), nil)
	require.Error(t, err)
	_, err = pipeline.New(context.Background(), []pipeline.Stage{pipelinetest.NoOp{}, nil})
	require.ErrorContains(t, err, "stage 1 is nil")
}

func TestChainCloseJoinsErrors(t *testing.T) {
	t.Parallel()
	log := &pipelinetest.Log{}
	stages := recorders(log, "a", "b")
	stages[0].(*pipelinetest.Recorder).CloseErr = errors.New("a failed")
	stages[1].(*pipelinetest.Recorder).CloseErr = errors.New("b failed")
	c, err := pipeline.New(context.Background(), stages)
	require.NoError(t, err)
	err = c.Close(context.Background())
	require.ErrorContains(t, err, "close a: a failed")
	require.ErrorContains(t, err, "close b: b failed")
}

func TestChainTracesOneSpanPerStage(t *testing.T) {
	t.Parallel()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	defer func() { require.NoError(t, tp.Shutdown(context.Background())) }()
	log := &pipelinetest.Log{}
	c, err := pipeline.New(context.Background(), recorders(log, "decode", "route"), pipeline.WithTracer(tp.Tracer("test")))
	require.NoError(t, err)
	ctx, root := tp.Tracer("test").Start(context.Background(), "request")
	x := pipeline.Acquire(pipeline.Ingress)
	defer x.Release()
	require.NoError(t, c.Handle(ctx, x))
	root.End()
	spans := rec.Ended()
	require.Len(t, spans, 3)
	// Inner spans end first; each is the child of the one outside it.
	require.Equal(t, "route", spans[0].Name())
	require.Equal(t, "decode", spans[1].Name())
	require.Equal(t, spans[1].SpanContext().SpanID(), spans[0].Parent().SpanID())
	require.Equal(t, root.SpanContext().SpanID(), spans[1].Parent().SpanID())
}

// startCounter is a tracer that counts the spans started through it.
type startCounter struct {
	trace.Tracer
	n atomic.Int32
}

func (s *startCounter) Start(ctx context.Context, name string, opts ...trace.SpanStartOption) (context.Context, trace.Span) {
	s.n.Add(1)
	return s.Tracer.Start(ctx, name, opts...)
}

// Under no request span, or under one that does not record (unsampled),
// the chain starts no stage span at all: it would not be recorded, and
// starting it costs allocations on every request.
func TestChainStartsStageSpansUnderARecordingSpanOnly(t *testing.T) {
	t.Parallel()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	defer func() { require.NoError(t, tp.Shutdown(context.Background())) }()
	never := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.NeverSample()))
	defer func() { require.NoError(t, never.Shutdown(context.Background())) }()
	tracer := &startCounter{Tracer: tp.Tracer("test")}
	c, err := pipeline.New(context.Background(), recorders(&pipelinetest.Log{}, "decode", "route"), pipeline.WithTracer(tracer))
	require.NoError(t, err)
	handle := func(ctx context.Context) {
		x := pipeline.Acquire(pipeline.Ingress)
		defer x.Release()
		require.NoError(t, c.Handle(ctx, x))
	}

	handle(context.Background())
	require.Zero(t, tracer.n.Load(), "no request span: no stage spans")
	unsampled, span := never.Tracer("test").Start(context.Background(), "request")
	require.False(t, span.IsRecording())
	handle(unsampled)
	span.End()
	require.Zero(t, tracer.n.Load(), "an unsampled request span: no stage spans")
	require.Empty(t, rec.Ended())

	sampled, root := tp.Tracer("test").Start(context.Background(), "request")
	handle(sampled)
	root.End()
	require.EqualValues(t, 2, tracer.n.Load(), "a recording request span: one per stage")
	require.Len(t, rec.Ended(), 3)
}

func TestAnswer(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		err    error
		status int
		retry  time.Duration
	}{
		{"reject", &pipeline.Reject{Status: 413, Message: "too big"}, 413, 0},
		{"wrapped reject", fmt.Errorf("x: %w", &pipeline.Reject{Status: 429, RetryAfter: 2 * time.Second}), 429, 2 * time.Second},
		{"peer error", &codec.Error{Status: 502, RetryAfter: 3, Message: "upstream down"}, 502, 3 * time.Second},
		{"overload", fmt.Errorf("pool: %w", pipeline.ErrOverloaded), 503, time.Second},
		{"deadline", context.DeadlineExceeded, 504, 0},
		{"other", errors.New("eof"), 502, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			status, _, retry := pipeline.Answer(tt.err)
			require.Equal(t, tt.status, status)
			require.Equal(t, tt.retry, retry)
		})
	}
}

func TestExchangeReleaseResets(t *testing.T) {
	t.Parallel()
	x := pipeline.Acquire(pipeline.Egress)
	x.ID = "abc"
	x.Status = 200
	x.NewResponse().StatusCode = 201
	x.Release()
	y := pipeline.Acquire(pipeline.Ingress)
	defer y.Release()
	require.Empty(t, y.ID)
	require.Zero(t, y.Status)
	require.Nil(t, y.Response)
	require.Equal(t, pipeline.Ingress, y.Side)
	require.False(t, y.Start.IsZero())
}

func TestWorkerPoolBoundsAndDrains(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	var started sync.WaitGroup
	var done atomic.Int32
	p, err := pipeline.NewWorkerPool(2, func(int) {
		started.Done()
		<-release
		done.Add(1)
	}, nil)
	require.NoError(t, err)
	started.Add(2)
	require.NoError(t, p.Invoke(1))
	require.NoError(t, p.Invoke(2))
	started.Wait()
	require.ErrorIs(t, p.Invoke(3), pipeline.ErrOverloaded, "a full pool refuses at once")
	require.Equal(t, 2, p.Running())

	closed := make(chan error, 1)
	go func() { closed <- p.Close(context.Background()) }()
	close(release)
	require.NoError(t, <-closed)
	require.EqualValues(t, 2, done.Load(), "Close waits for running tasks")
	require.ErrorIs(t, p.Invoke(4), pipeline.ErrClosed)

	_, err = pipeline.NewWorkerPool(0, func(int) {}, nil)
	require.Error(t, err)
}

func TestWorkerPoolRecoversPanics(t *testing.T) {
	t.Parallel()
	got := make(chan any, 1)
	p, err := pipeline.NewWorkerPool(1, func(int) { panic("bad task") }, func(v any) { got <- v })
	require.NoError(t, err)
	require.NoError(t, p.Invoke(1))
	require.Equal(t, "bad task", <-got)
	require.NoError(t, p.Close(context.Background()))
}

func TestBufferPool(t *testing.T) {
	t.Parallel()
	b := pipeline.GetBuffer(64 << 10)
	require.Zero(t, len(b.B))
	require.GreaterOrEqual(t, cap(b.B), 64<<10)
	b.B = append(b.B, "data"...)
	pipeline.PutBuffer(b)
	b2 := pipeline.GetBuffer(16)
	require.Zero(t, len(b2.B), "buffers come back empty")
	pipeline.PutBuffer(b2)
}

func TestRegistry(t *testing.T) {
	t.Parallel()
	var r pipeline.Registry
	type cfg struct{ N int }
	noop := pipeline.Module{Name: "noop", New: func(decode func(any) error) (pipeline.Stage, error) {
		var c cfg
		if err := decode(&c); err != nil {
			return nil, err
		}
		if c.N < 0 {
			return nil, errors.New("n must not be negative")
		}
		return pipelinetest.NoOp{}, nil
	}}
	require.NoError(t, r.Register(noop))
	require.ErrorContains(t, r.Register(noop), `stage "noop" is already registered`)
	require.Error(t, r.Register(pipeline.Module{Name: "nameless-new"}))
	m, ok := r.Module("noop")
	require.True(t, ok)
	require.Equal(t, pipeline.HTTPProtocols, m.Protocols, "zero Protocols means the HTTP ones")
	require.True(t, m.Protocols.Has(pipeline.ProtoGRPC))
	require.False(t, m.Protocols.Has(pipeline.ProtoTCP))
	s, err := r.Build("noop", nil)
	require.NoError(t, err)
	require.NotNil(t, s)
	_, err = r.Build("noop", func(v any) error { v.(*cfg).N = -1; return nil })
	require.ErrorContains(t, err, `stage "noop": n must not be negative`)
	_, err = r.Build("nope", nil)
	require.ErrorContains(t, err, `unknown stage "nope" (known: [noop])`)
	require.Equal(t, []string{"noop"}, r.Names())
}

func TestExchangeStringsAreDisjoint(t *testing.T) {
	t.Parallel()
	x := pipeline.Acquire(pipeline.Ingress)
	a := x.Strings(4)
	b := x.Strings(2)
	c := x.Strings(5) // beyond the 8 the exchange holds: allocated
	for i := range a {
		a[i] = "a"
	}
	for i := range b {
		b[i] = "b"
	}
	for i := range c {
		c[i] = "c"
	}
	require.Equal(t, []string{"a", "a", "a", "a"}, a)
	require.Equal(t, []string{"b", "b"}, b)
	require.Len(t, c, 5)
	h := x.ResponseHeader()
	h.Set("K", "v")
	x.Release()
	y := pipeline.Acquire(pipeline.Ingress)
	require.Empty(t, y.ResponseHeader(), "a released exchange's header map comes back empty")
	y.Release()
}
