package ratelimit_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/pipeline/pipelinetest"
	"github.com/qtunnel/qtunnel/rules"
	"github.com/qtunnel/qtunnel/stages/internal/stagetest"
	"github.com/qtunnel/qtunnel/stages/ratelimit"
)

func TestMain(m *testing.M) { pipelinetest.VerifyNoLeaks(m) }

func newLimiter(t testing.TB, cfg ratelimit.Config, clk *stagetest.Clock, opts ...ratelimit.Option) *ratelimit.Limiter {
	t.Helper()
	opts = append(opts, ratelimit.WithClock(clk.Now))
	l, err := ratelimit.New(cfg, opts...)
	require.NoError(t, err)
	require.Equal(t, "ratelimit", l.Name())
	return l
}

// req describes one test request.
type req struct {
	egress     bool
	rule       string // "" means no rule
	client     string // the rule's client
	connClient string // the tunnel connection's client, if any
	remote     string // RemoteAddr; "" keeps httptest's 192.0.2.1:1234
}

var pass = pipeline.HandlerFunc(func(context.Context, *pipeline.Exchange) error { return nil })

// run sends r through l and says whether the next stage was reached.
func run(l *ratelimit.Limiter, r req) (reached bool, err error) {
	side := pipeline.Ingress
	if r.egress {
		side = pipeline.Egress
	}
	x := pipeline.Acquire(side)
	defer x.Release()
	x.Request = httptest.NewRequest(http.MethodGet, "http://app.example.test/", nil)
	if r.remote != "" {
		x.Request.RemoteAddr = r.remote
	}
	if r.rule != "" {
		x.Rule = &rules.Rule{ID: r.rule, Client: r.client}
	}
	if r.connClient != "" {
		x.Conn = &pipeline.Conn{ClientID: r.connClient}
	}
	err = l.Handle(context.Background(), x, pipeline.HandlerFunc(func(context.Context, *pipeline.Exchange) error {
		reached = true
		return nil
	}))
	return reached, err
}

// count sends n copies of r and returns how many passed; every refusal
// must be a proper 429 that did not reach the next stage.
func count(t *testing.T, l *ratelimit.Limiter, n int, r req) (passed int, last *pipeline.Reject) {
	t.Helper()
	for range n {
		reached, err := run(l, r)
		if err == nil {
			require.True(t, reached)
			passed++
			continue
		}
		require.False(t, reached, "a refused request must not reach the next stage")
		var rj *pipeline.Reject
		require.ErrorAs(t, err, &rj)
		require.Equal(t, http.StatusTooManyRequests, rj.Status)
		require.GreaterOrEqual(t, rj.RetryAfter, time.Second)
		require.Zero(t, rj.RetryAfter%time.Second, "Retry-After is whole seconds")
		last = rj
	}
	return passed, last
}

func TestNew(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		cfg     ratelimit.Config
		wantErr string
	}{
		{"zero value: no limits", ratelimit.Config{}, ""},
		{"all limits", ratelimit.Config{
			PerRule: ratelimit.Limit{Rate: 100, Burst: 200}, PerClient: ratelimit.Limit{Rate: 0.5},
			PerIP: ratelimit.Limit{Rate: 10}, MaxIPs: 10, IPIdle: time.Minute, IPv6Prefix: 128,
		}, ""},
		{"negative rule rate", ratelimit.Config{PerRule: ratelimit.Limit{Rate: -1}}, "per_rule: rate -1"},
		{"negative client burst", ratelimit.Config{PerClient: ratelimit.Limit{Rate: 1, Burst: -1}}, "per_client: burst -1 must not be negative"},
		{"negative ip rate", ratelimit.Config{PerIP: ratelimit.Limit{Rate: -0.5}}, "per_ip: rate -0.5"},
		{"burst without rate", ratelimit.Config{PerIP: ratelimit.Limit{Burst: 5}}, "per_ip: burst 5 without a rate"},
		{"rate too high", ratelimit.Config{PerRule: ratelimit.Limit{Rate: 1e12}}, "per_rule: rate"},
		{"negative max ips", ratelimit.Config{MaxIPs: -1}, "max_ips: -1 must not be negative"},
		{"negative ip idle", ratelimit.Config{IPIdle: -time.Second}, "ip_idle: -1s must not be negative"},
		{"ipv6 prefix too long", ratelimit.Config{IPv6Prefix: 129}, "ipv6_prefix: 129"},
		{"negative ipv6 prefix", ratelimit.Config{IPv6Prefix: -1}, "ipv6_prefix: -1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			l, err := ratelimit.New(tt.cfg)
			stagetest.CheckNew(t, "ratelimit", l, err, tt.wantErr)
		})
	}
}

func TestNewReportsEveryProblem(t *testing.T) {
	t.Parallel()
	_, err := ratelimit.New(ratelimit.Config{PerRule: ratelimit.Limit{Rate: -1}, MaxIPs: -1, IPIdle: -1})
	require.ErrorContains(t, err, "per_rule")
	require.ErrorContains(t, err, "max_ips")
	require.ErrorContains(t, err, "ip_idle")
}

func TestLimitValidate(t *testing.T) {
	t.Parallel()
	require.NoError(t, ratelimit.Limit{}.Validate())
	require.NoError(t, ratelimit.Limit{Rate: 0.1, Burst: 3}.Validate())
	require.Error(t, ratelimit.Limit{Rate: -1}.Validate())
	require.Error(t, ratelimit.Limit{Rate: 1, Burst: -1}.Validate())
	require.Error(t, ratelimit.Limit{Burst: 1}.Validate())
}

func TestBurstThenRefill(t *testing.T) {
	t.Parallel()
	clk := stagetest.NewClock()
	l := newLimiter(t, ratelimit.Config{PerRule: ratelimit.Limit{Rate: 100, Burst: 100}}, clk)

	passed, rj := count(t, l, 500, req{rule: "web"})
	require.Equal(t, 100, passed, "a frozen clock lets exactly the burst through")
	require.NotNil(t, rj)
	require.Equal(t, `rate limit of rule "web" exceeded (100 requests/s)`, rj.Message)
	require.Equal(t, time.Second, rj.RetryAfter, "10ms to the next token rounds up to 1s")

	clk.Advance(time.Second)
	passed, _ = count(t, l, 500, req{rule: "web"})
	require.InDelta(t, 100, passed, 1, "one second refills 100 tokens")

	clk.Advance(10 * time.Millisecond)
	passed, _ = count(t, l, 10, req{rule: "web"})
	require.Equal(t, 1, passed, "10ms at 100/s is one token")
}

func TestDefaultBurst(t *testing.T) {
	t.Parallel()
	tests := []struct {
		rate float64
		want int
	}{{0.2, 1}, {1, 1}, {2.5, 3}, {40, 40}}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.rate), func(t *testing.T) {
			t.Parallel()
			l := newLimiter(t, ratelimit.Config{PerRule: ratelimit.Limit{Rate: tt.rate}}, stagetest.NewClock())
			passed, _ := count(t, l, 100, req{rule: "web"})
			require.Equal(t, tt.want, passed)
		})
	}
}

func TestRetryAfterIsTheWaitForTheNextToken(t *testing.T) {
	t.Parallel()
	clk := stagetest.NewClock()
	l := newLimiter(t, ratelimit.Config{PerRule: ratelimit.Limit{Rate: 0.1, Burst: 1}}, clk)
	_, rj := count(t, l, 2, req{rule: "slow"})
	require.NotNil(t, rj)
	require.Equal(t, 10*time.Second, rj.RetryAfter)
	require.Equal(t, `rate limit of rule "slow" exceeded (0.1 requests/s)`, rj.Message)

	clk.Advance(2500 * time.Millisecond)
	_, rj = count(t, l, 1, req{rule: "slow"})
	require.Equal(t, 8*time.Second, rj.RetryAfter, "7.5s left rounds up")

	clk.Advance(7500 * time.Millisecond)
	passed, _ := count(t, l, 1, req{rule: "slow"})
	require.Equal(t, 1, passed, "after Retry-After the request passes")
}

func TestNoRuleIsNotLimited(t *testing.T) {
	t.Parallel()
	l := newLimiter(t, ratelimit.Config{
		PerRule: ratelimit.Limit{Rate: 1}, PerClient: ratelimit.Limit{Rate: 1}, PerIP: ratelimit.Limit{Rate: 1},
	}, stagetest.NewClock())
	passed, _ := count(t, l, 50, req{})
	require.Equal(t, 50, passed)
}

func TestClientKeys(t *testing.T) {
	t.Parallel()
	clk := stagetest.NewClock()
	l := newLimiter(t, ratelimit.Config{PerClient: ratelimit.Limit{Rate: 1, Burst: 3}}, clk)

	// Ingress side: the rule's client. Two rules of one client share it.
	passed, _ := count(t, l, 2, req{rule: "a", client: "laptop"})
	require.Equal(t, 2, passed)
	passed, rj := count(t, l, 5, req{rule: "b", client: "laptop"})
	require.Equal(t, 1, passed, "the client's burst is shared by its rules")
	require.Equal(t, `rate limit of client "laptop" exceeded (1 requests/s)`, rj.Message)

	passed, _ = count(t, l, 5, req{rule: "c", client: "desktop"})
	require.Equal(t, 3, passed, "another client has its own bucket")

	// Egress side: the connection's client wins over the rule's.
	passed, _ = count(t, l, 5, req{egress: true, rule: "a", client: "laptop", connClient: "phone"})
	require.Equal(t, 3, passed)
	passed, _ = count(t, l, 1, req{egress: true, rule: "a", client: "phone", connClient: "laptop"})
	require.Zero(t, passed, "keyed by the connection's client, laptop")
}

func TestIPKeys(t *testing.T) {
	t.Parallel()
	l := newLimiter(t, ratelimit.Config{PerIP: ratelimit.Limit{Rate: 1, Burst: 2}}, stagetest.NewClock())

	passed, rj := count(t, l, 5, req{rule: "web", remote: "198.51.100.1:5000"})
	require.Equal(t, 2, passed)
	require.Equal(t, `rate limit of address 198.51.100.1 exceeded (1 requests/s)`, rj.Message)
	passed, _ = count(t, l, 5, req{rule: "web", remote: "198.51.100.1:5001"})
	require.Zero(t, passed, "the port is not part of the key")
	passed, _ = count(t, l, 5, req{rule: "web", remote: "[::ffff:198.51.100.1]:5002"})
	require.Zero(t, passed, "an IPv4-mapped address is the IPv4 address")

	passed, _ = count(t, l, 5, req{rule: "web", remote: "198.51.100.2:5000"})
	require.Equal(t, 2, passed, "each address has its own burst")

	// IPv6: one /64 is one user.
	passed, _ = count(t, l, 3, req{rule: "web", remote: "[2001:db8:1:2::1]:443"})
	require.Equal(t, 2, passed)
	passed, rj = count(t, l, 3, req{rule: "web", remote: "[2001:db8:1:2:ffff::9]:443"})
	require.Zero(t, passed, "same /64")
	require.Contains(t, rj.Message, "address 2001:db8:1:2::/64 exceeded")
	passed, _ = count(t, l, 3, req{rule: "web", remote: "[2001:db8:1:3::1]:443"})
	require.Equal(t, 2, passed, "another /64")

	// Only on the ingress side, and only for addresses.
	passed, _ = count(t, l, 10, req{egress: true, rule: "web", remote: "198.51.100.1:5000"})
	require.Equal(t, 10, passed, "the egress side does not know the user's address")
	passed, _ = count(t, l, 10, req{rule: "web", remote: "@unix"})
	require.Equal(t, 10, passed, "a non-IP peer is not limited per address")
}

func TestIPv6PrefixSetting(t *testing.T) {
	t.Parallel()
	l := newLimiter(t, ratelimit.Config{PerIP: ratelimit.Limit{Rate: 1}, IPv6Prefix: 128}, stagetest.NewClock())
	passed, rj := count(t, l, 2, req{rule: "web", remote: "[2001:db8::1]:443"})
	require.Equal(t, 1, passed)
	require.Contains(t, rj.Message, "address 2001:db8::1 exceeded")
	passed, _ = count(t, l, 1, req{rule: "web", remote: "[2001:db8::2]:443"})
	require.Equal(t, 1, passed, "with /128 every address is its own user")
}

func TestKeysAreIndependent(t *testing.T) {
	t.Parallel()
	l := newLimiter(t, ratelimit.Config{
		PerRule: ratelimit.Limit{Rate: 1, Burst: 100}, PerClient: ratelimit.Limit{Rate: 1, Burst: 100},
		PerIP: ratelimit.Limit{Rate: 1, Burst: 2},
	}, stagetest.NewClock())
	for i := range 10 {
		passed, _ := count(t, l, 5, req{rule: "web", client: "laptop", remote: fmt.Sprintf("203.0.113.%d:1000", i)})
		require.Equal(t, 2, passed, "address %d gets its own burst", i)
	}
}

// A request refused by the address limit spends no rule token, and one
// refused by the rule limit spends no address token.
func TestRefusedRequestsSpendNothing(t *testing.T) {
	t.Parallel()
	clk := stagetest.NewClock()
	l := newLimiter(t, ratelimit.Config{
		PerRule: ratelimit.Limit{Rate: 10, Burst: 10},
		PerIP:   ratelimit.Limit{Rate: 0.1, Burst: 1},
	}, clk)
	passed, _ := count(t, l, 50, req{rule: "web", remote: "203.0.113.1:1"})
	require.Equal(t, 1, passed, "the flooding address is held by its own bucket")
	for i := 2; i <= 10; i++ {
		passed, _ = count(t, l, 1, req{rule: "web", remote: fmt.Sprintf("203.0.113.%d:1", i)})
		require.Equal(t, 1, passed, "the rule still has tokens for address %d", i)
	}
	passed, rj := count(t, l, 1, req{rule: "web", remote: "203.0.113.11:1"})
	require.Zero(t, passed)
	require.Contains(t, rj.Message, `rule "web"`)

	clk.Advance(100 * time.Millisecond) // one rule token; address tokens take 10s
	passed, _ = count(t, l, 1, req{rule: "web", remote: "203.0.113.11:1"})
	require.Equal(t, 1, passed, "the refusal by the rule did not spend the address's token")
}

// Each rule has its own bucket, shared by whoever sends to it.
func TestRuleKeys(t *testing.T) {
	t.Parallel()
	l := newLimiter(t, ratelimit.Config{PerRule: ratelimit.Limit{Rate: 1, Burst: 2}}, stagetest.NewClock())

	passed, _ := count(t, l, 1, req{rule: "web", client: "laptop", remote: "203.0.113.1:1"})
	require.Equal(t, 1, passed)
	passed, rj := count(t, l, 5, req{rule: "web", client: "desktop", remote: "203.0.113.2:1"})
	require.Equal(t, 1, passed, "the rule's burst is shared by its clients and addresses")
	require.Equal(t, `rate limit of rule "web" exceeded (1 requests/s)`, rj.Message)

	passed, _ = count(t, l, 5, req{rule: "api", client: "laptop"})
	require.Equal(t, 2, passed, "another rule has its own bucket")
	passed, _ = count(t, l, 5, req{egress: true, rule: "db", connClient: "laptop"})
	require.Equal(t, 2, passed, "on the egress side too")
}

func TestIPTableIsBoundedLRU(t *testing.T) {
	t.Parallel()
	var logs bytes.Buffer
	l := newLimiter(t, ratelimit.Config{PerIP: ratelimit.Limit{Rate: 0.001, Burst: 1}, MaxIPs: 10}, stagetest.NewClock(),
		ratelimit.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	hot := req{rule: "web", remote: "198.51.100.1:1"}
	cold := req{rule: "web", remote: "198.51.100.2:1"}
	passed, _ := count(t, l, 1, hot)
	require.Equal(t, 1, passed)
	passed, _ = count(t, l, 1, cold)
	require.Equal(t, 1, passed)
	for i := range 100 {
		passed, _ = count(t, l, 1, req{rule: "web", remote: fmt.Sprintf("10.0.%d.%d:1", i/250, i%250)})
		require.Equal(t, 1, passed)
		require.LessOrEqual(t, ratelimit.TrackedIPs(l), 10)
		passed, _ = count(t, l, 1, hot) // keeps hot recently used
		require.Zero(t, passed, "a recently used address keeps its (empty) bucket")
	}
	require.Equal(t, 10, ratelimit.TrackedIPs(l))
	passed, _ = count(t, l, 1, cold)
	require.Equal(t, 1, passed, "the least recently used address was forgotten: a fresh burst")
	require.Equal(t, 1, bytes.Count(logs.Bytes(), []byte("table is full")), "logged once, not per eviction")
}

func TestIPTableIsBoundedWhenSharded(t *testing.T) {
	t.Parallel()
	const maxIPs = 5000
	l := newLimiter(t, ratelimit.Config{PerIP: ratelimit.Limit{Rate: 1}, MaxIPs: maxIPs}, stagetest.NewClock(),
		ratelimit.WithLogger(slog.New(slog.DiscardHandler)))
	for i := range 20000 {
		_, err := run(l, req{rule: "web", remote: fmt.Sprintf("10.%d.%d.%d:1", i>>16, (i>>8)&255, i&255)})
		require.NoError(t, err)
		if i%1000 == 0 {
			require.LessOrEqual(t, ratelimit.TrackedIPs(l), maxIPs)
		}
	}
	require.LessOrEqual(t, ratelimit.TrackedIPs(l), maxIPs)
	require.Greater(t, ratelimit.TrackedIPs(l), maxIPs*9/10, "every shard filled up")
}

func TestIdleIPsAreForgotten(t *testing.T) {
	t.Parallel()
	clk := stagetest.NewClock()
	l := newLimiter(t, ratelimit.Config{PerIP: ratelimit.Limit{Rate: 0.001, Burst: 1}, IPIdle: 10 * time.Minute}, clk)
	for i := range 10 {
		_, _ = run(l, req{rule: "web", remote: fmt.Sprintf("10.0.0.%d:1", i)})
	}
	require.Equal(t, 10, ratelimit.TrackedIPs(l))

	clk.Advance(4 * time.Minute)
	_, _ = run(l, req{rule: "web", remote: "10.0.1.1:1"})
	require.Equal(t, 11, ratelimit.TrackedIPs(l), "nothing is idle yet, and no sweep is due before IPIdle/2")

	clk.Advance(7 * time.Minute) // 11m: the first ten are idle for 11m, 10.0.1.1 for 7m
	_, _ = run(l, req{rule: "web", remote: "10.0.1.2:1"})
	require.Equal(t, 2, ratelimit.TrackedIPs(l), "the sweep dropped the ten idle addresses")

	passed, _ := count(t, l, 1, req{rule: "web", remote: "10.0.0.1:1"})
	require.Equal(t, 1, passed, "a forgotten address starts with a full burst")
	passed, _ = count(t, l, 1, req{rule: "web", remote: "10.0.1.1:1"})
	require.Zero(t, passed, "an address seen within IPIdle keeps its bucket")
}

// An address seen within IPIdle keeps its bucket, however long ago it was
// first seen.
func TestIPInUseIsKept(t *testing.T) {
	t.Parallel()
	clk := stagetest.NewClock()
	l := newLimiter(t, ratelimit.Config{PerIP: ratelimit.Limit{Rate: 0.001, Burst: 1}, IPIdle: 10 * time.Minute}, clk)
	busy := req{rule: "web", remote: "10.0.0.1:1"}
	passed, _ := count(t, l, 1, busy)
	require.Equal(t, 1, passed)
	clk.Advance(4 * time.Minute)
	passed, _ = count(t, l, 1, busy)
	require.Zero(t, passed)

	clk.Advance(7 * time.Minute)                          // 11m: first seen 11m ago, last seen 7m ago
	_, _ = run(l, req{rule: "web", remote: "10.0.0.2:1"}) // runs the sweep
	require.Equal(t, 2, ratelimit.TrackedIPs(l))
	passed, _ = count(t, l, 1, busy)
	require.Zero(t, passed, "its bucket was kept, still empty")
}

// Rule and client buckets idle for IPIdle are forgotten only when full
// again: an emptied bucket is kept however long it is idle, so a quiet
// spell does not hand out a fresh burst early.
func TestIdleBucketsAreForgottenOnlyWhenFull(t *testing.T) {
	t.Parallel()
	slow := ratelimit.Limit{Rate: 0.001, Burst: 1} // refills in 1000s
	for _, tt := range []struct {
		name string
		cfg  ratelimit.Config
	}{
		{"rule", ratelimit.Config{PerRule: slow, IPIdle: 10 * time.Minute}},
		{"client", ratelimit.Config{PerClient: slow, IPIdle: 10 * time.Minute}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			clk := stagetest.NewClock()
			l := newLimiter(t, tt.cfg, clk)
			r := req{rule: "web", client: "laptop"}
			passed, _ := count(t, l, 2, r)
			require.Equal(t, 1, passed)
			clk.Advance(11 * time.Minute)                        // idle past IPIdle, the sweep due
			_, _ = run(l, req{rule: "other", client: "desktop"}) // runs the sweep
			passed, _ = count(t, l, 1, r)
			require.Zero(t, passed, "0.66 tokens after 11m: the bucket was kept")
			clk.Advance(6 * time.Minute)
			passed, _ = count(t, l, 1, r)
			require.Equal(t, 1, passed, "refilled after 1000s")
		})
	}
}

func TestConcurrentBurstIsExact(t *testing.T) {
	t.Parallel()
	l := newLimiter(t, ratelimit.Config{
		PerRule: ratelimit.Limit{Rate: 100, Burst: 100},
		PerIP:   ratelimit.Limit{Rate: 1, Burst: 1000}, MaxIPs: 8,
	}, stagetest.NewClock(), ratelimit.WithLogger(slog.New(slog.DiscardHandler)))
	var passed atomic.Int64
	var wg sync.WaitGroup
	for g := range 50 {
		wg.Go(func() {
			for i := range 20 {
				reached, err := run(l, req{rule: "web", remote: fmt.Sprintf("10.0.%d.%d:1", g, i%3)})
				if err == nil && reached {
					passed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	require.EqualValues(t, 100, passed.Load(), "50 goroutines share one burst of 100")
	require.LessOrEqual(t, ratelimit.TrackedIPs(l), 8)
}

func TestConcurrentChurn(t *testing.T) {
	t.Parallel()
	clk := stagetest.NewClock()
	l := newLimiter(t, ratelimit.Config{
		PerRule: ratelimit.Limit{Rate: 1000}, PerClient: ratelimit.Limit{Rate: 1000},
		PerIP: ratelimit.Limit{Rate: 5}, MaxIPs: 16, IPIdle: time.Second,
	}, clk, ratelimit.WithLogger(slog.New(slog.DiscardHandler)))
	var wg sync.WaitGroup
	for g := range 50 {
		wg.Go(func() {
			for i := range 200 {
				if i%50 == 0 {
					clk.Advance(300 * time.Millisecond)
				}
				_, err := run(l, req{rule: fmt.Sprintf("r%d", i%5), client: fmt.Sprintf("c%d", g%4),
					remote: fmt.Sprintf("10.1.%d.%d:1", g, i%7)})
				if err != nil {
					status, _, _ := pipeline.Answer(err)
					require.Equal(t, http.StatusTooManyRequests, status)
				}
			}
		})
	}
	wg.Wait()
	require.LessOrEqual(t, ratelimit.TrackedIPs(l), 16)
}

// The allowed path allocates nothing for keys seen before.
func TestAllowedPathDoesNotAllocate(t *testing.T) {
	l, err := ratelimit.New(ratelimit.Config{
		PerRule: ratelimit.Limit{Rate: 1e9}, PerClient: ratelimit.Limit{Rate: 1e9}, PerIP: ratelimit.Limit{Rate: 1e9},
	})
	require.NoError(t, err)
	x := pipeline.Acquire(pipeline.Ingress)
	defer x.Release()
	x.Request = httptest.NewRequest(http.MethodGet, "/", nil)
	x.Request.RemoteAddr = "[2001:db8::7]:443"
	x.Rule = &rules.Rule{ID: "web", Client: "laptop"}
	ctx := context.Background()
	require.NoError(t, l.Handle(ctx, x, pass))
	allocs := testing.AllocsPerRun(1000, func() {
		if err := l.Handle(ctx, x, pass); err != nil {
			panic(err)
		}
	})
	require.Zero(t, allocs)
}

func benchLimiter(b *testing.B) (*ratelimit.Limiter, *pipeline.Exchange) {
	l, err := ratelimit.New(ratelimit.Config{
		PerRule: ratelimit.Limit{Rate: 1e9}, PerClient: ratelimit.Limit{Rate: 1e9}, PerIP: ratelimit.Limit{Rate: 1e9},
	})
	require.NoError(b, err)
	x := pipeline.Acquire(pipeline.Ingress)
	x.Request = httptest.NewRequest(http.MethodGet, "/", nil)
	x.Rule = &rules.Rule{ID: "web", Client: "laptop"}
	return l, x
}

// BenchmarkAllowed is the fast path: every limit on, every key known, the
// request allowed.
func BenchmarkAllowed(b *testing.B) {
	l, x := benchLimiter(b)
	defer x.Release()
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if err := l.Handle(ctx, x, pass); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAllowedParallel(b *testing.B) {
	l, _ := benchLimiter(b)
	ctx := context.Background()
	var n atomic.Int64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		x := pipeline.Acquire(pipeline.Ingress)
		defer x.Release()
		x.Request = httptest.NewRequest(http.MethodGet, "/", nil)
		x.Request.RemoteAddr = fmt.Sprintf("10.0.0.%d:1", n.Add(1))
		x.Rule = &rules.Rule{ID: "web", Client: "laptop"}
		for pb.Next() {
			if err := l.Handle(ctx, x, pass); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkRefused is the 429 path, which builds the message.
func BenchmarkRefused(b *testing.B) {
	clk := stagetest.NewClock()
	l := newLimiter(b, ratelimit.Config{PerRule: ratelimit.Limit{Rate: 1}}, clk)
	x := pipeline.Acquire(pipeline.Ingress)
	defer x.Release()
	x.Request = httptest.NewRequest(http.MethodGet, "/", nil)
	x.Rule = &rules.Rule{ID: "web"}
	ctx := context.Background()
	_ = l.Handle(ctx, x, pass)
	b.ReportAllocs()
	for b.Loop() {
		if l.Handle(ctx, x, pass) == nil {
			b.Fatal("allowed")
		}
	}
}
