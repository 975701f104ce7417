package egress

import (
	"log/slog"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/rules"
)

func quietPool(t *testing.T) *Pool {
	t.Helper()
	p, err := NewPool(PoolConfig{WarmConns: -1, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	t.Cleanup(p.Close)
	return p
}

func okServer(t *testing.T) string {
	t.Helper()
	srv, _ := h1Server(t, http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	return srv.URL
}

func checked(id string, hc rules.HealthCheck, urls ...string) *rules.Rule {
	return &rules.Rule{ID: id, Upstreams: urls, HealthCheck: &hc}
}

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func TestMembersAreSharedBySettings(t *testing.T) {
	t.Parallel()
	p := quietPool(t)
	a, b := okServer(t), okServer(t)
	fast := rules.HealthCheck{Path: "/", Interval: rules.Duration(20 * time.Millisecond)}
	spelled := fast
	spelled.HealthyThreshold, spelled.UnhealthyThreshold = rules.DefaultHealthyThreshold, rules.DefaultUnhealthyThreshold
	g1, err := p.group(checked("one", fast, a, b))
	require.NoError(t, err)
	g2, err := p.group(checked("two", spelled, b))
	require.NoError(t, err)
	require.Same(t, g1.members[1], g2.members[0], "same upstream, same effective settings: one checker")
	g3, err := p.group(checked("three", rules.HealthCheck{Path: "/other", Interval: rules.Duration(20 * time.Millisecond)}, b))
	require.NoError(t, err)
	require.NotSame(t, g1.members[1], g3.members[0], "other settings: another checker")
	require.Same(t, g1.members[1].t, g3.members[0].t, "but the same connections")
	g4, err := p.group(&rules.Rule{ID: "four", Upstream: a})
	require.NoError(t, err)
	require.Nil(t, g4.members[0].cancel, "no health check, no checker")
	require.Same(t, g1.members[0].t, g4.members[0].t)
	require.Len(t, p.members, 4)
}

func TestRetainStopsCheckers(t *testing.T) {
	t.Parallel()
	p := quietPool(t)
	a, b := okServer(t), okServer(t)
	hc := rules.HealthCheck{Path: "/", Interval: rules.Duration(20 * time.Millisecond)}
	ra := checked("a", hc, a, b)
	ga, err := p.group(ra)
	require.NoError(t, err)
	ma, mb := ga.members[0], ga.members[1]
	require.False(t, isClosed(ma.done))

	// The rule changes its health check: a new checker at its next use,
	// the old one until Retain.
	changed := checked("a", rules.HealthCheck{Path: "/v2", Interval: rules.Duration(20 * time.Millisecond)}, b)
	g2, err := p.group(changed)
	require.NoError(t, err)
	require.NotSame(t, ga, g2)
	require.Len(t, p.members, 3)
	p.Retain([]rules.Rule{*changed})
	require.True(t, isClosed(ma.done), "Retain returns once the checker has")
	require.True(t, isClosed(mb.done))
	require.False(t, isClosed(g2.members[0].done))
	require.Len(t, p.members, 1)
	require.Len(t, p.targets, 1)
	require.True(t, ma.t.closed.Load(), "no rule names upstream a: its target is closed")
	require.False(t, mb.t.closed.Load(), "upstream b is still used, with other settings")
	require.Same(t, mb.t, g2.members[0].t)

	p.Close()
	require.True(t, isClosed(g2.members[0].done))
	require.Empty(t, p.members)
}

func TestEjectionWithHealthCheckLastsUntilAGoodCheck(t *testing.T) {
	t.Parallel()
	p := quietPool(t)
	hc := rules.HealthCheck{Path: "/", Interval: rules.Duration(20 * time.Millisecond), UnhealthyThreshold: 2}
	g, err := p.group(checked("ej", hc, okServer(t), okServer(t)))
	require.NoError(t, err)
	m := g.members[0]
	m.connFailed(nil)
	require.False(t, m.ejectedNow(), "one failure is not enough")
	m.connected()
	m.connFailed(nil)
	require.False(t, m.ejectedNow(), "a success ended the run")
	m.connFailed(nil)
	require.True(t, m.ejectedNow())
	require.Equal(t, int64(ejectedUntilCheck), m.ejected.Load())
	require.Eventually(t, func() bool { return !m.ejectedNow() }, 10*time.Second, 2*time.Millisecond,
		"the next good check ends the ejection")
}

func TestPickPrefersUntriedAvailable(t *testing.T) {
	t.Parallel()
	p := quietPool(t)
	a, b, c := okServer(t), okServer(t), okServer(t)
	for _, lb := range []string{rules.RoundRobin, rules.LeastRequests} {
		g, err := p.group(&rules.Rule{ID: "pick-" + lb, Upstreams: []string{a, b, c}, LoadBalance: lb})
		require.NoError(t, err)
		g.members[1].down.Store(true)
		for range 10 {
			i, _ := g.pick(0)
			require.NotEqual(t, 1, i, "%s: down is skipped", lb)
			i, _ = g.pick(1<<0 | 1<<2)
			require.Equal(t, 1, i, "%s: untried, even down, before tried again", lb)
			i, _ = g.pick(1<<0 | 1<<1 | 1<<2)
			require.NotEqual(t, 1, i, "%s: all tried: one in rotation", lb)
		}
		g.members[0].t.inflight.Add(5)
		if lb == rules.LeastRequests {
			for range 10 {
				i, _ := g.pick(0)
				require.Equal(t, 2, i, "the fewest in flight")
			}
		}
		g.members[0].t.inflight.Add(-5)
		g.members[1].down.Store(false)
	}
}

// checkers counts the goroutines running health checks.
func checkers() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			// Started or not, each names its creator.
			return strings.Count(string(buf[:n]), "created by github.com/qtunnel/qtunnel/stages/egress.(*Pool).newMember")
		}
		buf = make([]byte, 2*len(buf))
	}
}

// Not parallel: no other test's checkers run meanwhile (the parallel tests
// wait until the sequential ones are done).
func TestRetainLeavesNoCheckerGoroutine(t *testing.T) {
	before := checkers()
	p := quietPool(t)
	a, b := okServer(t), okServer(t)
	hc := rules.HealthCheck{Path: "/", Interval: rules.Duration(20 * time.Millisecond)}
	one, two := checked("one", hc, a, b), checked("two", rules.HealthCheck{Path: "/x", Interval: hc.Interval}, b)
	_, err := p.group(one)
	require.NoError(t, err)
	_, err = p.group(two)
	require.NoError(t, err)
	require.Equal(t, before+3, checkers(), "one per upstream and settings")
	p.Retain([]rules.Rule{*two})
	require.Equal(t, before+1, checkers())
	p.Retain(nil)
	require.Equal(t, before, checkers(), "Retain returns once the checkers have")
}
