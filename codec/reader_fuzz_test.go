package codec_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/codec"
)

// chunkReader hands data out in reads of the sizes listed in sizes (each
// 1 + sizes[i], cycling; whole reads if sizes is empty), the last one
// together with io.EOF as io.Reader allows: the short reads a QUIC stream
// makes.
type chunkReader struct {
	data  []byte
	sizes []byte
	i     int
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := len(p)
	if len(c.sizes) > 0 {
		n = min(n, 1+int(c.sizes[c.i%len(c.sizes)]))
		c.i++
	}
	n = copy(p, c.data[:min(n, len(c.data))])
	c.data = c.data[n:]
	if len(c.data) == 0 {
		return n, io.EOF
	}
	return n, nil
}

// script hands out the bytes of a fuzzed input one at a time, to steer a
// test's choices; ok is false once it is used up.
type script struct {
	b []byte
	i int
}

func (s *script) next() (byte, bool) {
	if s.i >= len(s.b) {
		return 0, false
	}
	s.i++
	return s.b[s.i-1], true
}

// refFrame is a frame found by parseAll.
type refFrame struct {
	typ     codec.FrameType
	length  int    // the declared payload length
	payload []byte // the payload: shorter than length only for a cut DATA frame
	end     int    // offset of the frame's end in the input
}

// parseAll is the reference reading of a whole input with ParseFrameHeader:
// the frames, and then io.EOF (the input ends between frames),
// io.ErrUnexpectedEOF (it ends inside one; a DATA frame cut short is still
// listed with the bytes that came) or the header's error.
func parseAll(in []byte, max int) ([]refFrame, error) {
	var out []refFrame
	off := 0
	for {
		if off == len(in) {
			return out, io.EOF
		}
		typ, l, n, err := codec.ParseFrameHeader(in[off:], max)
		switch {
		case errors.Is(err, codec.ErrShort):
			return out, io.ErrUnexpectedEOF
		case err != nil:
			return out, err
		}
		start := off + n
		if l > len(in)-start {
			if typ == codec.FrameData {
				out = append(out, refFrame{typ: typ, length: l, payload: in[start:], end: len(in)})
			}
			return out, io.ErrUnexpectedEOF
		}
		off = start + l
		out = append(out, refFrame{typ: typ, length: l, payload: in[start:off], end: off})
	}
}

// requireSameEnd checks the error that ends a Reader against the reference.
func requireSameEnd(t *testing.T, want, got error) {
	t.Helper()
	if want == io.EOF {
		require.Equal(t, io.EOF, got, "a stream that ends between frames ends with io.EOF itself")
		return
	}
	require.Error(t, got)
	if errors.Is(want, codec.ErrTooLarge) {
		require.ErrorIs(t, got, codec.ErrTooLarge)
		return
	}
	require.ErrorIs(t, got, want)
}

// FuzzVarint checks ParseVarint against a decoding written out here, and
// that AppendVarint writes the minimal encoding of what it parsed.
func FuzzVarint(f *testing.F) {
	for _, v := range []uint64{0, 63, 64, 16383, 16384, 1<<30 - 1, 1 << 30, codec.MaxVarint} {
		f.Add(codec.AppendVarint(nil, v))
	}
	f.Add([]byte{0x80, 0, 0, 5})          // a non-minimal four-byte 5, as frame headers carry
	f.Add([]byte{0xc0, 0, 0, 0, 0, 0, 0}) // cut short
	f.Fuzz(func(t *testing.T, b []byte) {
		v, n, err := codec.ParseVarint(b)
		if len(b) == 0 || len(b) < 1<<(b[0]>>6) {
			require.ErrorIs(t, err, codec.ErrShort)
			return
		}
		require.NoError(t, err)
		size := 1 << (b[0] >> 6)
		require.Equal(t, size, n)
		var full [8]byte
		copy(full[8-size:], b[:size])
		full[8-size] &= 0x3f
		require.Equal(t, binary.BigEndian.Uint64(full[:]), v)
		require.LessOrEqual(t, v, uint64(codec.MaxVarint))

		enc := codec.AppendVarint([]byte("x"), v)[1:]
		require.Len(t, enc, codec.VarintLen(v))
		require.LessOrEqual(t, len(enc), n, "the minimal encoding is never longer")
		again, m, err := codec.ParseVarint(append(enc, b...))
		require.NoError(t, err)
		require.Equal(t, v, again)
		require.Equal(t, len(enc), m)
		if len(enc) > 1 {
			require.Greater(t, v, uint64(1)<<(8*len(enc)/2-2)-1, "%d fits a shorter encoding", v)
		}
	})
}

// FuzzFrameHeader checks ParseFrameHeader: it reads a type byte and a
// varint, refuses lengths over max with ErrTooLarge and short input with
// ErrShort, and agrees with AppendFrameHeader.
func FuzzFrameHeader(f *testing.F) {
	f.Add(codec.AppendData(nil, []byte("abc")), uint32(codec.DefaultMaxFrameSize))
	f.Add(codec.AppendFrameHeader(nil, codec.MsgSnapshot, 1<<20), uint32(16<<20))
	f.Add(codec.AppendFrameHeader(nil, codec.FrameData, 100), uint32(99))
	f.Add([]byte{0x05, 0x00}, uint32(0))
	f.Add([]byte{0x03, 0xc0, 0xff}, uint32(1<<31))
	f.Fuzz(func(t *testing.T, b []byte, max uint32) {
		typ, l, n, err := codec.ParseFrameHeader(b, int(max))
		if len(b) < 2 || len(b) < 1+1<<(b[1]>>6) {
			require.ErrorIs(t, err, codec.ErrShort)
			return
		}
		declared, size, verr := codec.ParseVarint(b[1:])
		require.NoError(t, verr)
		if declared > uint64(max) {
			require.ErrorIs(t, err, codec.ErrTooLarge)
			return
		}
		require.NoError(t, err)
		require.Equal(t, codec.FrameType(b[0]), typ)
		require.Equal(t, 1+size, n)
		require.Equal(t, declared, uint64(l))
		require.LessOrEqual(t, l, int(max))
		if l <= codec.MaxPayload {
			enc := codec.AppendFrameHeader(nil, typ, l)
			require.Len(t, enc, codec.FrameHeaderLen)
			typ2, l2, n2, err := codec.ParseFrameHeader(enc, l)
			require.NoError(t, err)
			require.Equal(t, []any{typ, l, codec.FrameHeaderLen}, []any{typ2, l2, n2})
		}
	})
}

// readerSeeds are valid streams for the Reader targets.
func readerSeeds() [][]byte {
	var body []byte
	body = codec.AppendRequest(body, &codec.RequestHead{Kind: codec.KindHTTP, Method: "POST", Path: "/up", ContentLength: 11})
	body = codec.AppendData(body, []byte("hello "))
	body = codec.AppendData(body, nil)
	body = codec.AppendData(body, []byte("world"))
	body = codec.AppendTrailers(body, http.Header{"Grpc-Status": {"0"}})
	body = codec.AppendEnd(body)
	upgrade := codec.AppendRequest(nil, &codec.RequestHead{Kind: codec.KindUpgrade, Method: "GET", Path: "/ws", Header: http.Header{"Upgrade": {"websocket"}}})
	upgrade = append(upgrade, "raw websocket bytes after the head"...)
	control := codec.AppendHello(nil, &codec.Hello{Version: 1, ClientID: "c", Token: "t"})
	control = codec.AppendPing(control, codec.Ping{Nonce: 1, Padding: 32}, false)
	control = codec.AppendSnapshot(control, &codec.Snapshot{Version: 1, Rules: []byte("[]")})
	big := codec.AppendData(nil, bytes.Repeat([]byte("0123456789abcdef"), 260)) // larger than the 4 KiB read-ahead buffer
	minimal := []byte{byte(codec.FrameData), 3, 'a', 'b', 'c', byte(codec.FrameEnd), 0x40, 0}
	return [][]byte{body, upgrade, control, big, minimal}
}

// FuzzReader reads arbitrary bytes, delivered in reads of fuzzed sizes,
// with a Reader, steered by script: DATA payloads read whole, in part or
// skipped, and at some frame boundary a switch to raw bytes. Whatever the
// input, the Reader never hands out more than max payload bytes per frame,
// agrees frame by frame with the reference reading (ParseFrameHeader on the
// whole input), and in raw mode yields exactly the bytes after the last
// frame.
func FuzzReader(f *testing.F) {
	for i, s := range readerSeeds() {
		f.Add(s, []byte{byte(i), 200, 3}, uint16(codec.DefaultMaxFrameSize-1))
	}
	f.Add(readerSeeds()[1], []byte{1, 0, 0}, uint16(64))
	f.Add(readerSeeds()[3], []byte{2, 1, 7}, uint16(1024))
	f.Fuzz(func(t *testing.T, in, steer []byte, max uint16) {
		limit := int(max)
		want, tail := parseAll(in, limit)
		r := codec.NewReader(&chunkReader{data: in, sizes: steer}, limit)
		s := &script{b: steer}
		end := 0      // offset just past the last frame read whole
		clean := true // no DATA payload is left unread
		for i := 0; ; i++ {
			if op, ok := s.next(); ok && op%16 == 15 && clean {
				// Switch to raw bytes, as an upgrade or TCP stream does.
				require.True(t, bytes.HasPrefix(in[end:], r.Buffered()), "read-ahead is the stream's next bytes")
				rest, err := io.ReadAll(r.Raw())
				require.NoError(t, err)
				require.Equal(t, string(in[end:]), string(rest))
				return
			}
			typ, p, err := r.Next()
			if i == len(want) {
				requireSameEnd(t, tail, err)
				return
			}
			require.NoError(t, err, "frame %d", i)
			w := want[i]
			require.Equal(t, w.typ, typ, "frame %d", i)
			if typ != codec.FrameData {
				require.LessOrEqual(t, len(p), limit)
				require.Equal(t, string(w.payload), string(p), "frame %d", i)
				end, clean = w.end, true
				continue
			}
			require.Nil(t, p, "a DATA payload is left to ReadData")
			require.Equal(t, w.length, r.DataLeft())
			require.LessOrEqual(t, r.DataLeft(), limit)
			op, _ := s.next()
			switch op % 4 {
			case 1: // skip: Next discards the payload
				if w.length == 0 {
					end, clean = w.end, true
				} else {
					clean = false
				}
				continue
			case 2: // read part, then move on
				buf := make([]byte, 1+int(op>>2))
				n, err := r.ReadData(buf)
				require.Equal(t, string(w.payload[:n]), string(buf[:n]))
				if err != nil {
					require.Less(t, len(w.payload), w.length, "only a cut DATA frame fails")
					require.ErrorIs(t, err, io.ErrUnexpectedEOF)
					return
				}
				clean = r.DataLeft() == 0
				if clean {
					end = w.end
				}
				continue
			}
			var got []byte
			for r.DataLeft() > 0 {
				size := 64 << 10
				if v, ok := s.next(); ok {
					size = 1 + int(v)*int(v)
				}
				buf := make([]byte, size)
				n, err := r.ReadData(buf)
				got = append(got, buf[:n]...)
				if err != nil {
					require.Less(t, len(w.payload), w.length, "only a cut DATA frame fails")
					require.ErrorIs(t, err, io.ErrUnexpectedEOF)
					require.Equal(t, string(w.payload), string(got))
					return
				}
				require.Positive(t, n, "ReadData makes progress")
			}
			require.Equal(t, string(w.payload), string(got), "frame %d", i)
			require.LessOrEqual(t, len(got), limit)
			n, err := r.ReadData(make([]byte, 8))
			require.Zero(t, n)
			require.NoError(t, err, "a used-up DATA frame reads 0, nil")
			end, clean = w.end, true
		}
	})
}

// appendHeaderWidth appends a frame header whose length varint takes 1, 2,
// 4 or 8 bytes (1 << width), or the smallest that holds length: readers
// must accept any valid varint, not only the four bytes writers use.
func appendHeaderWidth(b []byte, typ codec.FrameType, length int, width byte) []byte {
	size := max(1<<(width%4), codec.VarintLen(uint64(length)))
	if size == codec.FrameHeaderLen-1 {
		return codec.AppendFrameHeader(b, typ, length)
	}
	var full [8]byte
	binary.BigEndian.PutUint64(full[:], uint64(length))
	enc := full[8-size:]
	enc[0] |= byte(bits(size)) << 6
	return append(append(b, byte(typ)), enc...)
}

func bits(size int) int {
	switch size {
	case 1:
		return 0
	case 2:
		return 1
	case 4:
		return 2
	}
	return 3
}

// FuzzReaderRoundTrip builds a valid frame sequence from spec (three bytes
// per frame, type, header width and length, then payload bytes), writes it
// with varied length encodings and reads it back through short reads: the
// same frames, then io.EOF. With a limit one below the largest payload, the
// frames before the first one that large still read and that one fails
// with ErrTooLarge.
func FuzzReaderRoundTrip(f *testing.F) {
	f.Add([]byte{1, 2, 5, 'h', 'e', 'l', 'l', 'o', 3, 0, 3, 'a', 'b', 'c', 5, 3, 0}, []byte{0, 1, 2})
	f.Add([]byte{3, 0xfe, 200, 'x', 0x10, 1, 64}, []byte{})
	f.Add([]byte{3, 0, 0, 3, 1, 0, 3, 2, 0, 3, 3, 0}, []byte{255})
	f.Fuzz(func(t *testing.T, spec, chunks []byte) {
		var frames []refFrame
		var enc []byte
		largest := 0
		for len(spec) >= 3 && len(frames) < 64 {
			typ, width := codec.FrameType(spec[0]), spec[1]
			length := int(spec[2]) * (1 + int(width>>2)) // up to 255 * 64 bytes
			spec = spec[3:]
			payload := make([]byte, length)
			for i := range payload {
				if len(spec) > 0 {
					payload[i] = spec[i%len(spec)]
				}
			}
			spec = spec[min(length, len(spec)):]
			enc = append(appendHeaderWidth(enc, typ, length, width), payload...)
			frames = append(frames, refFrame{typ: typ, length: length, payload: payload})
			largest = max(largest, length)
		}

		readAll := func(limit int) (int, error) {
			r := codec.NewReader(&chunkReader{data: enc, sizes: chunks}, limit)
			for i := 0; ; i++ {
				typ, p, err := r.Next()
				if err != nil {
					return i, err
				}
				require.Less(t, i, len(frames), "more frames than were written")
				require.Equal(t, frames[i].typ, typ)
				if typ == codec.FrameData {
					require.Equal(t, frames[i].length, r.DataLeft())
					p = make([]byte, r.DataLeft())
					n, err := io.ReadFull(readerFunc(r.ReadData), p)
					require.NoError(t, err)
					require.Equal(t, len(p), n)
				}
				require.Equal(t, string(frames[i].payload), string(p))
			}
		}
		n, err := readAll(largest)
		require.Equal(t, io.EOF, err)
		require.Len(t, frames, n)
		if largest == 0 {
			return
		}
		n, err = readAll(largest - 1)
		require.ErrorIs(t, err, codec.ErrTooLarge)
		first := 0
		for frames[first].length != largest {
			first++
		}
		require.Equal(t, first, n, "frames before the first too large one read fine")
	})
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }
