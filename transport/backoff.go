package transport

import (
	"math/rand/v2"
	"time"
)

// Backoff computes reconnect delays: exponential, capped, with full jitter
// (a uniform random delay between zero and the capped exponential), so that
// many clients that lost the same server do not come back in step (S4).
// The zero value uses the defaults. Not safe for concurrent use.
type Backoff struct {
	// Base is the first delay's ceiling. If zero, 200ms.
	Base time.Duration
	// Max caps every delay. If zero, 30s.
	Max time.Duration
	// Stable is how long a connection must last for the attempt counter to
	// start again from zero. If zero, 30s.
	Stable time.Duration

	attempt int
}

// Next returns the delay before the next attempt and counts the attempt.
func (b *Backoff) Next() time.Duration {
	base, ceiling := b.Base, b.Max
	if base <= 0 {
		base = 200 * time.Millisecond
	}
	if ceiling <= 0 {
		ceiling = 30 * time.Second
	}
	d := ceiling
	if b.attempt < 62 && base<<b.attempt > 0 && base<<b.attempt < ceiling {
		d = base << b.attempt
	}
	b.attempt++
	return rand.N(d) + 1
}

// Attempt returns how many delays were handed out since the last reset.
func (b *Backoff) Attempt() int { return b.attempt }

// Connected reports that a connection that lasted up was lost; if it lasted
// at least Stable, the counter resets so the next delay is short again.
func (b *Backoff) Connected(up time.Duration) {
	stable := b.Stable
	if stable <= 0 {
		stable = 30 * time.Second
	}
	if up >= stable {
		b.attempt = 0
	}
}
