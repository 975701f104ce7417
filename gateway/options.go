package gateway

import (
	"log/slog"

	"go.opentelemetry.io/otel/trace"

	"github.com/qtunnel/qtunnel/pipeline"
)

// Option customises a Server or a Client.
type Option func(*options)

type options struct {
	log     *slog.Logger
	ingress func([]pipeline.Stage) ([]pipeline.Stage, error)
	egress  func([]pipeline.Stage) ([]pipeline.Stage, error)
	tracer  trace.Tracer
}

func buildOptions(opts []Option) options {
	o := options{log: slog.Default()}
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// WithLogger sets the logger. Default slog.Default().
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithIngressStages lets the caller rewrite the ingress chain: it receives
// the default stages (decode, route, egress, encode) and returns the chain
// to build, with stages added, replaced or reordered.
func WithIngressStages(f func(defaults []pipeline.Stage) ([]pipeline.Stage, error)) Option {
	return func(o *options) { o.ingress = f }
}

// WithEgressStages is WithIngressStages for the egress chain.
func WithEgressStages(f func(defaults []pipeline.Stage) ([]pipeline.Stage, error)) Option {
	return func(o *options) { o.egress = f }
}

// WithTracer makes both chains record a span per stage.
func WithTracer(t trace.Tracer) Option { return func(o *options) { o.tracer = t } }
