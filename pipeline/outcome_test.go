package pipeline_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/codec"
	"github.com/qtunnel/qtunnel/pipeline"
)

// TestClassify: the one classification of errors, with the status the
// user is sent for each.
func TestClassify(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		err    error
		want   pipeline.Kind
		status int
	}{
		{"reject 404", pipeline.Rejectf(http.StatusNotFound, "no route"), pipeline.KindRejected, 404},
		{"reject 503 without retry-after", pipeline.Rejectf(http.StatusServiceUnavailable, "down"), pipeline.KindRejected, 503},
		{"reject 503 with retry-after", &pipeline.Reject{Status: http.StatusServiceUnavailable, RetryAfter: time.Second}, pipeline.KindOverload, 503},
		{"wrapped reject", fmt.Errorf("egress: %w", pipeline.Rejectf(http.StatusBadGateway, "x")), pipeline.KindRejected, 502},
		{"reject caused by a deadline", &pipeline.Reject{Status: http.StatusGatewayTimeout, Err: context.DeadlineExceeded}, pipeline.KindRejected, 504},
		{"peer error", &codec.Error{Status: http.StatusBadGateway}, pipeline.KindUpstream, 502},
		{"peer at capacity", &codec.Error{Status: http.StatusServiceUnavailable, RetryAfter: 1}, pipeline.KindOverload, 503},
		{"overloaded", fmt.Errorf("pool: %w", pipeline.ErrOverloaded), pipeline.KindOverload, 503},
		{"canceled", context.Canceled, pipeline.KindCanceled, 502},
		{"a refusal of a user who went away", &pipeline.Reject{Status: http.StatusBadGateway, Err: context.Canceled}, pipeline.KindCanceled, 502},
		{"user gone", pipeline.UserGoneError{Err: errors.New("write: broken pipe")}, pipeline.KindCanceled, 502},
		{"deadline", fmt.Errorf("read: %w", context.DeadlineExceeded), pipeline.KindTimeout, 504},
		{"anything else", errors.New("stream reset"), pipeline.KindTunnel, 502},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, pipeline.Classify(tt.err))
			require.Equal(t, tt.status, pipeline.StatusOf(tt.err))
		})
	}
	var names []string
	for k := pipeline.Kind(0); k < pipeline.NumKinds; k++ {
		names = append(names, k.String())
	}
	require.Equal(t, []string{"rejected", "upstream", "tunnel", "timeout", "overload", "canceled", "internal"}, names)
}
