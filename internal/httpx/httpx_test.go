package httpx_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/internal/httpx"
	"github.com/qtunnel/qtunnel/pipeline/pipelinetest"
)

func TestMain(m *testing.M) { pipelinetest.VerifyNoLeaks(m) }

func TestRemoveHopByHop(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   http.Header
		want http.Header
	}{
		{
			name: "fixed list",
			in: http.Header{
				"Connection":          {"close"},
				"Proxy-Connection":    {"keep-alive"},
				"Keep-Alive":          {"timeout=5"},
				"Proxy-Authenticate":  {"Basic"},
				"Proxy-Authorization": {"Basic Zm9vOmJhcg=="},
				"Transfer-Encoding":   {"chunked"},
				"Upgrade":             {"h2c"},
				"Content-Type":        {"text/plain"},
				"X-End-To-End":        {"1"},
			},
			want: http.Header{"Content-Type": {"text/plain"}, "X-End-To-End": {"1"}},
		},
		{
			name: "names listed in Connection, any case and spacing, several values",
			in: http.Header{
				"Connection":   {" x-Custom-Hop ,keep-alive", "X-Other-Hop,, "},
				"X-Custom-Hop": {"a"},
				"X-Other-Hop":  {"b"},
				"Keep-Alive":   {"timeout=5"},
				"X-Kept":       {"c"},
			},
			want: http.Header{"X-Kept": {"c"}},
		},
		{
			name: "TE trailers is kept",
			in:   http.Header{"Te": {"trailers"}, "Content-Type": {"application/grpc"}},
			want: http.Header{"Te": {"trailers"}, "Content-Type": {"application/grpc"}},
		},
		{
			name: "TE trailers is kept whatever its case",
			in:   http.Header{"Te": {"Trailers"}},
			want: http.Header{"Te": {"Trailers"}},
		},
		{
			name: "TE with a coding is removed",
			in:   http.Header{"Te": {"trailers, deflate"}},
			want: http.Header{},
		},
		{
			name: "TE gzip is removed",
			in:   http.Header{"Te": {"gzip"}},
			want: http.Header{},
		},
		{
			name: "TE with two values is removed",
			in:   http.Header{"Te": {"trailers", "gzip"}},
			want: http.Header{},
		},
		{
			name: "TE named in Connection is removed even when trailers",
			in:   http.Header{"Connection": {"te"}, "Te": {"trailers"}},
			want: http.Header{},
		},
		{
			name: "nothing to remove",
			in:   http.Header{"Accept": {"*/*"}},
			want: http.Header{"Accept": {"*/*"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := tt.in.Clone()
			httpx.RemoveHopByHop(h)
			require.Equal(t, tt.want, h)
		})
	}
}

var idShape = regexp.MustCompile(`^[0-9a-f]{16}$`)

func TestNewRequestID(t *testing.T) {
	t.Parallel()
	seen := make(map[string]bool)
	for range 1000 {
		id := httpx.NewRequestID()
		require.Regexp(t, idShape, id)
		require.True(t, httpx.ValidRequestID(id), "a generated id must pass our own check: %q", id)
		require.False(t, seen[id], "64 random bits should not repeat in 1000 draws: %q", id)
		seen[id] = true
	}
}

func TestValidRequestID(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		id   string
		want bool
	}{
		{"empty", "", false},
		{"one char", "a", true},
		{"all allowed classes", "Abc-DEF_0.9:z", true},
		{"uuid", "3f2b8c1e-5b7a-4c1e-9d0e-2a6b7c8d9e0f", true},
		{"128 chars", strings.Repeat("a", 128), true},
		{"129 chars", strings.Repeat("a", 129), false},
		{"space", "a b", false},
		{"slash", "a/b", false},
		{"newline", "abc\n", false},
		{"CR LF injection", "abc\r\nX-Evil: 1", false},
		{"non-ASCII", "caf\u00e9", false},
		{"quote", `a"b`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, httpx.ValidRequestID(tt.id))
		})
	}
}

func TestWriteError(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		status    int
		msg       string
		retry     time.Duration
		requestID string
		wantRetry string // "" means no Retry-After
	}{
		{"no retry, with id", http.StatusNotFound, `no route for host "x.test"`, 0, "abc123", ""},
		{"whole seconds", http.StatusServiceUnavailable, "overloaded", 2 * time.Second, "id-1", "2"},
		{"rounds up", http.StatusTooManyRequests, "slow down", 1500 * time.Millisecond, "id-2", "2"},
		{"one nanosecond is one second", http.StatusServiceUnavailable, "draining", time.Nanosecond, "id-3", "1"},
		{"negative is none", http.StatusBadGateway, "tunnel error", -time.Second, "id-4", ""},
		{"no request id", http.StatusGatewayTimeout, "timed out", 0, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rec := httptest.NewRecorder()
			// Headers a stage set before failing must not leak into the error.
			rec.Header().Set("Set-Cookie", "session=1")
			rec.Header().Set("Content-Type", "application/json")
			httpx.WriteError(rec, tt.status, tt.msg, tt.retry, tt.requestID)

			res := rec.Result()
			defer func() { require.NoError(t, res.Body.Close()) }()
			body, err := io.ReadAll(res.Body)
			require.NoError(t, err)
			want := "qtunnel: " + tt.msg + "\n"
			require.Equal(t, tt.status, res.StatusCode)
			require.Equal(t, want, string(body))
			require.Equal(t, strconv.Itoa(len(want)), res.Header.Get("Content-Length"))
			require.Equal(t, "text/plain; charset=utf-8", res.Header.Get("Content-Type"))
			require.Equal(t, "nosniff", res.Header.Get("X-Content-Type-Options"))
			require.Empty(t, res.Header.Values("Set-Cookie"))
			if tt.requestID == "" {
				require.NotContains(t, res.Header, httpx.RequestIDHeader)
			} else {
				require.Equal(t, tt.requestID, res.Header.Get(httpx.RequestIDHeader))
			}
			if tt.wantRetry == "" {
				require.NotContains(t, res.Header, "Retry-After")
			} else {
				require.Equal(t, tt.wantRetry, res.Header.Get("Retry-After"))
			}
		})
	}
}

func TestClientIP(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, addr, want string
	}{
		{"IPv4", "192.0.2.1:1234", "192.0.2.1"},
		{"IPv6 loopback", "[::1]:8080", "::1"},
		{"IPv6", "[2001:db8::1]:443", "2001:db8::1"},
		{"no port", "pipe", "pipe"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, httpx.ClientIP(tt.addr))
		})
	}
}
