package pipelinetest_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/pipeline/pipelinetest"
	"github.com/qtunnel/qtunnel/stages/encode"
)

func TestMain(m *testing.M) { pipelinetest.VerifyNoLeaks(m) }

// chain builds stages into a chain closed when the test ends.
func chain(t *testing.T, stages ...pipeline.Stage) *pipeline.Chain {
	t.Helper()
	c, err := pipeline.New(context.Background(), stages)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, c.Close(context.Background())) })
	return c
}

func body(t *testing.T, resp *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return string(b)
}

func get() *http.Request {
	return httptest.NewRequest(http.MethodGet, "http://app.example.test/x", nil)
}

// TestAnswerIsWrittenAsEncodeWritesIt: the answer's status, fields and
// body reach the user with Content-Length and the request id; hop-by-hop
// fields do not.
func TestAnswerIsWrittenAsEncodeWritesIt(t *testing.T) {
	t.Parallel()
	c := chain(t, pipelinetest.Answer{
		Status: http.StatusCreated,
		Header: http.Header{"X-Up": {"1"}, "Connection": {"X-Hop"}, "X-Hop": {"h"}},
		Body:   "made\n",
	})
	req := get()
	req.Header.Set("X-Request-Id", "req-7")
	resp, err := pipelinetest.Serve(c, req)
	require.NoError(t, err)
	require.Equal(t, http.StatusCreated, resp.StatusCode)
	require.Equal(t, "1", resp.Header.Get("X-Up"))
	require.Equal(t, "5", resp.Header.Get("Content-Length"))
	require.Equal(t, "req-7", resp.Header.Get("X-Request-Id"))
	require.Empty(t, resp.Header.Values("Connection"))
	require.Empty(t, resp.Header.Values("X-Hop"))
	require.Equal(t, "made\n", body(t, resp))
}

// TestAnswerZeroValue: the zero Answer is an empty 200.
func TestAnswerZeroValue(t *testing.T) {
	t.Parallel()
	resp, err := pipelinetest.Serve(chain(t, pipelinetest.Answer{}), get())
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "0", resp.Header.Get("Content-Length"))
	require.Len(t, resp.Header.Get("X-Request-Id"), 16, "a new id when the request has none")
	require.Empty(t, body(t, resp))
}

// TestResponsePhaseChangesTheAnswer: the stages before Answer see its
// answer once next returns, before it is written (encode, outermost,
// writes on the way out): what they change of it is what the user gets.
func TestResponsePhaseChangesTheAnswer(t *testing.T) {
	t.Parallel()
	var seenStatus, statusThen int
	var seenHeader http.Header
	outer := pipeline.StageFunc(func(ctx context.Context, x *pipeline.Exchange, next pipeline.Handler) error {
		err := next.Handle(ctx, x)
		// The exchange is released once Serve returns: keep copies only.
		seenStatus, seenHeader, statusThen = x.Response.StatusCode, x.Response.Header.Clone(), x.Status
		x.Response.Header.Set("X-Late", "1")
		x.Response.StatusCode = http.StatusCreated
		return err
	})
	a := pipelinetest.Answer{Status: http.StatusAccepted, Header: http.Header{"X-Up": {"1"}}, Body: "ok"}
	resp, err := pipelinetest.Serve(chain(t, outer, a), get())
	require.NoError(t, err)
	require.Equal(t, http.StatusAccepted, seenStatus)
	require.Equal(t, "1", seenHeader.Get("X-Up"))
	require.Zero(t, statusThen, "nothing written before the response phase")
	require.Equal(t, http.StatusCreated, resp.StatusCode)
	require.Equal(t, "1", resp.Header.Get("X-Late"))
	require.Equal(t, "ok", body(t, resp))
	require.Equal(t, http.Header{"X-Up": {"1"}}, a.Header, "each exchange edits its own copy")
}

// TestStageEditsTheRequestAnswerSees: what a stage does to the request is
// what the upstream gets; the exchange is made from the request.
func TestStageEditsTheRequestAnswerSees(t *testing.T) {
	t.Parallel()
	tenant := pipeline.StageFunc(func(ctx context.Context, x *pipeline.Exchange, next pipeline.Handler) error {
		x.Request.Header.Set("X-Tenant", "acme")
		x.Request.Header.Del("Cookie")
		return next.Handle(ctx, x)
	})
	var got http.Header
	var src netip.Addr
	var proto pipeline.Protocol
	var id, reqBody string
	c := chain(t, tenant, pipelinetest.Answer{Upstream: func(x *pipeline.Exchange) {
		got, src, proto, id = x.Request.Header.Clone(), x.Source, x.Protocol, x.ID
		b, err := io.ReadAll(x.Request.Body)
		require.NoError(t, err)
		reqBody = string(b)
	}})
	req := httptest.NewRequest(http.MethodPost, "http://app.example.test/", strings.NewReader("payload"))
	req.RemoteAddr = "[2001:db8::7]:4567"
	req.Header.Set("Cookie", "session=1")
	resp, err := pipelinetest.Serve(c, req)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "acme", got.Get("X-Tenant"))
	require.Empty(t, got.Values("Cookie"))
	require.Equal(t, "payload", reqBody)
	require.Equal(t, netip.MustParseAddr("2001:db8::7"), src)
	require.Equal(t, pipeline.ProtoHTTP1, proto)
	require.Equal(t, id, resp.Header.Get("X-Request-Id"))
}

// TestServeRendersARejectAsTheGatewayDoes: status, the one-line body,
// Retry-After rounded up, the Reject's fields (which cannot override the
// answer's own) and the request id; the error is the Reject, named after
// the stage that made it.
func TestServeRendersARejectAsTheGatewayDoes(t *testing.T) {
	t.Parallel()
	rj := &pipeline.Reject{
		Status:     http.StatusUnauthorized,
		Message:    "authentication required",
		RetryAfter: 1500 * time.Millisecond,
		Header: http.Header{
			"Www-Authenticate": {`Basic realm="qtunnel", charset="UTF-8"`, `Bearer realm="qtunnel"`},
			"Content-Type":     {"text/html"},
		},
	}
	never := pipelinetest.Answer{Upstream: func(*pipeline.Exchange) { t.Error("the upstream was reached") }}
	c := chain(t, pipeline.Name("auth", pipelinetest.Fail{Err: rj}), never)
	req := get()
	req.Header.Set("X-Request-Id", "req-401")
	resp, err := pipelinetest.Serve(c, req)

	var got *pipeline.Reject
	require.ErrorAs(t, err, &got)
	require.Same(t, rj, got)
	require.Equal(t, "auth", got.Stage)
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	require.Equal(t, "qtunnel: authentication required\n", body(t, resp))
	require.Equal(t, []string{`Basic realm="qtunnel", charset="UTF-8"`, `Bearer realm="qtunnel"`}, resp.Header.Values("Www-Authenticate"))
	require.Equal(t, "text/plain; charset=utf-8", resp.Header.Get("Content-Type"))
	require.Equal(t, "nosniff", resp.Header.Get("X-Content-Type-Options"))
	require.Equal(t, "2", resp.Header.Get("Retry-After"))
	require.Equal(t, "req-401", resp.Header.Get("X-Request-Id"))
	require.Empty(t, resp.Header.Get("Connection"))
}

// TestServeRendersOtherErrors: errors that are not Rejects get the
// gateway's answers for them; an HTTP/1 request whose body may be unread is
// answered with Connection: close.
func TestServeRendersOtherErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		err    error
		status int
		body   string
		retry  string
	}{
		{"other", errors.New("boom"), http.StatusBadGateway, "qtunnel: tunnel error\n", ""},
		{"overload", pipeline.ErrOverloaded, http.StatusServiceUnavailable, "qtunnel: gateway overloaded, retry later\n", "1"},
		{"deadline", context.DeadlineExceeded, http.StatusGatewayTimeout, "qtunnel: timed out\n", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			req := httptest.NewRequest(http.MethodPut, "http://app.example.test/", strings.NewReader("unread"))
			resp, err := pipelinetest.Serve(chain(t, pipelinetest.Fail{Err: tt.err}, pipelinetest.Answer{}), req)
			require.ErrorIs(t, err, tt.err)
			require.Equal(t, tt.status, resp.StatusCode)
			require.Equal(t, tt.body, body(t, resp))
			require.Equal(t, tt.retry, resp.Header.Get("Retry-After"))
			require.Equal(t, "close", resp.Header.Get("Connection"))
			require.NotEmpty(t, resp.Header.Get("X-Request-Id"))
		})
	}
}

// TestServeGRPC: a gRPC call is refused the way gRPC clients understand.
func TestServeGRPC(t *testing.T) {
	t.Parallel()
	req := get()
	req.ProtoMajor, req.ProtoMinor, req.Proto = 2, 0, "HTTP/2.0"
	req.Header.Set("Content-Type", "application/grpc")
	resp, err := pipelinetest.Serve(chain(t, pipelinetest.Fail{Err: pipeline.Rejectf(http.StatusForbidden, "no")}), req)
	require.Error(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "7", resp.Trailer.Get("Grpc-Status"))
	require.Equal(t, "qtunnel: no", resp.Trailer.Get("Grpc-Message"))
}

// TestAnswerReadsTheRequestBody: Answer reads the body as an upstream
// would, so a stage that limits bodies refuses there.
func TestAnswerReadsTheRequestBody(t *testing.T) {
	t.Parallel()
	tooBig := pipeline.Rejectf(http.StatusRequestEntityTooLarge, "request body too large")
	limit := pipeline.StageFunc(func(ctx context.Context, x *pipeline.Exchange, next pipeline.Handler) error {
		x.Request.Body = io.NopCloser(io.MultiReader(io.LimitReader(x.Request.Body, 4), errReader{tooBig}))
		return next.Handle(ctx, x)
	})
	req := httptest.NewRequest(http.MethodPost, "http://app.example.test/", strings.NewReader("more than four"))
	resp, err := pipelinetest.Serve(chain(t, limit, pipelinetest.Answer{Body: "never"}), req)
	require.ErrorIs(t, err, tooBig)
	require.Equal(t, http.StatusRequestEntityTooLarge, resp.StatusCode)
	require.Equal(t, "qtunnel: request body too large\n", body(t, resp))
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

// TestServeNoAnswer: a chain that returns nil without answering gives the
// user a 502, as the gateway would, and Serve says so.
func TestServeNoAnswer(t *testing.T) {
	t.Parallel()
	swallow := pipeline.StageFunc(func(context.Context, *pipeline.Exchange, pipeline.Handler) error { return nil })
	resp, err := pipelinetest.Serve(chain(t, swallow, pipelinetest.Answer{}), get())
	require.ErrorIs(t, err, pipelinetest.ErrNoAnswer)
	require.Equal(t, http.StatusBadGateway, resp.StatusCode)
}

// TestServeNoResponse: a chain that ends without setting x.Response is
// refused by encode, as in the gateway.
func TestServeNoResponse(t *testing.T) {
	t.Parallel()
	resp, err := pipelinetest.Serve(chain(t, pipelinetest.NoOp{}), get())
	require.ErrorIs(t, err, encode.ErrNoResponse)
	require.Equal(t, http.StatusBadGateway, resp.StatusCode)
}

// TestServeCut: an answer whose body fails once its head is out cannot
// be answered any more; Serve returns what was written and says it was cut.
// An error a stage returns after next, before the answer is written, is
// the answer instead.
func TestServeCut(t *testing.T) {
	t.Parallel()
	boom := errors.New("boom")
	cut := pipeline.StageFunc(func(ctx context.Context, x *pipeline.Exchange, next pipeline.Handler) error {
		resp := x.NewResponse()
		resp.StatusCode, resp.Header, resp.ContentLength = http.StatusOK, http.Header{}, -1
		resp.Body = io.NopCloser(io.MultiReader(strings.NewReader("part"), errReader{boom}))
		return next.Handle(ctx, x)
	})
	resp, err := pipelinetest.Serve(chain(t, cut), get())
	require.ErrorIs(t, err, pipelinetest.ErrCut)
	require.ErrorIs(t, err, boom)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "part", body(t, resp))

	late := pipeline.StageFunc(func(ctx context.Context, x *pipeline.Exchange, next pipeline.Handler) error {
		if err := next.Handle(ctx, x); err != nil {
			return err
		}
		return &pipeline.Reject{Status: http.StatusForbidden, Message: "not for you"}
	})
	resp, err = pipelinetest.Serve(chain(t, late, pipelinetest.Answer{Body: "whole"}), get())
	require.NotErrorIs(t, err, pipelinetest.ErrCut)
	require.Equal(t, http.StatusForbidden, resp.StatusCode)
	require.Equal(t, "qtunnel: not for you\n", body(t, resp))
}

// TestServeHandler: a Handler that is not a chain runs first; its answer
// is written after it returns.
func TestServeHandler(t *testing.T) {
	t.Parallel()
	h := pipeline.HandlerFunc(func(ctx context.Context, x *pipeline.Exchange) error {
		done := pipeline.HandlerFunc(func(context.Context, *pipeline.Exchange) error { return nil })
		return pipelinetest.Answer{Status: http.StatusTeapot, Body: "tea"}.Handle(ctx, x, done)
	})
	resp, err := pipelinetest.Serve(h, get())
	require.NoError(t, err)
	require.Equal(t, http.StatusTeapot, resp.StatusCode)
	require.Equal(t, "tea", body(t, resp))
}

// TestServeConcurrently: one chain, and one Answer with a Header, serve
// many requests at once (run with -race).
func TestServeConcurrently(t *testing.T) {
	t.Parallel()
	c := chain(t, pipelinetest.Answer{Header: http.Header{"Connection": {"X-Hop"}, "X-Hop": {"1"}, "X-Up": {"1"}}, Body: "ok"})
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 50 {
				resp, err := pipelinetest.Serve(c, get())
				if err != nil || resp.StatusCode != http.StatusOK || resp.Header.Get("X-Up") != "1" {
					t.Errorf("got %v, %v", resp.Status, err)
					return
				}
			}
		})
	}
	wg.Wait()
}
