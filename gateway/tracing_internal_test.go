package gateway

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/rules"
)

// TestEndRequestSpanRecordsTheOutcome: the request span carries the
// exchange's ids, side, protocol and status, and is an error when the chain
// failed or the answer is a 5xx, not when it is a 4xx.
func TestEndRequestSpanRecordsTheOutcome(t *testing.T) {
	t.Parallel()
	rule := &rules.Rule{ID: "rev", Client: "laptop", Direction: rules.Reverse}
	for _, c := range []struct {
		name       string
		side       pipeline.Side
		rule       *rules.Rule
		conn       *pipeline.Conn
		status     int
		err        error
		wantCode   codes.Code
		wantDesc   string
		wantClient string
		wantEvents int // the recorded error
	}{
		{name: "ok", side: pipeline.Ingress, rule: rule, status: 200, wantCode: codes.Unset, wantClient: "laptop"},
		{name: "4xx is the user's", side: pipeline.Ingress, rule: rule, status: 404, wantCode: codes.Unset, wantClient: "laptop"},
		{name: "5xx", side: pipeline.Egress, rule: rule, status: 502, wantCode: codes.Error, wantDesc: "Bad Gateway", wantClient: "laptop"},
		{name: "chain failed", side: pipeline.Egress, conn: &pipeline.Conn{ClientID: "desktop"}, status: 404,
			err: errors.New("no route"), wantCode: codes.Error, wantDesc: "no route", wantClient: "desktop", wantEvents: 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			rec := tracetest.NewSpanRecorder()
			tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
			defer func() { _ = tp.Shutdown(context.Background()) }()
			_, span := tp.Tracer("test").Start(context.Background(), spanName(c.side, http.MethodGet))
			x := pipeline.Acquire(c.side)
			defer x.Release()
			x.ID, x.Protocol, x.Rule, x.Conn, x.Status = "req-1", pipeline.ProtoHTTP1, c.rule, c.conn, c.status
			endRequestSpan(span, x, c.err)

			ended := rec.Ended()
			require.Len(t, ended, 1, "the span is ended")
			s := ended[0]
			require.Equal(t, c.side.String()+" GET", s.Name())
			attrs := map[string]string{}
			for _, kv := range s.Attributes() {
				attrs[string(kv.Key)] = kv.Value.String()
			}
			require.Equal(t, "req-1", attrs["qtunnel.request_id"])
			require.Equal(t, c.side.String(), attrs["qtunnel.side"])
			require.Equal(t, "http1", attrs["qtunnel.protocol"])
			require.Equal(t, c.wantClient, attrs["qtunnel.client_id"])
			require.Equal(t, strconv.Itoa(c.status), attrs["http.response.status_code"])
			if c.rule != nil {
				require.Equal(t, c.rule.ID, attrs["qtunnel.rule_id"])
			} else {
				require.NotContains(t, attrs, "qtunnel.rule_id")
			}
			require.Equal(t, c.wantCode, s.Status().Code)
			require.Equal(t, c.wantDesc, s.Status().Description)
			require.Len(t, s.Events(), c.wantEvents)
		})
	}
}

// TestSpanNames: the usual methods' span names are made once; others are
// made when asked for.
func TestSpanNames(t *testing.T) {
	require.Equal(t, "ingress GET", spanName(pipeline.Ingress, http.MethodGet))
	require.Equal(t, "egress DELETE", spanName(pipeline.Egress, http.MethodDelete))
	require.Equal(t, "egress PROPFIND", spanName(pipeline.Egress, "PROPFIND"))
	require.Equal(t, "unknown GET", spanName(pipeline.Side(7), http.MethodGet))
	if !raceDetector {
		require.Zero(t, testing.AllocsPerRun(100, func() { _ = spanName(pipeline.Ingress, http.MethodPost) }))
	}
}
