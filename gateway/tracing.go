package gateway

import (
	"context"
	"fmt"
	"net/http"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.37.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/qtunnel/qtunnel/config"
	"github.com/qtunnel/qtunnel/pipeline"
)

// NewTracerProvider builds the tracer provider cfg asks for, or returns nil
// (no tracing) when no exporter is configured. Shut it down on exit to
// flush what is batched.
func NewTracerProvider(ctx context.Context, cfg config.Tracing, service string) (*sdktrace.TracerProvider, error) {
	if cfg.Exporter == "" {
		return nil, nil
	}
	if cfg.ServiceName != "" {
		service = cfg.ServiceName
	}
	var exp *otlptrace.Exporter
	var err error
	switch cfg.Exporter {
	case "otlp-grpc":
		var opts []otlptracegrpc.Option
		if cfg.Endpoint != "" {
			opts = append(opts, otlptracegrpc.WithEndpoint(cfg.Endpoint))
		}
		if cfg.Insecure {
			opts = append(opts, otlptracegrpc.WithInsecure())
		}
		exp, err = otlptracegrpc.New(ctx, opts...)
	case "otlp-http":
		var opts []otlptracehttp.Option
		if cfg.Endpoint != "" {
			opts = append(opts, otlptracehttp.WithEndpoint(cfg.Endpoint))
		}
		if cfg.Insecure {
			opts = append(opts, otlptracehttp.WithInsecure())
		}
		exp, err = otlptracehttp.New(ctx, opts...)
	default:
		return nil, fmt.Errorf("tracing: unknown exporter %q", cfg.Exporter)
	}
	if err != nil {
		return nil, fmt.Errorf("tracing: %w", err)
	}
	ratio := 1.0
	if cfg.SampleRatio != nil {
		ratio = *cfg.SampleRatio
	}
	res := resource.NewSchemaless(semconv.ServiceName(service))
	return sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exp),
		sdktrace.WithResource(res),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(ratio))),
	), nil
}

// spanNames holds the request span names of the standard methods on
// each side ("ingress GET"), so that naming a span allocates nothing.
var spanNames = func() (names [3]map[string]string) {
	for _, side := range []pipeline.Side{pipeline.Ingress, pipeline.Egress} {
		names[side] = map[string]string{}
		for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
			http.MethodDelete, http.MethodConnect, http.MethodOptions, http.MethodTrace} {
			names[side][m] = side.String() + " " + m
		}
	}
	return names
}()

// spanName is the name of the request span of a method on a side.
func spanName(side pipeline.Side, method string) string {
	if int(side) < len(spanNames) {
		if name, ok := spanNames[side][method]; ok {
			return name
		}
	}
	return side.String() + " " + method
}

// endRequestSpan records the exchange's outcome on its request span.
func endRequestSpan(span trace.Span, x *pipeline.Exchange, err error) {
	if !span.IsRecording() { // unsampled: nothing to record
		span.End()
		return
	}
	attrs := []attribute.KeyValue{
		attribute.String("qtunnel.request_id", x.ID),
		attribute.String("qtunnel.protocol", x.Protocol.String()),
		attribute.String("qtunnel.side", x.Side.String()),
		semconv.HTTPResponseStatusCode(x.Status),
	}
	if x.Rule != nil {
		attrs = append(attrs, attribute.String("qtunnel.rule_id", x.Rule.ID), attribute.String("qtunnel.client_id", x.Rule.Client))
	} else if x.Conn != nil {
		attrs = append(attrs, attribute.String("qtunnel.client_id", x.Conn.ClientID))
	}
	span.SetAttributes(attrs...)
	// A failure is an error whether the gateway failed (err) or answered
	// with a 5xx status; a 4xx is the user's mistake, not the span's.
	switch {
	case err != nil:
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	case x.Status >= 500:
		span.SetStatus(codes.Error, http.StatusText(x.Status))
	}
	span.End()
}
