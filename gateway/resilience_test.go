package gateway_test

import (
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/config"
	"github.com/qtunnel/qtunnel/gateway"
	"github.com/qtunnel/qtunnel/rules"
	"github.com/qtunnel/qtunnel/stages/ratelimit"
)

// TestRateLimitBurstGetsExactlyTheAllowance fires 600 requests as fast as
// 32 connections go at a rule limited to 100 requests/s with a burst of
// 100, in each direction (the limit is set on the side the users reach).
// The number let through is the burst plus what the bucket refilled while
// the burst lasted, within one request; every other answer is 429 with
// Retry-After, and the upstream sees only the ones let through.
func TestRateLimitBurstGetsExactlyTheAllowance(t *testing.T) {
	t.Parallel()
	var seen atomic.Int64
	up := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.Add(1)
		fmt.Fprint(w, "ok")
	}))
	lim := ratelimit.Limit{Rate: 100, Burst: 100}
	p := startPair(t, pairOpts{
		rules:        []rules.Rule{reverseRule("rev", appHost, up.URL), forwardRule("fwd", "127.0.0.1:0", up.URL)},
		serverMutate: func(c *config.Server) { c.RateLimit.PerRule = lim },
		clientMutate: func(c *config.Client) { c.RateLimit.PerRule = lim },
	})
	for _, d := range directions(t, p) {
		t.Run(d.name, func(t *testing.T) {
			const total, workers = 600, 32
			c := h1Client(t)
			url := d.url("/")
			before := seen.Load()
			var ok, limited, other, noRetryAfter atomic.Int64
			jobs := make(chan struct{}, total)
			for range total {
				jobs <- struct{}{}
			}
			close(jobs)
			start := time.Now()
			var wg sync.WaitGroup
			for range workers {
				wg.Go(func() {
					for range jobs {
						req, _ := http.NewRequest(http.MethodGet, url, nil)
						req.Host = d.host
						resp, err := c.Do(req)
						if err != nil {
							other.Add(1)
							continue
						}
						_, _ = io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						switch resp.StatusCode {
						case http.StatusOK:
							ok.Add(1)
						case http.StatusTooManyRequests:
							limited.Add(1)
							if resp.Header.Get("Retry-After") == "" {
								noRetryAfter.Add(1)
							}
						default:
							other.Add(1)
						}
					}
				})
			}
			wg.Wait()
			elapsed := time.Since(start)
			refill := lim.Rate * elapsed.Seconds()
			t.Logf("%d requests in %v: %d passed, %d got 429 (allowance: burst %d + %.1f refilled)",
				total, elapsed.Round(time.Millisecond), ok.Load(), limited.Load(), lim.Burst, refill)
			require.Zero(t, other.Load(), "every answer is 200 or 429")
			assert.Zero(t, noRetryAfter.Load(), "every 429 says when to retry")
			assert.GreaterOrEqual(t, ok.Load(), int64(lim.Burst), "the whole burst passes")
			assert.LessOrEqual(t, ok.Load(), int64(lim.Burst)+int64(math.Ceil(refill))+1, "no more than the allowance passes")
			assert.Equal(t, int64(total), ok.Load()+limited.Load())
			assert.Equal(t, ok.Load(), seen.Load()-before, "the upstream sees exactly the requests let through")
		})
	}
}

// TestBreakerOpensFailsFastProbesAndCloses: an upstream that fails every
// request opens its breaker after 5 failures. While the breaker is open,
// requests fail fast: the breaker stage answers them 503 with a message
// that says so (and counts them under its name), and none of them reaches
// the upstream. After the cool-down one probe goes through, and its
// success closes the circuit.
//
// How long any of this takes is not checked. Only a probe may reach the
// upstream once the circuit has opened, and the breaker logs each probe's
// admission ("circuit breaker half-open") before the probe goes on, so
// every request that reaches the upstream is matched to such a record,
// whenever the cool-down happens to end.
func TestBreakerOpensFailsFastProbesAndCloses(t *testing.T) {
	t.Parallel()
	var hits atomic.Int64
	var healthy atomic.Bool
	up := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		if !healthy.Load() {
			http.Error(w, "upstream broken", http.StatusInternalServerError)
			return
		}
		fmt.Fprint(w, "ok")
	}))
	const (
		coolDown = time.Second
		opened   = "circuit breaker opened: refusing requests to the upstream"
		halfOpen = "circuit breaker half-open"
		closed   = "circuit breaker closed"
	)
	// The breaker guards upstreams on the egress side: the client for a
	// reverse rule.
	cliLog := newRecordKeeper(slog.LevelInfo)
	p := startPair(t, pairOpts{
		rules: []rules.Rule{reverseRule("rev", appHost, up.URL)},
		clientMutate: func(c *config.Client) {
			withAdmin(&c.Common)
			c.Breaker.ConsecutiveFailures = 5
			c.Breaker.CoolDown = coolDown
			c.Breaker.HalfOpenProbes = 1
		},
		clientOpts: []gateway.Option{gateway.WithLogger(slog.New(cliLog))},
	})
	logged := func(msg string) int {
		n := 0
		for _, r := range cliLog.records() {
			if r.msg == msg {
				n++
			}
		}
		return n
	}
	c := h1Client(t)
	do := func() (int, string, time.Duration) {
		t0 := time.Now()
		resp, body := get(t, c, p.publicURL("/"), appHost)
		return resp.StatusCode, body, time.Since(t0)
	}

	// Closed: the upstream's 500s pass through until the threshold. The
	// breaker judges a request once its answer has gone out, so wait for
	// its record of the fifth failure before going on.
	for i := range 5 {
		code, _, _ := do()
		require.Equal(t, http.StatusInternalServerError, code, "request %d reaches the failing upstream", i)
	}
	require.EqualValues(t, 5, hits.Load())
	eventually(t, 30*time.Second, func() bool { return logged(opened) == 1 }, "the breaker logs that it opened")

	// Open: 503s from the breaker that say why; the upstream sees only
	// probes (the cool-down may end while this runs: a probe then finds
	// the upstream still failing, and the circuit opens again).
	const refusals = 20
	var lat []time.Duration
	probes := 0
	for len(lat) < refusals {
		code, body, d := do()
		switch code {
		case http.StatusServiceUnavailable:
			require.Contains(t, body, "circuit breaker", "the 503 comes from the breaker")
			lat = append(lat, d)
		case http.StatusInternalServerError:
			probes++
			require.Equal(t, probes, logged(halfOpen),
				"a request reached the upstream while the breaker was open, and it was no probe (%d probes admitted, %d requests answered by the upstream)", logged(halfOpen), probes)
		default:
			t.Fatalf("open breaker: %d %q, want the breaker's 503 or a probe's 500", code, body)
		}
	}
	require.EqualValues(t, 5+probes, hits.Load(), "an open breaker sends nothing upstream but its probes")
	slices.Sort(lat)
	t.Logf("open breaker: %d refusals (p50 %v, p99 %v, max %v), %d probe(s) meanwhile",
		len(lat), lat[len(lat)/2], p99(lat), lat[len(lat)-1], probes)
	settle(t, "client", p.Client.AdminAddr(), []want{
		{"qtunnel_stage_rejects_total", lbl("stage", "breaker", "reason", "503"), refusals},
	})

	// After the cool-down: one probe goes through; it succeeds and closes
	// the circuit. Until then every answer is the breaker's 503.
	healthy.Store(true)
	before := hits.Load()
	closedBefore := logged(closed)
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, body, _ := do()
		if code == http.StatusOK {
			break
		}
		require.Equal(t, http.StatusServiceUnavailable, code, "%s", body)
		require.Contains(t, body, "circuit breaker")
		require.True(t, time.Now().Before(deadline), "no probe let through within 30s of a %v cool-down", coolDown)
		tick := time.NewTimer(10 * time.Millisecond) // pace the polling
		<-tick.C
	}
	require.Equal(t, before+1, hits.Load(), "exactly one probe reached the upstream")
	eventually(t, 30*time.Second, func() bool { return logged(closed) > closedBefore }, "the probe's success closes the circuit")
	for i := range 20 {
		code, body, _ := do()
		require.Equal(t, http.StatusOK, code, "request %d after the probe: %s", i, body)
	}
	require.Equal(t, before+21, hits.Load())
	settle(t, "client", p.Client.AdminAddr(), []want{{"qtunnel_breaker_state", lbl("upstream_rule", "rev"), 0}})
}

// TestSeveralUpstreamsSpreadAndSkipTheDeadOne: a rule with three
// upstreams, one of them a closed port, in each direction. Every request
// succeeds (a refused connection is retried on another upstream), and the
// two live upstreams share the load.
func TestSeveralUpstreamsSpreadAndSkipTheDeadOne(t *testing.T) {
	t.Parallel()
	var a, b atomic.Int64
	upA := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { a.Add(1); fmt.Fprint(w, "a") }))
	upB := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { b.Add(1); fmt.Fprint(w, "b") }))
	dead := "http://" + closedPort(t)
	multi := func(r rules.Rule) rules.Rule {
		r.Upstream, r.Upstreams, r.Retries = "", []string{upA.URL, dead, upB.URL}, 2
		return r
	}
	p := startPair(t, pairOpts{rules: []rules.Rule{
		multi(reverseRule("rev", appHost, "")),
		multi(forwardRule("fwd", "127.0.0.1:0", "")),
	}})
	c := h1Client(t)
	for _, d := range directions(t, p) {
		a.Store(0)
		b.Store(0)
		const n = 60
		for i := range n {
			resp, body := get(t, c, d.url("/"), d.host)
			require.Equal(t, http.StatusOK, resp.StatusCode, "%s request %d: %s", d.name, i, body)
		}
		t.Logf("%s: upstream a %d, upstream b %d, dead one skipped", d.name, a.Load(), b.Load())
		assert.Equal(t, int64(n), a.Load()+b.Load())
		assert.InDelta(t, n/2, a.Load(), n/10, "%s: round robin shares evenly between the live upstreams", d.name)
	}
}
