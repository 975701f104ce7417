package edgeguard

import (
	"bytes"
	"strconv"
)

// h1Scanner follows the framing of the HTTP/1.x requests on one connection
// from the raw bytes, as net/http's server will read them, to find what
// net/http hides once it has parsed a head: a request that declares both
// Content-Length and Transfer-Encoding (net/http drops the Content-Length
// and reads chunked), or Transfer-Encoding on HTTP/1.0 (net/http ignores
// it and reads by Content-Length). A front proxy that framed such a request
// the other way would see other requests than the gateway does (request
// smuggling, RFC 9112 sections 6.1 and 6.3), so such a request is refused
// with 400 and its connection closed.
//
// The scanner agrees with net/http on every input net/http accepts: a head
// is read line by line (a line ends at LF and one CR before it is dropped;
// a line that starts with a space or a tab continues the previous field,
// joined by one space, as net/textproto does), a body is skipped by its
// Content-Length or by its chunk sizes (chunk lines end in CRLF, as
// net/http requires), trailers are skipped to their blank line. Where
// net/http fails (a malformed head or chunk, a head over its limit),
// net/http closes the connection anyway and the scanner stops: it never
// guesses. FuzzH1ScannerAgreesWithNetHTTP holds it to net/http's reader.
//
// Only the connection's reader feeds a scanner; it is not safe for
// concurrent use. It allocates nothing.
type h1Scanner struct {
	state   uint8
	maxHead int // bytes a head (or trailer) may take before net/http refuses it
	headLen int // bytes of the current head (or trailer) so far

	// The request line: its last bytes hold the version, its first the
	// method.
	tail     [16]byte
	tailN    int
	method   [5]byte
	methodN  int
	lastPOST bool // the previous request was a POST
	crlfSkip int  // leading CR or LF bytes net/http still skips

	// The current header line.
	name   [len("transfer-encoding")]byte // its name so far (first bytes)
	nameN  int
	field  uint8 // fieldCL, fieldTE, fieldOther: what the line (or the field it continues) is
	val    value // the CL or TE value being read
	http10 bool

	// The current head's framing fields.
	cl      value
	clSeen  bool
	clBad   bool // repeated with another value
	te      value
	teCount int
	heads   int // heads completed, in order

	left    uint64 // body or chunk data bytes still to skip; CRLF bytes to check
	excess  int64  // chunk overhead, as net/http counts it
	chunk   uint64 // the chunk size being read
	digits  int    // its hex digits
	phase   uint8  // chunkDigits, chunkBlanks, chunkExt
	cr      bool   // a CR was just seen (chunk line)
	lineLen int    // bytes of the chunk line

	// Results.
	bad       int    // ordinal (1-based) of the first ambiguous head; 0: none
	badReason string // why

	// For tests: the offsets at which requests ended (head and body).
	fed  int
	ends *[]int
}

// Scanner states.
const (
	stReqLine    uint8 = iota // the request line
	stLineStart               // the first byte of a header line
	stBlankCR                 // a header line that began with CR: LF ends the head
	stName                    // a field name
	stValue                   // a CL or TE value
	stSkipLine                // any other field: skip to LF
	stBody                    // left body bytes to skip
	stChunkLine               // a chunk-size line
	stChunkData               // left chunk data bytes to skip
	stChunkCRLF               // the CRLF after chunk data (left bytes of it)
	stTrailStart              // the first byte of a trailer line
	stTrailCR                 // a trailer line that began with CR
	stTrailLine               // a trailer line: skip to LF
	stStopped                 // not following this connection any more
)

// What a header line is.
const (
	fieldOther uint8 = iota
	fieldCL
	fieldTE
)

// maxChunkLine is net/http's limit on a chunk-size line.
const maxChunkLine = 4096

// value collects a field value as net/textproto would hand it to net/http:
// leading and trailing blanks dropped, a run of blanks inside it (or a line
// break of a continued field) as one space. Values of the fields the
// scanner reads are short ("chunked", a number); a longer one is marked
// long, which no accepted value is.
type value struct {
	b       [24]byte
	n       int
	pending bool // blanks seen since the last byte kept
	long    bool
}

func (v *value) reset() { v.n, v.pending, v.long = 0, false, false }

func (v *value) blank() {
	if v.n > 0 {
		v.pending = true
	}
}

func (v *value) add(c byte) {
	if v.pending {
		v.pending = false
		v.add(' ')
	}
	if v.n == len(v.b) {
		v.long = true
		return
	}
	v.b[v.n] = c
	v.n++
}

func (v *value) bytes() []byte { return v.b[:v.n] }

func newH1Scanner(maxHeaderBytes int) h1Scanner {
	if maxHeaderBytes <= 0 {
		maxHeaderBytes = 1 << 20 // net/http's DefaultMaxHeaderBytes
	}
	// net/http reads at most MaxHeaderBytes plus 4096 bytes of a head.
	return h1Scanner{maxHead: maxHeaderBytes + 4096}
}

// stopped reports whether the scanner gave up following the connection.
func (s *h1Scanner) stopped() bool { return s.state == stStopped }

func (s *h1Scanner) stop() { s.state = stStopped }

// feed follows p, the next bytes read from the connection.
func (s *h1Scanner) feed(p []byte) {
	if s.ends != nil {
		// Tests follow offsets byte by byte.
		for i := range p {
			s.feedSome(p[i : i+1])
			s.fed++
		}
		return
	}
	s.feedSome(p)
}

func (s *h1Scanner) feedSome(p []byte) {
	for len(p) > 0 {
		switch s.state {
		case stStopped:
			return
		case stBody, stChunkData:
			n := uint64(len(p))
			if n > s.left {
				n = s.left
			}
			p = p[n:]
			s.left -= n
			if s.left == 0 {
				if s.state == stBody {
					s.startHead()
				} else {
					s.state, s.left = stChunkCRLF, 2
				}
			}
			continue
		case stReqLine:
			if s.crlfSkip > 0 {
				// After a POST, net/http skips up to four CR or LF bytes
				// before the next request line (old clients sent them).
				if p[0] == '\r' || p[0] == '\n' {
					s.crlfSkip--
					p = p[1:]
					continue
				}
				s.crlfSkip = 0
			}
			// Only the method and the version matter: keep the line's
			// first and last bytes.
			i := bytes.IndexByte(p, '\n')
			part := p
			if i >= 0 {
				part = p[:i+1]
			}
			if !s.count(len(part)) {
				return
			}
			s.keepTail(part)
			if s.methodN < len(s.method) {
				s.methodN += copy(s.method[s.methodN:], part)
			}
			p = p[len(part):]
			if i >= 0 {
				s.requestLine()
			}
			continue
		case stSkipLine, stTrailLine:
			i := bytes.IndexByte(p, '\n')
			part := p
			if i >= 0 {
				part = p[:i+1]
			}
			if !s.count(len(part)) {
				return
			}
			p = p[len(part):]
			if i >= 0 {
				if s.state == stSkipLine {
					s.state = stLineStart
				} else {
					s.state = stTrailStart
				}
			}
			continue
		}
		c := p[0]
		p = p[1:]
		s.step(c)
	}
}

// count adds n bytes to the current head or trailer; false if that passes
// net/http's limit (it answers 431, or fails the body, and closes).
func (s *h1Scanner) count(n int) bool {
	s.headLen += n
	if s.headLen > s.maxHead {
		s.stop()
		return false
	}
	return true
}

func (s *h1Scanner) keepTail(part []byte) {
	if len(part) >= len(s.tail) {
		copy(s.tail[:], part[len(part)-len(s.tail):])
		s.tailN = len(s.tail)
		return
	}
	copy(s.tail[:], s.tail[len(part):])
	copy(s.tail[len(s.tail)-len(part):], part)
	s.tailN = min(s.tailN+len(part), len(s.tail))
}

// step handles one byte in a byte-wise state.
func (s *h1Scanner) step(c byte) {
	switch s.state {
	case stLineStart, stBlankCR, stName, stValue, stTrailStart, stTrailCR:
		if !s.count(1) {
			return
		}
	}
	switch s.state {
	case stLineStart:
		switch c {
		case '\n':
			s.endHead()
		case '\r':
			s.state = stBlankCR
		case ' ', '\t':
			// Continues the previous field: its value goes on after one
			// space.
			if s.field == fieldOther {
				s.state = stSkipLine
				return
			}
			s.val.blank()
			s.state = stValue
		default:
			s.endField()
			s.nameN, s.field = 0, fieldOther
			s.state = stName
			s.nameByte(c)
		}
	case stBlankCR:
		if c != '\n' {
			s.stop() // net/http: a field name starting with CR is malformed
			return
		}
		s.endHead()
	case stName:
		s.nameByte(c)
	case stValue:
		switch c {
		case '\n':
			s.state = stLineStart // the field may go on on the next line
		case ' ', '\t':
			s.val.blank()
		case '\r':
			// Dropped before LF; anywhere else net/http refuses the value.
			// The line ends here as far as the value goes.
			s.val.blank()
		default:
			s.val.add(c)
		}
	case stChunkLine:
		s.chunkByte(c)
	case stChunkCRLF:
		if c != "\r\n"[2-s.left] {
			s.stop() // net/http: malformed chunked encoding
			return
		}
		s.left--
		if s.left == 0 {
			s.startChunkLine()
		}
	case stTrailStart:
		switch c {
		case '\n':
			s.startHead()
		case '\r':
			s.state = stTrailCR
		default:
			s.state = stTrailLine
		}
	case stTrailCR:
		if c == '\n' {
			s.startHead()
			return
		}
		s.state = stTrailLine
	}
}

// nameByte takes a byte of a field name.
func (s *h1Scanner) nameByte(c byte) {
	switch c {
	case ':':
		s.field = fieldOf(s.name[:s.nameN])
		switch s.field {
		case fieldCL, fieldTE:
			s.val.reset()
			s.state = stValue
		default:
			s.state = stSkipLine
		}
	case '\n':
		s.stop() // net/http: malformed MIME header line
	default:
		if s.nameN < len(s.name) {
			s.name[s.nameN] = c
			s.nameN++
		} else {
			s.nameN = len(s.name) + 1 // too long to be a name that matters
			s.state = stSkipLine
			s.field = fieldOther
		}
	}
}

// fieldOf tells a Content-Length or Transfer-Encoding field name, in any
// case (net/http refuses a name with blanks before the colon).
func fieldOf(name []byte) uint8 {
	switch {
	case bytes.EqualFold(name, []byte("content-length")):
		return fieldCL
	case bytes.EqualFold(name, []byte("transfer-encoding")):
		return fieldTE
	}
	return fieldOther
}

// endField closes the field whose value was being read, if any.
func (s *h1Scanner) endField() {
	switch s.field {
	case fieldCL:
		if s.clSeen {
			// net/http accepts a repeated value only if it is equal.
			if s.val.long || s.cl.long || !bytes.Equal(s.val.bytes(), s.cl.bytes()) {
				s.clBad = true
			}
		} else {
			s.clSeen, s.cl = true, s.val
		}
	case fieldTE:
		s.teCount++
		s.te = s.val
	}
	s.field = fieldOther
}

// requestLine handles the request line just read: net/http reads the
// version after the line's second space.
func (s *h1Scanner) requestLine() {
	t := s.tail[len(s.tail)-s.tailN:]
	t = t[:len(t)-1] // LF
	if len(t) > 0 && t[len(t)-1] == '\r' {
		t = t[:len(t)-1]
	}
	v := t[bytes.LastIndexByte(t, ' ')+1:]
	// HTTP/1.x with x a digit; net/http honours Transfer-Encoding from 1.1
	// on. Anything else is refused (400 or 505) and the connection closed.
	if len(v) != len("HTTP/1.1") || string(v[:len("HTTP/1.")]) != "HTTP/1." || v[7] < '0' || v[7] > '9' {
		s.stop()
		return
	}
	s.http10 = v[7] == '0'
	s.lastPOST = string(s.method[:s.methodN]) == "POST "
	s.state = stLineStart
}

// startHead gets ready for the next request.
func (s *h1Scanner) startHead() {
	if s.ends != nil {
		*s.ends = append(*s.ends, s.fed+1)
	}
	s.state, s.tailN, s.methodN, s.headLen = stReqLine, 0, 0, 0
	s.crlfSkip = 0
	if s.lastPOST {
		s.crlfSkip = 4
	}
	s.http10, s.field = false, fieldOther
	s.cl.reset()
	s.te.reset()
	s.clSeen, s.clBad, s.teCount = false, false, 0
}

// endHead decides how the body of the head just read is framed, as
// net/http's server will, and flags an ambiguous one.
func (s *h1Scanner) endHead() {
	s.endField()
	s.heads++
	if s.teCount > 0 && (s.clSeen || s.http10) {
		if s.bad == 0 {
			s.bad = s.heads
			if s.http10 {
				s.badReason = "Transfer-Encoding on an HTTP/1.0 request"
			} else {
				s.badReason = "both Content-Length and Transfer-Encoding"
			}
		}
		// The request is refused and the connection closed: nothing
		// after it is ever read as a request.
		s.stop()
		return
	}
	if s.teCount > 0 {
		if s.teCount != 1 || s.te.long || !bytes.EqualFold(s.te.bytes(), []byte("chunked")) {
			s.stop() // net/http refuses it (501) and closes
			return
		}
		s.excess = 0
		s.startChunkLine()
		return
	}
	if s.clSeen {
		n, ok := parseContentLength(s.cl)
		if s.clBad || !ok {
			s.stop()
			return
		}
		if n > 0 {
			s.state, s.left = stBody, n
			return
		}
	}
	s.startHead()
}

// parseContentLength parses a Content-Length value as net/http does:
// decimal digits only.
func parseContentLength(v value) (uint64, bool) {
	b := v.bytes()
	if v.long || len(b) == 0 {
		return 0, false
	}
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseUint(string(b), 10, 63)
	return n, err == nil
}

func (s *h1Scanner) startChunkLine() {
	s.state = stChunkLine
	s.chunk, s.digits, s.phase, s.cr, s.lineLen = 0, 0, chunkDigits, false, 0
}

// chunkByte takes a byte of a chunk-size line, read as net/http does: the
// line ends in CRLF with no other CR and is shorter than 4096 bytes; its
// trailing blanks are dropped, then a ';' extension cut; 1 to 16 hex digits
// must remain. So after the digits come blanks to the end of the line, or
// a ';' and anything.
func (s *h1Scanner) chunkByte(c byte) {
	s.lineLen++
	if s.cr && c != '\n' {
		s.stop() // a CR inside the line
		return
	}
	switch {
	case c == '\n':
		if !s.cr || s.lineLen-2 >= maxChunkLine || s.digits == 0 {
			s.stop()
			return
		}
		s.endChunkLine()
		return
	case c == '\r':
		s.cr = true
		return
	}
	if s.lineLen-1 >= maxChunkLine {
		s.stop()
		return
	}
	switch s.phase {
	case chunkDigits:
		switch c {
		case ';':
			s.phase = chunkExt
			return
		case ' ', '\t':
			s.phase = chunkBlanks
			return
		}
		d, ok := hexDigit(c)
		if !ok || s.digits == 16 {
			s.stop()
			return
		}
		s.chunk = s.chunk<<4 | uint64(d)
		s.digits++
	case chunkBlanks:
		if c != ' ' && c != '\t' {
			s.stop()
		}
	case chunkExt:
		// anything up to the CRLF
	}
}

// Phases of a chunk-size line.
const (
	chunkDigits uint8 = iota
	chunkBlanks
	chunkExt
)

func hexDigit(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

func (s *h1Scanner) endChunkLine() {
	s.excess += int64(s.lineLen)
	s.excess -= 16 + 2*int64(s.chunk)
	s.excess = max(s.excess, 0)
	if s.excess > 16*1024 {
		s.stop() // net/http: too much non-data
		return
	}
	if s.chunk == 0 {
		s.state, s.headLen = stTrailStart, 0
		return
	}
	s.state, s.left = stChunkData, s.chunk
}
