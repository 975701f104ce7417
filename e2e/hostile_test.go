package e2e_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/net/http2"

	"github.com/qtunnel/qtunnel/internal/e2etest"
	"github.com/qtunnel/qtunnel/internal/hostile"
)

// The hostile tests play one attacker against one tenant (the client and
// its hosts) from 127.0.0.2, while ordinary users come from 127.0.0.1: the
// server tells them apart by source address. They are not parallel: two
// thousand attacking connections would make the other end-to-end tests'
// timings depend on them, and theirs on the others.

const (
	attackerIP = "127.0.0.2"
	userIP     = "127.0.0.1"
	// apiHost is the tenant's second host, beside appHost.
	apiHost = "api.e2e.test"
	// streamsActive is the server's gauge of open tunnel streams.
	streamsActive = "qtunnel_tunnel_streams_active"
	// quicReceived counts the bytes the server received on tunnel
	// connections.
	quicReceived = "qtunnel_quic_bytes_received_total"
)

// tenantEnv starts a server and a client whose hosts appHost and apiHost
// both go to up, with the server's admin listener on and limitsYAML (lines
// indented by two spaces) under limits. It returns the admin address.
func tenantEnv(t *testing.T, up, limitsYAML string) (*env, string) {
	t.Helper()
	admin := e2etest.FreeAddr(t, "tcp")
	api := fmt.Sprintf("  - id: rev-api\n    client: %s\n    direction: reverse\n    host: %s\n    upstream: %q\n", clientID, apiHost, up)
	e := startEnv(t, envOpts{nearClient: up, nearServer: up, extraRules: api,
		serverYAML: fmt.Sprintf("admin:\n  listen: %q\nlimits:\n%s", admin, limitsYAML)})
	e.waitReady(t)
	return e, admin
}

// gauge reads the sum of a metric's series from an admin listener.
func gauge(ctx context.Context, admin, name string) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+admin+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("/metrics: %s", resp.Status)
	}
	var sum float64
	found := false
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+" ") && !strings.HasPrefix(line, name+"{") {
			continue
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err != nil {
			return 0, fmt.Errorf("%q: %w", line, err)
		}
		sum += v
		found = true
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	if !found {
		return 0, fmt.Errorf("no %s in /metrics", name)
	}
	return sum, nil
}

// settleGauge reads name until it is want or d passes, and returns the
// last value it read.
func settleGauge(t *testing.T, admin, name string, want float64, d time.Duration) float64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	last := -1.0
	for {
		if v, err := gauge(ctx, admin, name); err == nil {
			last = v
			if v == want {
				return v
			}
		}
		select {
		case <-ctx.Done():
			return last
		case <-tick.C:
		}
	}
}

// attack runs one attack tool in a goroutine of its own and hands over its
// results once it returned.
type attack[T any] struct {
	name string
	done chan struct{}
	rs   []T
	err  error
}

func launch[T any](wg *sync.WaitGroup, name string, run func() ([]T, error)) *attack[T] {
	a := &attack[T]{name: name, done: make(chan struct{})}
	wg.Go(func() {
		defer close(a.done)
		a.rs, a.err = run()
	})
	return a
}

// collect waits up to d for the attack to end by itself, then stops it
// with cancel (which stops every attack of the test) and waits for it.
func (a *attack[T]) collect(t *testing.T, d time.Duration, cancel context.CancelFunc) {
	t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-a.done:
	case <-timer.C:
		cancel()
		<-a.done
	}
	require.NoError(t, a.err, a.name)
}

// endedByServer counts the results that ended reports as ended by the
// server within bound; the others are tallied by their key and by when
// they ended (to 10s).
func endedByServer[T hostile.Keyed](rs []T, bound time.Duration, ended func(T) (bool, time.Duration)) (int, map[string]int) {
	n, held := 0, map[string]int{}
	for _, r := range rs {
		if ok, at := ended(r); ok && at <= bound {
			n++
		} else {
			held[r.Key()+" at "+at.Round(10*time.Second).String()]++
		}
	}
	return n, held
}

// refusedStatus: what a slow sender may get instead of its body being
// read: 408 (the body did not come in time) or 429 (its source holds its
// share of the tenant's streams).
func refusedStatus(s int) bool {
	return s == http.StatusRequestTimeout || s == http.StatusTooManyRequests
}

// TestSlowSendersCannotStarveATenant: 2000 slow-body HTTP/1.1 connections
// (Content-Length and chunked; most trickle a byte every 500ms, some send
// nothing after the head) and 8 h2c connections of slow POST streams, all
// from 127.0.0.2, attack one tenant's host; meanwhile 500 ordinary
// requests (GETs and small POSTs) from 127.0.0.1 to the tenant's two hosts
// must get 200, at least 99% of them. Every attacking connection and
// stream must be ended by the server (408 or 429, or closed or reset)
// within 30s, and the server's open tunnel streams must fall back to 0.
func TestSlowSendersCannotStarveATenant(t *testing.T) {
	up := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			return
		}
		fmt.Fprintf(w, "ok %d", n)
	}))
	// stream_open_timeout only shortens how long a request waits for a
	// tunnel stream when the tenant has none left (default 10s).
	e, admin := tenantEnv(t, up, "  body_timeout: 2s\n  min_rate_grace: 1s\n  send_timeout: 3s\n  stream_open_timeout: 3s\n")

	attackCtx, stopAttack := context.WithTimeout(context.Background(), 3*time.Minute)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer stopAttack()
	target := func(live *hostile.Live) hostile.Target {
		return hostile.Target{Addr: e.public, Source: attackerIP, Host: appHost, Path: "/upload",
			Duration: 2 * time.Minute, DialTimeout: 10 * time.Second, Live: live}
	}
	const trickling, silent, h2Conns, h2Streams = 1500, 500, 8, 250
	var h1Live, h2Live hostile.Live
	trickle := launch(&wg, "trickling h1", func() ([]hostile.ConnResult, error) {
		return hostile.SlowBodyH1(attackCtx, hostile.SlowBodyConfig{Target: target(&h1Live), Conns: trickling,
			Length: hostile.MixedLength, Interval: 500 * time.Millisecond})
	})
	quiet := launch(&wg, "silent h1", func() ([]hostile.ConnResult, error) {
		return hostile.SlowBodyH1(attackCtx, hostile.SlowBodyConfig{Target: target(&h1Live), Conns: silent,
			Length: hostile.MixedLength})
	})
	streams := launch(&wg, "h2c streams", func() ([]hostile.StreamResult, error) {
		return hostile.SlowStreamsH2C(attackCtx, hostile.SlowStreamsConfig{Target: target(&h2Live), Conns: h2Conns, Streams: h2Streams,
			Length: hostile.MixedLength, Interval: 500 * time.Millisecond})
	})
	// Every HTTP/1.1 head is out, and every h2c connection has opened at
	// least as many streams as a fixed server allows one connection (100).
	startCtx, cancelStart := context.WithTimeout(attackCtx, 30*time.Second)
	defer cancelStart()
	require.NoError(t, h1Live.Wait(startCtx, func(started, _ int) bool { return started == trickling+silent }), "the HTTP/1.1 attack did not start")
	require.NoError(t, h2Live.Wait(startCtx, func(started, _ int) bool { return started >= h2Conns*100 }), "the h2c attack did not start")
	during, _ := gauge(attackCtx, admin, streamsActive)
	h1s, h1e := h1Live.Counts()
	h2s, h2e := h2Live.Counts()
	t.Logf("attack under way: HTTP/1.1 %d started, %d ended; h2c streams %d started, %d ended; server tunnel streams open: %v", h1s, h1e, h2s, h2e, during)

	loadCtx, cancelLoad := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancelLoad()
	const ordinary = 500
	res, err := hostile.Ordinary(loadCtx, hostile.OrdinaryConfig{URL: "http://" + e.public + "/ok", Hosts: []string{appHost, apiHost},
		Source: userIP, Requests: ordinary, Concurrency: 32, PostBytes: 512, Timeout: 20 * time.Second})
	require.NoError(t, err)
	t.Logf("ordinary requests during the attack: %s", res)

	open := settleGauge(t, admin, streamsActive, 0, 20*time.Second)
	t.Logf("server tunnel streams open after the ordinary requests (settling up to 20s): %v", open)

	const bound = 30 * time.Second
	for _, a := range []interface {
		collect(*testing.T, time.Duration, context.CancelFunc)
	}{trickle, quiet, streams} {
		a.collect(t, 20*time.Second, stopAttack)
	}
	h1Ended := func(r hostile.ConnResult) (bool, time.Duration) {
		return r.End == hostile.Closed || r.End == hostile.Reset || r.End == hostile.Answered && refusedStatus(r.Status), r.At
	}
	h2Ended := func(r hostile.StreamResult) (bool, time.Duration) {
		return r.End == hostile.Reset || r.End == hostile.GoAway || r.End == hostile.Closed ||
			r.End == hostile.Answered && refusedStatus(r.Status), r.At
	}
	tn, theld := endedByServer(trickle.rs, bound, h1Ended)
	qn, qheld := endedByServer(quiet.rs, bound, h1Ended)
	sn, sheld := endedByServer(streams.rs, bound, h2Ended)
	t.Logf("trickling HTTP/1.1 (%d): %s; ended by the server within %v: %d; not: %s", len(trickle.rs), hostile.FormatTally(hostile.Tally(trickle.rs)), bound, tn, hostile.FormatTally(theld))
	t.Logf("silent HTTP/1.1 (%d): %s; ended by the server within %v: %d; not: %s", len(quiet.rs), hostile.FormatTally(hostile.Tally(quiet.rs)), bound, qn, hostile.FormatTally(qheld))
	t.Logf("h2c streams (%d): %s; ended by the server within %v: %d; not: %s", len(streams.rs), hostile.FormatTally(hostile.Tally(streams.rs)), bound, sn, hostile.FormatTally(sheld))

	assert.GreaterOrEqual(t, res.Status[http.StatusOK], ordinary*99/100, "at least 99%% of the ordinary requests get 200: %s", res)
	assert.Equal(t, 0.0, open, "the server's tunnel streams fall back to 0 once the attackers' requests are refused")
	assert.Empty(t, theld, "every trickling HTTP/1.1 connection is ended by the server")
	assert.Empty(t, qheld, "every silent HTTP/1.1 connection is ended by the server")
	assert.Empty(t, sheld, "every slow h2c stream is ended by the server")
}

// TestSlowReadersCannotStallATenant: 300 readers from 127.0.0.2 GET 32 MiB
// answers from the tenant's upstream and read them slowly (20 of them,
// 4 KiB every 500ms) or stop after the first bytes (20 over HTTP/1.1, 260
// over h2c). Once what the tunnel carries to the server has all but
// stopped (or the server has ended the stopped readers), 100 ordinary
// 1 KiB requests from 127.0.0.1 to the same tenant must all complete with
// 200 (each may take up to 20s: that bounds a stall, it times nothing),
// and every reader that stopped must be cut by the server (send_timeout)
// or refused (429: its source holds its share of the tenant's streams).
//
// Why 300 and not the two dozen: the tunnel connection's receive
// window is now 128 MiB, and a stalled stream holds at most its own window
// (512 KiB, growing to 1 MiB), so well over 128 stalled streams are needed
// to fill it. The h2c readers stall at HTTP/2 flow control, so that the
// readers themselves hold no kernel socket buffers.
func TestSlowReadersCannotStallATenant(t *testing.T) {
	const big = 32 << 20
	kib := []byte(strings.Repeat("k", 1024))
	var h2cBytes atomic.Int64 // written by the upstream for the h2c readers
	up := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/big" {
			_, _ = w.Write(kib)
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(big))
		buf := make([]byte, 64<<10)
		for left := big; left > 0; left -= len(buf) {
			n, err := w.Write(buf[:min(len(buf), left)])
			if r.URL.Query().Get("via") == "h2c" {
				h2cBytes.Add(int64(n))
			}
			if err != nil {
				return
			}
		}
	}))
	e, admin := tenantEnv(t, up, "  send_timeout: 3s\n")

	attackCtx, stopAttack := context.WithTimeout(context.Background(), 4*time.Minute)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer stopAttack()
	var live, h2Live hostile.Live
	target := func(path string, live *hostile.Live) hostile.Target {
		return hostile.Target{Addr: e.public, Source: attackerIP, Host: appHost, Path: path,
			Duration: 3 * time.Minute, DialTimeout: 10 * time.Second, Live: live}
	}
	const slow, stoppedH1, stoppedH2 = 20, 20, 260
	// A stopped HTTP/1.1 reader learns of a cut only by reading on: it
	// holds until resume is closed, then reads at full speed.
	resume := make(chan struct{})
	stopped1 := launch(&wg, "stopped h1 readers", func() ([]hostile.ReaderResult, error) {
		return hostile.SlowReaders(attackCtx, hostile.SlowReadersConfig{Target: target("/big", &live), Conns: stoppedH1, Resume: resume})
	})
	stopped2 := launch(&wg, "stopped h2c readers", func() ([]hostile.ReaderResult, error) {
		return hostile.SlowReaders(attackCtx, hostile.SlowReadersConfig{Target: target("/big?via=h2c", &h2Live), Conns: stoppedH2, H2C: true})
	})
	slowCtx, stopSlow := context.WithCancel(attackCtx)
	defer stopSlow()
	slowly := launch(&wg, "slow h1 readers", func() ([]hostile.ReaderResult, error) {
		return hostile.SlowReaders(slowCtx, hostile.SlowReadersConfig{Target: target("/big", &live), Conns: slow,
			Chunk: 4 << 10, Interval: 500 * time.Millisecond})
	})
	started := time.Now()
	startCtx, cancelStart := context.WithTimeout(attackCtx, 30*time.Second)
	defer cancelStart()
	require.NoError(t, live.Wait(startCtx, func(started, _ int) bool { return started == slow+stoppedH1 }), "the HTTP/1.1 readers did not get their answers' heads")
	require.NoError(t, h2Live.Wait(startCtx, func(started, _ int) bool { return started == stoppedH2 }), "the h2c readers did not get their answers' heads")
	// The attack has taken hold once what the tunnel carries to the server
	// has all but stopped (the windows are full: only the slow readers'
	// pace gets through); or it is over, once the server has ended every
	// stopped h2c reader.
	const settled = 4 << 20 // bytes a second; the slow readers take 160 KiB/s together
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	last, lastAt := -1.0, time.Now()
	rate := -1.0
settle:
	for {
		if _, ended := h2Live.Counts(); ended == stoppedH2 {
			break
		}
		if v, err := gauge(startCtx, admin, quicReceived); err == nil {
			switch now := time.Now(); {
			case last < 0:
				last, lastAt = v, now
			case now.Sub(lastAt) >= time.Second:
				rate = (v - last) / now.Sub(lastAt).Seconds()
				if rate < settled {
					break settle
				}
				last, lastAt = v, now
			}
		}
		select {
		case <-startCtx.Done():
			t.Fatalf("the tunnel did not settle: the server still received %.0f MiB/s", rate/(1<<20))
		case <-tick.C:
		}
	}
	during, _ := gauge(attackCtx, admin, streamsActive)
	_, h2Ended := h2Live.Counts()
	t.Logf("readers under way after %v: tunnel inflow %.1f MiB/s; the upstream wrote %d MiB for the stopped h2c readers, %d of which ended; server tunnel streams open: %v",
		time.Since(started).Round(100*time.Millisecond), rate/(1<<20), h2cBytes.Load()>>20, h2Ended, during)

	loadCtx, cancelLoad := context.WithTimeout(context.Background(), time.Minute)
	defer cancelLoad()
	const ordinary = 100
	res, err := hostile.Ordinary(loadCtx, hostile.OrdinaryConfig{URL: "http://" + e.public + "/kib", Hosts: []string{appHost, apiHost},
		Source: userIP, Requests: ordinary, Concurrency: 10, Timeout: 20 * time.Second})
	require.NoError(t, err)
	t.Logf("ordinary 1 KiB requests during the attack: %s", res)

	// The stopped HTTP/1.1 readers stay stopped for at least 10s (three
	// times send_timeout) before they read on.
	pause := time.NewTimer(time.Until(started.Add(10 * time.Second)))
	select {
	case <-pause.C:
	case <-attackCtx.Done():
	}
	close(resume)
	stopped1.collect(t, 30*time.Second, stopAttack)
	stopped2.collect(t, 10*time.Second, stopAttack)
	stopSlow()
	slowly.collect(t, time.Minute, stopAttack)
	logReaders := func(a *attack[hostile.ReaderResult]) (notCut map[string]int) {
		notCut = map[string]int{}
		var got []int64
		for _, r := range a.rs {
			got = append(got, r.Got)
			if !r.Cut() && r.Status != http.StatusTooManyRequests {
				notCut[r.Key()]++
			}
		}
		slices.Sort(got)
		t.Logf("%s (%d): %s; bytes read: min %d, median %d, max %d", a.name, len(a.rs), hostile.FormatTally(hostile.Tally(a.rs)), got[0], got[len(got)/2], got[len(got)-1])
		return notCut
	}
	notCut1, notCut2 := logReaders(stopped1), logReaders(stopped2)
	logReaders(slowly)

	assert.Equal(t, ordinary, res.Total(), "every ordinary request completed: %s", res)
	assert.Equal(t, ordinary, res.Status[http.StatusOK], "every ordinary request got 200: %s", res)
	assert.Empty(t, notCut1, "every stopped HTTP/1.1 reader is cut (or refused) by the server")
	assert.Empty(t, notCut2, "every stopped h2c reader is cut (or refused) by the server")
}

// TestH2RapidResetAndContinuationFlood: 4 h2c connections from 127.0.0.2
// open and reset streams in a loop (up to 1000 each, five times the
// default h2_max_resets; each slot dials again when the server ends its
// connection, 10 rounds), while 300 ordinary requests from 127.0.0.1,
// over HTTP/1.1 and h2c, must all get 200; every abusive connection must
// get GOAWAY(ENHANCE_YOUR_CALM) or be closed. Then a CONTINUATION flood
// (empty frames, one a millisecond) must get GOAWAY or a close before its
// 100th frame.
func TestH2RapidResetAndContinuationFlood(t *testing.T) {
	up := upstream(t, hello("near-client"))
	e, _ := tenantEnv(t, up, "  body_timeout: 2s\n")

	attackCtx, stopAttack := context.WithTimeout(context.Background(), 3*time.Minute)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer stopAttack()
	var live hostile.Live
	const conns, maxResets = 4, 1000
	rr := launch(&wg, "rapid reset", func() ([]hostile.ResetResult, error) {
		return hostile.RapidReset(attackCtx, hostile.RapidResetConfig{
			Target: hostile.Target{Addr: e.public, Source: attackerIP, Host: appHost, Path: "/r", Duration: 20 * time.Second, Live: &live},
			Conns:  conns, Rounds: 10, MaxResets: maxResets})
	})
	startCtx, cancelStart := context.WithTimeout(attackCtx, 30*time.Second)
	defer cancelStart()
	require.NoError(t, live.Wait(startCtx, func(started, _ int) bool { return started >= conns }), "the rapid reset did not start")

	loadCtx, cancelLoad := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancelLoad()
	var loads [2]hostile.OrdinaryResult
	var loadErrs [2]error
	var lg sync.WaitGroup
	for i, h2c := range []bool{false, true} {
		lg.Go(func() {
			loads[i], loadErrs[i] = hostile.Ordinary(loadCtx, hostile.OrdinaryConfig{URL: "http://" + e.public + "/ok", Hosts: []string{appHost, apiHost},
				Source: userIP, Requests: 150, Concurrency: 8, H2C: h2c, Timeout: 20 * time.Second})
		})
	}
	lg.Wait()
	require.NoError(t, loadErrs[0])
	require.NoError(t, loadErrs[1])
	t.Logf("ordinary requests during the rapid reset: HTTP/1.1 %s; h2c %s", loads[0], loads[1])

	rr.collect(t, time.Minute, stopAttack)
	var sent, answers int
	calm := 0
	other := map[string]int{}
	for _, r := range rr.rs {
		sent += r.Sent
		answers += r.Answers
		switch {
		case r.End == hostile.GoAway && r.Code == http2.ErrCodeEnhanceYourCalm, r.End == hostile.Closed, r.End == hostile.Reset:
			calm++
		default:
			other[fmt.Sprintf("%s after %d resets", r.Key(), r.Sent)]++
		}
	}
	t.Logf("rapid reset: %d connections, %s; %d streams opened and reset, %d answered; ended by GOAWAY(ENHANCE_YOUR_CALM) or a close: %d; otherwise: %s",
		len(rr.rs), hostile.FormatTally(hostile.Tally(rr.rs)), sent, answers, calm, hostile.FormatTally(other))

	flood, err := hostile.ContinuationFlood(attackCtx, hostile.FloodConfig{
		Target:    hostile.Target{Addr: e.public, Source: attackerIP, Host: appHost, Path: "/f", Duration: 20 * time.Second},
		MaxFrames: 2000, Interval: time.Millisecond})
	require.NoError(t, err)
	before := flood.Written
	if flood.End == hostile.GoAway {
		before = flood.WrittenAtGoAway
	}
	t.Logf("CONTINUATION flood: %+v; frames written before the server reacted: %d", flood, before)

	for i, l := range loads {
		assert.Equal(t, 150, l.Status[http.StatusOK], "every ordinary request (%s) got 200: %s", []string{"HTTP/1.1", "h2c"}[i], l)
	}
	assert.Empty(t, other, "every rapid-reset connection got GOAWAY(ENHANCE_YOUR_CALM) or was closed")
	assert.True(t, flood.End == hostile.GoAway || flood.End == hostile.Closed || flood.End == hostile.Reset,
		"the CONTINUATION flood got GOAWAY or a close; it ended %s", flood.End)
	assert.Less(t, before, 100, "the CONTINUATION flood was stopped before its 100th frame")
}
