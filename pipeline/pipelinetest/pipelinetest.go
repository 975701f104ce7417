// Package pipelinetest holds helpers for testing stages and chains with
// package pipeline alone: Serve runs a chain on a request as the gateway's
// listener does and returns the response the user would get; Answer is a
// stage that answers as an upstream would; Recorder logs the order stages
// run in; NoOp and Fail pass on or refuse; Stream is an in-memory tunnel
// stream; VerifyNoLeaks is the goroutine leak check for TestMain.
package pipelinetest

import (
	"context"
	"sync"
	"testing"

	"go.uber.org/goleak"

	"github.com/qtunnel/qtunnel/pipeline"
)

// Log collects events from Recorder stages, in order. Safe for concurrent use.
type Log struct {
	mu     sync.Mutex
	events []string
}

// Add appends an event.
func (l *Log) Add(e string) {
	l.mu.Lock()
	l.events = append(l.events, e)
	l.mu.Unlock()
}

// Events returns a copy of the events so far.
func (l *Log) Events() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.events...)
}

// Recorder is a stage that logs "name>" before calling next and "<name"
// after, and implements every lifecycle interface, logging each call.
type Recorder struct {
	ID  string
	Log *Log
	// ProvisionErr, ValidateErr and CloseErr are returned by the lifecycle
	// methods.
	ProvisionErr, ValidateErr, CloseErr error
}

// Handle implements pipeline.Stage.
func (r *Recorder) Handle(ctx context.Context, x *pipeline.Exchange, next pipeline.Handler) error {
	r.Log.Add(r.ID + ">")
	err := next.Handle(ctx, x)
	r.Log.Add("<" + r.ID)
	return err
}

// Name implements pipeline.Namer.
func (r *Recorder) Name() string { return r.ID }

// Provision implements pipeline.Provisioner.
func (r *Recorder) Provision(context.Context) error {
	r.Log.Add("provision " + r.ID)
	return r.ProvisionErr
}

// Validate implements pipeline.Validator.
func (r *Recorder) Validate() error {
	r.Log.Add("validate " + r.ID)
	return r.ValidateErr
}

// Close implements pipeline.Closer.
func (r *Recorder) Close(context.Context) error {
	r.Log.Add("close " + r.ID)
	return r.CloseErr
}

// NoOp is a stage that only calls next.
type NoOp struct{}

// Handle implements pipeline.Stage.
func (NoOp) Handle(ctx context.Context, x *pipeline.Exchange, next pipeline.Handler) error {
	return next.Handle(ctx, x)
}

// Fail is a stage that returns Err without calling next.
type Fail struct{ Err error }

// Handle implements pipeline.Stage.
func (f Fail) Handle(context.Context, *pipeline.Exchange, pipeline.Handler) error { return f.Err }

// VerifyNoLeaks is goleak.VerifyTestMain with the options every package of
// this module needs; call it from TestMain.
// Goroutines that exist before the tests start (such as ants' default pool,
// started at package init) are not leaks of any test.
func VerifyNoLeaks(m *testing.M, opts ...goleak.Option) {
	opts = append(opts, goleak.IgnoreCurrent())
	goleak.VerifyTestMain(m, append(IgnoredGoroutines(), opts...)...)
}

// IgnoredGoroutines are long-lived goroutines of dependencies that are not
// leaks: they are started once per process and never own test resources.
func IgnoredGoroutines() []goleak.Option {
	return []goleak.Option{
		// net/http's HTTP/2 transport keeps no goroutines once idle
		// connections are closed; the standard library's DNS and
		// signal watchers are process-wide.
		goleak.IgnoreTopFunction("os/signal.signal_recv"),
		goleak.IgnoreTopFunction("os/signal.loop"),
	}
}

var (
	_ pipeline.Stage       = (*Recorder)(nil)
	_ pipeline.Provisioner = (*Recorder)(nil)
	_ pipeline.Validator   = (*Recorder)(nil)
	_ pipeline.Closer      = (*Recorder)(nil)
	_ pipeline.Stage       = NoOp{}
	_ pipeline.Stage       = Fail{}
)
