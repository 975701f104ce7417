package pipeline

import "context"

// Handler handles an Exchange. *Chain is a Handler; so is the next argument a
// Stage receives.
type Handler interface {
	Handle(ctx context.Context, x *Exchange) error
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, x *Exchange) error

// Handle calls f(ctx, x).
func (f HandlerFunc) Handle(ctx context.Context, x *Exchange) error { return f(ctx, x) }

// Stage is one link of a Chain. Work before next.Handle is the request phase;
// work after it is the response phase. Returning without calling next stops
// the chain. next is never nil. Handle may be called concurrently.
type Stage interface {
	Handle(ctx context.Context, x *Exchange, next Handler) error
}

// StageFunc adapts a function to Stage.
type StageFunc func(ctx context.Context, x *Exchange, next Handler) error

// Handle calls f(ctx, x, next).
func (f StageFunc) Handle(ctx context.Context, x *Exchange, next Handler) error {
	return f(ctx, x, next)
}

// Provisioner is implemented by stages that must acquire resources (open
// pools, load files, warm connections) before the first request. New calls
// Provision once, in chain order.
type Provisioner interface {
	Provision(ctx context.Context) error
}

// Validator is implemented by stages that check their configuration once
// provisioned. New calls Validate after every Provision succeeded.
type Validator interface {
	Validate() error
}

// Closer is implemented by stages that hold resources. Close must be safe to
// call after a failed or skipped Provision and must return by ctx's deadline.
// A chain closes its stages in reverse order.
type Closer interface {
	Close(ctx context.Context) error
}

// ProtocolHandler is implemented by a stage that handles some protocols
// only (an HTTP stage, which reads Exchange.Request, nil on a TCP rule):
// the chain passes the exchanges of other protocols straight on to the
// stage after it, once decode has said what an exchange speaks (an
// exchange whose Protocol is still ProtoUnknown goes through the stage).
// A rule's stage list refuses a module whose Protocols do not fit the
// rule when it is built, so there nothing is skipped silently.
type ProtocolHandler interface {
	Protocols() Protocols
}

// Namer gives a stage the name used in errors, spans and metrics. Stages that
// do not implement it are named by their position ("stage[2]").
type Namer interface {
	Name() string
}
