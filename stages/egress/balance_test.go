package egress_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/internal/e2etest"
	"github.com/qtunnel/qtunnel/rules"
	"github.com/qtunnel/qtunnel/stages/egress"
)

// poll is how often the tests below look again at what they wait for.
const poll = 2 * time.Millisecond

// named starts an upstream that answers its name (and, for a body, the
// body after it) and counts the requests it served.
func named(t *testing.T, name string) (*httptest.Server, *atomic.Int32) {
	t.Helper()
	var hits atomic.Int32
	srv, _ := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		b, _ := io.ReadAll(r.Body)
		_, _ = io.WriteString(w, name+string(b))
	}), false)
	return srv, &hits
}

// hangup starts an upstream that reads each request, body and all, and
// closes the connection without an answer.
func hangup(t *testing.T, onRequest func(*http.Request)) (*httptest.Server, *atomic.Int32) {
	t.Helper()
	var hits atomic.Int32
	srv, _ := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		_, _ = io.Copy(io.Discard, r.Body)
		if onRequest != nil {
			onRequest(r)
		}
		c, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			_ = c.Close()
		}
	}), false)
	return srv, &hits
}

func multiRule(id, lb string, urls ...string) *rules.Rule {
	return &rules.Rule{ID: id, Client: "laptop", Direction: rules.Reverse, Host: id + ".example.test",
		Upstreams: urls, LoadBalance: lb}
}

// textLogger logs to w, a sink that checkers write while a test reads.
func textLogger(w *e2etest.SyncBuffer) *slog.Logger { return slog.New(slog.NewTextHandler(w, nil)) }

// spread sends n GETs through u and counts the answers by body.
func spread(t *testing.T, u *egress.Upstream, r *rules.Rule, n int) map[string]int {
	t.Helper()
	got := map[string]int{}
	for range n {
		a, err := send(context.Background(), u, r, get(t, "/"))
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, a.status)
		got[a.body]++
	}
	return got
}

func TestRoundRobinSpreadsEvenly(t *testing.T) {
	t.Parallel()
	a, ha := named(t, "a")
	b, hb := named(t, "b")
	c, hc := named(t, "c")
	p := newPool(t, egress.PoolConfig{WarmConns: -1})
	u := newUpstreamStage(t, p)
	for _, lb := range []string{"", rules.RoundRobin} {
		r := multiRule("rr"+lb, lb, a.URL, b.URL, c.URL)
		ha.Store(0)
		hb.Store(0)
		hc.Store(0)
		got := spread(t, u, r, 100)
		require.Equal(t, map[string]int{"a": 34, "b": 33, "c": 33}, got, "load_balance %q", lb)
		require.Equal(t, []int32{34, 33, 33}, []int32{ha.Load(), hb.Load(), hc.Load()})
	}
}

func TestLeastRequestsPrefersTheIdle(t *testing.T) {
	t.Parallel()
	arrived := make(chan string, 1)
	release := make(chan struct{})
	releaseAll := sync.OnceFunc(func() { close(release) })
	t.Cleanup(releaseAll) // before the servers' Close, which waits for the handlers
	serve := func(name string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/hold" {
				arrived <- name
				select {
				case <-release:
				case <-r.Context().Done():
				}
			}
			_, _ = io.WriteString(w, name)
		})
	}
	a, _ := upstream(t, serve("a"), false)
	b, _ := upstream(t, serve("b"), false)
	p := newPool(t, egress.PoolConfig{WarmConns: -1})
	u := newUpstreamStage(t, p)
	r := multiRule("least", rules.LeastRequests, a.URL, b.URL)

	held := make(chan error, 1)
	go func() {
		_, err := send(context.Background(), u, r, get(t, "/hold"))
		held <- err
	}()
	var busy string
	select {
	case busy = <-arrived:
	case <-time.After(waitFor):
		t.Fatal("the held request did not reach an upstream")
	}
	idle := map[string]string{"a": "b", "b": "a"}[busy]
	st := p.Upstreams(r)
	require.Len(t, st, 2)
	inflight := map[string]int64{"a": st[0].InFlight, "b": st[1].InFlight}
	require.Equal(t, map[string]int64{busy: 1, idle: 0}, inflight)

	require.Equal(t, map[string]int{idle: 20}, spread(t, u, r, 20), "every request goes to the idle upstream")

	releaseAll()
	require.NoError(t, <-held)
	for _, s := range p.Upstreams(r) {
		require.Zero(t, s.InFlight, "a finished answer is no longer in flight")
	}
	require.Equal(t, map[string]int{"a": 10, "b": 10}, spread(t, u, r, 20), "equal loads: in turn")
}

func TestHealthChecksTakeUpstreamsOutAndBack(t *testing.T) {
	t.Parallel()
	var failing, odd atomic.Bool
	var good, bad atomic.Int32
	flaky, _ := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			if r.UserAgent() != "qtunnel-health-check" || r.URL.RawQuery != "deep=1" {
				odd.Store(true)
			}
			if failing.Load() {
				bad.Add(1)
				w.WriteHeader(http.StatusServiceUnavailable)
				return
			}
			good.Add(1)
			return
		}
		_, _ = io.WriteString(w, "flaky")
	}), false)
	steady, _ := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "steady")
	}), false)
	var logs e2etest.SyncBuffer
	p := newPool(t, egress.PoolConfig{WarmConns: -1, Logger: textLogger(&logs)})
	u := newUpstreamStage(t, p)
	r := multiRule("hc", "", flaky.URL+"/base", steady.URL)
	r.HealthCheck = &rules.HealthCheck{Path: "/healthz?deep=1", Interval: rules.Duration(20 * time.Millisecond),
		Timeout: rules.Duration(time.Second), HealthyThreshold: 2, UnhealthyThreshold: 3}
	p.Warm(context.Background(), []rules.Rule{*r}, rules.Reverse) // starts the checks
	require.Eventually(t, func() bool { return good.Load() >= 1 }, waitFor, poll, "checks run from the start")
	require.Equal(t, map[string]int{"flaky": 5, "steady": 5}, spread(t, u, r, 10))

	failing.Store(true)
	require.Eventually(t, func() bool { return !p.Upstreams(r)[0].Healthy }, waitFor, poll)
	require.GreaterOrEqual(t, bad.Load(), int32(3), "down only after unhealthy_threshold failed checks")
	// The checker logs right after it takes the upstream out: wait for it.
	require.Eventually(t, func() bool { return strings.Contains(logs.String(), "upstream unhealthy") }, waitFor, poll)
	require.Contains(t, logs.String(), "failed_checks=3", "down at the third failed check in a row")
	require.True(t, p.Upstreams(r)[1].Healthy)
	require.Equal(t, map[string]int{"steady": 20}, spread(t, u, r, 20), "no traffic to an unhealthy upstream")
	more := bad.Load() + 3
	require.Eventually(t, func() bool { return bad.Load() >= more }, waitFor, poll)
	require.Equal(t, 1, strings.Count(logs.String(), "upstream unhealthy"), "the change is logged once")
	require.False(t, p.Upstreams(r)[0].Healthy)

	good.Store(0)
	failing.Store(false)
	require.Eventually(t, func() bool { return p.Upstreams(r)[0].Healthy }, waitFor, poll)
	require.GreaterOrEqual(t, good.Load(), int32(2), "up only after healthy_threshold good checks")
	require.Eventually(t, func() bool { return strings.Contains(logs.String(), "upstream healthy") }, waitFor, poll)
	require.Contains(t, logs.String(), "good_checks=2")
	require.Equal(t, 1, strings.Count(logs.String(), "upstream healthy"))
	require.Equal(t, map[string]int{"flaky": 10, "steady": 10}, spread(t, u, r, 20), "back in rotation")
	require.Contains(t, logs.String(), "level=WARN msg=\"upstream unhealthy")
	require.Contains(t, logs.String(), "level=INFO msg=\"upstream healthy")
	require.False(t, odd.Load(), "checks are GET path?query with their own User-Agent")
}

func TestAllUnhealthyFailsOpen(t *testing.T) {
	t.Parallel()
	sick := func(name string) *httptest.Server {
		srv, _ := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/healthz" {
				w.WriteHeader(http.StatusInternalServerError)
				return
			}
			_, _ = io.WriteString(w, name)
		}), false)
		return srv
	}
	a, b := sick("a"), sick("b")
	p := newPool(t, egress.PoolConfig{WarmConns: -1, Logger: slog.New(slog.DiscardHandler)})
	r := multiRule("open", "", a.URL, b.URL)
	r.HealthCheck = &rules.HealthCheck{Path: "/healthz", Interval: rules.Duration(20 * time.Millisecond), UnhealthyThreshold: 1}
	p.Warm(context.Background(), []rules.Rule{*r}, rules.Reverse)
	require.Eventually(t, func() bool {
		st := p.Upstreams(r)
		return !st[0].Healthy && !st[1].Healthy
	}, waitFor, poll)
	require.Equal(t, map[string]int{"a": 5, "b": 5}, spread(t, newUpstreamStage(t, p), r, 10),
		"with every upstream down, they are still tried in turn")
}

func TestExpectStatus(t *testing.T) {
	t.Parallel()
	srv, _ := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	}), false)
	p := newPool(t, egress.PoolConfig{WarmConns: -1, Logger: slog.New(slog.DiscardHandler)})
	r := multiRule("expect", "", srv.URL)
	r.HealthCheck = &rules.HealthCheck{Path: "/", Interval: rules.Duration(20 * time.Millisecond), UnhealthyThreshold: 1, ExpectStatus: 200}
	p.Warm(context.Background(), []rules.Rule{*r}, rules.Reverse)
	require.Eventually(t, func() bool { return !p.Upstreams(r)[0].Healthy }, waitFor, poll, "204 is not the 200 expected")
}

func TestPassiveEjection(t *testing.T) {
	t.Parallel()
	live, _ := named(t, "live")
	dead := closedAddr(t)

	t.Run("out after threshold connection failures", func(t *testing.T) {
		t.Parallel()
		var logs e2etest.SyncBuffer
		p := newPool(t, egress.PoolConfig{WarmConns: -1, EjectTime: time.Hour, Logger: textLogger(&logs)})
		u := newUpstreamStage(t, p)
		r := multiRule("passive", "", dead, live.URL)
		failed := 0
		for range 6 { // in turn: dead, live, dead, live, dead, live
			a, err := send(context.Background(), u, r, get(t, "/"))
			if err != nil {
				requireReject(t, err, http.StatusBadGateway)
				failed++
				continue
			}
			require.Equal(t, "live", a.body)
		}
		require.Equal(t, 3, failed, "the default unhealthy_threshold of 3 failures in a row")
		st := p.Upstreams(r)
		require.True(t, st[0].Ejected)
		require.True(t, st[0].Healthy, "ejection is not the health checks' verdict")
		require.False(t, st[1].Ejected)
		require.Equal(t, map[string]int{"live": 20}, spread(t, u, r, 20))
		require.Equal(t, 1, strings.Count(logs.String(), "upstream ejected"))
	})
	t.Run("back after eject_time", func(t *testing.T) {
		t.Parallel()
		var logs e2etest.SyncBuffer
		p := newPool(t, egress.PoolConfig{WarmConns: -1, EjectTime: 30 * time.Millisecond, Logger: textLogger(&logs)})
		u := newUpstreamStage(t, p)
		r := multiRule("passive-back", "", dead, live.URL)
		for range 6 {
			_, _ = send(context.Background(), u, r, get(t, "/"))
		}
		require.True(t, p.Upstreams(r)[0].Ejected)
		require.Eventually(t, func() bool { return !p.Upstreams(r)[0].Ejected }, waitFor, poll)
		failed := 0
		for range 2 {
			if _, err := send(context.Background(), u, r, get(t, "/")); err != nil {
				failed++
			}
		}
		require.Equal(t, 1, failed, "the dead upstream is tried again")
		require.Contains(t, logs.String(), "upstream back in rotation after its ejection")
	})
	t.Run("answers are not connection failures", func(t *testing.T) {
		t.Parallel()
		broken, _ := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusInternalServerError)
		}), false)
		p := newPool(t, egress.PoolConfig{WarmConns: -1, EjectTime: time.Hour})
		u := newUpstreamStage(t, p)
		r := multiRule("passive-5xx", "", broken.URL, live.URL)
		for range 10 {
			_, err := send(context.Background(), u, r, get(t, "/"))
			require.NoError(t, err)
		}
		require.False(t, p.Upstreams(r)[0].Ejected)
	})
}

func TestRetryGetOnAnotherUpstream(t *testing.T) {
	t.Parallel()
	live, liveHits := named(t, "live")
	hung, hungHits := hangup(t, nil)
	dead := closedAddr(t)
	tests := []struct {
		name    string
		first   string
		retries int
		wantErr bool
	}{
		{"refused, no retries", dead, 0, true},
		{"refused, retried", dead, 1, false},
		{"no answer, no retries", hung.URL, 0, true},
		{"no answer, retried", hung.URL, 2, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newPool(t, egress.PoolConfig{WarmConns: -1})
			r := multiRule("retry", "", tt.first, live.URL) // in turn: the first one first
			r.Retries = tt.retries
			before := liveHits.Load()
			a, err := send(context.Background(), newUpstreamStage(t, p), r, get(t, "/"))
			if tt.wantErr {
				requireReject(t, err, http.StatusBadGateway)
				require.Equal(t, before, liveHits.Load())
				return
			}
			require.NoError(t, err)
			require.Equal(t, "live", a.body)
			require.Equal(t, before+1, liveHits.Load())
		})
	}
	require.Equal(t, int32(2), hungHits.Load())
}

func TestRetryOfRequestsWithBodies(t *testing.T) {
	t.Parallel()
	live, liveHits := named(t, "live:")
	hung, hungHits := hangup(t, nil)
	dead := closedAddr(t)
	post := func(method string) *http.Request {
		req, err := http.NewRequestWithContext(context.Background(), method, "/submit", strings.NewReader("payload"))
		require.NoError(t, err)
		return req
	}

	for _, method := range []string{http.MethodPost, http.MethodPut} {
		t.Run(method+" not retried once sent", func(t *testing.T) {
			p := newPool(t, egress.PoolConfig{WarmConns: -1})
			r := multiRule("body", "", hung.URL, live.URL)
			r.Retries = 3
			hb, lb := hungHits.Load(), liveHits.Load()
			_, err := send(context.Background(), newUpstreamStage(t, p), r, post(method))
			requireReject(t, err, http.StatusBadGateway)
			require.Equal(t, hb+1, hungHits.Load())
			require.Equal(t, lb, liveHits.Load(), "the body was sent: no second try")
		})
	}
	for _, h2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("POST retried after connection refused, http2 %v", h2), func(t *testing.T) {
			p := newPool(t, egress.PoolConfig{WarmConns: -1})
			r := multiRule("body", "", dead, live.URL)
			r.Retries = 1
			r.UpstreamHTTP2 = h2 // h2c to a server without it fails; only the dial matters here
			if h2 {
				h2live, _ := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					b, _ := io.ReadAll(r.Body)
					_, _ = io.WriteString(w, "h2:"+string(b))
				}), true)
				r.Upstreams = []string{dead, h2live.URL}
			}
			a, err := send(context.Background(), newUpstreamStage(t, p), r, post(http.MethodPost))
			require.NoError(t, err)
			if h2 {
				require.Equal(t, "h2:payload", a.body, "net/http's Transport did not close or read the body")
			} else {
				require.Equal(t, "live:payload", a.body)
			}
		})
	}
}

func TestRetriesBoundTheAttempts(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		upstreams int
		retries   int
		want      int32
	}{
		{"one per upstream", 3, 2, 3},
		{"around again", 2, 5, 6},
		{"one upstream, tried again", 1, 2, 3},
		{"capped at max_retries", 2, 50, 1 + rules.MaxRetries},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var hits []*atomic.Int32
			var urls []string
			for range tt.upstreams {
				srv, h := hangup(t, nil)
				hits = append(hits, h)
				urls = append(urls, srv.URL)
			}
			p := newPool(t, egress.PoolConfig{WarmConns: -1})
			r := multiRule("bound", "", urls...)
			r.Retries = tt.retries
			_, err := send(context.Background(), newUpstreamStage(t, p), r, get(t, "/"))
			requireReject(t, err, http.StatusBadGateway)
			var total int32
			for _, h := range hits {
				require.Positive(t, h.Load(), "every upstream is tried before one is tried again")
				total += h.Load()
			}
			require.Equal(t, tt.want, total)
		})
	}
}

func TestRetryStopsWhenTheRequesterLeaves(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a, ha := hangup(t, func(*http.Request) { cancel() })
	b, hb := hangup(t, nil)
	p := newPool(t, egress.PoolConfig{WarmConns: -1})
	r := multiRule("gone", "", a.URL, b.URL)
	r.Retries = 5
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "/", nil)
	require.NoError(t, err)
	_, err = send(ctx, newUpstreamStage(t, p), r, req)
	require.ErrorIs(t, err, context.Canceled)
	require.Equal(t, int32(1), ha.Load())
	require.Zero(t, hb.Load(), "no retry for a requester who left")
}

func TestRetainClosesWhatNoRuleNeeds(t *testing.T) {
	t.Parallel()
	type tracked struct {
		srv  *httptest.Server
		open atomic.Int32
	}
	start := func() *tracked {
		tr := &tracked{}
		srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
		srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
			switch s {
			case http.StateNew:
				tr.open.Add(1)
			case http.StateClosed, http.StateHijacked:
				tr.open.Add(-1)
			}
		}
		srv.Start()
		t.Cleanup(srv.Close)
		tr.srv = srv
		return tr
	}
	s1, s2, s3 := start(), start(), start()
	p := newPool(t, egress.PoolConfig{WarmConns: 1})
	gone := multiRule("gone", "", s1.srv.URL, s2.srv.URL)
	gone.HealthCheck = &rules.HealthCheck{Path: "/", Interval: rules.Duration(20 * time.Millisecond)}
	kept := multiRule("kept", "", s3.srv.URL)
	rs := []rules.Rule{*gone, *kept}
	p.Warm(context.Background(), rs, rules.Reverse)
	for _, s := range []*tracked{s1, s2, s3} {
		require.Eventually(t, func() bool { return s.open.Load() >= 1 }, waitFor, poll)
	}
	require.Len(t, p.Upstreams(gone), 2)

	p.Retain([]rules.Rule{*kept})
	require.Nil(t, p.Upstreams(gone), "the rule's balancer is gone")
	for _, s := range []*tracked{s1, s2} {
		require.Eventually(t, func() bool { return s.open.Load() == 0 }, waitFor, poll,
			"the pool closed its warm and idle connections to an upstream no rule names")
	}
	require.Equal(t, int32(1), s3.open.Load())
	target, err := p.Get(kept)
	require.NoError(t, err)
	require.Equal(t, 1, target.Warm(), "a kept upstream keeps its warm connection")

	// Retaining nothing is allowed, and Get brings a rule back.
	p.Retain(nil)
	require.Eventually(t, func() bool { return s3.open.Load() == 0 }, waitFor, poll)
	_, err = send(context.Background(), newUpstreamStage(t, p), gone, get(t, "/"))
	require.NoError(t, err)
}

func TestUpstreamsOfTCPAndUnknownRules(t *testing.T) {
	t.Parallel()
	p := newPool(t, egress.PoolConfig{WarmConns: -1})
	require.Nil(t, p.Upstreams(ruleFor("http://127.0.0.1:1")), "never used")
	_, err := p.Get(multiRule("bad", "", "http://127.0.0.1:1", "ftp://127.0.0.1:2"))
	require.Error(t, err)
	closed := newPool(t, egress.PoolConfig{WarmConns: -1})
	closed.Close()
	closed.Retain(nil)
	_, err = closed.Get(multiRule("x", "", "http://127.0.0.1:1"))
	require.ErrorIs(t, err, egress.ErrPoolClosed)
}
