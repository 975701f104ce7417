package breaker

import (
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/stages/internal/clock"
)

// slices is how many parts the rolling window is cut into: memory per
// circuit is fixed, and a failure is forgotten within a tenth of a window
// of its age reaching the window.
const slices = 10

// minWindow keeps a slice at a millisecond or more.
const minWindow = slices * time.Millisecond

// slot counts the answered requests of one window slice.
type slot struct {
	idx       int64 // offset / slice width; a slot of another idx is stale
	req, fail int
}

// openInfo is set when a circuit opens and read without locks by requests
// it refuses.
type openInfo struct {
	until int64  // offset at which the cool-down ends
	why   string // for the refusal: "5 failures in the last 10s"
}

// circuit is the breaker of one upstream.
type circuit struct {
	upstream string
	// sg is gen<<2 | state. gen counts state changes; a request's result
	// counts only in the generation that admitted it, so that a request
	// started before the circuit opened cannot close it, nor one started
	// while closed be taken for a probe. Written under mu, read without.
	sg       atomic.Uint64
	open     atomic.Pointer[openInfo] // set before sg says Open
	inflight atomic.Int64             // requests between acquire and their result

	mu                sync.Mutex
	ring              [slices]slot
	consecutive       int
	lastFail          int64 // offset of the last failure in a closed state
	last              int64 // offset of the latest result; results are recorded no earlier
	probes, successes int   // half-open: admitted (not yet neutral) probes, and their successes
}

func stateOf(sg uint64) State { return State(sg & 3) }
func genOf(sg uint64) uint64  { return sg >> 2 }

// refusal is why a request was refused; the zero value admits.
type refusal struct {
	info     *openInfo // open
	halfOpen bool      // half-open, probes all taken
}

func (r refusal) refused() bool { return r.info != nil || r.halfOpen }

func (r refusal) reject(b *Breaker, ruleID string, off int64) error {
	if r.halfOpen {
		return &pipeline.Reject{
			Status: http.StatusServiceUnavailable,
			Message: fmt.Sprintf("circuit breaker half-open for upstream of rule %q: waiting for %d probe request(s) to finish; retry in 1s",
				ruleID, b.cfg.HalfOpenProbes),
			RetryAfter: time.Second,
		}
	}
	remaining := clock.RetryAfter(time.Duration(r.info.until - off))
	return &pipeline.Reject{
		Status:     http.StatusServiceUnavailable,
		Message:    "circuit breaker open for upstream of rule " + strconv.Quote(ruleID) + ": " + r.info.why + "; retrying in " + remaining.String(),
		RetryAfter: remaining,
	}
}

// admit decides whether a request may pass. A closed circuit, and an open
// one in its cool-down, decide without the lock.
func (c *circuit) admit(b *Breaker, off int64) (gen uint64, probe bool, r refusal, tr *transition) {
	sg := c.sg.Load()
	switch stateOf(sg) {
	case Closed:
		return genOf(sg), false, refusal{}, nil
	case Open:
		if info := c.open.Load(); off < info.until {
			return 0, false, refusal{info: info}, nil
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if stateOf(c.sg.Load()) == Open {
		info := c.open.Load()
		if off < info.until {
			return 0, false, refusal{info: info}, nil
		}
		tr = c.set(b, HalfOpen, off, "cool-down over")
	}
	sg = c.sg.Load()
	switch {
	case stateOf(sg) == Closed:
		return genOf(sg), false, refusal{}, tr
	case c.probes < b.cfg.HalfOpenProbes:
		c.probes++
		return genOf(sg), true, refusal{}, tr
	}
	return 0, false, refusal{halfOpen: true}, tr
}

// done records the outcome of a request admitted in generation gen.
func (c *circuit) done(b *Breaker, gen uint64, probe bool, o outcome, off int64) *transition {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.last = max(c.last, off)
	off = c.last
	sg := c.sg.Load()
	if genOf(sg) != gen {
		return nil // the circuit changed state while the request ran
	}
	switch stateOf(sg) {
	case Closed:
		if o == neutral {
			return nil
		}
		req, fail := c.record(b.width, off, o == failure)
		if o == success {
			c.consecutive = 0
			return nil
		}
		if c.consecutive > 0 && off-c.lastFail > int64(b.cfg.Window) {
			c.consecutive = 0 // a quiet gap ends the run
		}
		c.consecutive++
		c.lastFail = off
		if fail >= b.cfg.MinRequests && float64(fail) >= b.cfg.FailureRatio*float64(req) {
			return c.set(b, Open, off, fmt.Sprintf("%d failures in the last %v", fail, b.cfg.Window))
		}
		if c.consecutive >= b.cfg.ConsecutiveFailures {
			return c.set(b, Open, off, fmt.Sprintf("%d consecutive failures", c.consecutive))
		}
	case HalfOpen:
		if !probe {
			return nil
		}
		switch o {
		case neutral:
			c.probes-- // free the slot: a cancelled probe proves nothing
		case failure:
			return c.set(b, Open, off, "a probe request failed")
		case success:
			c.successes++
			if c.successes >= b.cfg.HalfOpenProbes {
				return c.set(b, Closed, off, fmt.Sprintf("%d probe request(s) succeeded", c.successes))
			}
		}
	}
	return nil
}

// record counts a result in the window and returns the window's totals.
func (c *circuit) record(width, off int64, failed bool) (req, fail int) {
	idx := off / width
	s := &c.ring[idx%slices]
	if s.idx != idx {
		*s = slot{idx: idx}
	}
	s.req++
	if failed {
		s.fail++
	}
	for i := range c.ring {
		if s := &c.ring[i]; idx-s.idx < slices {
			req += s.req
			fail += s.fail
		}
	}
	return req, fail
}

// set moves the circuit to state to, starting a new generation with a
// clean slate. c.mu is held.
func (c *circuit) set(b *Breaker, to State, off int64, why string) *transition {
	from := stateOf(c.sg.Load())
	c.ring = [slices]slot{}
	c.consecutive = 0
	c.probes, c.successes = 0, 0
	if to == Open {
		c.open.Store(&openInfo{until: off + int64(b.cfg.CoolDown), why: why})
	}
	c.sg.Store((genOf(c.sg.Load())+1)<<2 | uint64(to))
	return &transition{upstream: c.upstream, from: from, to: to, why: why}
}

// idle reports whether the circuit holds nothing worth keeping at off (see
// Breaker.forgetIdle).
func (c *circuit) idle(b *Breaker, off int64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	window := int64(b.cfg.Window)
	if stateOf(c.sg.Load()) == Open {
		return off-c.open.Load().until > window
	}
	return off-c.last > window
}
