package pipeline

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"go.opentelemetry.io/otel/trace"
)

// Chain is an ordered list of stages compiled into linked handlers. It is
// immutable after New and safe for concurrent use. The zero value is not
// usable.
type Chain struct {
	links  []link
	names  []string
	stages []Stage
}

// link binds a stage to the handler after it, so that the hot path is one
// method call per stage and no closure is made per request.
type link struct {
	stage  Stage
	next   Handler
	name   string
	tracer trace.Tracer // nil when tracing is off
	protos Protocols    // the stage's (ProtocolHandler); 0: every protocol
}

func (l *link) Handle(ctx context.Context, x *Exchange) error {
	if l.protos != 0 && x.Protocol != ProtoUnknown && !l.protos.Has(x.Protocol) {
		return l.next.Handle(ctx, x) // not the stage's kind of exchange
	}
	// Stage spans are children of a recording span only: under an
	// unsampled request (or none) they would be dropped anyway, and
	// starting them would cost allocations for nothing.
	if x.Timings != nil {
		return l.timed(ctx, x)
	}
	if l.tracer == nil || !trace.SpanFromContext(ctx).IsRecording() {
		err := l.stage.Handle(ctx, x, l.next)
		if err != nil {
			l.blame(err)
		}
		return err
	}
	ctx, span := l.tracer.Start(ctx, l.name, trace.WithSpanKind(trace.SpanKindInternal))
	err := l.stage.Handle(ctx, x, l.next)
	if err != nil {
		l.blame(err)
		span.RecordError(err)
	}
	span.End()
	return err
}

// timed runs the stage and records how long it held x (x.Timings).
func (l *link) timed(ctx context.Context, x *Exchange) error {
	start := time.Now()
	err := l.stage.Handle(ctx, x, l.next)
	if err != nil {
		l.blame(err)
	}
	if t := x.Timings; t != nil {
		t.Names = append(t.Names, l.name)
		t.Took = append(t.Took, time.Since(start))
	}
	return err
}

// blame names the stage on a Reject that none has claimed: the innermost
// link to see a Reject is the stage that made it.
func (l *link) blame(err error) {
	if rj, ok := err.(*Reject); ok && rj.Stage == "" {
		rj.Stage = l.name
	}
}

// terminal ends every chain: the last stage's next. A chain run by Then
// goes on with the handler Then was given.
type terminal struct{}

func (terminal) Handle(ctx context.Context, x *Exchange) error {
	if h := x.then; h != nil {
		x.then = nil // the chain it leads back to ends with its own terminal
		return h.Handle(ctx, x)
	}
	return nil
}

// Option configures a Chain.
type Option func(*options)

type options struct {
	tracer trace.Tracer
}

// WithTracer makes the chain start one span per stage, named after the
// stage, as a child of the span in the request's context, when that span is
// recording (start a request span before calling the chain; the gateway
// does). Unsampled requests get no stage spans and cost nothing more. With
// no tracer (the default) the chain adds no work per request.
func WithTracer(t trace.Tracer) Option {
	return func(o *options) { o.tracer = t }
}

// New provisions and validates stages, in order, and compiles them into a
// Chain whose first stage is the outermost. If any step fails, the stages
// provisioned so far are closed in reverse order and the error names the
// stage. ctx bounds provisioning.
func New(ctx context.Context, stages []Stage, opts ...Option) (*Chain, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	if len(stages) == 0 {
		return nil, errors.New("pipeline: a chain needs at least one stage")
	}
	c := &Chain{
		links:  make([]link, len(stages)),
		names:  make([]string, len(stages)),
		stages: append([]Stage(nil), stages...),
	}
	for i, s := range stages {
		if s == nil {
			return nil, fmt.Errorf("pipeline: stage %d is nil", i)
		}
		c.names[i] = stageName(s, i)
	}
	for i, s := range stages {
		p, ok := s.(Provisioner)
		if !ok {
			continue
		}
		if err := p.Provision(ctx); err != nil {
			cerr := closeStages(context.WithoutCancel(ctx), c.stages[:i+1])
			return nil, errors.Join(fmt.Errorf("pipeline: provision %s: %w", c.names[i], err), cerr)
		}
	}
	for i, s := range stages {
		v, ok := s.(Validator)
		if !ok {
			continue
		}
		if err := v.Validate(); err != nil {
			cerr := closeStages(context.WithoutCancel(ctx), c.stages)
			return nil, errors.Join(fmt.Errorf("pipeline: validate %s: %w", c.names[i], err), cerr)
		}
	}
	for i := range c.links {
		l := &c.links[i]
		l.stage, l.name, l.tracer = stages[i], c.names[i], o.tracer
		if ph, ok := stages[i].(ProtocolHandler); ok {
			l.protos = ph.Protocols()
		}
		if i+1 < len(c.links) {
			l.next = &c.links[i+1]
		} else {
			l.next = terminal{}
		}
	}
	return c, nil
}

// Handle runs x through the chain.
func (c *Chain) Handle(ctx context.Context, x *Exchange) error {
	return c.links[0].Handle(ctx, x)
}

// Then runs x through the chain and, where the chain ends, through next:
// the chain acts as one stage of another (next is that stage's next). A
// stage of the chain that does not call its next stops x before next, as
// in any chain. Then allocates nothing.
func (c *Chain) Then(ctx context.Context, x *Exchange, next Handler) error {
	saved := x.then
	x.then = next
	err := c.links[0].Handle(ctx, x)
	x.then = saved
	return err
}

// Names returns the stage names in order.
func (c *Chain) Names() []string { return append([]string(nil), c.names...) }

// Stages returns the stages in order.
func (c *Chain) Stages() []Stage { return append([]Stage(nil), c.stages...) }

// Close closes every stage that implements Closer, last stage first, and
// returns all their errors joined.
func (c *Chain) Close(ctx context.Context) error {
	return closeStages(ctx, c.stages)
}

func closeStages(ctx context.Context, stages []Stage) error {
	var errs []error
	for i := len(stages) - 1; i >= 0; i-- {
		if cl, ok := stages[i].(Closer); ok {
			if err := cl.Close(ctx); err != nil {
				errs = append(errs, fmt.Errorf("close %s: %w", stageName(stages[i], i), err))
			}
		}
	}
	return errors.Join(errs...)
}

func stageName(s Stage, i int) string {
	if n, ok := s.(Namer); ok && n.Name() != "" {
		return n.Name()
	}
	return "stage[" + strconv.Itoa(i) + "]"
}
