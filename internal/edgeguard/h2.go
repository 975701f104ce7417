package edgeguard

import (
	"encoding/binary"
	"time"
)

// h2Watcher follows the frames an HTTP/2 client sends, from the raw bytes
// after the connection preface, and finds two kinds of abuse that cost the
// server work without bound while every single frame is legal:
//
//   - rapid reset: streams opened and reset at once (RST_STREAM) in a loop.
//     More than maxResets resets within ResetWindow is abuse.
//   - CONTINUATION flood: a header block continued over more frames than
//     any real client sends (empty frames cost the sender nothing and are
//     never counted by net/http's header size limit). More than
//     MaxContinuations CONTINUATION frames in one block is abuse.
//
// It reads only frame headers and skips payloads by their length. Only the
// connection's reader feeds it; it is not safe for concurrent use.
type h2Watcher struct {
	hdr  [frameHeaderLen]byte
	hn   int    // bytes of hdr held
	skip uint32 // payload bytes of the current frame still to skip

	inBlock    bool   // a header block is open (HEADERS without END_HEADERS)
	conts      int    // CONTINUATION frames in it
	lastStream uint32 // the highest stream the client opened

	maxResets   int
	resets      int
	windowStart time.Time
}

// MaxContinuations is how many CONTINUATION frames one header block may
// take. A client needs a few at most: a 64 KiB header block fits in four
// frames of the default 16 KiB size.
const MaxContinuations = 32

// ResetWindow is the window in which Config.H2MaxResets resets are allowed.
const ResetWindow = 10 * time.Second

const (
	frameHeaderLen    = 9
	frameHeaders      = 0x1
	frameRSTStream    = 0x3
	frameContinue     = 0x9
	flagEndHeaders    = 0x4
	abuseRapidReset   = "rapid reset"
	abuseContinuation = "CONTINUATION flood"
)

// feed follows p, the next bytes from the client; it returns the kind of
// abuse found, or "".
func (w *h2Watcher) feed(p []byte, now func() time.Time) string {
	for len(p) > 0 {
		if w.skip > 0 {
			n := uint32(min(len(p), int(min(w.skip, 1<<30))))
			w.skip -= n
			p = p[n:]
			continue
		}
		n := copy(w.hdr[w.hn:], p)
		w.hn += n
		p = p[n:]
		if w.hn < frameHeaderLen {
			return ""
		}
		w.hn = 0
		length := uint32(w.hdr[0])<<16 | uint32(w.hdr[1])<<8 | uint32(w.hdr[2])
		typ, flags := w.hdr[3], w.hdr[4]
		w.skip = length
		switch typ {
		case frameHeaders:
			w.inBlock, w.conts = flags&flagEndHeaders == 0, 0
			if id := binary.BigEndian.Uint32(w.hdr[5:]) & (1<<31 - 1); id > w.lastStream {
				w.lastStream = id
			}
		case frameContinue:
			w.conts++
			if w.conts > MaxContinuations {
				return abuseContinuation
			}
			if flags&flagEndHeaders != 0 {
				w.inBlock = false
			}
		case frameRSTStream:
			t := now()
			if t.Sub(w.windowStart) > ResetWindow {
				w.windowStart, w.resets = t, 0
			}
			w.resets++
			if w.maxResets > 0 && w.resets > w.maxResets {
				return abuseRapidReset
			}
		}
	}
	return ""
}

// frameTracker follows a stream of HTTP/2 frames by their headers only, to
// tell whether it stands between two frames. Not safe for concurrent use.
type frameTracker struct {
	hdr  [frameHeaderLen]byte
	hn   int
	skip uint32
}

func (f *frameTracker) feed(p []byte) {
	for len(p) > 0 {
		if f.skip > 0 {
			n := uint32(min(len(p), int(min(f.skip, 1<<30))))
			f.skip -= n
			p = p[n:]
			continue
		}
		n := copy(f.hdr[f.hn:], p)
		f.hn += n
		p = p[n:]
		if f.hn == frameHeaderLen {
			f.hn = 0
			f.skip = uint32(f.hdr[0])<<16 | uint32(f.hdr[1])<<8 | uint32(f.hdr[2])
		}
	}
}

// atBoundary reports whether the bytes fed so far end with a whole frame.
func (f *frameTracker) atBoundary() bool { return f.hn == 0 && f.skip == 0 }
