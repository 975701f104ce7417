package hostile

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2conn is a raw HTTP/2 client connection (h2c with prior knowledge). Its
// owner writes frames through it from one goroutine; one read loop reads
// the server's frames, answers SETTINGS and PING, records GOAWAY and hands
// every frame but PING and SETTINGS acknowledgements to onFrame. The owner
// must call close, which waits for the read loop.
type h2conn struct {
	c   net.Conn
	clk clock

	wmu    sync.Mutex // guards the writing half: bw, fr's Write methods, enc, encBuf, nextID
	bw     *bufio.Writer
	fr     *http2.Framer
	enc    *hpack.Encoder
	encBuf bytes.Buffer
	nextID uint32

	settings   chan struct{} // closed when the server's first SETTINGS came
	maxStreams atomic.Uint32 // the server's SETTINGS_MAX_CONCURRENT_STREAMS; 0: not announced
	goAway     chan struct{} // closed on the server's first GOAWAY
	done       chan struct{} // closed when the read loop ended
	stopWatch  func() bool

	mu         sync.Mutex // guards what follows
	goAwaySeen bool
	goAwayCode http2.ErrCode
	goAwayLast uint32
	goAwayAt   time.Duration
	readErr    error
	closedAt   time.Duration
}

// errNoSettings: the server sent no SETTINGS within the dial timeout.
var errNoSettings = errors.New("hostile: no SETTINGS from the server in time")

// dialH2 connects to t from t.Source, sends the preface and our SETTINGS,
// starts the read loop and waits, up to t.DialTimeout, for the server's
// SETTINGS. The connection is closed when ctx ends. onFrame runs on the
// read loop; the frame is valid only until it returns.
func dialH2(ctx context.Context, t *Target, clk clock, settings []http2.Setting, onFrame func(http2.Frame)) (*h2conn, error) {
	c, err := dialFrom(ctx, t.Source, t.Addr, t.DialTimeout)
	if err != nil {
		return nil, err
	}
	h := &h2conn{c: c, clk: clk, nextID: 1, settings: make(chan struct{}), goAway: make(chan struct{}), done: make(chan struct{})}
	h.bw = bufio.NewWriterSize(c, 16<<10)
	h.fr = http2.NewFramer(h.bw, c)
	h.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	h.enc = hpack.NewEncoder(&h.encBuf)
	h.stopWatch = context.AfterFunc(ctx, func() { _ = c.Close() })
	err = h.write(func(fr *http2.Framer) error {
		if _, err := io.WriteString(h.bw, http2.ClientPreface); err != nil {
			return err
		}
		return fr.WriteSettings(append([]http2.Setting{{ID: http2.SettingEnablePush, Val: 0}}, settings...)...)
	})
	if err != nil {
		h.stopWatch()
		_ = c.Close()
		return nil, err
	}
	go h.readLoop(onFrame) // owned by h: ends when c closes, close waits for it
	wait := time.NewTimer(t.DialTimeout)
	defer wait.Stop()
	select {
	case <-h.settings:
		return h, nil
	case <-h.done:
		err = h.err()
	case <-wait.C:
		err = errNoSettings
	case <-ctx.Done():
		err = ctx.Err()
	}
	h.close()
	if err == nil {
		err = io.EOF
	}
	return nil, err
}

// write runs f with the framer under the write lock and flushes.
func (h *h2conn) write(f func(fr *http2.Framer) error) error {
	h.wmu.Lock()
	defer h.wmu.Unlock()
	if err := f(h.fr); err != nil {
		return err
	}
	return h.bw.Flush()
}

// errStreamIDs: the connection used up its stream ids.
var errStreamIDs = errors.New("hostile: out of stream ids")

// headersLocked encodes fields and writes a HEADERS frame on the next
// stream; the caller holds wmu.
func (h *h2conn) headersLocked(fields []hpack.HeaderField, endStream, endHeaders bool) (uint32, error) {
	if h.nextID > 1<<31-1 {
		return 0, errStreamIDs
	}
	id := h.nextID
	h.nextID += 2
	h.encBuf.Reset()
	for _, f := range fields {
		if err := h.enc.WriteField(f); err != nil {
			return 0, err
		}
	}
	return id, h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: h.encBuf.Bytes(), EndStream: endStream, EndHeaders: endHeaders})
}

// openStream opens the next stream with a HEADERS frame. register, if set,
// learns the stream's id before the frame is written, so that the read
// loop can find the stream whatever the server answers.
func (h *h2conn) openStream(fields []hpack.HeaderField, endStream bool, register func(id uint32)) (uint32, error) {
	h.wmu.Lock()
	defer h.wmu.Unlock()
	if h.nextID <= 1<<31-1 && register != nil {
		register(h.nextID)
	}
	id, err := h.headersLocked(fields, endStream, true)
	if err != nil {
		return 0, err
	}
	return id, h.bw.Flush()
}

func (h *h2conn) readLoop(onFrame func(http2.Frame)) {
	defer close(h.done)
	var settled bool
	for {
		f, err := h.fr.ReadFrame()
		if err != nil {
			h.mu.Lock()
			h.readErr, h.closedAt = err, h.clk.since()
			h.mu.Unlock()
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if f.IsAck() {
				continue
			}
			if v, ok := f.Value(http2.SettingMaxConcurrentStreams); ok {
				h.maxStreams.Store(v)
			}
			onFrame(f)
			_ = h.write(func(fr *http2.Framer) error { return fr.WriteSettingsAck() })
			if !settled {
				settled = true
				close(h.settings)
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				_ = h.write(func(fr *http2.Framer) error { return fr.WritePing(true, f.Data) })
			}
		case *http2.GoAwayFrame:
			h.mu.Lock()
			first := !h.goAwaySeen
			if first {
				h.goAwaySeen = true
				h.goAwayCode, h.goAwayLast, h.goAwayAt = f.ErrCode, f.LastStreamID, h.clk.since()
			}
			h.mu.Unlock()
			if first {
				close(h.goAway)
			}
			onFrame(f)
		default:
			onFrame(f)
		}
	}
}

// close closes the connection and waits for the read loop.
func (h *h2conn) close() {
	h.stopWatch()
	_ = h.c.Close()
	<-h.done
}

// err returns the error that ended the read loop.
func (h *h2conn) err() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.readErr
}

// ended reports whether the read loop ended (the server closed the
// connection, or it was closed).
func (h *h2conn) ended() bool {
	select {
	case <-h.done:
		return true
	default:
		return false
	}
}

// goAwayState returns the first GOAWAY, if one came.
func (h *h2conn) goAwayState() (seen bool, code http2.ErrCode, last uint32, at time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.goAwaySeen, h.goAwayCode, h.goAwayLast, h.goAwayAt
}

// verdict says how the connection ended from the server's side, given
// whether the read loop had ended before the tool closed the connection:
// GoAway (with its code) if one came, Closed or Reset if the server ended
// it without, Open if neither; and when.
func (h *h2conn) verdict(serverEnded bool) (End, http2.ErrCode, time.Duration) {
	if seen, code, _, at := h.goAwayState(); seen {
		return GoAway, code, at
	}
	if serverEnded {
		h.mu.Lock()
		defer h.mu.Unlock()
		return endOf(h.readErr), 0, h.closedAt
	}
	return Open, 0, h.clk.since()
}

// waitEnd waits up to d for the server to end the connection, or for ctx.
func (h *h2conn) waitEnd(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-h.done:
	case <-t.C:
	case <-ctx.Done():
	}
}

// requestFields returns the header fields of a request to t.
func requestFields(method string, t *Target, extra ...hpack.HeaderField) []hpack.HeaderField {
	return append([]hpack.HeaderField{
		{Name: ":method", Value: method},
		{Name: ":scheme", Value: "http"},
		{Name: ":authority", Value: t.Host},
		{Name: ":path", Value: t.Path},
		{Name: "user-agent", Value: "hostile"},
	}, extra...)
}
