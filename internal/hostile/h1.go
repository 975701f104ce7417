package hostile

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"golang.org/x/net/http2"
)

// Length says whether a request body announces its length.
type Length int

const (
	// KnownLength bodies announce their length (Content-Length).
	KnownLength Length = iota
	// UnknownLength bodies do not: HTTP/1.1 sends them chunked, HTTP/2
	// without content-length.
	UnknownLength
	// MixedLength alternates, connection by connection (HTTP/1.1) or stream
	// by stream (HTTP/2), starting with a known length.
	MixedLength
)

func (l Length) unknown(i int) bool {
	return l == UnknownLength || l == MixedLength && i%2 == 1
}

// DefaultContentLength is the length a slow body announces by default.
const DefaultContentLength = 1 << 20

// SlowBodyConfig configures SlowBodyH1.
type SlowBodyConfig struct {
	Target
	// Conns is how many connections to make, 1..MaxConns.
	Conns int
	// Length says which connections announce a Content-Length and which
	// send their body chunked.
	Length Length
	// ContentLength is the length announced. Zero: DefaultContentLength.
	ContentLength int64
	// Interval is the pace: one body byte per Interval after the head.
	// Zero: nothing is sent after the head.
	Interval time.Duration
	// MaxBytes bounds the body bytes each connection sends; a body of
	// known length stops one byte short of it, so that no body is ever
	// finished. Zero: 1 MiB.
	MaxBytes int64
}

// ConnResult is what one HTTP/1.1 attacker connection got.
type ConnResult struct {
	// Status is the status code of the answer, 0 if none came.
	Status int
	// ServerClose says the answer announced that the server closes the
	// connection (Connection: close).
	ServerClose bool
	// End says how the connection ended: Answered when an answer came.
	End End
	// At is when it ended: the answer's head, the close, or the tool's
	// own close.
	At time.Duration
	// Sent is how many body bytes were written.
	Sent int64
	// Err is the error that ended it, if any.
	Err error
}

// Key is the status code of the answer, or how the connection ended.
func (r ConnResult) Key() string {
	if r.Status != 0 {
		return strconv.Itoa(r.Status)
	}
	return r.End.String()
}

// SlowBodyH1 makes cfg.Conns HTTP/1.1 connections to cfg.Addr from
// cfg.Source at once. Each sends a POST head (Content-Length, or
// Transfer-Encoding: chunked, as cfg.Length says) and then one body byte
// every cfg.Interval, never finishing its body, until the server answers or
// closes the connection, cfg.Duration passes or ctx ends. It returns one
// result per connection, in order; the error is for a bad configuration.
func SlowBodyH1(ctx context.Context, cfg SlowBodyConfig) ([]ConnResult, error) {
	if err := cfg.Target.defaults(); err != nil {
		return nil, err
	}
	if err := checkCount("Conns", cfg.Conns, MaxConns); err != nil {
		return nil, err
	}
	if cfg.Interval < 0 {
		return nil, errors.New("hostile: Interval must not be negative")
	}
	if cfg.ContentLength <= 0 {
		cfg.ContentLength = DefaultContentLength
	}
	if cfg.MaxBytes <= 0 {
		cfg.MaxBytes = 1 << 20
	}
	clk := clock(time.Now())
	return runEach(cfg.Conns, func(i int) ConnResult { return cfg.conn(ctx, clk, i) }), nil
}

func (cfg *SlowBodyConfig) head(chunked bool) string {
	framing := "Content-Length: " + strconv.FormatInt(cfg.ContentLength, 10)
	if chunked {
		framing = "Transfer-Encoding: chunked"
	}
	return fmt.Sprintf("POST %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: hostile-slow-body\r\nContent-Type: application/octet-stream\r\n%s\r\n\r\n",
		cfg.Path, cfg.Host, framing)
}

func (cfg *SlowBodyConfig) conn(ctx context.Context, clk clock, i int) ConnResult {
	ctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	sl := slot{l: cfg.Live}
	defer sl.done()
	c, err := dialFrom(ctx, cfg.Source, cfg.Addr, cfg.DialTimeout)
	if err != nil {
		return ConnResult{End: DialFailed, At: clk.since(), Err: err}
	}
	var reader sync.WaitGroup
	defer func() {
		_ = c.Close()
		reader.Wait()
	}()
	stop := context.AfterFunc(ctx, func() { _ = c.Close() })
	defer stop()

	chunked := cfg.Length.unknown(i)
	limit := cfg.MaxBytes
	if !chunked {
		limit = min(limit, cfg.ContentLength-1)
	}
	if _, err := io.WriteString(c, cfg.head(chunked)); err != nil {
		return ConnResult{End: endOf(err), At: clk.since(), Err: err}
	}
	sl.start()
	answers := make(chan h1Answer, 1)
	reader.Go(func() { answers <- readAnswer(c, clk) })

	var tick <-chan time.Time
	if cfg.Interval > 0 && limit > 0 {
		t := time.NewTicker(cfg.Interval)
		defer t.Stop()
		tick = t.C
	}
	var r ConnResult
	for {
		select {
		case a := <-answers:
			return a.result(ctx, r.Sent)
		case <-ctx.Done():
			select {
			case a := <-answers:
				return a.result(ctx, r.Sent)
			default:
			}
			r.End, r.At = Open, clk.since()
			return r
		case <-tick:
			var err error
			if chunked {
				_, err = io.WriteString(c, "1\r\nx\r\n")
			} else {
				_, err = c.Write([]byte{'x'})
			}
			if err != nil {
				// The reader says how the connection ended.
				tick = nil
				continue
			}
			r.Sent++
			if r.Sent >= limit {
				tick = nil
			}
		}
	}
}

// h1Answer is what the reader of an HTTP/1.1 connection saw: an answer's
// head, or the error that ended the connection before one came.
type h1Answer struct {
	status int
	close  bool
	at     time.Duration
	err    error
}

func (a h1Answer) result(ctx context.Context, sent int64) ConnResult {
	r := ConnResult{Status: a.status, ServerClose: a.close, At: a.at, Sent: sent, Err: a.err}
	switch {
	case a.status != 0:
		r.End = Answered
	case ctx.Err() != nil:
		r.End = Open
	default:
		r.End = endOf(a.err)
	}
	return r
}

// readAnswer reads the first final answer on c.
func readAnswer(c net.Conn, clk clock) h1Answer {
	br := bufio.NewReader(c)
	for range 8 { // informational answers first, a few at most
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return h1Answer{at: clk.since(), err: err}
		}
		if resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
			return h1Answer{status: resp.StatusCode, close: resp.Close, at: clk.since()}
		}
	}
	return h1Answer{at: clk.since(), err: errors.New("too many informational answers")}
}

// SlowReadersConfig configures SlowReaders.
type SlowReadersConfig struct {
	Target
	// Conns is how many readers to run, each on a connection of its own,
	// 1..MaxConns.
	Conns int
	// H2C makes the readers HTTP/2 with prior knowledge: each reads by
	// granting flow-control window (WINDOW_UPDATE) for the bytes it took.
	H2C bool
	// Chunk is how many bytes a reader takes every Interval; zero: it
	// stops reading after the first bytes.
	Chunk int
	// Interval is the reading pace; required when Chunk is set.
	Interval time.Duration
	// Hold is how long a reader stays slow (or stopped). Then it reads
	// the rest at full speed, to learn whether the server cut the answer
	// meanwhile: over HTTP/1.1 a close (or reset) waits behind the bytes
	// the kernels hold for the reader, so it is seen only once they are
	// read. Over HTTP/2 a reset is seen as it comes. Zero: the reader
	// stays slow until Duration ends.
	Hold time.Duration
	// Resume, if set, ends the hold when it is closed: before Hold has
	// passed, or, with no Hold, at all.
	Resume <-chan struct{}
	// Window is, over HTTP/2, the stream's flow-control window: how much
	// the server may send before the reader takes any. Zero: 65535.
	// (Over HTTP/1.1 the kernels' socket buffers, several MiB on
	// loopback, play that part; shrinking them would make the reader's
	// final full-speed read crawl.)
	Window int
}

// ReaderResult is what one slow reader got.
type ReaderResult struct {
	// Status is the status code of the answer, 0 if none came.
	Status int
	// Length is the body length the answer announced, -1 if unknown.
	Length int64
	// Got is how many body bytes the reader took.
	Got int64
	// End says how it ended: Complete when the answer was read to its
	// end; Closed or Reset when the server cut it; GoAway; or Open.
	End End
	// Code is the RST_STREAM or GOAWAY code (HTTP/2).
	Code http2.ErrCode
	// At is when it ended.
	At time.Duration
	// Err is the error that ended it, if any.
	Err error
}

// Key is the status code of an answer other than 200, or how the reader
// ended (with the code of an HTTP/2 reset or GOAWAY).
func (r ReaderResult) Key() string {
	if r.Status != 0 && r.Status != http.StatusOK {
		return strconv.Itoa(r.Status)
	}
	if r.Code != 0 {
		return r.End.String() + ":" + r.Code.String()
	}
	return r.End.String()
}

// Cut reports whether the server ended the answer before its end.
func (r ReaderResult) Cut() bool {
	return r.End == Closed || r.End == Reset || r.End == GoAway
}

// SlowReaders runs cfg.Conns readers at once, each on a connection of its
// own from cfg.Source: each GETs cfg.Path and reads the answer slowly
// (cfg.Chunk bytes every cfg.Interval) or stops after the first bytes, for
// cfg.Hold, then reads on at full speed. It returns one result per reader,
// in order; the error is for a bad configuration.
func SlowReaders(ctx context.Context, cfg SlowReadersConfig) ([]ReaderResult, error) {
	if err := cfg.Target.defaults(); err != nil {
		return nil, err
	}
	if err := checkCount("Conns", cfg.Conns, MaxConns); err != nil {
		return nil, err
	}
	if cfg.Chunk < 0 || cfg.Chunk > 16<<20 {
		return nil, errors.New("hostile: Chunk is outside 0..16MiB")
	}
	if cfg.Chunk > 0 && cfg.Interval <= 0 {
		return nil, errors.New("hostile: a Chunk needs an Interval")
	}
	if cfg.Window < 0 || cfg.Window > 1<<31-1 {
		return nil, errors.New("hostile: Window is outside 0..2^31-1")
	}
	clk := clock(time.Now())
	return runEach(cfg.Conns, func(int) ReaderResult {
		ctx, cancel := context.WithTimeout(ctx, cfg.Duration)
		defer cancel()
		if cfg.H2C {
			return cfg.h2(ctx, clk)
		}
		return cfg.h1(ctx, clk)
	}), nil
}

// holdTimer returns a channel that is ready once Hold has passed (nil,
// never ready, without a Hold) and a function that stops its timer.
func (cfg *SlowReadersConfig) holdTimer() (<-chan time.Time, func()) {
	if cfg.Hold <= 0 {
		return nil, func() {}
	}
	t := time.NewTimer(cfg.Hold)
	return t.C, func() { t.Stop() }
}

func (cfg *SlowReadersConfig) h1(ctx context.Context, clk clock) ReaderResult {
	sl := slot{l: cfg.Live}
	defer sl.done()
	r := ReaderResult{Length: -1}
	c, err := dialFrom(ctx, cfg.Source, cfg.Addr, cfg.DialTimeout)
	if err != nil {
		r.End, r.At, r.Err = DialFailed, clk.since(), err
		return r
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { _ = c.Close() })
	defer stop()
	end := func(err error) ReaderResult {
		r.At, r.Err = clk.since(), err
		switch {
		case err == nil || errors.Is(err, io.EOF):
			r.End, r.Err = Complete, nil
		case ctx.Err() != nil:
			r.End = Open
		default:
			r.End = endOf(err)
		}
		return r
	}
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: hostile-slow-reader\r\n\r\n", cfg.Path, cfg.Host); err != nil {
		return end(err)
	}
	resp, err := http.ReadResponse(bufio.NewReaderSize(c, 4096), &http.Request{Method: http.MethodGet})
	if err != nil {
		return end(err)
	}
	sl.start()
	// The body is never closed: closing it would read it to its end. The
	// connection is closed instead.
	r.Status, r.Length = resp.StatusCode, resp.ContentLength
	body := &countingReader{r: resp.Body, n: &r.Got}
	hold, stopHold := cfg.holdTimer()
	defer stopHold()

	buf := make([]byte, max(cfg.Chunk, 4096))
	if cfg.Chunk == 0 {
		if _, err := body.Read(buf[:4096]); err != nil {
			return end(err)
		}
		select {
		case <-hold:
		case <-cfg.Resume:
		case <-ctx.Done():
			return end(ctx.Err())
		}
	} else {
		t := time.NewTicker(cfg.Interval)
		defer t.Stop()
	slow:
		for {
			select {
			case <-hold:
				break slow
			case <-cfg.Resume:
				break slow
			case <-ctx.Done():
				return end(ctx.Err())
			case <-t.C:
				if err := readUpTo(body, buf[:cfg.Chunk]); err != nil {
					return end(err)
				}
			}
		}
	}
	_, err = io.Copy(io.Discard, body)
	return end(err)
}

// readUpTo reads until b is full or the reader fails; io.EOF is returned as
// such, however much was read.
func readUpTo(r io.Reader, b []byte) error {
	for len(b) > 0 {
		n, err := r.Read(b)
		b = b[n:]
		if err != nil {
			return err
		}
	}
	return nil
}

type countingReader struct {
	r io.Reader
	n *int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	*c.n += int64(n)
	return n, err
}
