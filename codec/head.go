package codec

import (
	"fmt"
	"net/http"
)

// Kind says what a stream carries after the request head.
type Kind uint8

const (
	// KindHTTP is an HTTP exchange: heads, DATA frames, optional TRAILERS,
	// END, in each direction.
	KindHTTP Kind = 1
	// KindUpgrade is an HTTP upgrade (WebSocket): after a 101 response head
	// both directions carry raw bytes until FIN.
	KindUpgrade Kind = 2
	// KindTCP is a raw byte stream after the request head.
	KindTCP Kind = 3
)

func (k Kind) String() string {
	switch k {
	case KindHTTP:
		return "http"
	case KindUpgrade:
		return "upgrade"
	case KindTCP:
		return "tcp"
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// RequestHead opens a stream: what to reach and how.
type RequestHead struct {
	Kind        Kind
	RuleID      string // the rule that routed the request on the ingress side
	RequestID   string // echoed in logs and the X-Request-Id header on both sides
	TraceParent string // W3C traceparent, empty if none
	TraceState  string // W3C tracestate, empty if none
	Method      string
	Scheme      string // as the ingress listener saw it: "http" or "https"
	Authority   string // the Host the client asked for
	Path        string // request target: path and query, as sent by the client
	// ContentLength is the body length in bytes, or -1 if unknown.
	ContentLength int64
	// Header holds end-to-end fields only; Content-Length travels above.
	Header http.Header
}

// ResponseHead starts the answer on a stream.
type ResponseHead struct {
	Status int
	// ContentLength is the body length in bytes, or -1 if unknown.
	ContentLength int64
	Header        http.Header
}

// AppendRequest appends a REQUEST frame.
func AppendRequest(b []byte, h *RequestHead) []byte {
	b, start := beginFrame(b, FrameRequest)
	b = append(b, byte(h.Kind))
	b = appendString(b, h.RuleID)
	b = appendString(b, h.RequestID)
	b = appendString(b, h.TraceParent)
	b = appendString(b, h.TraceState)
	b = appendString(b, h.Method)
	b = appendString(b, h.Scheme)
	b = appendString(b, h.Authority)
	b = appendString(b, h.Path)
	b = AppendVarint(b, uint64(h.ContentLength+1))
	b = appendHeader(b, h.Header)
	return endFrame(b, start)
}

// ParseRequest decodes the payload of a REQUEST frame into h.
func ParseRequest(p []byte, h *RequestHead) error {
	d := newStringDecoder(p)
	h.Kind = Kind(d.u8())
	h.RuleID = d.str()
	h.RequestID = d.str()
	h.TraceParent = d.str()
	h.TraceState = d.str()
	h.Method = d.str()
	h.Scheme = d.str()
	h.Authority = d.str()
	h.Path = d.str()
	h.ContentLength = int64(d.varint()) - 1
	h.Header = d.header(nil)
	if err := d.done(); err != nil {
		return err
	}
	if h.Kind < KindHTTP || h.Kind > KindTCP {
		return fmt.Errorf("%w: unknown stream kind %d", ErrMalformed, h.Kind)
	}
	if h.Kind != KindTCP && (h.Method == "" || !validFieldName(h.Method)) {
		return fmt.Errorf("%w: invalid method %q", ErrMalformed, h.Method)
	}
	if h.ContentLength < -1 {
		return fmt.Errorf("%w: content length %d", ErrMalformed, h.ContentLength)
	}
	return nil
}

// AppendResponse appends a RESPONSE frame.
func AppendResponse(b []byte, h *ResponseHead) []byte {
	b, start := beginFrame(b, FrameResponse)
	b = AppendVarint(b, uint64(h.Status))
	b = AppendVarint(b, uint64(h.ContentLength+1))
	b = appendHeader(b, h.Header)
	return endFrame(b, start)
}

// ParseResponse decodes the payload of a RESPONSE frame into h. If
// h.Header is not nil it is cleared and reused.
func ParseResponse(p []byte, h *ResponseHead) error {
	d := newStringDecoder(p)
	status := d.varint()
	h.ContentLength = int64(d.varint()) - 1
	h.Header = d.header(h.Header)
	if err := d.done(); err != nil {
		return err
	}
	if status < 100 || status > 999 {
		return fmt.Errorf("%w: status %d", ErrMalformed, status)
	}
	h.Status = int(status)
	if h.ContentLength < -1 {
		return fmt.Errorf("%w: content length %d", ErrMalformed, h.ContentLength)
	}
	return nil
}

// AppendTrailers appends a TRAILERS frame.
func AppendTrailers(b []byte, t http.Header) []byte {
	b, start := beginFrame(b, FrameTrailers)
	b = appendHeader(b, t)
	return endFrame(b, start)
}

// ParseTrailers decodes the payload of a TRAILERS frame.
func ParseTrailers(p []byte) (http.Header, error) {
	d := newStringDecoder(p)
	t := d.header(nil)
	if err := d.done(); err != nil {
		return nil, err
	}
	return t, nil
}

// Error is the payload of an ERROR frame: the far side could not answer.
// Status is the HTTP status the ingress side should give its client;
// RetryAfter, in seconds, is sent as Retry-After when non-zero.
type Error struct {
	Status     int
	RetryAfter uint32
	Message    string
}

func (e *Error) Error() string {
	return fmt.Sprintf("peer answered %d: %s", e.Status, e.Message)
}

// AppendError appends an ERROR frame.
func AppendError(b []byte, e *Error) []byte {
	return appendErrorFrame(b, FrameError, e)
}

func appendErrorFrame(b []byte, t FrameType, e *Error) []byte {
	b, start := beginFrame(b, t)
	b = AppendVarint(b, uint64(e.Status))
	b = AppendVarint(b, uint64(e.RetryAfter))
	b = appendString(b, e.Message)
	return endFrame(b, start)
}

// ParseError decodes the payload of an ERROR frame.
func ParseError(p []byte) (*Error, error) {
	d := decoder{b: p}
	status := d.varint()
	retry := d.varint()
	msg := d.str()
	if err := d.done(); err != nil {
		return nil, err
	}
	if status < 100 || status > 999 || retry > 1<<32-1 {
		return nil, fmt.Errorf("%w: error status %d retry %d", ErrMalformed, status, retry)
	}
	return &Error{Status: int(status), RetryAfter: uint32(retry), Message: msg}, nil
}
