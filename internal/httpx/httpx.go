// Package httpx holds the HTTP details both sides of the tunnel agree on:
// which headers are hop-by-hop, how request ids look, how the gateway's own
// error answers are written.
package httpx

import (
	"math/rand/v2"
	"net/http"
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
	h := w.Header()
	for k := range h {
		delete(h, k)
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
