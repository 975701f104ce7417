package gateway_test

import (
	"context"
	"net/http"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/qtunnel/qtunnel/gateway"
	"github.com/qtunnel/qtunnel/rules"
)

// TestOneTraceAcrossTheTunnel: a request through the reverse tunnel makes one
// trace: the ingress request span on the server, a span per stage, the
// egress request span on the client with its stage spans, and the upstream
// sees the same trace in its traceparent.
func TestOneTraceAcrossTheTunnel(t *testing.T) {
	t.Parallel()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	var mu sync.Mutex
	var upstreamTraceparent string
	up := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		upstreamTraceparent = r.Header.Get("Traceparent")
		mu.Unlock()
		_, _ = w.Write([]byte("ok"))
	}))
	p := startPair(t, pairOpts{
		rules:      []rules.Rule{reverseRule("rev", appHost, up.URL)},
		serverOpts: []gateway.Option{gateway.WithTracerProvider(tp)},
		clientOpts: []gateway.Option{gateway.WithTracerProvider(tp)},
	})
	resp, body := get(t, h1Client(t), p.publicURL("/traced"), appHost)
	require.Equal(t, 200, resp.StatusCode)
	require.Equal(t, "ok", body)
	id := resp.Header.Get("X-Request-Id")
	p.stop(t) // every span has ended once both sides have stopped

	spans := rec.Ended()
	var ingress, egress sdktrace.ReadOnlySpan
	byName := map[string][]sdktrace.ReadOnlySpan{}
	for _, s := range spans {
		byName[s.Name()] = append(byName[s.Name()], s)
		switch s.Name() {
		case "ingress GET":
			ingress = s
		case "egress GET":
			egress = s
		}
	}
	require.NotNil(t, ingress, "ingress request span")
	require.NotNil(t, egress, "egress request span")
	traceID := ingress.SpanContext().TraceID()
	for _, s := range spans {
		require.Equal(t, traceID, s.SpanContext().TraceID(), "span %q is in another trace", s.Name())
	}
	for _, stage := range []string{"observe", "decode", "route", "ratelimit", "egress", "encode"} {
		require.Len(t, byName[stage], 2, "stage %q: one span on each side", stage)
	}
	require.Len(t, byName["breaker"], 1, "the breaker guards the upstream side only")
	require.True(t, egress.Parent().IsRemote(), "the egress span's parent came across the tunnel")
	// The ingress request span is the root, on the server; both request
	// spans say the same of the request, and which side they are.
	require.False(t, ingress.Parent().IsValid(), "the ingress span starts the trace")
	for side, s := range map[string]sdktrace.ReadOnlySpan{"ingress": ingress, "egress": egress} {
		require.Equal(t, trace.SpanKindServer, s.SpanKind(), "span %q", s.Name())
		attrs := map[string]string{}
		for _, kv := range s.Attributes() {
			attrs[string(kv.Key)] = kv.Value.String()
		}
		require.Equal(t, id, attrs["qtunnel.request_id"], side)
		require.Equal(t, "rev", attrs["qtunnel.rule_id"], side)
		require.Equal(t, clientID, attrs["qtunnel.client_id"], side)
		require.Equal(t, "http1", attrs["qtunnel.protocol"], side)
		require.Equal(t, side, attrs["qtunnel.side"])
		require.Equal(t, "200", attrs["http.response.status_code"], side)
	}
	mu.Lock()
	tp0 := upstreamTraceparent
	mu.Unlock()
	sc, err := traceparentID(tp0)
	require.NoError(t, err)
	require.Equal(t, traceID, sc, "the upstream sees the same trace")
}

func traceparentID(tp string) (trace.TraceID, error) {
	// version-traceid-parentid-flags
	if len(tp) < 55 {
		return trace.TraceID{}, errShortTraceparent
	}
	return trace.TraceIDFromHex(tp[3:35])
}

var errShortTraceparent = http.ErrNotSupported
