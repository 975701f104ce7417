package gateway_test

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
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

// h2Raw is a raw HTTP/2 client connection, for frames net/http's client
// would never send.
type h2Raw struct {
	c  net.Conn
	fr *http2.Framer
}

func dialH2Raw(t *testing.T, local, addr string) *h2Raw {
	t.Helper()
	c := dialFrom(t, local, addr)
	require.NoError(t, c.SetDeadline(time.Now().Add(60*time.Second)))
	_, err := io.WriteString(c, http2.ClientPreface)
	require.NoError(t, err)
	fr := http2.NewFramer(c, c)
	require.NoError(t, fr.WriteSettings())
	return &h2Raw{c: c, fr: fr}
}

// headers sends a GET's HEADERS; it fails once the server has closed the
// connection.
func (h *h2Raw) headers(t *testing.T, id uint32, authority string, endHeaders bool) error {
	t.Helper()
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", authority}, {":path", "/"}} {
		require.NoError(t, enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]}))
	}
	return h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: endHeaders})
}

// until reads frames until one satisfies stop, the connection ends, or a
// minute passes; it returns the GOAWAY seen, if any, and the server's
// SETTINGS.
func (h *h2Raw) until(t *testing.T, stop func(http2.Frame) bool) (goAway *http2.GoAwayFrame, settings map[http2.SettingID]uint32) {
	t.Helper()
	settings = map[http2.SettingID]uint32{}
	for {
		f, err := h.fr.ReadFrame()
		if err != nil {
			return goAway, settings
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = f.ForeachSetting(func(s http2.Setting) error { settings[s.ID] = s.Val; return nil })
				_ = h.fr.WriteSettingsAck()
			}
		case *http2.GoAwayFrame:
			ga := *f
			goAway = &ga
		}
		if stop(f) {
			return goAway, settings
		}
	}
}

// TestHTTP2AbuseGetsGoAway: rapid reset (HEADERS then RST_STREAM, over and
// over) and a CONTINUATION flood end the connection with GOAWAY
// (ENHANCE_YOUR_CALM), are counted, and leave the tenant served; the
// server advertises max_streams_per_connection.
func TestHTTP2AbuseGetsGoAway(t *testing.T) {
	t.Parallel()
	up := &recorder{}
	p := hardenedPair(t, up, func(l *config.Limits) {
		l.H2MaxResets = 50
		l.MaxStreamsPerConnection = 7
	})
	addr := p.Server.PublicAddr().String()

	h := dialH2Raw(t, "127.0.0.2", addr)
	_, settings := h.until(t, func(f http2.Frame) bool { _, ok := f.(*http2.SettingsFrame); return ok })
	require.Equal(t, uint32(7), settings[http2.SettingMaxConcurrentStreams], "max_streams_per_connection is advertised")

	// Rapid reset: far more than 50 resets, as fast as they go.
	sent := 0
	for id := uint32(1); id < 2*1000; id += 2 {
		if h.headers(t, id, appHost, true) != nil || h.fr.WriteRSTStream(id, http2.ErrCodeCancel) != nil {
			break // the server has closed the connection
		}
		sent++
	}
	ga, _ := h.until(t, func(f http2.Frame) bool { _, ok := f.(*http2.GoAwayFrame); return ok })
	require.NotNil(t, ga, "rapid reset ends with GOAWAY (after %d resets)", sent)
	require.Equal(t, http2.ErrCodeEnhanceYourCalm, ga.ErrCode)

	// CONTINUATION flood: a header block that never ends.
	h = dialH2Raw(t, "127.0.0.2", addr)
	require.NoError(t, h.headers(t, 1, appHost, false))
	frames := 0
	for ; frames < 10000; frames++ {
		if err := h.fr.WriteContinuation(1, false, nil); err != nil {
			break
		}
	}
	ga, _ = h.until(t, func(f http2.Frame) bool { _, ok := f.(*http2.GoAwayFrame); return ok })
	require.NotNil(t, ga, "a CONTINUATION flood ends with GOAWAY")
	require.Equal(t, http2.ErrCodeEnhanceYourCalm, ga.ErrCode)

	// The tenant is still served, over HTTP/2 too.
	for _, c := range []*http.Client{h1Client(t), h2cClient(t)} {
		resp, _ := get(t, c, p.publicURL("/after"), appHost)
		require.Equal(t, http.StatusOK, resp.StatusCode)
	}
}

// holdingUpstream answers /hold only once released, and everything else at
// once.
type holdingUpstream struct {
	held    chan struct{} // one value per request held
	release chan struct{}
}

func (u *holdingUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/hold" {
		u.held <- struct{}{}
		select {
		case <-u.release:
		case <-r.Context().Done():
		}
	}
	_, _ = io.WriteString(w, "ok")
}

// TestOneSourceCannotTakeATenant: one source address may hold at most
// max_streams_per_source tunnel streams of a tenant; the next request from
// it gets 429 with Retry-After, while other sources are served.
func TestOneSourceCannotTakeATenant(t *testing.T) {
	t.Parallel()
	up := &holdingUpstream{held: make(chan struct{}, 8), release: make(chan struct{})}
	p := hardenedPair(t, up, func(l *config.Limits) { l.MaxStreamsPerSource = 2 })
	for _, d := range []struct {
		name, addr, host string
	}{{"reverse", p.Server.PublicAddr().String(), appHost}, {"forward", p.Client.ForwardAddr("127.0.0.1:0").String(), "127.0.0.1"}} {
		t.Run(d.name, func(t *testing.T) {
			client := func(local string) *http.Client {
				tr := &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}).DialContext}
				t.Cleanup(tr.CloseIdleConnections)
				return &http.Client{Transport: tr, Timeout: time.Minute}
			}
			attacker := client("127.0.0.2")
			errs := make(chan error, 2)
			for range 2 {
				go func() {
					resp, err := attacker.Do(newRequest(t, http.MethodGet, "http://"+d.addr+"/hold", d.host, nil))
					if err == nil {
						resp.Body.Close()
					}
					errs <- err
				}()
			}
			for range 2 {
				select {
				case <-up.held:
				case <-time.After(time.Minute):
					t.Fatal("the two requests did not reach the upstream")
				}
			}
			resp, body := do(t, attacker, newRequest(t, http.MethodGet, "http://"+d.addr+"/more", d.host, nil))
			require.Equal(t, http.StatusTooManyRequests, resp.StatusCode, body)
			require.Equal(t, "1", resp.Header.Get("Retry-After"))
			resp, body = do(t, client("127.0.0.1"), newRequest(t, http.MethodGet, "http://"+d.addr+"/other", d.host, nil))
			require.Equal(t, http.StatusOK, resp.StatusCode, "another source is served: %s", body)
			for range 2 {
				up.release <- struct{}{}
			}
			for range 2 {
				require.NoError(t, <-errs)
			}
			resp, _ = do(t, attacker, newRequest(t, http.MethodGet, "http://"+d.addr+"/again", d.host, nil))
			require.Equal(t, http.StatusOK, resp.StatusCode, "the source's streams were given back")
		})
	}
}

// streamingUpstream streams /big until the write fails, and holds /quiet
// open after its head without sending anything; each tells ended when
// the exchange on its side is over (the tunnel stream was freed).
type streamingUpstream struct{ ended chan string }

func (u *streamingUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/big":
		buf := make([]byte, 64<<10)
		for i := 0; i < 1<<14; i++ { // at most 1 GiB
			if _, err := w.Write(buf); err != nil {
				break
			}
		}
	case "/quiet":
		w.WriteHeader(http.StatusOK)
		http.NewResponseController(w).Flush()
		<-r.Context().Done()
	default:
		_, _ = io.WriteString(w, "ok")
		return
	}
	u.ended <- r.URL.Path
}

// TestStalledAnswersAreCut: an answer whose reader stopped reading is cut
// after send_timeout (HTTP/1.1 and HTTP/2), and one on which nothing moves
// after stream_idle_timeout; either way the exchange ends up to the
// upstream, so the tunnel stream is free again.
func TestStalledAnswersAreCut(t *testing.T) {
	t.Parallel()
	up := &streamingUpstream{ended: make(chan string, 8)}
	p := hardenedPair(t, up, func(l *config.Limits) {
		l.SendTimeout = time.Second
		l.StreamIdleTimeout = time.Second
	})
	waitEnded := func(t *testing.T, path string) {
		t.Helper()
		select {
		case got := <-up.ended:
			require.Equal(t, path, got)
		case <-time.After(2 * time.Minute):
			t.Fatalf("%s: the upstream's exchange never ended", path)
		}
	}
	for _, tg := range rawTargets(p) {
		t.Run(tg.name+"/HTTP/1.1 reader stops", func(t *testing.T) {
			c := dialFrom(t, "", tg.addr)
			_, err := fmt.Fprintf(c, "GET /big HTTP/1.1\r\nHost: %s\r\n\r\n", tg.host)
			require.NoError(t, err)
			waitEnded(t, "/big") // nothing read, ever
		})
		t.Run(tg.name+"/HTTP/2 reader stops", func(t *testing.T) {
			h := dialH2Raw(t, "", tg.addr)
			var hb bytes.Buffer
			enc := hpack.NewEncoder(&hb)
			for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", tg.host}, {":path", "/big"}} {
				require.NoError(t, enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]}))
			}
			require.NoError(t, h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true}))
			// No WINDOW_UPDATE is ever sent: the stream's window shuts.
			var reset *http2.RSTStreamFrame
			h.until(t, func(f http2.Frame) bool {
				if r, ok := f.(*http2.RSTStreamFrame); ok {
					reset = r
					return true
				}
				return false
			})
			require.NotNil(t, reset, "the stalled stream is reset")
			waitEnded(t, "/big")
		})
		t.Run(tg.name+"/nothing moves", func(t *testing.T) {
			c := dialFrom(t, "", tg.addr)
			_, err := fmt.Fprintf(c, "GET /quiet HTTP/1.1\r\nHost: %s\r\n\r\n", tg.host)
			require.NoError(t, err)
			br := bufio.NewReader(c)
			require.NoError(t, c.SetReadDeadline(time.Now().Add(2*time.Minute)))
			resp, err := http.ReadResponse(br, nil)
			require.NoError(t, err)
			require.Equal(t, http.StatusOK, resp.StatusCode)
			_, err = io.ReadAll(resp.Body)
			require.Error(t, err, "the idle answer is cut, not ended cleanly")
			var ne net.Error
			require.False(t, errors.As(err, &ne) && ne.Timeout(), "cut by the gateway, not by this test's own deadline: %v", err)
			waitEnded(t, "/quiet")
		})
	}
	for _, d := range directions(t, p) {
		resp, _ := get(t, h1Client(t), d.url("/after"), d.host)
		require.Equal(t, http.StatusOK, resp.StatusCode)
	}
}
