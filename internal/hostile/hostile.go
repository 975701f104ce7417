// Package hostile is attack tooling for tests. It plays the abusive clients
// that a public HTTP listener meets (slow request bodies over HTTP/1.1 and
// h2c, slow or stalled readers of large answers, HTTP/2 rapid reset, the
// CONTINUATION flood) and the ordinary users who should not suffer from
// them, and records what each of them got back.
//
// Every function runs to completion before it returns: it is bounded in
// count (its configuration says how many connections, streams, frames or
// requests) and in time (each connection gives up after its Duration), it
// stops early when its context ends, and it waits for every goroutine it
// started. Each binds its TCP connections to a chosen local address
// (Source), so that a server on loopback sees the attackers as one source
// (127.0.0.2, say; all of 127.0.0.0/8 is loopback on Linux) and the
// ordinary users as another (127.0.0.1).
//
// Times in results are measured from the start of the call that produced
// them.
package hostile

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

// End says how a connection or a stream ended.
type End int

const (
	// Open: the tool ended it itself, still open, because its Duration or
	// its context ran out first (or, for a tool that sends a bounded
	// amount, everything was sent and nothing came back).
	Open End = iota
	// Answered: the server answered (see Status) before the request was
	// over.
	Answered
	// Complete: an answer was read to its end.
	Complete
	// Closed: the server closed the connection (EOF, or an answer cut
	// short); for a stream, its connection closed without GOAWAY.
	Closed
	// Reset: the connection was reset (ECONNRESET, EPIPE); for a stream,
	// the server sent RST_STREAM (see Code).
	Reset
	// GoAway: the server sent GOAWAY (see Code) and the stream or the
	// connection ended with it.
	GoAway
	// DialFailed: the connection could not be made (see Err).
	DialFailed
)

var endNames = [...]string{"open", "answered", "complete", "closed", "reset", "goaway", "dial-failed"}

func (e End) String() string {
	if e >= 0 && int(e) < len(endNames) {
		return endNames[e]
	}
	return fmt.Sprintf("End(%d)", int(e))
}

// Keyed is a result that can be counted by Tally.
type Keyed interface{ Key() string }

// Tally counts results by their Key, for logs and assertions.
func Tally[T Keyed](rs []T) map[string]int {
	m := map[string]int{}
	for _, r := range rs {
		m[r.Key()]++
	}
	return m
}

// FormatTally writes a tally as "k1=n1 k2=n2", keys sorted.
func FormatTally(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%s=%d", k, m[k])
	}
	return b.String()
}

// Live follows a running attack, for a test that must wait until it has
// started (or ended) before it goes on. Each tool counts a connection (or
// stream) as started once its request is out (a reader: once the answer's
// head came), and as ended once the tool is done with it; one that failed
// before it started counts as started and ended at once, so that started
// reaches the number of connections (or streams) either way. The zero
// value is ready to use; it is safe for concurrent use.
type Live struct {
	mu      sync.Mutex
	started int
	ended   int
	changed chan struct{} // closed and replaced on every change
}

// Counts returns how many started and how many ended so far.
func (l *Live) Counts() (started, ended int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.started, l.ended
}

// Wait returns nil once cond holds for the counts, or ctx's error when it
// ends first.
func (l *Live) Wait(ctx context.Context, cond func(started, ended int) bool) error {
	for {
		l.mu.Lock()
		ok := cond(l.started, l.ended)
		ch := l.chanLocked()
		l.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (l *Live) chanLocked() chan struct{} {
	if l.changed == nil {
		l.changed = make(chan struct{})
	}
	return l.changed
}

func (l *Live) add(started, ended int) {
	if l == nil {
		return
	}
	l.mu.Lock()
	l.started += started
	l.ended += ended
	if l.changed != nil {
		close(l.changed)
		l.changed = nil
	}
	l.mu.Unlock()
}

// slot is one connection's (or stream's) place in a Live.
type slot struct {
	l       *Live
	started bool
}

// start counts the start, once.
func (s *slot) start() {
	if !s.started {
		s.started = true
		s.l.add(1, 0)
	}
}

// done counts the end, and the start if there was none.
func (s *slot) done() {
	if s.started {
		s.l.add(0, 1)
	} else {
		s.l.add(1, 1)
	}
}

// Defaults for the settings every tool shares.
const (
	DefaultDuration    = 30 * time.Second
	DefaultDialTimeout = 5 * time.Second
	// DefaultCloseWait is how long a tool waits for the server to close a
	// connection it sent GOAWAY on, or for a late GOAWAY once everything
	// was sent.
	DefaultCloseWait = 3 * time.Second
	// MaxConns bounds the connections of one call.
	MaxConns = 20000
)

// Target names the server and how the tool reaches it.
type Target struct {
	// Addr is the server's TCP address, host:port.
	Addr string
	// Source is the local IP address the connections are bound to, such
	// as "127.0.0.2"; empty: any.
	Source string
	// Host is the Host header (HTTP/2 :authority); empty: Addr.
	Host string
	// Path is the request's path and query; empty: "/".
	Path string
	// Duration bounds each connection: the tool closes it when Duration
	// has passed since it was dialled. Zero: DefaultDuration.
	Duration time.Duration
	// DialTimeout bounds the connect (and, for HTTP/2, the wait for the
	// server's first SETTINGS). Zero: DefaultDialTimeout.
	DialTimeout time.Duration
	// Live, if set, follows the attack.
	Live *Live
}

func (t *Target) defaults() error {
	if t.Addr == "" {
		return errors.New("hostile: Addr is required")
	}
	if t.Source != "" && net.ParseIP(t.Source) == nil {
		return fmt.Errorf("hostile: Source %q is not an IP address", t.Source)
	}
	if t.Host == "" {
		t.Host = t.Addr
	}
	if t.Path == "" {
		t.Path = "/"
	}
	if t.Duration <= 0 {
		t.Duration = DefaultDuration
	}
	if t.DialTimeout <= 0 {
		t.DialTimeout = DefaultDialTimeout
	}
	return nil
}

func checkCount(name string, n, maxN int) error {
	if n < 1 || n > maxN {
		return fmt.Errorf("hostile: %s %d is outside 1..%d", name, n, maxN)
	}
	return nil
}

// dialFrom connects to addr from source (any address if empty).
func dialFrom(ctx context.Context, source, addr string, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout}
	if source != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(source)}
	}
	return d.DialContext(ctx, "tcp", addr)
}

// endOf classifies the error that ended a read or a write on a connection:
// a reset, a close by the server, or (when the tool closed it itself) Open.
func endOf(err error) End {
	switch {
	case err == nil:
		return Open
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return Reset
	case errors.Is(err, net.ErrClosed):
		return Open
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return Closed
	}
	return Closed
}

// clock measures from the start of a call.
type clock time.Time

func (c clock) since() time.Duration { return time.Since(time.Time(c)) }

// runEach runs f(i) for i in 0..n-1, each in a goroutine of its own, and
// returns the results in order once every one has returned.
func runEach[T any](n int, f func(i int) T) []T {
	out := make([]T, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { out[i] = f(i) })
	}
	wg.Wait()
	return out
}
