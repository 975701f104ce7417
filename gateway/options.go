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
	// configFile is the configuration file: the server's is watched and
	// reloaded, a client's is named in messages.
	configFile string
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

// WithConfigFile names the file the server's configuration came from: the
// server watches it and applies changed clients and rules (and Reload reads
// it again, on SIGHUP for example), and keeps its state next to it unless
// state_dir says otherwise. A client only names it in what it says about
// its settings (a server key that does not match server_pin).
func WithConfigFile(path string) Option { return func(o *options) { o.configFile = path } }

// WithTracer makes the side record a span per request, with a child span
// per stage, and carry the trace context across the tunnel (W3C
// traceparent in the request head) and to the upstream.
func WithTracer(t trace.Tracer) Option { return func(o *options) { o.tracer = t } }

// WithTracerProvider is WithTracer with the provider's tracer for this
// package. A nil provider leaves tracing off.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(o *options) {
		if tp != nil {
			o.tracer = tp.Tracer("github.com/qtunnel/qtunnel/gateway")
		}
	}
}
