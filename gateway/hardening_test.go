package gateway_test

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/qtunnel/qtunnel/config"
	"github.com/qtunnel/qtunnel/rules"
)

// recorder is an upstream that records what reaches it and answers "ok".
type recorder struct {
	mu   sync.Mutex
	seen []seenRequest
}

type seenRequest struct {
	method, uri string
	header      http.Header
	body        string
	err         error
}

func (u *recorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, err := io.ReadAll(r.Body)
	u.mu.Lock()
	u.seen = append(u.seen, seenRequest{method: r.Method, uri: r.RequestURI, header: r.Header.Clone(), body: string(b), err: err})
	u.mu.Unlock()
	if err != nil {
		return
	}
	_, _ = io.WriteString(w, "ok")
}

func (u *recorder) requests() []seenRequest {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]seenRequest(nil), u.seen...)
}

// hardenedPair runs a pair whose reverse rule (appHost) and forward rule
// (127.0.0.1:0) both reach up, with lim applied to both sides.
func hardenedPair(t *testing.T, up http.Handler, lim func(*config.Limits), more ...rules.Rule) *pair {
	t.Helper()
	u := upstream(t, up)
	rs := append([]rules.Rule{reverseRule("rev", appHost, u.URL), forwardRule("fwd", "127.0.0.1:0", u.URL)}, more...)
	return startPair(t, pairOpts{rules: rs,
		serverMutate: func(c *config.Server) {
			if lim != nil {
				lim(&c.Limits)
			}
		},
		clientMutate: func(c *config.Client) {
			if lim != nil {
				lim(&c.Limits)
			}
		}})
}

// rawTarget is one ingress listener of a pair, for raw connections.
type rawTarget struct {
	name string
	addr string
	host string // Host to send
}

func rawTargets(p *pair) []rawTarget {
	return []rawTarget{
		{"reverse", p.Server.PublicAddr().String(), appHost},
		{"forward", p.Client.ForwardAddr("127.0.0.1:0").String(), "127.0.0.1"},
	}
}

// dialFrom connects to addr from the loopback address local ("" for any).
func dialFrom(t *testing.T, local, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	if local != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(local)}
	}
	c, err := d.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// rawAnswer reads one answer from c (within 30s) and then, if the answer
// says Connection: close, reports whether the server did close the
// connection after it (within 10s).
func rawAnswer(t *testing.T, c net.Conn, br *bufio.Reader) (status int, body string, closed bool) {
	t.Helper()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(30*time.Second)))
	resp, err := http.ReadResponse(br, nil)
	require.NoError(t, err)
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	resp.Body.Close()
	if !resp.Close {
		return resp.StatusCode, string(b), false
	}
	require.NoError(t, c.SetReadDeadline(time.Now().Add(10*time.Second)))
	_, err = br.ReadByte()
	return resp.StatusCode, string(b), err == io.EOF
}

// TestAmbiguousFramingIsRefusedAndClosed: a request with both
// Content-Length and Transfer-Encoding, or Transfer-Encoding on HTTP/1.0,
// is answered 400 and its connection closed, so that the bytes behind it
// are never read as a request of their own (request smuggling).
func TestAmbiguousFramingIsRefusedAndClosed(t *testing.T) {
	t.Parallel()
	up := &recorder{}
	p := hardenedPair(t, up, nil)
	smuggled := "GET /smuggled HTTP/1.1\r\nHost: %s\r\n\r\n"
	cases := []struct{ name, head, body string }{
		{"CL and TE", "POST /a HTTP/1.1\r\nHost: %s\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", "0\r\n\r\n"},
		{"TE and CL, lower case", "POST /a HTTP/1.1\r\nHost: %s\r\ntransfer-encoding: chunked\r\ncontent-length: 30\r\n\r\n", "0\r\n\r\n"},
		{"TE on HTTP/1.0", "POST /a HTTP/1.0\r\nHost: %s\r\nTransfer-Encoding: chunked\r\n\r\n", "0\r\n\r\n"},
		{"TE on HTTP/1.0 with CL", "POST /a HTTP/1.0\r\nHost: %s\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", "0\r\n\r\n"},
	}
	for _, tg := range rawTargets(p) {
		for _, tc := range cases {
			t.Run(tg.name+"/"+tc.name, func(t *testing.T) {
				c := dialFrom(t, "", tg.addr)
				_, err := fmt.Fprintf(c, tc.head+tc.body+smuggled, tg.host, tg.host)
				require.NoError(t, err)
				status, body, closed := rawAnswer(t, c, bufio.NewReader(c))
				require.Equal(t, http.StatusBadRequest, status, body)
				require.Contains(t, body, "ambiguous")
				require.True(t, closed, "the connection is closed after the 400")
			})
		}
	}
	for _, r := range up.requests() {
		require.NotEqual(t, "/smuggled", r.uri, "nothing behind a refused request is served")
		require.NotEqual(t, "/a", r.uri, "the refused request does not reach the upstream")
	}
}

// TestBadBodiesAreTheUsersFault: a malformed chunked body is the user's
// mistake (400), never the tunnel's (502).
func TestBadBodiesAreTheUsersFault(t *testing.T) {
	t.Parallel()
	p := hardenedPair(t, &recorder{}, nil)
	bodies := map[string]string{
		"bad chunk size":        "zz\r\nhello\r\n0\r\n\r\n",
		"chunk size overflow":   "11111111111111111\r\nhello\r\n0\r\n\r\n",
		"no CRLF after data":    "5\r\nhelloXX0\r\n\r\n",
		"bare LF in chunk line": "5\nhello\r\n0\r\n\r\n",
		"late bad chunk":        strings.Repeat("3\r\nabc\r\n", 30) + "q\r\n",
	}
	for _, tg := range rawTargets(p) {
		for name, b := range bodies {
			t.Run(tg.name+"/"+name, func(t *testing.T) {
				c := dialFrom(t, "", tg.addr)
				_, err := fmt.Fprintf(c, "POST /upload HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding: chunked\r\n\r\n%s", tg.host, b)
				require.NoError(t, err)
				status, body, _ := rawAnswer(t, c, bufio.NewReader(c))
				require.Equal(t, http.StatusBadRequest, status, body)
				require.Contains(t, body, "request body")
			})
		}
	}
}

// TestOversizedHeadIs431: a head that net/http's limit lets through (it
// allows 4 KiB of slack) but that is too large for a tunnel frame gets 431,
// not a tunnel error.
func TestOversizedHeadIs431(t *testing.T) {
	t.Parallel()
	p := hardenedPair(t, &recorder{}, nil)
	for _, d := range directions(t, p) {
		// Between the frame limit (64 KiB with the encoded head's own
		// bytes) and net/http's limit (64 KiB plus 4 KiB of slack).
		for _, size := range []int{64<<10 + 16, 65 << 10, 67<<10 + 512} {
			req := newRequest(t, http.MethodGet, d.url("/"), d.host, nil)
			req.Header.Set("X-Big", strings.Repeat("a", size))
			resp, body := do(t, h1Client(t), req)
			require.Equal(t, http.StatusRequestHeaderFieldsTooLarge, resp.StatusCode, "%s %d: %s", d.name, size, body)
		}
	}
}

// TestAbandonedBodiesGet408 shows the body clocks: a request that announces
// a body and sends none, or sends it too slowly, is answered 408 without a
// tunnel stream being held for it (a short body never reaches the
// upstream), and the tenant stays served.
func TestAbandonedBodiesGet408(t *testing.T) {
	t.Parallel()
	up := &recorder{}
	p := hardenedPair(t, up, func(l *config.Limits) {
		l.BodyTimeout = time.Second
		l.MinRateGrace = 500 * time.Millisecond
		l.MinBodyRate = 1 << 10
	})
	for _, tg := range rawTargets(p) {
		t.Run(tg.name+"/announced, never sent", func(t *testing.T) {
			c := dialFrom(t, "", tg.addr)
			_, err := fmt.Fprintf(c, "POST /abandoned HTTP/1.1\r\nHost: %s\r\nContent-Length: 10\r\n\r\n", tg.host)
			require.NoError(t, err)
			status, body, closed := rawAnswer(t, c, bufio.NewReader(c))
			require.Equal(t, http.StatusRequestTimeout, status, body)
			require.True(t, closed)
		})
		t.Run(tg.name+"/trickled", func(t *testing.T) {
			c := dialFrom(t, "", tg.addr)
			_, err := fmt.Fprintf(c, "POST /trickled HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding: chunked\r\n\r\n", tg.host)
			require.NoError(t, err)
			done := make(chan struct{})
			go func() {
				// One byte every 200ms, far below 1 KiB/s, until answered.
				tick := time.NewTicker(200 * time.Millisecond)
				defer tick.Stop()
				for i := 0; i < 300; i++ {
					select {
					case <-done:
						return
					case <-tick.C:
					}
					if _, err := io.WriteString(c, "1\r\nx\r\n"); err != nil {
						return
					}
				}
			}()
			status, body, _ := rawAnswer(t, c, bufio.NewReader(c))
			close(done)
			require.Equal(t, http.StatusRequestTimeout, status, body)
			require.Contains(t, body, "bytes/s")
		})
	}
	for _, r := range up.requests() {
		require.NotEqual(t, "/abandoned", r.uri, "a short body that never came held no stream and reached nobody")
	}
	for _, d := range directions(t, p) {
		resp, _ := get(t, h1Client(t), d.url("/after"), d.host)
		require.Equal(t, http.StatusOK, resp.StatusCode)
	}
}

// TestHostsAreChecked: a Host that is not host[:port] is refused with 400,
// on HTTP/1.1 and as an HTTP/2 :authority (where names outside ASCII
// would otherwise be mapped and routed).
func TestHostsAreChecked(t *testing.T) {
	t.Parallel()
	up := &recorder{}
	p := hardenedPair(t, up, nil, reverseRule("unicode", "xn--pp-zxdaa.test", "http://127.0.0.1:1"))
	for _, host := range []string{appHost + ":abc", appHost + ":99999", appHost + ":1:2"} {
		c := dialFrom(t, "", p.Server.PublicAddr().String())
		_, err := fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", host)
		require.NoError(t, err)
		status, body, _ := rawAnswer(t, c, bufio.NewReader(c))
		require.Equal(t, http.StatusBadRequest, status, "host %q: %s", host, body)
	}
	for _, authority := range []string{"ａｐｐ.test", appHost + ":abc", "app test"} {
		// Refused either by the HTTP/2 server as a malformed request
		// (RST_STREAM, RFC 9113 section 8.1.1) or by the gateway with 400:
		// never mapped to an ASCII name and routed.
		status := h2cRawGet(t, p.Server.PublicAddr().String(), authority, "/")
		require.Contains(t, []int{0, http.StatusBadRequest}, status, "authority %q", authority)
		t.Logf("h2 :authority %q: status %d (0: stream reset)", authority, status)
	}
	require.Equal(t, http.StatusOK, h2cRawGet(t, p.Server.PublicAddr().String(), appHost, "/"))
	require.Len(t, up.requests(), 1, "only the well-formed request reached the upstream")
}

// h2cRawGet sends one GET on a new h2c connection with the :authority as
// given (net/http's client would refuse or rewrite a bad one) and returns
// the answer's status, or 0 if the stream was reset.
func h2cRawGet(t *testing.T, addr, authority, path string) int {
	t.Helper()
	c := dialFrom(t, "", addr)
	require.NoError(t, c.SetDeadline(time.Now().Add(30*time.Second)))
	_, err := io.WriteString(c, http2.ClientPreface)
	require.NoError(t, err)
	fr := http2.NewFramer(c, c)
	require.NoError(t, fr.WriteSettings())
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", authority}, {":path", path}} {
		require.NoError(t, enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]}))
	}
	require.NoError(t, fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true}))
	dec := hpack.NewDecoder(4096, nil)
	for {
		f, err := fr.ReadFrame()
		require.NoError(t, err)
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				require.NoError(t, fr.WriteSettingsAck())
			}
		case *http2.HeadersFrame:
			fields, err := dec.DecodeFull(f.HeaderBlockFragment())
			require.NoError(t, err)
			for _, hf := range fields {
				if hf.Name == ":status" {
					var s int
					_, _ = fmt.Sscan(hf.Value, &s)
					return s
				}
			}
		case *http2.RSTStreamFrame:
			return 0
		case *http2.GoAwayFrame:
			return 0
		}
	}
}

// TestSNIAndHostMustAgree: on the public HTTPS listener a request whose
// Host is not the name of its TLS handshake gets 421 (domain fronting is
// refused) unless the server allows it.
func TestSNIAndHostMustAgree(t *testing.T) {
	t.Parallel()
	fx := newTLSFixture(t, "a.app.test", "b.app.test")
	u := upstream(t, &recorder{})
	for _, allow := range []bool{false, true} {
		p := startPair(t, pairOpts{
			rules: []rules.Rule{reverseRule("a", "a.app.test", u.URL), reverseRule("b", "b.app.test", u.URL)},
			serverMutate: func(c *config.Server) {
				c.PublicHTTPS, c.PublicTLS = "127.0.0.1:0", fx.files()
				if allow {
					c.Limits.SNIHostMismatch = config.SNIAllow
				}
			},
		})
		for _, proto := range []string{"h1", "h2"} {
			tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: fx.pool, ServerName: "a.app.test"}, ForceAttemptHTTP2: proto == "h2"}
			if proto == "h1" {
				tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
			}
			t.Cleanup(tr.CloseIdleConnections)
			c := &http.Client{Transport: tr}
			url := "https://" + p.Server.PublicTLSAddr().String() + "/"
			resp, body := do(t, c, newRequest(t, http.MethodGet, url, "a.app.test", nil))
			require.Equal(t, http.StatusOK, resp.StatusCode, body)
			require.Equal(t, proto == "h2", resp.ProtoMajor == 2)
			resp, body = do(t, c, newRequest(t, http.MethodGet, url, "b.app.test", nil))
			if allow {
				require.Equal(t, http.StatusOK, resp.StatusCode, body)
			} else {
				require.Equal(t, http.StatusMisdirectedRequest, resp.StatusCode, body)
			}
		}
	}
}

// TestPathsAreNormalisedBeforeRouting: dot segments, escaped or not, are
// resolved before the prefix match, and the upstream gets the path that
// was matched; an escaped slash stays data.
func TestPathsAreNormalisedBeforeRouting(t *testing.T) {
	t.Parallel()
	api, web := &recorder{}, &recorder{}
	apiU, webU := upstream(t, api), upstream(t, web)
	api2 := reverseRule("api", appHost, apiU.URL)
	api2.PathPrefix = "/api"
	p := startPair(t, pairOpts{rules: []rules.Rule{api2, reverseRule("web", appHost, webU.URL)}})
	cases := []struct {
		target, upstreamURI string
		toAPI               bool
	}{
		{"/api/../secret", "/secret", false},
		{"/api/%2e%2e/secret", "/secret", false},
		{"/api/%2E%2e/secret?x=1", "/secret?x=1", false},
		{"/api/./v1/../users", "/api/users", true},
		{"/api%2F..%2Fsecret", "/api%2F..%2Fsecret", false},
		{"/api/group%2Fproject", "/api/group%2Fproject", true},
	}
	for _, tc := range cases {
		c := dialFrom(t, "", p.Server.PublicAddr().String())
		_, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", tc.target, appHost)
		require.NoError(t, err)
		status, body, _ := rawAnswer(t, c, bufio.NewReader(c))
		require.Equal(t, http.StatusOK, status, body)
		rec := web
		if tc.toAPI {
			rec = api
		}
		seen := rec.requests()
		require.NotEmpty(t, seen, tc.target)
		require.Equal(t, tc.upstreamURI, seen[len(seen)-1].uri, tc.target)
	}
	for _, r := range api.requests() {
		require.True(t, strings.HasPrefix(r.uri, "/api/"), "only /api paths reach the /api rule: %q", r.uri)
	}
}

// TestGatewayHeadersCannotBeForgedOrRemoved: from a user who is not a
// trusted proxy, X-Forwarded-* and X-Request-Id are replaced, and naming
// them in Connection does not remove the gateway's own.
func TestGatewayHeadersCannotBeForgedOrRemoved(t *testing.T) {
	t.Parallel()
	up := &recorder{}
	p := hardenedPair(t, up, nil)
	for _, d := range directions(t, p) {
		req := newRequest(t, http.MethodGet, d.url("/h"), d.host, nil)
		req.Header.Set("X-Forwarded-For", "203.0.113.9")
		req.Header.Set("X-Forwarded-Host", "evil.test")
		req.Header.Set("X-Forwarded-Proto", "https")
		req.Header.Set("X-Request-Id", "forged-id")
		req.Header.Set("Connection", "X-Request-Id, X-Forwarded-For")
		resp, _ := do(t, h1Client(t), req)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		seen := up.requests()
		h := seen[len(seen)-1].header
		require.Equal(t, []string{"127.0.0.1"}, h.Values("X-Forwarded-For"), d.name)
		require.Equal(t, []string{"http"}, h.Values("X-Forwarded-Proto"), d.name)
		require.NotEqual(t, "evil.test", h.Get("X-Forwarded-Host"), d.name)
		require.Equal(t, []string{resp.Header.Get("X-Request-Id")}, h.Values("X-Request-Id"), d.name)
		require.NotEqual(t, "forged-id", resp.Header.Get("X-Request-Id"), d.name)
	}
}
