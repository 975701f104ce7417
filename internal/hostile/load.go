package hostile

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// OrdinaryConfig configures Ordinary.
type OrdinaryConfig struct {
	// URL is the request URL: http://host:port/path.
	URL string
	// Hosts are the Host headers, used in turn; empty: the URL's host.
	Hosts []string
	// Source is the local IP address the connections are bound to, such
	// as "127.0.0.1"; empty: any.
	Source string
	// Requests is how many requests to send, 1..1000000.
	Requests int
	// Concurrency is how many are in flight at once, 1..Requests. Zero: 1.
	Concurrency int
	// PostBytes, if positive, makes every second request a POST with a
	// body of that many bytes (with Content-Length).
	PostBytes int
	// H2C speaks HTTP/2 with prior knowledge instead of HTTP/1.1.
	H2C bool
	// Timeout bounds each request, its answer's body included. Zero: 30s.
	Timeout time.Duration
}

// OrdinaryResult counts what ordinary requests got.
type OrdinaryResult struct {
	// Status counts the requests answered, by status code, whose body was
	// read to its end.
	Status map[int]int
	// Errors counts the requests that failed, by a short description of
	// the error ("timeout", "reset", "eof", "refused", or the error's
	// innermost message); a body that failed midway counts here as
	// "<status> body: <error>".
	Errors map[string]int
	// NotSent is how many were not sent because ctx ended first.
	NotSent int
	// Took is how long the run took.
	Took time.Duration
}

// Total is the number of requests answered or failed (not NotSent).
func (r OrdinaryResult) Total() int {
	n := 0
	for _, c := range r.Status {
		n += c
	}
	for _, c := range r.Errors {
		n += c
	}
	return n
}

// String sums the result up for a log line.
func (r OrdinaryResult) String() string {
	st := map[string]int{}
	for k, v := range r.Status {
		st[strconv.Itoa(k)] = v
	}
	return fmt.Sprintf("status{%s} errors{%s} not-sent=%d took=%v",
		FormatTally(st), FormatTally(r.Errors), r.NotSent, r.Took.Round(time.Millisecond))
}

// Ordinary sends cfg.Requests ordinary requests through a net/http client
// whose connections come from cfg.Source, cfg.Concurrency at a time, GETs
// and (with cfg.PostBytes) small POSTs in turn, and counts what they got.
// Requests not started when ctx ends count as NotSent. The error is for a
// bad configuration.
func Ordinary(ctx context.Context, cfg OrdinaryConfig) (OrdinaryResult, error) {
	if cfg.URL == "" {
		return OrdinaryResult{}, errors.New("hostile: URL is required")
	}
	if err := checkCount("Requests", cfg.Requests, 1_000_000); err != nil {
		return OrdinaryResult{}, err
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 1
	}
	cfg.Concurrency = min(cfg.Concurrency, cfg.Requests)
	if cfg.Source != "" && net.ParseIP(cfg.Source) == nil {
		return OrdinaryResult{}, fmt.Errorf("hostile: Source %q is not an IP address", cfg.Source)
	}
	if cfg.PostBytes < 0 || cfg.PostBytes > 64<<20 {
		return OrdinaryResult{}, errors.New("hostile: PostBytes is outside 0..64MiB")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	d := &net.Dialer{Timeout: DefaultDialTimeout}
	if cfg.Source != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(cfg.Source)}
	}
	var protos http.Protocols
	if cfg.H2C {
		protos.SetUnencryptedHTTP2(true)
	} else {
		protos.SetHTTP1(true)
	}
	tr := &http.Transport{
		DialContext:         d.DialContext,
		Protocols:           &protos,
		DisableCompression:  true,
		MaxIdleConnsPerHost: cfg.Concurrency,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: cfg.Timeout}
	body := bytes.Repeat([]byte{'o'}, cfg.PostBytes)

	start := time.Now()
	res := OrdinaryResult{Status: map[int]int{}, Errors: map[string]int{}}
	var mu sync.Mutex
	next := make(chan int)
	var wg sync.WaitGroup
	for range cfg.Concurrency {
		wg.Go(func() {
			for i := range next {
				status, kind := cfg.one(ctx, client, body, i)
				mu.Lock()
				if kind == "" {
					res.Status[status]++
				} else {
					res.Errors[kind]++
				}
				mu.Unlock()
			}
		})
	}
	sent := 0
feed:
	for ; sent < cfg.Requests; sent++ {
		select {
		case next <- sent:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	res.NotSent = cfg.Requests - sent
	res.Took = time.Since(start)
	return res, nil
}

// one sends request i and returns its status, or a description of its
// failure.
func (cfg *OrdinaryConfig) one(ctx context.Context, c *http.Client, body []byte, i int) (int, string) {
	method, rd := http.MethodGet, io.Reader(nil)
	if cfg.PostBytes > 0 && i%2 == 1 {
		method, rd = http.MethodPost, bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, cfg.URL, rd)
	if err != nil {
		return 0, "request: " + err.Error()
	}
	if len(cfg.Hosts) > 0 {
		req.Host = cfg.Hosts[i%len(cfg.Hosts)]
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, ErrorKind(err)
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return 0, strconv.Itoa(resp.StatusCode) + " body: " + ErrorKind(err)
	}
	return resp.StatusCode, ""
}

// ErrorKind describes a request's error briefly, without addresses or
// ports, so that errors of one kind count together: "timeout", "reset",
// "eof", "refused", "canceled", or the innermost error's message.
func ErrorKind(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded),
		errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "reset"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "eof"
	}
	for {
		u := errors.Unwrap(err)
		if u == nil {
			break
		}
		err = u
	}
	return varying.ReplaceAllString(strings.TrimSpace(err.Error()), "#")
}

// varying matches the parts of error messages that differ between errors
// of one kind: addresses, ports, stream ids.
var varying = regexp.MustCompile(`\[?[0-9a-fA-F:.]*[0-9]\]?:[0-9]+|stream ID [0-9]+`)
