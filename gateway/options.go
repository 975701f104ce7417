package gateway

import (
	"log/slog"

	"go.opentelemetry.io/otel/trace"

	"github.com/qtunnel/qtunnel/pipeline"
)

// Option customises a Server or a Client.
type Option func(*options)

type options struct {
	log *slog.Logger
	// ingressEdits and egressEdits change the chains' order tables.
	ingressEdits, egressEdits []pipeline.Edit
	tracer                    trace.Tracer
	modules                   []pipeline.Module // besides stages.Modules
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

// WithIngressEdits changes the ingress chain: each edit puts a stage of
// yours before or after a stage of the chain, by name, or replaces or
// removes one (pipeline.Before, After, Replace, Remove). IngressOrder
// lists the names; an edit that names no stage of the chain fails the
// side's start with an error that lists them. Options add up: edits apply
// in the order given.
//
//	gateway.WithIngressEdits(pipeline.Before(egress.Name, myStage))
func WithIngressEdits(edits ...pipeline.Edit) Option {
	return func(o *options) { o.ingressEdits = append(o.ingressEdits, edits...) }
}

// WithEgressEdits is WithIngressEdits for the egress chain (EgressOrder).
func WithEgressEdits(edits ...pipeline.Edit) Option {
	return func(o *options) { o.egressEdits = append(o.egressEdits, edits...) }
}

// WithModules adds stage modules that rules' stage lists may name, beside
// the ones the gateway ships (stages.Modules): this is how a gateway of
// your own runs a stage you wrote, configured per rule in YAML. A client
// runs the stages of its forward rules, so it needs the modules they name
// too; a name neither side knows refuses the rules with an error that
// lists the names known.
func WithModules(ms ...pipeline.Module) Option {
	return func(o *options) { o.modules = append(o.modules, ms...) }
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
