package breaker_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/pipeline/pipelinetest"
	"github.com/qtunnel/qtunnel/rules"
	"github.com/qtunnel/qtunnel/stages/breaker"
	"github.com/qtunnel/qtunnel/stages/internal/stagetest"
)

func TestMain(m *testing.M) { pipelinetest.VerifyNoLeaks(m) }

const upA, upB = "http://10.0.0.1:8080", "http://10.0.0.2:8080"

var quiet = breaker.WithLogger(slog.New(slog.DiscardHandler))

func newBreaker(t testing.TB, cfg breaker.Config, clk *stagetest.Clock, opts ...breaker.Option) *breaker.Breaker {
	t.Helper()
	opts = append([]breaker.Option{quiet, breaker.WithClock(clk.Now)}, opts...)
	b, err := breaker.New(cfg, opts...)
	require.NoError(t, err)
	require.Equal(t, "breaker", b.Name())
	return b
}

// upstream is a next handler that answers as told and counts its calls.
type upstream struct {
	calls atomic.Int64
	fn    func(x *pipeline.Exchange) error
}

func (u *upstream) Handle(_ context.Context, x *pipeline.Exchange) error {
	u.calls.Add(1)
	return u.fn(x)
}

func answering(fn func(x *pipeline.Exchange) error) *upstream { return &upstream{fn: fn} }

var (
	errUnreachable = &pipeline.Reject{Status: http.StatusBadGateway, Message: "upstream unreachable"}
	ok             = func(*pipeline.Exchange) error { return nil }
	fail           = func(*pipeline.Exchange) error { return errUnreachable }
)

func status(code int) func(*pipeline.Exchange) error {
	return func(x *pipeline.Exchange) error {
		x.NewResponse().StatusCode = code
		return nil
	}
}

// call sends one request for rule "web" (or rule) to up through b.
func call(b *breaker.Breaker, up string, next pipeline.Handler) error {
	return callRule(context.Background(), b, "web", up, next)
}

func callRule(ctx context.Context, b *breaker.Breaker, rule, up string, next pipeline.Handler) error {
	x := pipeline.Acquire(pipeline.Egress)
	defer x.Release()
	x.Request = httptest.NewRequest(http.MethodGet, "/", nil)
	x.Rule = &rules.Rule{ID: rule, Upstream: up}
	return b.Handle(ctx, x, next)
}

// refusal returns err as a breaker refusal, failing the test if it is not.
func refusal(t *testing.T, err error) *pipeline.Reject {
	t.Helper()
	var rj *pipeline.Reject
	require.ErrorAs(t, err, &rj)
	require.Equal(t, http.StatusServiceUnavailable, rj.Status, "%v", err)
	require.Contains(t, rj.Message, "circuit breaker")
	require.GreaterOrEqual(t, rj.RetryAfter, time.Second)
	return rj
}

// trip opens up's circuit with failing requests.
func trip(t *testing.T, b *breaker.Breaker, up string) {
	t.Helper()
	next := answering(fail)
	for i := 0; b.State(up) != "open"; i++ {
		require.Less(t, i, 1000, "the circuit never opened")
		require.ErrorIs(t, call(b, up, next), errUnreachable)
	}
}

// cooledDown returns a breaker whose circuit for upA opened and whose
// cool-down has just ended: the next request moves it to half-open.
func cooledDown(t *testing.T, cfg breaker.Config) (*breaker.Breaker, *stagetest.Clock) {
	t.Helper()
	clk := stagetest.NewClock()
	b := newBreaker(t, cfg, clk)
	trip(t, b, upA)
	cfg.SetDefaults()
	clk.Advance(cfg.CoolDown)
	return b, clk
}

func TestNew(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		cfg     breaker.Config
		wantErr string
	}{
		{"zero value: defaults", breaker.Config{}, ""},
		{"everything set", breaker.Config{Window: time.Minute, MinRequests: 20, FailureRatio: 1,
			ConsecutiveFailures: 3, CoolDown: 30 * time.Second, HalfOpenProbes: 5, Ignore5xx: true}, ""},
		{"negative window", breaker.Config{Window: -time.Second}, "window: -1s must not be negative"},
		{"window too short", breaker.Config{Window: time.Millisecond}, "window: 1ms is shorter than 10ms"},
		{"negative min requests", breaker.Config{MinRequests: -1}, "min_requests"},
		{"ratio above one", breaker.Config{FailureRatio: 1.5}, "failure_ratio: 1.5 is outside 0..1"},
		{"negative ratio", breaker.Config{FailureRatio: -0.1}, "failure_ratio"},
		{"negative consecutive", breaker.Config{ConsecutiveFailures: -1}, "consecutive_failures"},
		{"negative cool-down", breaker.Config{CoolDown: -time.Second}, "cool_down"},
		{"negative probes", breaker.Config{HalfOpenProbes: -1}, "half_open_probes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b, err := breaker.New(tt.cfg)
			stagetest.CheckNew(t, "breaker", b, err, tt.wantErr)
		})
	}
}

func TestStateString(t *testing.T) {
	t.Parallel()
	require.Equal(t, "closed", breaker.Closed.String())
	require.Equal(t, "open", breaker.Open.String())
	require.Equal(t, "half-open", breaker.HalfOpen.String())
	require.Equal(t, "unknown", breaker.State(9).String())
}

func TestNoRulePasses(t *testing.T) {
	t.Parallel()
	b := newBreaker(t, breaker.Config{}, stagetest.NewClock())
	next := answering(fail)
	for range 20 {
		x := pipeline.Acquire(pipeline.Egress)
		require.ErrorIs(t, b.Handle(context.Background(), x, next), errUnreachable)
		x.Release()
	}
	require.EqualValues(t, 20, next.calls.Load(), "no rule, no circuit")
}

func TestOpensAfterThreshold(t *testing.T) {
	t.Parallel()
	b := newBreaker(t, breaker.Config{}, stagetest.NewClock())
	next := answering(fail)
	for i := range 5 {
		require.Equal(t, "closed", b.State(upA), "before failure %d", i+1)
		require.ErrorIs(t, call(b, upA, next), errUnreachable, "the upstream's own error goes back unchanged")
	}
	require.Equal(t, "open", b.State(upA))
	require.EqualValues(t, 5, next.calls.Load())

	for range 100 {
		rj := refusal(t, call(b, upA, next))
		require.Equal(t, `circuit breaker open for upstream of rule "web": 5 failures in the last 10s; retrying in 10s`, rj.Message)
		require.Equal(t, 10*time.Second, rj.RetryAfter)
	}
	require.EqualValues(t, 5, next.calls.Load(), "an open circuit does not call next")
}

// TestRefusalsNeverWait: a refusal is decided from the circuit's state
// alone, so it never calls next and never waits for what next is doing.
// An open circuit refuses 1000 requests while a request it admitted before
// it opened is still stuck in next; a half-open one refuses 1000 while its
// probe is. How fast a refusal is, BenchmarkOpen measures.
func TestRefusalsNeverWait(t *testing.T) {
	t.Parallel()
	clk := stagetest.NewClock()
	b := newBreaker(t, breaker.Config{}, clk)
	next := answering(ok)

	// stuckIn starts a call through b whose next blocks until the
	// returned release is called, and returns once it is inside next.
	stuckIn := func() (release func(), done <-chan error) {
		entered, let := make(chan struct{}), make(chan struct{})
		release = sync.OnceFunc(func() { close(let) })
		t.Cleanup(release) // if the test fails first
		ch := make(chan error, 1)
		go func() {
			ch <- call(b, upA, answering(func(*pipeline.Exchange) error {
				close(entered)
				<-let
				return nil
			}))
		}()
		select {
		case <-entered:
		case <-time.After(time.Minute):
			t.Fatal("the request never reached next")
		}
		return release, ch
	}
	// refuseAll makes n calls from another goroutine, and fails if they
	// have not all returned within a minute: a refusal that waited for
	// the request stuck in next would never return.
	refuseAll := func(n int) []error {
		out := make(chan []error, 1)
		start := time.Now()
		go func() {
			errs := make([]error, n)
			for i := range errs {
				errs[i] = call(b, upA, next)
			}
			out <- errs
		}()
		select {
		case errs := <-out:
			t.Logf("%d refusals in %v", n, time.Since(start).Round(time.Microsecond))
			return errs
		case <-time.After(time.Minute):
			t.Fatalf("%d calls still not all refused after a minute while a request is stuck in next", n)
			return nil
		}
	}
	wait := func(done <-chan error) error {
		select {
		case err := <-done:
			return err
		case <-time.After(time.Minute):
			t.Fatal("the released request did not return")
			return nil
		}
	}

	// Open, with a request from before it opened still in next.
	release, done := stuckIn()
	trip(t, b, upA)
	for _, err := range refuseAll(1000) {
		rj := refusal(t, err)
		require.Contains(t, rj.Message, "circuit breaker open")
	}
	require.Zero(t, next.calls.Load(), "an open circuit does not call next")
	release()
	require.NoError(t, wait(done))
	require.Equal(t, "open", b.State(upA))

	// Half-open, with its one probe in next.
	clk.Advance(10 * time.Second) // the default cool-down
	release, done = stuckIn()
	require.Equal(t, "half-open", b.State(upA))
	for _, err := range refuseAll(1000) {
		rj := refusal(t, err)
		require.Contains(t, rj.Message, "circuit breaker half-open")
	}
	require.Zero(t, next.calls.Load(), "a half-open circuit whose probe is out does not call next")
	release()
	require.NoError(t, wait(done))
	require.Equal(t, "closed", b.State(upA), "the probe succeeded")
}

func TestRetryAfterCountsDown(t *testing.T) {
	t.Parallel()
	clk := stagetest.NewClock()
	b := newBreaker(t, breaker.Config{CoolDown: 30 * time.Second}, clk)
	trip(t, b, upA)
	clk.Advance(12500 * time.Millisecond)
	rj := refusal(t, call(b, upA, answering(ok)))
	require.Equal(t, 18*time.Second, rj.RetryAfter, "17.5s left rounds up")
	require.True(t, strings.HasSuffix(rj.Message, "; retrying in 18s"), rj.Message)
}

func TestHalfOpenAdmitsExactlyTheProbes(t *testing.T) {
	t.Parallel()
	const probes, callers = 3, 20
	b, _ := cooledDown(t, breaker.Config{HalfOpenProbes: probes})

	entered := make(chan struct{}, callers)
	release := make(chan struct{})
	next := answering(func(*pipeline.Exchange) error {
		entered <- struct{}{}
		<-release
		return nil
	})
	refused := make(chan error, callers)
	var wg sync.WaitGroup
	for range callers {
		wg.Go(func() {
			if err := call(b, upA, next); err != nil {
				refused <- err
			}
		})
	}
	// Every caller either reaches next or is refused; wait for all of them
	// to have done one or the other.
	var in, out int
	for in+out < callers {
		select {
		case <-entered:
			in++
		case err := <-refused:
			rj := refusal(t, err)
			require.Equal(t, `circuit breaker half-open for upstream of rule "web": waiting for 3 probe request(s) to finish; retry in 1s`, rj.Message)
			require.Equal(t, time.Second, rj.RetryAfter)
			out++
		}
	}
	require.Equal(t, probes, in, "exactly HalfOpenProbes requests reach the upstream")
	require.Equal(t, callers-probes, out)
	require.Equal(t, "half-open", b.State(upA))
	close(release)
	wg.Wait()
	require.Equal(t, "closed", b.State(upA), "every probe succeeded")
	require.NoError(t, call(b, upA, answering(ok)))
}

func TestSuccessfulProbeCloses(t *testing.T) {
	t.Parallel()
	clk := stagetest.NewClock()
	b := newBreaker(t, breaker.Config{}, clk)
	trip(t, b, upA)
	clk.Advance(9 * time.Second)
	refusal(t, call(b, upA, answering(ok)))
	require.Equal(t, "open", b.State(upA), "still cooling down")

	clk.Advance(time.Second)
	next := answering(ok)
	require.NoError(t, call(b, upA, next))
	require.EqualValues(t, 1, next.calls.Load())
	require.Equal(t, "closed", b.State(upA))
	for range 50 {
		require.NoError(t, call(b, upA, next))
	}
	require.EqualValues(t, 51, next.calls.Load())

	// A closed circuit starts counting afresh.
	for range 4 {
		require.ErrorIs(t, call(b, upA, answering(fail)), errUnreachable)
	}
	require.Equal(t, "closed", b.State(upA))
}

func TestFailedProbeReopens(t *testing.T) {
	t.Parallel()
	b, clk := cooledDown(t, breaker.Config{})

	next := answering(fail)
	require.ErrorIs(t, call(b, upA, next), errUnreachable)
	require.EqualValues(t, 1, next.calls.Load(), "one probe")
	require.Equal(t, "open", b.State(upA))
	rj := refusal(t, call(b, upA, next))
	require.Equal(t, `circuit breaker open for upstream of rule "web": a probe request failed; retrying in 10s`, rj.Message)
	require.EqualValues(t, 1, next.calls.Load())

	clk.Advance(5 * time.Second)
	refusal(t, call(b, upA, next))
	clk.Advance(5 * time.Second)
	require.NoError(t, call(b, upA, answering(ok)), "a whole new cool-down, then a new probe")
	require.Equal(t, "closed", b.State(upA))
}

func TestCancelledProbeFreesItsSlot(t *testing.T) {
	t.Parallel()
	b, _ := cooledDown(t, breaker.Config{})
	require.ErrorIs(t, call(b, upA, answering(func(*pipeline.Exchange) error { return context.Canceled })), context.Canceled)
	require.Equal(t, "half-open", b.State(upA))
	require.NoError(t, call(b, upA, answering(ok)), "the next request is the probe")
	require.Equal(t, "closed", b.State(upA))
}

func TestOpensOnFailureRatio(t *testing.T) {
	t.Parallel()
	cfg := breaker.Config{MinRequests: 5, FailureRatio: 0.5, ConsecutiveFailures: 100}
	t.Run("half failing opens at the fifth failure", func(t *testing.T) {
		t.Parallel()
		b := newBreaker(t, cfg, stagetest.NewClock())
		for i := range 9 {
			next := answering(ok)
			if i%2 == 1 {
				next = answering(fail)
			}
			_ = call(b, upA, next)
			require.Equal(t, "closed", b.State(upA), "request %d: at most 4 failures", i)
		}
		require.Error(t, call(b, upA, answering(fail))) // 5 of 10
		require.Equal(t, "open", b.State(upA))
		rj := refusal(t, call(b, upA, answering(ok)))
		require.Contains(t, rj.Message, ": 5 failures in the last 10s;")
	})
	t.Run("a third failing stays closed", func(t *testing.T) {
		t.Parallel()
		b := newBreaker(t, cfg, stagetest.NewClock())
		for i := range 300 {
			next := answering(ok)
			if i%3 == 0 {
				next = answering(fail)
			}
			_ = call(b, upA, next)
		}
		require.Equal(t, "closed", b.State(upA))
	})
	t.Run("fewer than MinRequests failures stay closed", func(t *testing.T) {
		t.Parallel()
		b := newBreaker(t, breaker.Config{MinRequests: 10, FailureRatio: 0.5, ConsecutiveFailures: 100}, stagetest.NewClock())
		for range 9 {
			_ = call(b, upA, answering(fail))
		}
		require.Equal(t, "closed", b.State(upA), "9 failures, all of them, but fewer than 10")
		_ = call(b, upA, answering(fail))
		require.Equal(t, "open", b.State(upA))
	})
}

func TestOpensOnConsecutiveFailures(t *testing.T) {
	t.Parallel()
	b := newBreaker(t, breaker.Config{MinRequests: 1000, ConsecutiveFailures: 5}, stagetest.NewClock())
	for range 20 {
		for range 4 {
			_ = call(b, upA, answering(fail))
		}
		require.NoError(t, call(b, upA, answering(ok)), "a success ends the run")
	}
	require.Equal(t, "closed", b.State(upA))
	for range 5 {
		_ = call(b, upA, answering(fail))
	}
	require.Equal(t, "open", b.State(upA))
	rj := refusal(t, call(b, upA, answering(ok)))
	require.Contains(t, rj.Message, ": 5 consecutive failures;")
}

func TestWhatCountsAsFailure(t *testing.T) {
	t.Parallel()
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	tests := []struct {
		name   string
		cfg    breaker.Config
		ctx    context.Context
		answer func(*pipeline.Exchange) error
		want   string // "failure", "success" or "neutral" (says nothing)
	}{
		{"502 error", breaker.Config{}, nil, fail, "failure"},
		{"503 error", breaker.Config{}, nil, func(*pipeline.Exchange) error { return pipeline.ErrOverloaded }, "failure"},
		{"504 error: deadline", breaker.Config{}, nil, func(*pipeline.Exchange) error { return context.DeadlineExceeded }, "failure"},
		{"any other error is a 502", breaker.Config{}, nil, func(*pipeline.Exchange) error { return errors.New("boom") }, "failure"},
		{"user cancelled", breaker.Config{}, nil, func(*pipeline.Exchange) error { return context.Canceled }, "neutral"},
		{"wrapped cancellation", breaker.Config{}, nil, func(*pipeline.Exchange) error {
			return &pipeline.Reject{Status: http.StatusBadGateway, Err: context.Canceled}
		}, "neutral"},
		{"502 after the user went away", breaker.Config{}, cancelled, fail, "neutral"},
		{"429 from a later stage", breaker.Config{}, nil, func(*pipeline.Exchange) error {
			return pipeline.Rejectf(http.StatusTooManyRequests, "slow down")
		}, "neutral"},
		{"413 from a later stage", breaker.Config{}, nil, func(*pipeline.Exchange) error {
			return pipeline.Rejectf(http.StatusRequestEntityTooLarge, "too big")
		}, "neutral"},
		{"500 answer", breaker.Config{}, nil, status(500), "failure"},
		{"503 answer", breaker.Config{}, nil, status(503), "failure"},
		{"500 answer, ignored", breaker.Config{Ignore5xx: true}, nil, status(500), "success"},
		{"502 error, 5xx answers ignored", breaker.Config{Ignore5xx: true}, nil, fail, "failure"},
		{"500 status without a response", breaker.Config{}, nil, func(x *pipeline.Exchange) error { x.Status = 500; return nil }, "failure"},
		{"404 answer", breaker.Config{}, nil, status(404), "success"},
		{"200 answer, then the user went away", breaker.Config{}, nil, func(x *pipeline.Exchange) error {
			x.NewResponse().StatusCode = 200
			return pipeline.UserGoneError{Err: errors.New("write: broken pipe")}
		}, "neutral"},
		{"500 answer, then the user went away", breaker.Config{}, nil, func(x *pipeline.Exchange) error {
			x.NewResponse().StatusCode = 500
			return pipeline.UserGoneError{Err: errors.New("write: broken pipe")}
		}, "neutral"},
		{"200 answer, then its body broke off", breaker.Config{}, nil, func(x *pipeline.Exchange) error {
			x.NewResponse().StatusCode = 200
			return fmt.Errorf("encode: read answer body: %w", errors.New("unexpected EOF"))
		}, "failure"},
		{"200 answer", breaker.Config{}, nil, status(200), "success"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := newBreaker(t, tt.cfg, stagetest.NewClock())
			ctx := tt.ctx
			if ctx == nil {
				ctx = context.Background()
			}
			for range 50 {
				_ = callRule(ctx, b, "web", upA, answering(tt.answer))
			}
			require.Equal(t, tt.want == "failure", b.State(upA) == "open")

			// Between two failures, with two in a row opening the
			// circuit: a success ends the run, a neutral result does not.
			cfg := tt.cfg
			cfg.MinRequests, cfg.ConsecutiveFailures = 1000, 2
			b = newBreaker(t, cfg, stagetest.NewClock())
			require.ErrorIs(t, call(b, upA, answering(fail)), errUnreachable)
			_ = callRule(ctx, b, "web", upA, answering(tt.answer))
			require.Equal(t, tt.want == "failure", b.State(upA) == "open", "after the answer")
			_ = call(b, upA, answering(fail))
			require.Equal(t, tt.want != "success", b.State(upA) == "open", "after the next failure")
		})
	}
}

func TestWindowForgetsOldFailures(t *testing.T) {
	t.Parallel()
	clk := stagetest.NewClock()
	b := newBreaker(t, breaker.Config{}, clk)
	for range 4 {
		_ = call(b, upA, answering(fail))
	}
	clk.Advance(11 * time.Second)
	for range 4 {
		_ = call(b, upA, answering(fail))
	}
	require.Equal(t, "closed", b.State(upA), "4 old failures fell out of the window (and the gap ended the run)")
	_ = call(b, upA, answering(fail))
	require.Equal(t, "open", b.State(upA), "5 failures within the window")
}

// A failure counts for at least 0.9 Window and at most one Window: the
// window moves a tenth at a time.
func TestWindowIsOneWindowLong(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		age      time.Duration // of the first four failures at the fifth
		wantOpen bool
	}{
		{9 * time.Second, true},
		{10*time.Second - time.Nanosecond, true},
		{10 * time.Second, false},
	} {
		t.Run(tt.age.String(), func(t *testing.T) {
			t.Parallel()
			clk := stagetest.NewClock()
			b := newBreaker(t, breaker.Config{ConsecutiveFailures: 1000}, clk)
			for range 4 {
				_ = call(b, upA, answering(fail))
			}
			clk.Advance(tt.age)
			_ = call(b, upA, answering(fail))
			require.Equal(t, tt.wantOpen, b.State(upA) == "open")
		})
	}
}

// A run of consecutive failures ends at a gap longer than the window, even
// if the circuit is kept alive by requests that prove nothing.
func TestQuietGapEndsTheRun(t *testing.T) {
	t.Parallel()
	clk := stagetest.NewClock()
	b := newBreaker(t, breaker.Config{}, clk)
	for range 4 {
		_ = call(b, upA, answering(fail))
	}
	clk.Advance(6 * time.Second)
	_ = call(b, upA, answering(func(*pipeline.Exchange) error { return context.Canceled }))
	clk.Advance(5 * time.Second)
	_ = call(b, upA, answering(fail))
	require.Equal(t, "closed", b.State(upA), "11s since the 4th failure: a new run of 1")
	for range 3 {
		_ = call(b, upA, answering(fail))
	}
	require.Equal(t, "closed", b.State(upA))
	_ = call(b, upA, answering(fail))
	require.Equal(t, "open", b.State(upA))
}

func TestWindowSlides(t *testing.T) {
	t.Parallel()
	clk := stagetest.NewClock()
	b := newBreaker(t, breaker.Config{MinRequests: 5, ConsecutiveFailures: 1000}, clk)
	// A failure every 3s with successes between: never 5 failures in 10s.
	for range 20 {
		_ = call(b, upA, answering(fail))
		_ = call(b, upA, answering(ok))
		clk.Advance(3 * time.Second)
	}
	require.Equal(t, "closed", b.State(upA))
	// A failure every second fills the window.
	for range 5 {
		_ = call(b, upA, answering(fail))
		clk.Advance(time.Second)
	}
	require.Equal(t, "open", b.State(upA))
}

func TestUpstreamsAreIndependent(t *testing.T) {
	t.Parallel()
	b := newBreaker(t, breaker.Config{}, stagetest.NewClock())
	trip(t, b, upA)
	next := answering(ok)
	for range 20 {
		require.NoError(t, call(b, upB, next))
	}
	require.EqualValues(t, 20, next.calls.Load())
	require.Equal(t, "open", b.State(upA))
	require.Equal(t, "closed", b.State(upB))
	require.Equal(t, "closed", b.State("http://never.seen"))

	// Rules share their upstream's circuit; the refusal names the rule asked.
	rj := refusal(t, callRule(context.Background(), b, "api", upA, next))
	require.Contains(t, rj.Message, `upstream of rule "api"`)
}

// A rule with several upstreams has a circuit of its own, keyed by its id:
// two such rules do not share one, and neither shares an upstream's.
func TestRulesWithSeveralUpstreamsAreIndependent(t *testing.T) {
	t.Parallel()
	spread := func(id string) *rules.Rule { return &rules.Rule{ID: id, Upstreams: []string{upA, upB}} }
	require.Equal(t, upA, breaker.Key(&rules.Rule{ID: "web", Upstream: upA}))
	require.Equal(t, "a", breaker.Key(spread("a")))

	b := newBreaker(t, breaker.Config{}, stagetest.NewClock())
	send := func(r *rules.Rule, next pipeline.Handler) error {
		x := pipeline.Acquire(pipeline.Egress)
		defer x.Release()
		x.Request = httptest.NewRequest(http.MethodGet, "/", nil)
		x.Rule = r
		return b.Handle(context.Background(), x, next)
	}
	for range 5 {
		require.ErrorIs(t, send(spread("a"), answering(fail)), errUnreachable)
	}
	require.Equal(t, "open", b.State("a"))
	refusal(t, send(spread("a"), answering(ok)))

	next := answering(ok)
	require.NoError(t, send(spread("b"), next))
	require.NoError(t, call(b, upA, next))
	require.EqualValues(t, 2, next.calls.Load())
	require.Equal(t, "closed", b.State("b"))
	require.Equal(t, "closed", b.State(upA))
}

// A request that began before the circuit opened cannot close it.
func TestStaleResultsAreIgnored(t *testing.T) {
	t.Parallel()
	b := newBreaker(t, breaker.Config{}, stagetest.NewClock())
	entered, release := make(chan struct{}), make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- call(b, upA, answering(func(*pipeline.Exchange) error {
			close(entered)
			<-release
			return nil
		}))
	}()
	<-entered
	trip(t, b, upA)
	close(release)
	require.NoError(t, <-done)
	require.Equal(t, "open", b.State(upA), "the slow success belonged to the closed circuit")
}

// A probe of an earlier half-open round cannot count in a later one.
func TestStaleProbesAreIgnored(t *testing.T) {
	t.Parallel()
	b, clk := cooledDown(t, breaker.Config{HalfOpenProbes: 2})

	// blocked starts a request that waits for its release, and returns
	// that release and the request's result.
	blocked := func() (release chan error, result chan error) {
		entered := make(chan struct{})
		release, result = make(chan error), make(chan error, 1)
		go func() {
			result <- call(b, upA, answering(func(*pipeline.Exchange) error {
				close(entered)
				return <-release
			}))
		}()
		<-entered
		return release, result
	}
	releaseA, resultA := blocked() // probe 1 of round 1
	require.ErrorIs(t, call(b, upA, answering(fail)), errUnreachable, "probe 2 of round 1 fails")
	require.Equal(t, "open", b.State(upA))

	clk.Advance(10 * time.Second)
	releaseC, resultC := blocked() // probe 1 of round 2
	releaseA <- nil                // round 1's probe succeeds late
	require.NoError(t, <-resultA)
	require.NoError(t, call(b, upA, answering(ok)), "probe 2 of round 2")
	require.Equal(t, "half-open", b.State(upA), "one success in this round: the late one was not counted")
	releaseC <- nil
	require.NoError(t, <-resultC)
	require.Equal(t, "closed", b.State(upA))
}

func TestStateChangesAreLoggedOnce(t *testing.T) {
	t.Parallel()
	var logs bytes.Buffer
	var mu sync.Mutex
	var changes []string
	clk := stagetest.NewClock()
	b := newBreaker(t, breaker.Config{}, clk,
		breaker.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))),
		breaker.OnStateChange(func(up string, from, to breaker.State) {
			mu.Lock()
			changes = append(changes, fmt.Sprintf("%s %s->%s", up, from, to))
			mu.Unlock()
		}))
	trip(t, b, upA)
	for range 1000 {
		refusal(t, call(b, upA, answering(ok)))
	}
	clk.Advance(10 * time.Second)
	require.Error(t, call(b, upA, answering(fail)))
	clk.Advance(10 * time.Second)
	require.NoError(t, call(b, upA, answering(ok)))
	for range 1000 {
		require.NoError(t, call(b, upA, answering(ok)))
	}
	require.Equal(t, []string{
		upA + " closed->open",
		upA + " open->half-open",
		upA + " half-open->open",
		upA + " open->half-open",
		upA + " half-open->closed",
	}, changes)
	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	require.Len(t, lines, 5, logs.String())
	require.Contains(t, lines[0], "level=WARN")
	require.Contains(t, lines[0], "circuit breaker opened")
	require.Contains(t, lines[0], `reason="5 failures in the last 10s"`)
	for _, l := range lines[1:] {
		require.Contains(t, l, "level=INFO")
	}
	require.Contains(t, lines[4], "circuit breaker closed")
}

func TestIdleCircuitsAreForgotten(t *testing.T) {
	t.Parallel()
	clk := stagetest.NewClock()
	b := newBreaker(t, breaker.Config{}, clk)
	trip(t, b, upA)
	clk.Advance(15 * time.Second)
	require.NoError(t, call(b, upB, answering(ok)))
	require.Equal(t, "open", b.State(upA), "kept: its cool-down ended less than a window ago")
	clk.Advance(10 * time.Second)
	require.NoError(t, call(b, upB, answering(ok)))
	require.Equal(t, "closed", b.State(upA), "nobody asked for it for a window after its cool-down")

	// A closed circuit with a recent failure is kept, with its count.
	for range 4 {
		_ = call(b, upA, answering(fail))
	}
	clk.Advance(5 * time.Second)
	require.NoError(t, call(b, upB, answering(ok)))
	_ = call(b, upA, answering(fail))
	require.Equal(t, "open", b.State(upA))
}

// A circuit with a request in flight is never forgotten, however long the
// request takes.
func TestCircuitInUseIsKept(t *testing.T) {
	t.Parallel()
	b, clk := cooledDown(t, breaker.Config{})
	entered, release := make(chan struct{}), make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- call(b, upA, answering(func(*pipeline.Exchange) error {
			close(entered)
			<-release
			return nil
		}))
	}()
	<-entered // the probe
	clk.Advance(time.Minute)
	require.NoError(t, call(b, upB, answering(ok)), "runs the sweep")
	require.Equal(t, "half-open", b.State(upA))
	close(release)
	require.NoError(t, <-done)
	require.Equal(t, "closed", b.State(upA))
}

func TestConcurrentUse(t *testing.T) {
	t.Parallel()
	clk := stagetest.NewClock()
	var changes atomic.Int64
	b := newBreaker(t, breaker.Config{CoolDown: time.Second, HalfOpenProbes: 2}, clk,
		breaker.OnStateChange(func(string, breaker.State, breaker.State) { changes.Add(1) }))
	ups := []string{upA, upB, "http://10.0.0.3:8080"}
	var wg sync.WaitGroup
	for g := range 50 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			for i := range 300 {
				if i%25 == 0 {
					clk.Advance(200 * time.Millisecond)
				}
				up := ups[rng.IntN(len(ups))]
				answer := ok
				if rng.IntN(100) < 40+20*slices.Index(ups, up) {
					answer = fail
				}
				err := call(b, up, answering(answer))
				if err != nil && !errors.Is(err, errUnreachable) {
					refusal(t, err)
				}
				require.Contains(t, []string{"closed", "open", "half-open"}, b.State(up))
			}
		})
	}
	wg.Wait()
	require.Positive(t, changes.Load(), "the failing upstreams opened at some point")
	// With healthy upstreams every circuit closes again.
	for range 100 {
		clk.Advance(time.Second)
		for _, up := range ups {
			_ = call(b, up, answering(ok))
		}
	}
	for _, up := range ups {
		require.Equal(t, "closed", b.State(up))
	}
}

// BenchmarkClosed is the fast path: a healthy upstream.
func BenchmarkClosed(b *testing.B) {
	br, err := breaker.New(breaker.Config{})
	require.NoError(b, err)
	x := pipeline.Acquire(pipeline.Egress)
	defer x.Release()
	x.Rule = &rules.Rule{ID: "web", Upstream: upA}
	next := pipeline.HandlerFunc(func(context.Context, *pipeline.Exchange) error { return nil })
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if err := br.Handle(ctx, x, next); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkOpen is the refusal of an open circuit.
func BenchmarkOpen(b *testing.B) {
	br, err := breaker.New(breaker.Config{CoolDown: time.Hour}, quiet)
	require.NoError(b, err)
	x := pipeline.Acquire(pipeline.Egress)
	defer x.Release()
	x.Rule = &rules.Rule{ID: "web", Upstream: upA}
	next := pipeline.HandlerFunc(func(context.Context, *pipeline.Exchange) error { return errUnreachable })
	ctx := context.Background()
	for range 5 {
		_ = br.Handle(ctx, x, next)
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := br.Handle(ctx, x, next); err == errUnreachable {
			b.Fatal("not open")
		}
	}
}

func TestClosedPathDoesNotAllocate(t *testing.T) {
	br, err := breaker.New(breaker.Config{})
	require.NoError(t, err)
	x := pipeline.Acquire(pipeline.Egress)
	defer x.Release()
	x.Rule = &rules.Rule{ID: "web", Upstream: upA}
	next := pipeline.HandlerFunc(func(context.Context, *pipeline.Exchange) error { return nil })
	ctx := context.Background()
	require.NoError(t, br.Handle(ctx, x, next))
	require.Zero(t, testing.AllocsPerRun(1000, func() {
		if err := br.Handle(ctx, x, next); err != nil {
			panic(err)
		}
	}))
}
