package gateway_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/config"
	"github.com/qtunnel/qtunnel/control"
	"github.com/qtunnel/qtunnel/gateway"
	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/rules"
	"github.com/qtunnel/qtunnel/stages/route"
	"github.com/qtunnel/qtunnel/transport"
)

// echoInfo answers with what the upstream saw, one "key: value" per line.
func echoInfo(name string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Upstream", name)
		fmt.Fprintf(w, "upstream: %s\nproto: %s\nmethod: %s\nuri: %s\nhost: %s\nxff: %s\nxfp: %s\nxfh: %s\nrequest-id: %s\nbody: %s\nconnection-listed: %s\n",
			name, r.Proto, r.Method, r.URL.RequestURI(), r.Host, r.Header.Get("X-Forwarded-For"),
			r.Header.Get("X-Forwarded-Proto"), r.Header.Get("X-Forwarded-Host"), r.Header.Get("X-Request-Id"), body,
			r.Header.Get("X-Hop"))
	})
}

func field(t *testing.T, body, key string) string {
	t.Helper()
	for line := range strings.SplitSeq(body, "\n") {
		if v, ok := strings.CutPrefix(line, key+": "); ok {
			return v
		}
	}
	t.Fatalf("no %q in body:\n%s", key, body)
	return ""
}

func TestBothDirectionsHTTP1AndHTTP2(t *testing.T) {
	t.Parallel()
	nearClient := upstream(t, echoInfo("near-client"))
	nearServer := upstream(t, echoInfo("near-server"))
	p := startPair(t, pairOpts{rules: []rules.Rule{
		reverseRule("rev", appHost, nearClient.URL),
		forwardRule("fwd", "127.0.0.1:0", nearServer.URL),
	}})
	tests := []struct {
		name     string
		client   *http.Client
		url      string
		host     string
		upstream string
		proto    string
	}{
		{"reverse h1", h1Client(t), p.publicURL("/hello?x=1"), appHost, "near-client", "HTTP/1.1"},
		{"reverse h2c", h2cClient(t), p.publicURL("/hello?x=1"), appHost, "near-client", "HTTP/2.0"},
		{"forward h1", h1Client(t), p.forwardURL(t, "127.0.0.1:0", "/hello?x=1"), "", "near-server", "HTTP/1.1"},
		{"forward h2c", h2cClient(t), p.forwardURL(t, "127.0.0.1:0", "/hello?x=1"), "", "near-server", "HTTP/2.0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequest(http.MethodGet, tt.url, nil)
			require.NoError(t, err)
			if tt.host != "" {
				req.Host = tt.host
			}
			if tt.proto == "HTTP/1.1" {
				req.Header.Set("Connection", "X-Hop") // HTTP/2 has no Connection header
			}
			req.Header.Set("X-Hop", "must not cross")
			resp, err := tt.client.Do(req)
			require.NoError(t, err)
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			require.NoError(t, err)
			require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
			require.Equal(t, tt.proto, resp.Proto, "the user's protocol is the one the user spoke")
			require.Equal(t, tt.upstream, resp.Header.Get("X-Upstream"))
			b := string(body)
			require.Equal(t, tt.upstream, field(t, b, "upstream"))
			require.Equal(t, "/hello?x=1", field(t, b, "uri"))
			require.Equal(t, "127.0.0.1", field(t, b, "xff"))
			require.Equal(t, "http", field(t, b, "xfp"))
			require.Equal(t, req.Host, field(t, b, "xfh"))
			require.Equal(t, req.Host, field(t, b, "host"), "the user's Host is kept")
			if tt.proto == "HTTP/1.1" {
				require.Empty(t, field(t, b, "connection-listed"), "fields named in Connection are hop-by-hop")
			}
			id := field(t, b, "request-id")
			require.Len(t, id, 16)
			require.Equal(t, id, resp.Header.Get("X-Request-Id"), "the user sees the id the upstream saw")
		})
	}
}

// TestRequestIDFromTrustedProxyIsKept: the id a trusted proxy sends is the
// request's id on both sides and upstream; from anyone else it is
// replaced.
func TestRequestIDFromTrustedProxyIsKept(t *testing.T) {
	t.Parallel()
	up := upstream(t, echoInfo("u"))
	for _, trusted := range []bool{true, false} {
		p := startPair(t, pairOpts{rules: []rules.Rule{reverseRule("rev", appHost, up.URL)},
			serverMutate: func(c *config.Server) {
				if trusted {
					c.TrustedProxies = []string{"127.0.0.0/8"}
				}
			}})
		req, _ := http.NewRequest(http.MethodGet, p.publicURL("/"), nil)
		req.Host = appHost
		req.Header.Set("X-Request-Id", "my-trace-0001")
		resp, err := h1Client(t).Do(req)
		require.NoError(t, err)
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		id := resp.Header.Get("X-Request-Id")
		require.Equal(t, id, field(t, string(b), "request-id"), "the upstream sees the id the user is told")
		if trusted {
			require.Equal(t, "my-trace-0001", id)
		} else {
			require.NotEqual(t, "my-trace-0001", id, "an id from an untrusted peer is replaced")
			require.Len(t, id, 16)
		}
	}
}

func TestHTTP2ToUpstream(t *testing.T) {
	t.Parallel()
	up := upstream(t, echoInfo("h2c-upstream"))
	r := reverseRule("rev", appHost, up.URL)
	r.UpstreamHTTP2 = true
	f := forwardRule("fwd", "127.0.0.1:0", up.URL)
	f.UpstreamHTTP2 = true
	p := startPair(t, pairOpts{rules: []rules.Rule{r, f}})
	_, body := get(t, h1Client(t), p.publicURL("/x"), appHost)
	require.Equal(t, "HTTP/2.0", field(t, body, "proto"), "rule asks for HTTP/2 to the upstream")
	_, body = get(t, h1Client(t), p.forwardURL(t, "127.0.0.1:0", "/x"), "")
	require.Equal(t, "HTTP/2.0", field(t, body, "proto"))
}

func TestErrorsSayWhy(t *testing.T) {
	t.Parallel()
	up := upstream(t, echoInfo("u"))
	down := "http://" + closedPort(t)
	p := startPair(t, pairOpts{
		rules: []rules.Rule{
			reverseRule("rev-down", "down.test", down),
			{ID: "other-client", Client: "absent", Direction: rules.Reverse, Host: "absent.test", Upstream: up.URL},
			forwardRule("fwd-down", "127.0.0.1:0", down),
		},
		serverMutate: func(c *config.Server) {
			c.Clients = append(c.Clients, config.ClientEntry{ID: "absent", TokenSHA256: control.HashToken("x").String()})
		},
	})
	tests := []struct {
		name   string
		url    string
		host   string
		status int
		says   string
	}{
		{"no rule", p.publicURL("/nothing"), "unknown.test", 404, `no route for host "unknown.test"`},
		{"reverse upstream down", p.publicURL("/"), "down.test", 502, `upstream of rule "rev-down" is unreachable`},
		{"client not connected", p.publicURL("/"), "absent.test", 502, `client "absent" of rule "other-client" is not connected`},
		{"forward upstream down", p.forwardURL(t, "127.0.0.1:0", "/"), "", 502, `upstream of rule "fwd-down" is unreachable`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := get(t, h1Client(t), tt.url, tt.host)
			require.Equal(t, tt.status, resp.StatusCode)
			require.Contains(t, body, tt.says)
			require.True(t, strings.HasPrefix(body, "qtunnel: "), body)
			require.Len(t, resp.Header.Get("X-Request-Id"), 16)
		})
	}
}

// TestBodiesStream proves that neither direction buffers a body: each side
// only sends its second chunk after the first one crossed the tunnel.
func TestBodiesStream(t *testing.T) {
	t.Parallel()
	firstUp := make(chan struct{})      // the upstream got the first upload chunk
	firstDown := make(chan struct{}, 2) // the user got the first download chunk
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/upload":
			buf := make([]byte, 5)
			_, err := io.ReadFull(r.Body, buf)
			if err != nil || string(buf) != "first" {
				http.Error(w, "bad first chunk", 400)
				return
			}
			firstUp <- struct{}{}
			rest, _ := io.ReadAll(r.Body)
			fmt.Fprintf(w, "got %s%s", buf, rest)
		case "/download":
			fmt.Fprint(w, "first")
			w.(http.Flusher).Flush()
			select {
			case <-firstDown:
			case <-r.Context().Done():
				return
			}
			fmt.Fprint(w, "second")
		}
	})
	up := upstream(t, h)
	p := startPair(t, pairOpts{rules: []rules.Rule{
		reverseRule("rev", appHost, up.URL),
		forwardRule("fwd", "127.0.0.1:0", up.URL),
	}})
	for _, dir := range []struct{ name, base, host string }{
		{"reverse", p.publicURL(""), appHost},
		{"forward", p.forwardURL(t, "127.0.0.1:0", ""), ""},
	} {
		t.Run(dir.name+" upload", func(t *testing.T) {
			pr, pw := io.Pipe()
			req, _ := http.NewRequest(http.MethodPost, dir.base+"/upload", pr)
			req.Host = dir.host
			done := make(chan string, 1)
			go func() {
				resp, err := h1Client(t).Do(req)
				if err != nil {
					done <- "error: " + err.Error()
					return
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				done <- string(b)
			}()
			_, err := pw.Write([]byte("first"))
			require.NoError(t, err)
			select {
			case <-firstUp:
			case <-time.After(10 * time.Second):
				t.Fatal("the first chunk did not reach the upstream before the body ended: the upload is buffered")
			}
			_, err = pw.Write([]byte("-second"))
			require.NoError(t, err)
			require.NoError(t, pw.Close())
			require.Equal(t, "got first-second", <-done)
		})
		t.Run(dir.name+" download", func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodGet, dir.base+"/download", nil)
			req.Host = dir.host
			resp, err := h1Client(t).Do(req)
			require.NoError(t, err)
			defer resp.Body.Close()
			buf := make([]byte, 5)
			_, err = io.ReadFull(resp.Body, buf)
			require.NoError(t, err, "the first chunk must arrive while the upstream waits")
			require.Equal(t, "first", string(buf))
			firstDown <- struct{}{}
			rest, err := io.ReadAll(resp.Body)
			require.NoError(t, err)
			require.Equal(t, "second", string(rest))
		})
	}
}

func TestTrailersBothWays(t *testing.T) {
	t.Parallel()
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Trailer", "X-Checksum")
		w.Header().Set("X-Got-Request-Trailer", "pending")
		w.WriteHeader(200)
		fmt.Fprint(w, "body")
		w.Header().Set("X-Checksum", "abc123|"+r.Trailer.Get("X-Req-Sum"))
	})
	up := upstream(t, h)
	p := startPair(t, pairOpts{rules: []rules.Rule{reverseRule("rev", appHost, up.URL), forwardRule("fwd", "127.0.0.1:0", up.URL)}})
	for _, c := range []struct {
		name   string
		client *http.Client
		url    string
		host   string
	}{
		{"reverse h1", h1Client(t), p.publicURL("/t"), appHost},
		{"reverse h2c", h2cClient(t), p.publicURL("/t"), appHost},
		{"forward h1", h1Client(t), p.forwardURL(t, "127.0.0.1:0", "/t"), ""},
		{"forward h2c", h2cClient(t), p.forwardURL(t, "127.0.0.1:0", "/t"), ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			pr, pw := io.Pipe()
			req, _ := http.NewRequest(http.MethodPost, c.url, pr)
			req.Host = c.host
			req.Trailer = http.Header{"X-Req-Sum": nil}
			go func() {
				_, _ = pw.Write([]byte("upload"))
				req.Trailer.Set("X-Req-Sum", "req-trailer")
				_ = pw.Close()
			}()
			resp, err := c.client.Do(req)
			require.NoError(t, err)
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			require.NoError(t, err)
			require.Equal(t, "body", string(b))
			require.Equal(t, "abc123|req-trailer", resp.Trailer.Get("X-Checksum"), "trailers cross both ways")
		})
	}
}

func TestLargeBodiesBothWays(t *testing.T) {
	t.Parallel()
	size := int64(256 << 20)
	if testing.Short() {
		size = 16 << 20
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/up":
			hs := sha256.New()
			n, err := io.Copy(hs, r.Body)
			if err != nil {
				http.Error(w, err.Error(), 500)
				return
			}
			fmt.Fprintf(w, "%d %x", n, hs.Sum(nil))
		case "/down":
			w.Header().Set("Content-Length", fmt.Sprint(size))
			_, _ = io.Copy(w, io.LimitReader(seeded(), size))
		}
	})
	up := upstream(t, h)
	p := startPair(t, pairOpts{
		rules: []rules.Rule{reverseRule("rev", appHost, up.URL), forwardRule("fwd", "127.0.0.1:0", up.URL)},
		// Uploads far over the 10 MiB default body limit.
		serverMutate: func(c *config.Server) { c.Limits.MaxBodySize = config.Unlimited },
		clientMutate: func(c *config.Client) { c.Limits.MaxBodySize = config.Unlimited },
	})
	want := sha256.New()
	_, _ = io.Copy(want, io.LimitReader(seeded(), size))
	wantSum := fmt.Sprintf("%x", want.Sum(nil))
	for _, dir := range []struct{ name, base, host string }{
		{"reverse", p.publicURL(""), appHost},
		{"forward", p.forwardURL(t, "127.0.0.1:0", ""), ""},
	} {
		t.Run(dir.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodPost, dir.base+"/up", io.LimitReader(seeded(), size))
			req.Host = dir.host
			req.ContentLength = -1 // streamed, chunked
			resp, err := h1Client(t).Do(req)
			require.NoError(t, err)
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			require.Equal(t, fmt.Sprintf("%d %s", size, wantSum), string(b), "upload arrives whole")

			req, _ = http.NewRequest(http.MethodGet, dir.base+"/down", nil)
			req.Host = dir.host
			resp, err = h1Client(t).Do(req)
			require.NoError(t, err)
			got := sha256.New()
			n, err := io.Copy(got, resp.Body)
			resp.Body.Close()
			require.NoError(t, err)
			require.Equal(t, size, n)
			require.Equal(t, wantSum, fmt.Sprintf("%x", got.Sum(nil)), "download arrives whole")
		})
	}
}

// seeded returns the same pseudo-random stream every time.
func seeded() io.Reader {
	return &xorshift{s: 0x9e3779b97f4a7c15}
}

type xorshift struct{ s uint64 }

func (x *xorshift) Read(p []byte) (int, error) {
	for i := range p {
		x.s ^= x.s << 13
		x.s ^= x.s >> 7
		x.s ^= x.s << 17
		p[i] = byte(x.s)
	}
	return len(p), nil
}

func TestWrongTokenIsRefusedOnBothSides(t *testing.T) {
	t.Parallel()
	up := upstream(t, echoInfo("u"))
	p := startPair(t, pairOpts{
		rules:        []rules.Rule{forwardRule("fwd", "127.0.0.1:0", up.URL)},
		clientMutate: func(c *config.Client) { c.Token = "wrong" },
		noWait:       true,
	})
	err := p.clientResult(t, 10*time.Second) // a refused client stops, it does not retry forever
	var rej *control.RejectedError
	require.ErrorAs(t, err, &rej, "the client learns why: %v", err)
	require.Contains(t, rej.Reason, "invalid token")
	require.Nil(t, p.Client.ForwardAddr("127.0.0.1:0"), "no rules reach a refused client")
	require.Nil(t, p.Server.Sessions().Conn(clientID), "no session for a refused client")
}

func TestWrongServerPinIsFatal(t *testing.T) {
	t.Parallel()
	other, err := transport.SelfSigned("127.0.0.1")
	require.NoError(t, err)
	otherPin, err := transport.CertificatePin(other)
	require.NoError(t, err)
	p := startPair(t, pairOpts{
		rules:        []rules.Rule{reverseRule("rev", appHost, "http://127.0.0.1:1")},
		clientMutate: func(c *config.Client) { c.ServerPin = otherPin },
		noWait:       true,
	})
	err = p.clientResult(t, 10*time.Second) // a client facing the wrong server key stops
	require.ErrorIs(t, err, transport.ErrPinMismatch)
	require.Nil(t, p.Server.Sessions().Conn(clientID))
}

func TestUserStagesExtendTheChain(t *testing.T) {
	t.Parallel()
	up := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, r.Header.Get("X-Stamp"))
	}))
	var seen atomic.Int32
	stamp := pipeline.StageFunc(func(ctx context.Context, x *pipeline.Exchange, next pipeline.Handler) error {
		seen.Add(1)
		if x.Request.URL.Path == "/forbidden" {
			return pipeline.Rejectf(http.StatusForbidden, "blocked by a user stage")
		}
		x.Request.Header.Set("X-Stamp", "stamped by "+x.Side.String()+" for rule "+x.Rule.ID)
		return next.Handle(ctx, x)
	})
	// Insert the stage right after route on the server's egress chain (the
	// forward direction reaches the upstream from the server).
	p := startPair(t, pairOpts{
		rules:      []rules.Rule{forwardRule("fwd", "127.0.0.1:0", up.URL)},
		serverOpts: []gateway.Option{gateway.WithEgressEdits(pipeline.After(route.Name, pipeline.Name("stamp", stamp)))},
	})
	_, body := get(t, h1Client(t), p.forwardURL(t, "127.0.0.1:0", "/ok"), "")
	require.Equal(t, "stamped by egress for rule fwd", body)
	resp, body := get(t, h1Client(t), p.forwardURL(t, "127.0.0.1:0", "/forbidden"), "")
	require.Equal(t, http.StatusForbidden, resp.StatusCode, "a reject on the far side comes back as is")
	require.Contains(t, body, "blocked by a user stage")
	require.EqualValues(t, 2, seen.Load())
}

func TestOverloadedEgressAnswers503(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	var inside atomic.Int32
	up := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		inside.Add(1)
		select {
		case <-release:
		case <-r.Context().Done():
		}
		fmt.Fprint(w, "ok")
	}))
	p := startPair(t, pairOpts{
		rules: []rules.Rule{reverseRule("rev", appHost, up.URL)},
		clientMutate: func(c *config.Client) {
			c.Limits.MaxConcurrentStreams = 2 // two workers on the egress side
			c.QUIC.MaxStreams = 100           // but the peer may open more streams
		},
	})
	c := h1Client(t)
	var wg sync.WaitGroup
	results := make(chan int, 2)
	for range 2 {
		wg.Go(func() {
			resp, _ := get(t, c, p.publicURL("/slow"), appHost)
			results <- resp.StatusCode
		})
	}
	eventually(t, 10*time.Second, func() bool { return inside.Load() == 2 }, "two requests occupy both workers")
	resp, body := get(t, c, p.publicURL("/more"), appHost)
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, body)
	require.Equal(t, "1", resp.Header.Get("Retry-After"))
	require.Contains(t, body, "capacity")
	close(release)
	wg.Wait()
	require.Equal(t, 200, <-results)
	require.Equal(t, 200, <-results)
}

func TestCancelledRequestReachesUpstream(t *testing.T) {
	t.Parallel()
	started := make(chan struct{}, 1)
	cancelled := make(chan struct{}, 1)
	up := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		<-r.Context().Done()
		cancelled <- struct{}{}
	}))
	p := startPair(t, pairOpts{rules: []rules.Rule{reverseRule("rev", appHost, up.URL)}})
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, p.publicURL("/hang"), nil)
	req.Host = appHost
	errc := make(chan error, 1)
	go func() {
		resp, err := h1Client(t).Do(req)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	<-started
	cancel()
	require.Error(t, <-errc)
	select {
	case <-cancelled:
	case <-time.After(10 * time.Second):
		t.Fatal("the upstream never saw the user's cancellation")
	}
}

func TestClientReconnectsAfterServerRestart(t *testing.T) {
	t.Parallel()
	up := upstream(t, echoInfo("u"))
	certFile, keyFile, pin := writeCert(t)
	rs := []rules.Rule{reverseRule("rev", appHost, up.URL)}
	sc := serverConfig(rs)
	sc.TLS = config.ServerTLS{CertFile: certFile, KeyFile: keyFile}
	p := startPair(t, pairOpts{rules: rs, serverMutate: func(c *config.Server) { *c = sc }})
	require.Equal(t, pin, p.Server.Pin())
	resp, _ := get(t, h1Client(t), p.publicURL("/"), appHost)
	require.Equal(t, 200, resp.StatusCode)

	addr := p.Server.TunnelAddr().String()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	require.NoError(t, p.Server.Shutdown(ctx))
	cancel()
	eventually(t, 10*time.Second, func() bool { return !p.Client.Connected() }, "client notices the server is gone")

	sc.Listen = addr // same address, same identity
	s2 := startServer(t, sc)
	p.Server = s2 // the pair's cleanup stops the new server
	eventually(t, 20*time.Second, func() bool { return s2.Sessions().Conn(clientID) != nil }, "client reconnects")
	resp, _ = get(t, h1Client(t), "http://"+s2.PublicAddr().String()+"/", appHost)
	require.Equal(t, 200, resp.StatusCode)
}

// TestServerShutdownLetsRequestsInFlightFinish: requests in flight in both
// directions when the server shuts down are all answered in full, and
// Shutdown then returns without error. The upstream holds every request
// until the public listener refuses connections, the sign that Shutdown is
// under way, so the requests are in flight during the shutdown however
// long it takes to get there.
func TestServerShutdownLetsRequestsInFlightFinish(t *testing.T) {
	t.Parallel()
	const n = 50
	var inside atomic.Int32
	release := make(chan struct{})
	up := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		inside.Add(1)
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		fmt.Fprint(w, "done")
	}))
	releaseAll := sync.OnceFunc(func() { close(release) })
	t.Cleanup(releaseAll) // before the upstream's Close, which waits for its handlers
	p := startPair(t, pairOpts{rules: []rules.Rule{reverseRule("rev", appHost, up.URL), forwardRule("fwd", "127.0.0.1:0", up.URL)}})
	c := h1Client(t)
	var wg sync.WaitGroup
	codes := make(chan string, 2*n)
	do := func(url, host string) {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		req.Host = host
		resp, err := c.Do(req)
		if err != nil {
			codes <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		codes <- fmt.Sprintf("%d %s", resp.StatusCode, b)
	}
	for range n {
		wg.Go(func() { do(p.publicURL("/slow"), appHost) })
		wg.Go(func() { do(p.forwardURL(t, "127.0.0.1:0", "/slow"), "") })
	}
	eventually(t, 30*time.Second, func() bool { return inside.Load() == 2*n }, "all requests reached the upstream")

	// The test shuts the server down itself: the pair's cleanup must not
	// do it again, only stop the client once the shutdown is over.
	p.stopOnce.Do(func() {})
	shutdown, shutDone := make(chan error, 1), make(chan struct{})
	go func() {
		defer close(shutDone)
		// A hang guard only: the requests finish as soon as they are let go.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		shutdown <- p.Server.Shutdown(ctx)
	}()
	t.Cleanup(func() {
		releaseAll()
		<-shutDone
		p.stopClient(t)
	})
	addr := p.Server.PublicAddr().String()
	eventually(t, 30*time.Second, func() bool {
		conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			return errors.Is(err, syscall.ECONNREFUSED)
		}
		conn.Close()
		return false
	}, "the public listener refuses connections once Shutdown has begun")
	select {
	case err := <-shutdown:
		t.Fatalf("Shutdown returned (%v) while %d requests were still held by the upstream", err, 2*n)
	default:
	}
	releaseAll()
	require.NoError(t, <-shutdown, "Shutdown waits for the requests in flight and they finish")
	wg.Wait()
	close(codes)
	for c := range codes {
		require.Equal(t, "200 done", c)
	}
}

func writeCert(t *testing.T) (certFile, keyFile, pin string) {
	t.Helper()
	cert, err := transport.SelfSigned("127.0.0.1")
	require.NoError(t, err)
	pin, err = transport.CertificatePin(cert)
	require.NoError(t, err)
	certFile, keyFile = t.TempDir()+"/cert.pem", t.TempDir()+"/key.pem"
	require.NoError(t, transport.WritePEM(cert, certFile, keyFile))
	return certFile, keyFile, pin
}
