package codec

import (
	"fmt"
	"net/http"
	"net/textproto"
)

func appendString(b []byte, s string) []byte {
	return append(AppendVarint(b, uint64(len(s))), s...)
}

func appendBytes(b, p []byte) []byte {
	return append(AppendVarint(b, uint64(len(p))), p...)
}

// appendHeader writes a field count and then each name/value pair, in map
// order: the encoding of a header is not canonical, its meaning is.
func appendHeader(b []byte, h http.Header) []byte {
	n := 0
	for _, vs := range h {
		n += len(vs)
	}
	b = AppendVarint(b, uint64(n))
	for k, vs := range h {
		for _, v := range vs {
			b = appendString(appendString(b, k), v)
		}
	}
	return b
}

// decoder reads fields from a payload. The first error sticks; later reads
// return zero values, so a parser checks d.err once at the end.
//
// A decoder made by newStringDecoder turns the whole payload into one string
// up front and hands out substrings of it: a head with twenty fields costs
// one string allocation, not forty.
type decoder struct {
	b    []byte // the unread rest of the payload
	full int    // length of the whole payload
	s    string // the whole payload as a string, if made by newStringDecoder
	err  error
}

func newStringDecoder(p []byte) decoder {
	return decoder{b: p, full: len(p), s: string(p)}
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: "+format, append([]any{ErrMalformed}, args...)...)
	}
}

func (d *decoder) varint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n, err := ParseVarint(d.b)
	if err != nil {
		d.fail("truncated integer")
		return 0
	}
	d.b = d.b[n:]
	return v
}

// count reads a number of items that follow, each at least one byte: a
// count larger than the rest of the payload is malformed (and cannot make
// the parser loop or allocate for nothing).
func (d *decoder) count() uint64 {
	n := d.varint()
	if n > uint64(len(d.b)) {
		d.fail("count %d overruns payload", n)
		return 0
	}
	return n
}

func (d *decoder) u8() uint8 {
	if d.err != nil {
		return 0
	}
	if len(d.b) == 0 {
		d.fail("truncated byte")
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

// bytes returns a sub-slice of the payload: no copy.
func (d *decoder) bytes() []byte {
	l := d.varint()
	if d.err != nil {
		return nil
	}
	if l > uint64(len(d.b)) {
		d.fail("field of %d bytes overruns payload", l)
		return nil
	}
	p := d.b[:l:l]
	d.b = d.b[l:]
	return p
}

func (d *decoder) str() string {
	if d.s == "" {
		return string(d.bytes())
	}
	l := d.varint()
	if d.err != nil {
		return ""
	}
	if l > uint64(len(d.b)) {
		d.fail("field of %d bytes overruns payload", l)
		return ""
	}
	start := d.full - len(d.b)
	d.b = d.b[l:]
	return d.s[start : start+int(l)]
}

// header reads a field list into h (cleared first) or, if h is nil, a new
// http.Header, canonicalising names and rejecting names and values that
// could smuggle a header across the tunnel. Values share one backing array:
// a header costs a map (unless given one) and one slice.
func (d *decoder) header(h http.Header) http.Header {
	n := d.varint()
	if d.err != nil {
		return nil
	}
	// Each field takes at least two bytes; a larger count is a lie.
	if n > uint64(len(d.b))/2 {
		d.fail("field count %d overruns payload", n)
		return nil
	}
	if h == nil {
		h = make(http.Header, n)
	} else {
		clear(h)
	}
	vals := make([]string, n)
	for i := range vals {
		name := d.str()
		value := d.str()
		if d.err != nil {
			return nil
		}
		if !validFieldName(name) {
			d.fail("invalid field name %q", name)
			return nil
		}
		if !validFieldValue(value) {
			d.fail("invalid value for field %q", name)
			return nil
		}
		k := textproto.CanonicalMIMEHeaderKey(name)
		if prior, ok := h[k]; ok {
			h[k] = append(prior, value) // a repeated name: rare, may copy
			continue
		}
		vals[i] = value
		h[k] = vals[i : i+1 : i+1]
	}
	return h
}

func (d *decoder) done() error {
	if d.err == nil && len(d.b) != 0 {
		d.fail("%d trailing bytes", len(d.b))
	}
	return d.err
}

// validFieldName reports whether name is an RFC 9110 token.
func validFieldName[T string | []byte](name T) bool {
	if len(name) == 0 {
		return false
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; int(c) >= len(tokenTable) || !tokenTable[c] {
			return false
		}
	}
	return true
}

// validFieldValue rejects the bytes that end or split a field: NUL, CR, LF.
func validFieldValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; c == 0 || c == '\r' || c == '\n' {
			return false
		}
	}
	return true
}

var tokenTable = func() (t [127]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
	}
	for c := 'A'; c <= 'Z'; c++ {
		t[c] = true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()
