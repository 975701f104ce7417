// Package clock is the time keeping shared by the stages that keep state
// per key without goroutines or timers (breaker, ratelimit): the time as
// an offset from the stage's start, a sweep of idle keys that falls due
// once per period and is run by the request that finds it due, and the
// rounding of a Retry-After.
package clock

import (
	"sync/atomic"
	"time"
)

// Clock reads the time as nanoseconds since it was made.
type Clock struct {
	now   func() time.Time
	epoch time.Time // offsets are measured from it (monotonic)
}

// New returns a clock that reads the time from now, or from time.Now if
// now is nil, starting at offset 0 now. now must be safe for concurrent
// use.
func New(now func() time.Time) Clock {
	if now == nil {
		now = time.Now
	}
	return Clock{now: now, epoch: now()}
}

// Now returns the time and its offset: nanoseconds since New, monotonic
// when the readings are, never negative.
func (c Clock) Now() (time.Time, int64) {
	t := c.now()
	return t, max(int64(t.Sub(c.epoch)), 0)
}

// Offset returns the offset of the time now (see Now).
func (c Clock) Offset() int64 {
	_, off := c.Now()
	return off
}

// Sweep schedules a periodic sweep without a timer: the request that
// finds it due and wins the race to move it runs it. The zero value is
// due at once and then every nanosecond; use Start.
type Sweep struct {
	next   atomic.Int64 // offset at which the next sweep is due
	period int64
}

// Start makes the first sweep due at offset period, and each next one
// period after the last; period is at least 1ns.
func (s *Sweep) Start(period time.Duration) {
	s.period = max(int64(period), 1)
	s.next.Store(s.period)
}

// Due reports whether a sweep is due at off and the caller is the one to
// run it: of the requests that find it due, exactly one wins, and the next
// sweep is then due a period after off. It costs one atomic load when no
// sweep is due.
func (s *Sweep) Due(off int64) bool {
	due := s.next.Load()
	return off >= due && s.next.CompareAndSwap(due, off+s.period)
}

// RetryAfter rounds d up to whole seconds, at least one: Retry-After has no
// finer unit, and earlier would be refused again.
func RetryAfter(d time.Duration) time.Duration {
	return max(time.Second, (d+time.Second-1)/time.Second*time.Second)
}
