// Package httpx holds the HTTP details both sides of the tunnel agree on:
// which headers are hop-by-hop, how request ids look, how the gateway's own
// error answers are written.
package httpx

import (
	"encoding/json"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"net/textproto"
	"strconv"
	"strings"
	"time"
)

// RequestIDHeader carries the request id to the upstream and back to the user.
const RequestIDHeader = "X-Request-Id"

// hopHeaders are meaningful for one connection only (RFC 9110, section 7.6.1)
// and never cross the tunnel. "Te" is handled apart: "trailers" must reach
// gRPC upstreams.
var hopHeaders = []string{
	"Connection",
	"Proxy-Connection",
	"Keep-Alive",
	"Proxy-Authenticate",
	"Proxy-Authorization",
	"Transfer-Encoding",
	"Upgrade",
}

// RemoveHopByHop deletes hop-by-hop fields from h in place: the fixed list,
// every field named in Connection, and TE unless it is exactly "trailers".
func RemoveHopByHop(h http.Header) {
	for _, v := range h["Connection"] {
		for name := range strings.SplitSeq(v, ",") {
			if name = textproto.TrimString(name); name != "" {
				h.Del(name)
			}
		}
	}
	for _, k := range hopHeaders {
		delete(h, k)
	}
	if te, ok := h["Te"]; ok && (len(te) != 1 || !strings.EqualFold(te[0], "trailers")) {
		delete(h, "Te")
	}
}

// NewRequestID returns 16 random hex digits. Unique enough to find a request
// in logs; not a secret.
func NewRequestID() string {
	var b [16]byte
	v := rand.Uint64()
	const hexdigits = "0123456789abcdef"
	for i := len(b) - 1; i >= 0; i-- {
		b[i] = hexdigits[v&0xf]
		v >>= 4
	}
	return string(b[:])
}

// ValidRequestID reports whether an id sent by a client may be kept: 1 to 128
// characters from [A-Za-z0-9._:-].
func ValidRequestID(id string) bool {
	if len(id) == 0 || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.' || c == ':') {
			return false
		}
	}
	return true
}

// WriteError answers with the gateway's own error: status, Retry-After when
// positive, the request id, and a one-line plain-text body that says why.
func WriteError(w http.ResponseWriter, status int, msg string, retryAfter time.Duration, requestID string) {
	writeError(w, status, msg, retryAfter, requestID, false, nil)
}

// WriteErrorHeader is WriteError with extra fields (WWW-Authenticate...),
// added before the answer's own, which they cannot override; closeConn is
// WriteErrorClose's.
func WriteErrorHeader(w http.ResponseWriter, status int, msg string, retryAfter time.Duration, requestID string, extra http.Header, closeConn bool) {
	writeError(w, status, msg, retryAfter, requestID, closeConn, extra)
}

// WriteErrorClose is WriteError for a request after which an HTTP/1
// connection must close (Connection: close; net/http closes it once the
// answer is out): one whose framing cannot be trusted, or whose body was
// not read to its end. Without it net/http would read the rest of the body
// before answering, and wait as long as the user cares not to send it.
func WriteErrorClose(w http.ResponseWriter, status int, msg string, retryAfter time.Duration, requestID string) {
	writeError(w, status, msg, retryAfter, requestID, true, nil)
}

func writeError(w http.ResponseWriter, status int, msg string, retryAfter time.Duration, requestID string, closeConn bool, extra http.Header) {
	h := w.Header()
	for k := range h {
		delete(h, k)
	}
	for k, v := range extra {
		h[http.CanonicalHeaderKey(k)] = v
	}
	if closeConn {
		h.Set("Connection", "close")
	}
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	if requestID != "" {
		h.Set(RequestIDHeader, requestID)
	}
	if retryAfter > 0 {
		h.Set("Retry-After", strconv.Itoa(int((retryAfter+time.Second-1)/time.Second)))
	}
	body := "qtunnel: " + msg + "\n"
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write([]byte(body))
}

// ClientIP returns the host part of a net/http RemoteAddr.
func ClientIP(remoteAddr string) string {
	if i := strings.LastIndexByte(remoteAddr, ':'); i > 0 {
		host := remoteAddr[:i]
		return strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	}
	return remoteAddr
}

// IsGRPC reports whether a request is a gRPC call.
func IsGRPC(r *http.Request) bool {
	return r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc")
}

// GRPCCode maps the status of a gateway error to a gRPC status code, after
// gRPC's HTTP-to-gRPC mapping (doc/http-grpc-status-mapping.md), with two
// sharper codes: 413 is RESOURCE_EXHAUSTED and 504 DEADLINE_EXCEEDED.
func GRPCCode(status int) int {
	switch status {
	case http.StatusBadRequest:
		return 13 // INTERNAL
	case http.StatusUnauthorized:
		return 16 // UNAUTHENTICATED
	case http.StatusForbidden:
		return 7 // PERMISSION_DENIED
	case http.StatusNotFound:
		return 12 // UNIMPLEMENTED
	case http.StatusRequestEntityTooLarge:
		return 8 // RESOURCE_EXHAUSTED
	case http.StatusGatewayTimeout:
		return 4 // DEADLINE_EXCEEDED
	case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable:
		return 14 // UNAVAILABLE
	}
	return 2 // UNKNOWN
}

// WriteGRPCError answers a gRPC call with the gateway's own error, the way
// gRPC clients understand it: HTTP 200, then grpc-status and grpc-message
// (percent-encoded) as trailers.
func WriteGRPCError(w http.ResponseWriter, status int, msg string, retryAfter time.Duration, requestID string) {
	h := w.Header()
	for k := range h {
		delete(h, k)
	}
	h.Set("Content-Type", "application/grpc")
	if requestID != "" {
		h.Set(RequestIDHeader, requestID)
	}
	if retryAfter > 0 {
		h.Set("Retry-After", strconv.Itoa(int((retryAfter+time.Second-1)/time.Second)))
	}
	w.WriteHeader(http.StatusOK)
	h.Set(http.TrailerPrefix+"Grpc-Status", strconv.Itoa(GRPCCode(status)))
	h.Set(http.TrailerPrefix+"Grpc-Message", grpcPercentEncode("qtunnel: "+msg))
}

func grpcPercentEncode(s string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c <= 0x7e && c != '%' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&0xf])
	}
	return b.String()
}

// ValidHost reports whether host is a Host header (or an HTTP/2
// :authority) as RFC 9110 and RFC 3986 allow: a registered name (ASCII
// letters, digits and "-._~!$&'()*+,;=" or percent escapes) or an IP
// literal in brackets, then optionally ":" and a port of digits. Names
// outside ASCII are refused: clients send internationalised names in
// their ASCII (punycode) form. The empty host is valid (HTTP/1.0 without
// Host).
func ValidHost(host string) bool {
	if host == "" {
		return true
	}
	name, port := host, ""
	if host[0] == '[' {
		end := strings.IndexByte(host, ']')
		if end < 0 {
			return false
		}
		if _, err := netip.ParseAddr(host[1:end]); err != nil {
			return false
		}
		name, port = "", host[end+1:]
		if port != "" {
			if port[0] != ':' {
				return false
			}
			port = port[1:]
		}
	} else if i := strings.IndexByte(host, ':'); i >= 0 {
		name, port = host[:i], host[i+1:]
		if name == "" {
			return false
		}
	}
	if len(port) > 5 {
		return false
	}
	for i := 0; i < len(port); i++ {
		if port[i] < '0' || port[i] > '9' {
			return false
		}
	}
	if port != "" {
		if n, _ := strconv.Atoi(port); n > 65535 {
			return false
		}
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("-._~!$&'()*+,;=", c) >= 0:
		case c == '%' && i+2 < len(name) && isHex(name[i+1]) && isHex(name[i+2]):
			i += 2
		default:
			return false
		}
	}
	return true
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// AddrOf returns the IP address of a net/http RemoteAddr ("ip:port"), or
// the zero Addr if it has none.
func AddrOf(remoteAddr string) netip.Addr {
	if ap, err := netip.ParseAddrPort(remoteAddr); err == nil {
		return ap.Addr().Unmap()
	}
	a, _ := netip.ParseAddr(ClientIP(remoteAddr))
	return a.Unmap()
}

// Trusted reports whether a is in one of the prefixes.
func Trusted(a netip.Addr, prefixes []netip.Prefix) bool {
	for _, p := range prefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// ForwardedSource returns the address a request came from when its peer
// is a trusted proxy: walking X-Forwarded-For from the right (the entry
// the nearest proxy added), the first address that is not a trusted proxy
// itself; if every entry is trusted, the leftmost; peer if the header has
// no usable entry.
func ForwardedSource(xff []string, peer netip.Addr, trusted []netip.Prefix) netip.Addr {
	src := peer
	for i := len(xff) - 1; i >= 0; i-- {
		v := xff[i]
		for v != "" {
			var entry string
			if j := strings.LastIndexByte(v, ','); j >= 0 {
				entry, v = v[j+1:], v[:j]
			} else {
				entry, v = v, ""
			}
			a, err := netip.ParseAddr(textproto.TrimString(entry))
			if err != nil {
				return src // a malformed entry: trust nothing left of it
			}
			src = a.Unmap()
			if !Trusted(src, trusted) {
				return src
			}
		}
	}
	return src
}

// WriteJSON answers status with v as indented JSON: the admin endpoints'
// answers.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// WriteJSONError answers status with {"error": msg}.
func WriteJSONError(w http.ResponseWriter, status int, msg string) {
	WriteJSON(w, status, map[string]string{"error": msg})
}
