package authlimit

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// clock is a manual clock for Config.Now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// logRecord is one captured record: its message and attributes as text.
type logRecord struct {
	level slog.Level
	msg   string
	attrs map[string]string
}

// capture is a slog handler that keeps every record.
type capture struct {
	mu   sync.Mutex
	recs []logRecord
}

func (h *capture) Enabled(context.Context, slog.Level) bool { return true }

func (h *capture) Handle(_ context.Context, r slog.Record) error {
	rec := logRecord{level: r.Level, msg: r.Message, attrs: map[string]string{}}
	r.Attrs(func(a slog.Attr) bool {
		rec.attrs[a.Key] = a.Value.String()
		return true
	})
	h.mu.Lock()
	h.recs = append(h.recs, rec)
	h.mu.Unlock()
	return nil
}

func (h *capture) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *capture) WithGroup(string) slog.Handler      { return h }

func (h *capture) records() []logRecord {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.recs)
}

const (
	window     = time.Minute
	maxBackoff = 15 * time.Minute
	maxFails   = 5
)

// newTest returns a Limiter on a manual clock that logs to a capture, with
// the default settings of config.AuthThrottle unless mutate changes them.
func newTest(t *testing.T, mutate func(*Config)) (*Limiter, *clock, *capture) {
	t.Helper()
	clk, logs := newClock(), &capture{}
	c := Config{Kind: "tunnel", MaxFailures: maxFails, Window: window, MaxBackoff: maxBackoff,
		Logger: slog.New(logs), Now: clk.now}
	if mutate != nil {
		mutate(&c)
	}
	l, err := New(c)
	require.NoError(t, err)
	t.Cleanup(l.Close)
	return l, clk, logs
}

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

func from(src string) Attempt { return Attempt{Source: addr(src)} }

func forID(src, id string) Attempt { return Attempt{Source: addr(src), ID: id, Known: true} }

// fail checks and fails n attempts, which must all be allowed.
func fail(t *testing.T, l *Limiter, a Attempt, n int) {
	t.Helper()
	for i := range n {
		_, ok := l.Allow(a)
		require.True(t, ok, "attempt %d of %v is allowed", i+1, a)
		l.Failed(a)
	}
}

// refusedFor returns how long a is refused for, or 0 when it is allowed.
func refusedFor(l *Limiter, a Attempt) time.Duration {
	d, ok := l.Allow(a)
	if ok {
		return 0
	}
	return d
}

func TestSourceLimit(t *testing.T) {
	t.Parallel()
	s1 := from("192.0.2.1")
	tests := []struct {
		name string
		cfg  func(*Config)
		run  func(t *testing.T, l *Limiter, clk *clock)
	}{{
		name: "refused after max failures, for one window",
		run: func(t *testing.T, l *Limiter, clk *clock) {
			fail(t, l, s1, maxFails)
			require.Equal(t, window, refusedFor(l, s1))
			clk.advance(window - time.Second)
			require.Equal(t, time.Second, refusedFor(l, s1))
			clk.advance(time.Second)
			require.Zero(t, refusedFor(l, s1), "the back-off is over")
		},
	}, {
		name: "below the limit nothing is refused",
		run: func(t *testing.T, l *Limiter, clk *clock) {
			fail(t, l, s1, maxFails-1)
			require.Zero(t, refusedFor(l, s1))
		},
	}, {
		name: "the window expires",
		run: func(t *testing.T, l *Limiter, clk *clock) {
			fail(t, l, s1, maxFails-1)
			clk.advance(window)
			fail(t, l, s1, maxFails-1)
			require.Zero(t, refusedFor(l, s1), "the count started again")
			fail(t, l, s1, 1)
			require.Equal(t, window, refusedFor(l, s1))
		},
	}, {
		name: "the back-off doubles each time the source goes over again and is capped",
		run: func(t *testing.T, l *Limiter, clk *clock) {
			want := []time.Duration{window, 2 * window, 4 * window, 8 * window, maxBackoff, maxBackoff}
			for i, w := range want {
				fail(t, l, s1, maxFails)
				require.Equal(t, w, refusedFor(l, s1), "time %d over", i+1)
				clk.advance(w)
				clk.advance(10 * time.Second) // a little after the back-off ends
			}
		},
	}, {
		name: "the back-off is forgotten after max_backoff without going over",
		run: func(t *testing.T, l *Limiter, clk *clock) {
			fail(t, l, s1, maxFails)
			clk.advance(window)
			fail(t, l, s1, maxFails)
			require.Equal(t, 2*window, refusedFor(l, s1))
			clk.advance(2*window + maxBackoff)
			fail(t, l, s1, maxFails)
			require.Equal(t, window, refusedFor(l, s1), "starts at one window again")
		},
	}, {
		name: "a success resets the source's count and back-off",
		run: func(t *testing.T, l *Limiter, clk *clock) {
			fail(t, l, s1, maxFails-1)
			l.Succeeded(s1)
			fail(t, l, s1, maxFails-1)
			require.Zero(t, refusedFor(l, s1))
			fail(t, l, s1, 1)
			require.Equal(t, window, refusedFor(l, s1))
			clk.advance(window)
			l.Succeeded(s1)
			fail(t, l, s1, maxFails)
			require.Equal(t, window, refusedFor(l, s1), "not doubled after a success")
		},
	}, {
		name: "sources are counted apart",
		run: func(t *testing.T, l *Limiter, clk *clock) {
			s2 := from("192.0.2.2")
			fail(t, l, s1, maxFails)
			require.Zero(t, refusedFor(l, s2))
			l.Succeeded(s2)
			require.Equal(t, window, refusedFor(l, s1), "another source's success clears nothing")
		},
	}, {
		name: "an IPv4-mapped address is its IPv4 address",
		run: func(t *testing.T, l *Limiter, clk *clock) {
			fail(t, l, from("::ffff:192.0.2.1"), maxFails)
			require.Equal(t, window, refusedFor(l, s1))
		},
	}, {
		name: "max_backoff shorter than the window is the back-off",
		cfg:  func(c *Config) { c.MaxBackoff = 10 * time.Second },
		run: func(t *testing.T, l *Limiter, clk *clock) {
			fail(t, l, s1, maxFails)
			require.Equal(t, 10*time.Second, refusedFor(l, s1))
		},
	}, {
		name: "max_failures 1",
		cfg:  func(c *Config) { c.MaxFailures = 1 },
		run: func(t *testing.T, l *Limiter, clk *clock) {
			fail(t, l, s1, 1)
			require.Equal(t, window, refusedFor(l, s1))
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			l, clk, _ := newTest(t, tt.cfg)
			tt.run(t, l, clk)
		})
	}
}

func TestIDLimit(t *testing.T) {
	t.Parallel()
	const id = "laptop"
	// overID fails the id 4 x max_failures times from four sources, each
	// within its own limit.
	overID := func(t *testing.T, l *Limiter) {
		for i := range IDFactor {
			fail(t, l, forID(fmt.Sprintf("198.51.100.%d", i+1), id), maxFails-1)
		}
		fail(t, l, forID("198.51.100.9", id), IDFactor)
	}
	tests := []struct {
		name string
		run  func(t *testing.T, l *Limiter, clk *clock)
	}{{
		name: "an id over its limit is refused from a new address",
		run: func(t *testing.T, l *Limiter, clk *clock) {
			overID(t, l)
			require.Equal(t, window, refusedFor(l, forID("203.0.113.1", id)))
			require.Zero(t, refusedFor(l, forID("203.0.113.1", "other")), "other ids are not")
			require.Zero(t, refusedFor(l, from("203.0.113.1")), "nor the address for other logins")
			clk.advance(window)
			require.Zero(t, refusedFor(l, forID("203.0.113.1", id)), "until the back-off ends")
		},
	}, {
		name: "one below the id's limit nothing is refused",
		run: func(t *testing.T, l *Limiter, clk *clock) {
			for i := range IDFactor {
				fail(t, l, forID(fmt.Sprintf("198.51.100.%d", i+1), id), maxFails-1)
			}
			fail(t, l, forID("198.51.100.9", id), IDFactor-1)
			require.Zero(t, refusedFor(l, forID("203.0.113.1", id)))
		},
	}, {
		name: "an address the id logged in from is exempt",
		run: func(t *testing.T, l *Limiter, clk *clock) {
			home := forID("192.0.2.10", id)
			l.Succeeded(home)
			overID(t, l)
			require.Zero(t, refusedFor(l, home), "the real client is not locked out")
			l.Succeeded(home)
			require.Equal(t, window, refusedFor(l, forID("203.0.113.1", id)), "a success does not clear the id's back-off")
		},
	}, {
		name: "only the latest good addresses are remembered",
		run: func(t *testing.T, l *Limiter, clk *clock) {
			for i := range goodAddrs + 1 {
				l.Succeeded(forID(fmt.Sprintf("192.0.2.%d", i+1), id))
			}
			l.Succeeded(forID("192.0.2.3", id)) // again: moves to the front, no duplicate
			overID(t, l)
			require.Equal(t, window, refusedFor(l, forID("192.0.2.1", id)), "the oldest is forgotten")
			for i := 1; i <= goodAddrs; i++ {
				require.Zero(t, refusedFor(l, forID(fmt.Sprintf("192.0.2.%d", i+1), id)))
			}
		},
	}, {
		name: "unknown ids are counted per source only",
		run: func(t *testing.T, l *Limiter, clk *clock) {
			for i := range 3 * IDFactor {
				fail(t, l, Attempt{Source: addr(fmt.Sprintf("198.51.100.%d", i+1)), ID: "ghost"}, maxFails-1)
			}
			require.Zero(t, refusedFor(l, Attempt{Source: addr("203.0.113.1"), ID: "ghost"}))
			require.Zero(t, l.ids.order.Len(), "no account entry for an unknown id")
		},
	}, {
		name: "the id's back-off doubles too",
		run: func(t *testing.T, l *Limiter, clk *clock) {
			overID(t, l)
			clk.advance(window)
			overID(t, l)
			require.Equal(t, 2*window, refusedFor(l, forID("203.0.113.1", id)))
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			l, clk, _ := newTest(t, nil)
			tt.run(t, l, clk)
		})
	}
}

func TestMemoryIsBounded(t *testing.T) {
	t.Parallel()
	const maxSources, maxIDs = 1000, 50
	l, clk, logs := newTest(t, func(c *Config) { c.MaxSources, c.MaxIDs = maxSources, maxIDs })
	blocked := from("10.255.255.255")
	fail(t, l, blocked, maxFails)

	const n = 100_000
	for i := range n {
		a := Attempt{Source: netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}),
			ID: fmt.Sprintf("id-%d", i%(3*maxIDs)), Known: true}
		if _, ok := l.Allow(a); ok {
			l.Failed(a)
		}
		if i%1000 == 0 {
			l.Succeeded(a)
		}
		clk.advance(window / 2 / n * 1) // half a window in all: sweeps run along, the back-off lasts
	}
	l.mu.Lock()
	require.LessOrEqual(t, len(l.sources.m), maxSources)
	require.Equal(t, l.sources.order.Len(), len(l.sources.m))
	require.LessOrEqual(t, len(l.ids.m), maxIDs)
	require.LessOrEqual(t, len(l.good.m), maxIDs)
	l.mu.Unlock()
	require.Positive(t, refusedFor(l, blocked), "a throttled source outlives the flood of new ones")
	require.LessOrEqual(t, len(logs.records()), DefaultMaxRecords+1, "records are bounded per window, not per address")

	clk.advance(window + maxBackoff + time.Minute)
	_, _ = l.Allow(from("192.0.2.1")) // a sweep on use
	l.mu.Lock()
	defer l.mu.Unlock()
	require.Zero(t, len(l.sources.m), "idle entries expire")
	require.Zero(t, len(l.ids.m), "idle entries expire")
}

func TestLogOncePerWindowWithCounts(t *testing.T) {
	t.Parallel()
	l, clk, logs := newTest(t, nil)
	s := "192.0.2.7"

	fail(t, l, forID(s, "a"), 1)
	recs := logs.records()
	require.Len(t, recs, 1, "the first failure is logged at once")
	require.Equal(t, slog.LevelWarn, recs[0].level)
	require.Equal(t, "failed logins", recs[0].msg)
	require.Equal(t, map[string]string{"kind": "tunnel", "source": s, "failures": "1", "refused": "0", "client_ids": "a"}, recs[0].attrs)

	fail(t, l, forID(s, "b"), maxFails-1)
	for range 150 {
		_, ok := l.Allow(forID(s, "b"))
		require.False(t, ok)
	}
	require.Len(t, logs.records(), 1, "nothing more within the window")

	clk.advance(window / 2)
	_, _ = l.Allow(from("192.0.2.99")) // the sweep on use: not due yet
	require.Len(t, logs.records(), 1)
	clk.advance(window / 2)
	_, _ = l.Allow(from("192.0.2.99")) // due
	recs = logs.records()
	require.Len(t, recs, 2, "one record per window")
	require.Equal(t, map[string]string{"kind": "tunnel", "source": s, "failures": "4", "refused": "150",
		"client_ids": "b", "backoff": "1m0s"}, recs[1].attrs)

	// Steady state: successes and quiet windows log nothing.
	for i := range 100 {
		l.Succeeded(forID(fmt.Sprintf("192.0.2.%d", 100+i), "a"))
		clk.advance(window / 10)
	}
	require.Len(t, logs.records(), 2, "no failures, no records")
}

func TestLogIDRecord(t *testing.T) {
	t.Parallel()
	l, _, logs := newTest(t, nil)
	for i := range IDFactor {
		fail(t, l, forID(fmt.Sprintf("198.51.100.%d", i+1), "laptop"), maxFails)
	}
	var idRecs []logRecord
	for _, r := range logs.records() {
		if r.attrs["client_id"] != "" {
			idRecs = append(idRecs, r)
		}
	}
	require.Len(t, idRecs, 1, "the id is logged once, when it is throttled")
	require.Equal(t, map[string]string{"kind": "tunnel", "client_id": "laptop", "failures": fmt.Sprint(IDFactor * maxFails),
		"refused": "0", "sources": "198.51.100.1,198.51.100.2,198.51.100.3,198.51.100.4", "backoff": "1m0s", "retry_in": "1m0s"}, idRecs[0].attrs)
	require.Len(t, logs.records(), IDFactor+1, "one record per source and one for the id")
}

func TestLogBudget(t *testing.T) {
	t.Parallel()
	l, clk, logs := newTest(t, func(c *Config) { c.MaxRecords = 3 })
	for i := range 10 {
		fail(t, l, from(fmt.Sprintf("192.0.2.%d", i+1)), 2)
	}
	require.Len(t, logs.records(), 3, "at most MaxRecords records per window")
	clk.advance(window)
	_, _ = l.Allow(from("192.0.2.99"))
	recs := logs.records()
	require.Len(t, recs, 3+1+3, "the rest summed in one record, then the next window's budget")
	require.Equal(t, map[string]string{"kind": "tunnel", "more_sources": "7", "more_client_ids": "0", "failures": "7", "refused": "0"}, recs[3].attrs,
		"the first failures of the seven sources that did not fit; their second ones wait for the next window")
}

func TestCloseLogsWhatIsPending(t *testing.T) {
	t.Parallel()
	l, _, logs := newTest(t, nil)
	fail(t, l, from("192.0.2.1"), 3)
	require.Len(t, logs.records(), 1)
	l.Close()
	recs := logs.records()
	require.Len(t, recs, 2)
	require.Equal(t, "2", recs[1].attrs["failures"])
	l.Close() // twice is fine
	require.Len(t, logs.records(), 2)
}

// TestFlushTimerLogsTheRest: with the real clock, the counts of a burst
// that ended are logged within about a window, with no further attempt.
func TestFlushTimerLogsTheRest(t *testing.T) {
	t.Parallel()
	logs := &capture{}
	l, err := New(Config{Kind: "admin", MaxFailures: 2, Window: 50 * time.Millisecond, MaxBackoff: time.Second, Logger: slog.New(logs)})
	require.NoError(t, err)
	defer l.Close()
	fail(t, l, from("192.0.2.1"), 2)
	_, ok := l.Allow(from("192.0.2.1"))
	require.False(t, ok)
	eventually(t, func() bool { return len(logs.records()) >= 2 }, "the flush timer logs the rest")
	recs := logs.records()
	require.Equal(t, "1", recs[1].attrs["failures"])
	require.Equal(t, "1", recs[1].attrs["refused"])
}

// eventually polls cond until it holds, for at most 10 s.
func eventually(t *testing.T, cond func() bool, msg string) {
	t.Helper()
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline.C:
			t.Fatal(msg)
		case <-tick.C:
		}
	}
}

func TestCounters(t *testing.T) {
	t.Parallel()
	var failures, refused atomic.Int64
	l, _, _ := newTest(t, func(c *Config) {
		c.OnFailure = func() { failures.Add(1) }
		c.OnRefused = func() { refused.Add(1) }
	})
	fail(t, l, from("192.0.2.1"), maxFails)
	for range 7 {
		_, _ = l.Allow(from("192.0.2.1"))
	}
	l.Succeeded(from("192.0.2.2"))
	require.EqualValues(t, maxFails, failures.Load())
	require.EqualValues(t, 7, refused.Load())
}

func TestNilLimiterAllowsEverything(t *testing.T) {
	t.Parallel()
	var l *Limiter
	a := from("192.0.2.1")
	l.Failed(a)
	l.Succeeded(a)
	_, ok := l.Allow(a)
	require.True(t, ok)
	l.Close()
}

func TestNewChecksConfig(t *testing.T) {
	t.Parallel()
	ok := Config{MaxFailures: 1, Window: time.Second, MaxBackoff: time.Second}
	for _, tt := range []struct {
		name   string
		mutate func(*Config)
	}{
		{"max failures", func(c *Config) { c.MaxFailures = 0 }},
		{"window", func(c *Config) { c.Window = 0 }},
		{"max backoff", func(c *Config) { c.MaxBackoff = -time.Second }},
		{"bounds", func(c *Config) { c.MaxSources = -1 }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := ok
			tt.mutate(&c)
			_, err := New(c)
			require.Error(t, err)
		})
	}
	l, err := New(ok)
	require.NoError(t, err)
	l.Close()
}

func TestConcurrentUse(t *testing.T) {
	t.Parallel()
	l, _, _ := newTest(t, nil)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 500 {
				a := forID(fmt.Sprintf("192.0.2.%d", (g*500+i)%50), fmt.Sprintf("id-%d", i%7))
				if _, ok := l.Allow(a); ok {
					if i%3 == 0 {
						l.Succeeded(a)
					} else {
						l.Failed(a)
					}
				}
			}
		})
	}
	wg.Wait()
}
