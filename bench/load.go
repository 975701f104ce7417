package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	vegeta "github.com/tsenart/vegeta/v12/lib"
)

// Load is one load run against one URL.
type Load struct {
	URL  string
	Host string // Host header; empty for the URL's host
	// Conns is the number of connections (closed loop: also the number of
	// workers, each with one request in flight).
	Conns int
	// Rate is the open-loop rate in requests per second; zero runs a
	// closed loop as fast as the workers go.
	Rate     float64
	Duration time.Duration
	// HTTP2 speaks HTTP/2 without TLS (prior knowledge); the requests of
	// all workers share the connections.
	HTTP2 bool
}

// LoadResult is what one load run measured. Latencies are in microseconds.
type LoadResult struct {
	Requests   int64   `json:"requests"`
	Errors     int64   `json:"errors"`
	FirstError string  `json:"first_error,omitempty"`
	Seconds    float64 `json:"seconds"`
	RPS        float64 `json:"rps"`
	P50        float64 `json:"p50_us"`
	P99        float64 `json:"p99_us"`
	P999       float64 `json:"p999_us"`
	Max        float64 `json:"max_us"`
}

func newClient(conns int, h2 bool) (*http.Client, *http.Transport) {
	tr := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConnsPerHost: conns,
		MaxConnsPerHost:     conns,
		DisableCompression:  true,
	}
	if h2 {
		var p http.Protocols
		p.SetUnencryptedHTTP2(true)
		tr.Protocols = &p
		tr.MaxConnsPerHost = 0 // HTTP/2: one connection carries many streams
	}
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}, tr
}

// Run runs l and returns its figures.
func (l Load) Run(ctx context.Context) LoadResult {
	client, tr := newClient(l.Conns, l.HTTP2)
	defer tr.CloseIdleConnections()
	opts := []func(*vegeta.Attacker){
		vegeta.Client(client),
		vegeta.Workers(uint64(l.Conns)),
		vegeta.MaxBody(-1),
	}
	rate := vegeta.Rate{Freq: 0}
	if l.Rate > 0 {
		// Open loop: more workers may start to keep the schedule.
		opts = append(opts, vegeta.MaxWorkers(100000))
		rate = vegeta.Rate{Freq: int(l.Rate), Per: time.Second}
	} else {
		opts = append(opts, vegeta.MaxWorkers(uint64(l.Conns)))
	}
	h := http.Header{}
	if l.Host != "" {
		h.Set("Host", l.Host)
	}
	target := vegeta.NewStaticTargeter(vegeta.Target{Method: http.MethodGet, URL: l.URL, Header: h})
	atk := vegeta.NewAttacker(opts...)
	stop := context.AfterFunc(ctx, func() { atk.Stop() })
	defer stop()

	hist := hdrhistogram.New(1, 60_000_000, 3) // 1 µs .. 60 s
	var res LoadResult
	interval := time.Duration(0)
	if l.Rate > 0 {
		interval = time.Duration(float64(time.Second) / l.Rate)
	}
	began := time.Now()
	var first, last time.Time
	for r := range atk.Attack(target, rate, l.Duration, "load") {
		res.Requests++
		if r.Error != "" {
			res.Errors++
			if res.FirstError == "" {
				res.FirstError = r.Error
			}
		}
		lat := r.Latency
		if interval > 0 {
			// Count from when the request was due, not from when a worker
			// got round to it: a stall then shows in every request it
			// delayed.
			if due := began.Add(time.Duration(r.Seq) * interval); r.End().Sub(due) > lat {
				lat = r.End().Sub(due)
			}
		}
		_ = hist.RecordValue(max(1, lat.Microseconds()))
		if first.IsZero() || r.Timestamp.Before(first) {
			first = r.Timestamp
		}
		if r.End().After(last) {
			last = r.End()
		}
	}
	res.Seconds = last.Sub(first).Seconds()
	if res.Seconds > 0 {
		res.RPS = float64(res.Requests-res.Errors) / res.Seconds
	}
	res.setLatencies(hist)
	return res
}

// setLatencies fills in r's latency figures from hist (µs).
func (r *LoadResult) setLatencies(hist *hdrhistogram.Histogram) {
	r.P50 = float64(hist.ValueAtQuantile(50))
	r.P99 = float64(hist.ValueAtQuantile(99))
	r.P999 = float64(hist.ValueAtQuantile(99.9))
	r.Max = float64(hist.Max())
}

// closedLoop runs workers that each repeat op as fast as it goes for d,
// and measures it like a Load does. op gets the worker's index, for state
// of its own such as a connection or a buffer.
func closedLoop(ctx context.Context, workers int, d time.Duration, op func(ctx context.Context, worker int) error) LoadResult {
	hist := hdrhistogram.New(1, 60_000_000, 3)
	var mu sync.Mutex
	var n, errs atomic.Int64
	var first atomic.Value
	// Cancel rather than set a deadline: a deadline would travel with gRPC
	// calls and the upstream could end the last ones first, as errors.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := time.AfterFunc(d, cancel)
	defer stop.Stop()
	start := time.Now()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for ctx.Err() == nil {
				t0 := time.Now()
				if err := op(ctx, w); err != nil {
					if ctx.Err() != nil {
						return
					}
					errs.Add(1)
					first.CompareAndSwap(nil, err.Error())
					continue
				}
				n.Add(1)
				mu.Lock()
				_ = hist.RecordValue(max(1, time.Since(t0).Microseconds()))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	r := LoadResult{Requests: n.Load() + errs.Load(), Errors: errs.Load(), Seconds: secs, RPS: float64(n.Load()) / secs}
	r.setLatencies(hist)
	if s, ok := first.Load().(string); ok {
		r.FirstError = s
	}
	return r
}

// Transfer moves size bytes in one request, up (POST) or down (GET), and
// returns MiB/s.
func Transfer(ctx context.Context, base, host string, size int64, up bool) (float64, error) {
	client, tr := newClient(1, false)
	defer tr.CloseIdleConnections()
	client.Timeout = 0
	var req *http.Request
	var err error
	if up {
		req, err = http.NewRequestWithContext(ctx, http.MethodPost, base+"/up", io.LimitReader(zeros{}, size))
		if err == nil {
			req.ContentLength = size
		}
	} else {
		req, err = http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s/down?n=%d", base, size), nil)
	}
	if err != nil {
		return 0, err
	}
	if host != "" {
		req.Host = host
	}
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("status %d", resp.StatusCode)
	}
	if up {
		// The answer is the count of bytes the upstream got.
		got, err := io.ReadAll(resp.Body)
		if err != nil {
			return 0, err
		}
		if string(got) != fmt.Sprint(size) {
			return 0, fmt.Errorf("upstream got %q of %d bytes", got, size)
		}
	} else {
		n, err := io.Copy(io.Discard, resp.Body)
		if err != nil {
			return 0, err
		}
		if n != size {
			return 0, fmt.Errorf("got %d of %d bytes", n, size)
		}
	}
	return float64(size) / (1 << 20) / time.Since(start).Seconds(), nil
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// upstreamHandler is the sample upstream: /1k answers 1 KiB, /up swallows
// a body, /down?n= sends n bytes.
func upstreamHandler() http.Handler {
	kib := bytes.Repeat([]byte("x"), 1024)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/ws":
			wsEcho(w, r)
		case "/up":
			n, err := io.Copy(io.Discard, r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			fmt.Fprint(w, n)
		case "/down":
			var n int64
			_, _ = fmt.Sscan(r.URL.Query().Get("n"), &n)
			w.Header().Set("Content-Length", fmt.Sprint(n))
			_, _ = io.Copy(w, io.LimitReader(zeros{}, n))
		default:
			w.Header().Set("Content-Length", "1024")
			w.Header().Set("Content-Type", "application/octet-stream")
			_, _ = w.Write(kib)
		}
	})
}
