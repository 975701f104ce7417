package clock_test

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/stages/internal/clock"
)

func TestOffset(t *testing.T) {
	t.Parallel()
	base := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	var ns atomic.Int64
	c := clock.New(func() time.Time { return base.Add(time.Duration(ns.Load())) })
	now, off := c.Now()
	require.Equal(t, base, now)
	require.Zero(t, off)
	ns.Store(int64(3 * time.Second))
	require.Equal(t, int64(3*time.Second), c.Offset())
	ns.Store(-int64(time.Second))
	require.Zero(t, c.Offset(), "a clock set back reads as the start")

	require.GreaterOrEqual(t, clock.New(nil).Offset(), int64(0), "nil reads time.Now")
}

func TestSweepIsDueOncePerPeriod(t *testing.T) {
	t.Parallel()
	var s clock.Sweep
	s.Start(10)
	require.False(t, s.Due(9))
	require.True(t, s.Due(12))
	require.False(t, s.Due(12), "run once")
	require.False(t, s.Due(21), "next due a period after the run")
	require.True(t, s.Due(22))

	// Of many requests finding it due at once, one runs it.
	var won atomic.Int64
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			if s.Due(100) {
				won.Add(1)
			}
		})
	}
	wg.Wait()
	require.EqualValues(t, 1, won.Load())
}

func TestRetryAfter(t *testing.T) {
	t.Parallel()
	for d, want := range map[time.Duration]time.Duration{
		-time.Second:             time.Second,
		0:                        time.Second,
		time.Millisecond:         time.Second,
		time.Second:              time.Second,
		time.Second + 1:          2 * time.Second,
		17500 * time.Millisecond: 18 * time.Second,
	} {
		require.Equal(t, want, clock.RetryAfter(d), "%v", d)
	}
}
