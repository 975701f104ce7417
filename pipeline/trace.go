package pipeline

import (
	"context"
	"net/http"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/qtunnel/qtunnel/codec"
)

// traceContext is the W3C trace-context propagator the gateway uses across
// the tunnel (in the request head) and towards upstreams (in headers).
var traceContext = propagation.TraceContext{}

// headCarrier exposes a request head's trace fields to the propagator.
type headCarrier struct{ h *codec.RequestHead }

func (c headCarrier) Get(key string) string {
	switch key {
	case "traceparent":
		return c.h.TraceParent
	case "tracestate":
		return c.h.TraceState
	}
	return ""
}

func (c headCarrier) Set(key, value string) {
	switch key {
	case "traceparent":
		c.h.TraceParent = value
	case "tracestate":
		c.h.TraceState = value
	}
}

func (c headCarrier) Keys() []string { return []string{"traceparent", "tracestate"} }

// InjectHead writes the span in ctx, if any, into h's trace fields so that
// the far side's spans join the trace. Without a span it does nothing and
// allocates nothing.
func InjectHead(ctx context.Context, h *codec.RequestHead) {
	if trace.SpanContextFromContext(ctx).IsValid() {
		traceContext.Inject(ctx, headCarrier{h})
	}
}

// ExtractHead returns ctx with the remote span context carried by h.
func ExtractHead(ctx context.Context, h *codec.RequestHead) context.Context {
	if h.TraceParent == "" {
		return ctx
	}
	return traceContext.Extract(ctx, headCarrier{h})
}

// InjectHeader writes the span in ctx, if any, into an HTTP header
// (traceparent, tracestate), so that an upstream joins the trace.
func InjectHeader(ctx context.Context, h http.Header) {
	if trace.SpanContextFromContext(ctx).IsValid() {
		traceContext.Inject(ctx, propagation.HeaderCarrier(h))
	}
}

// ExtractHeader returns ctx with the remote span context an HTTP header
// carries, if any.
func ExtractHeader(ctx context.Context, h http.Header) context.Context {
	if _, ok := h["Traceparent"]; !ok {
		return ctx
	}
	return traceContext.Extract(ctx, propagation.HeaderCarrier(h))
}
