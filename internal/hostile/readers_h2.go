package hostile

import (
	"context"
	"strconv"
	"sync"
	"time"

	"golang.org/x/net/http2"
)

// h2Reader is the state of one HTTP/2 slow reader, shared by its owner
// (which grants window at its pace) and the read loop.
type h2Reader struct {
	clk   clock
	ended chan struct{} // closed when the stream ended
	slot  slot          // started by the read loop when the head comes; done by the owner once it ended

	mu      sync.Mutex // guards what follows
	r       ReaderResult
	id      uint32
	pending uint32 // flow-controlled bytes received and not yet granted back
	fast    bool   // grant back at once: the reader reads at full speed
	done    bool
	h       *h2conn
}

func (cfg *SlowReadersConfig) h2(ctx context.Context, clk clock) ReaderResult {
	window := uint32(initialWindow)
	if cfg.Window > 0 {
		window = uint32(cfg.Window)
	}
	rd := &h2Reader{clk: clk, ended: make(chan struct{}), r: ReaderResult{Length: -1}, slot: slot{l: cfg.Live}}
	defer rd.slot.done() // after the read loop ended: see close below
	h, err := dialH2(ctx, &cfg.Target, clk, []http2.Setting{{ID: http2.SettingInitialWindowSize, Val: window}}, rd.onFrame)
	if err != nil {
		return ReaderResult{Length: -1, End: DialFailed, At: clk.since(), Err: err}
	}
	rd.mu.Lock()
	rd.h = h
	rd.mu.Unlock()
	// The connection's window starts at 65535 whatever the settings say:
	// widen it to the stream's, so that only the stream's limits the
	// answer.
	if window > initialWindow {
		_ = h.write(func(fr *http2.Framer) error { return fr.WriteWindowUpdate(0, window-initialWindow) })
	}
	_, err = h.openStream(requestFields("GET", &cfg.Target), true, func(id uint32) {
		rd.mu.Lock()
		rd.id = id
		rd.mu.Unlock()
	})
	if err == nil {
		cfg.readH2(ctx, h, rd)
	}
	serverEnded := h.ended()
	h.close()
	rd.mu.Lock()
	defer rd.mu.Unlock()
	if !rd.done {
		rd.r.End, rd.r.Code, rd.r.At = h.verdict(serverEnded)
		if err != nil {
			rd.r.Err = err
		}
	}
	return rd.r
}

// readH2 grants window at the reader's pace until the stream or the
// connection ends or ctx does.
func (cfg *SlowReadersConfig) readH2(ctx context.Context, h *h2conn, rd *h2Reader) {
	hold, stopHold := cfg.holdTimer()
	defer stopHold()
	var tick <-chan time.Time
	if cfg.Chunk > 0 {
		t := time.NewTicker(cfg.Interval)
		defer t.Stop()
		tick = t.C
	}
	resume := cfg.Resume
	for {
		select {
		case <-rd.ended:
			return
		case <-h.done:
			return
		case <-ctx.Done():
			return
		case <-tick:
			rd.grant(uint32(cfg.Chunk))
		case <-hold:
			hold, resume, tick = nil, nil, nil
			rd.speedUp()
		case <-resume:
			hold, resume, tick = nil, nil, nil
			rd.speedUp()
		}
	}
}

// grant gives back up to n bytes of window, stream and connection.
func (rd *h2Reader) grant(n uint32) {
	rd.mu.Lock()
	n = min(n, rd.pending)
	rd.pending -= n
	id, h, done := rd.id, rd.h, rd.done
	rd.mu.Unlock()
	if n == 0 {
		return
	}
	_ = h.write(func(fr *http2.Framer) error {
		if !done {
			if err := fr.WriteWindowUpdate(id, n); err != nil {
				return err
			}
		}
		return fr.WriteWindowUpdate(0, n)
	})
}

// speedUp makes the reader read at full speed from now on.
func (rd *h2Reader) speedUp() {
	rd.mu.Lock()
	rd.fast = true
	rd.mu.Unlock()
	rd.grant(1<<31 - 1)
}

// onFrame runs on the read loop.
func (rd *h2Reader) onFrame(f http2.Frame) {
	rd.mu.Lock()
	var grant uint32
	switch f := f.(type) {
	case *http2.MetaHeadersFrame:
		if f.StreamID == rd.id && rd.r.Status == 0 {
			if st, err := strconv.Atoi(f.PseudoValue("status")); err == nil && st >= 200 {
				rd.r.Status = st
				rd.slot.start()
				for _, hf := range f.RegularFields() {
					if hf.Name == "content-length" {
						if cl, err := strconv.ParseInt(hf.Value, 10, 64); err == nil {
							rd.r.Length = cl
						}
					}
				}
			}
		}
		if f.StreamID == rd.id && f.StreamEnded() {
			rd.endLocked(Complete, 0)
		}
	case *http2.DataFrame:
		if f.StreamID == rd.id {
			rd.r.Got += int64(len(f.Data()))
			rd.pending += f.Length
			if rd.fast {
				grant = rd.pending
			}
			if f.StreamEnded() {
				rd.endLocked(Complete, 0)
			}
		}
	case *http2.RSTStreamFrame:
		if f.StreamID == rd.id {
			rd.endLocked(Reset, f.ErrCode)
		}
	case *http2.GoAwayFrame:
		if rd.id > f.LastStreamID || f.ErrCode != http2.ErrCodeNo {
			rd.endLocked(GoAway, f.ErrCode)
		}
	}
	rd.mu.Unlock()
	if grant > 0 {
		rd.grant(grant)
	}
}

func (rd *h2Reader) endLocked(end End, code http2.ErrCode) {
	if rd.done {
		return
	}
	rd.done = true
	rd.r.End, rd.r.Code, rd.r.At = end, code, rd.clk.since()
	close(rd.ended)
}
