package e2e_test

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/internal/e2etest"
	"github.com/qtunnel/qtunnel/transport"
)

// stopEnv sends SIGTERM to the client, then to the server, and requires
// each to exit 0: every test ends with a graceful shutdown.
func stopEnv(t *testing.T, e *env) {
	t.Helper()
	e.client.signal(syscall.SIGTERM)
	require.Equal(t, 0, e.client.wait(20*time.Second), "client exit code after SIGTERM")
	e.server.signal(syscall.SIGTERM)
	require.Equal(t, 0, e.server.wait(20*time.Second), "server exit code after SIGTERM")
}

// tcpRules returns server rules (YAML list items) for a reverse TCP rule
// listening on the server at rev and a forward one listening on the client
// at fwd, both to upstream.
func tcpRules(rev, fwd, upstream string) string {
	return fmt.Sprintf(`  - id: rev-tcp
    client: %s
    direction: reverse
    protocol: tcp
    listen: %q
    upstream: %q
  - id: fwd-tcp
    client: %s
    direction: forward
    protocol: tcp
    listen: %q
    upstream: %q
`, clientID, rev, "tcp://"+upstream, clientID, fwd, upstream)
}

// gigaTCPUpstream serves raw TCP. The first byte of a connection picks the
// job: 'U' hashes everything after it up to the client's half-close and
// answers "<bytes> <sha256 hex>"; 'D' sends size bytes of blockReader data,
// half-closes, and waits for the client's half-close, which it counts in
// downEOF.
func gigaTCPUpstream(t *testing.T, size int64, downEOF *atomic.Int32) string {
	t.Helper()
	return e2etest.TCPUpstream(t, 2*time.Minute, func(c net.Conn) {
		var mode [1]byte
		if _, err := io.ReadFull(c, mode[:]); err != nil {
			return
		}
		switch mode[0] {
		case 'U':
			h := sha256.New()
			n, err := io.Copy(h, c)
			if err != nil {
				return
			}
			fmt.Fprintf(c, "%d %x", n, h.Sum(nil))
		case 'D':
			if _, err := io.Copy(c, newBlockReader(size)); err != nil {
				return
			}
			_ = c.(*net.TCPConn).CloseWrite()
			if n, err := io.Copy(io.Discard, c); err == nil && n == 0 {
				downEOF.Add(1)
			}
		}
	})
}

// TestTCPGigabyteBothWaysBoundedMemory moves 1 GiB up and 1 GiB down
// through a reverse and a forward TCP rule, with half-closes in both
// directions, checks SHA-256 sums, and checks that neither process's peak
// memory grew with the transfer.
func TestTCPGigabyteBothWaysBoundedMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skips moving 4 GiB through the TCP tunnels")
	}
	const size = 1 << 30
	const rssBound = 96 << 20
	var downEOF atomic.Int32
	up := gigaTCPUpstream(t, size, &downEOF)
	rev, fwd := e2etest.FreeAddr(t, "tcp"), e2etest.FreeAddr(t, "tcp")
	e := startEnv(t, envOpts{nearClient: "http://127.0.0.1:1", nearServer: "http://127.0.0.1:1", extraRules: tcpRules(rev, fwd, up)})
	e.server.waitFor(`msg="server started".* tcp_listeners=1`, 5*time.Second)
	e.waitReady(t)
	e.client.waitFor(`msg="rules applied".* forward_listeners=2`, 5*time.Second)
	want := sumOf(size)

	// upload sends 'U' and size bytes, half-closes, and returns the
	// upstream's answer; download sends 'D', half-closes at once (the far
	// side must keep sending), and returns the SHA-256 of what arrives.
	upload := func(addr string) (string, error) {
		c, err := dialTCP(addr)
		if err != nil {
			return "", err
		}
		defer c.Close()
		if _, err := c.Write([]byte{'U'}); err != nil {
			return "", err
		}
		if n, err := io.Copy(c, newBlockReader(size)); err != nil {
			return "", fmt.Errorf("after %d bytes: %w", n, err)
		}
		if err := c.CloseWrite(); err != nil {
			return "", err
		}
		answer, err := io.ReadAll(c)
		if err != nil {
			return "", fmt.Errorf("reading the answer after the half-close: %w", err)
		}
		return string(answer), nil
	}
	download := func(addr string) (string, error) {
		c, err := dialTCP(addr)
		if err != nil {
			return "", err
		}
		defer c.Close()
		if _, err := c.Write([]byte{'D'}); err != nil {
			return "", err
		}
		if err := c.CloseWrite(); err != nil {
			return "", err
		}
		h := sha256.New()
		n, err := io.Copy(h, c)
		if err != nil {
			return "", fmt.Errorf("after %d bytes: %w", n, err)
		}
		return fmt.Sprintf("%d %x", n, h.Sum(nil)), nil
	}
	wantAnswer := fmt.Sprintf("%d %s", size, want)
	start := time.Now()
	for _, tg := range []struct{ name, addr string }{{"reverse", rev}, {"forward", fwd}} {
		// Both directions at once, each on its own connection.
		var wg sync.WaitGroup
		var upGot, downGot string
		var upErr, downErr error
		var upTook, downTook time.Duration
		began := time.Now()
		wg.Go(func() { upGot, upErr = upload(tg.addr); upTook = time.Since(began) })
		wg.Go(func() { downGot, downErr = download(tg.addr); downTook = time.Since(began) })
		wg.Wait()
		require.NoError(t, upErr, "%s upload", tg.name)
		require.Equal(t, wantAnswer, upGot, "%s upload: bytes and SHA-256 at the upstream", tg.name)
		require.NoError(t, downErr, "%s download", tg.name)
		require.Equal(t, wantAnswer, downGot, "%s download: bytes and SHA-256 at the client", tg.name)
		t.Logf("%s tcp, both at once: 1 GiB up in %v (%.0f MiB/s), 1 GiB down in %v (%.0f MiB/s)", tg.name,
			upTook.Round(time.Millisecond), 1024/upTook.Seconds(), downTook.Round(time.Millisecond), 1024/downTook.Seconds())
	}
	total := time.Since(start)
	deadline := time.Now().Add(10 * time.Second)
	for downEOF.Load() < 2 {
		require.True(t, time.Now().Before(deadline), "the client's early half-close reached the upstream on %d of 2 downloads", downEOF.Load())
		waitTick()
	}
	srv, cl := e.server.peakRSS(), e.client.peakRSS()
	t.Logf("4 GiB in %v (%.0f MiB/s); peak RSS: server %d MiB, client %d MiB (bound %d MiB)",
		total.Round(time.Millisecond), 4096/total.Seconds(), srv>>20, cl>>20, rssBound>>20)
	require.Less(t, srv, int64(rssBound), "server memory must not grow with the transfer")
	require.Less(t, cl, int64(rssBound), "client memory must not grow with the transfer")
	stopEnv(t, e)
}

// dialTCP connects to addr with a deadline that bounds a whole transfer.
func dialTCP(addr string) (*net.TCPConn, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	if err := c.SetDeadline(time.Now().Add(2 * time.Minute)); err != nil {
		c.Close()
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// raiseNoFile raises the soft open-file limit to the hard one.
func raiseNoFile(t *testing.T, need uint64) {
	t.Helper()
	var lim syscall.Rlimit
	require.NoError(t, syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim))
	if lim.Max < need {
		t.Fatalf("RLIMIT_NOFILE hard limit is %d; this test needs at least %d open files (raise it with ulimit -Hn or in limits.conf)", lim.Max, need)
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		require.NoError(t, syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim))
	}
}

// wsCounter is a WebSocket echo upstream that counts what it sees.
type wsCounter struct {
	live, normalClose atomic.Int64
	mu                sync.Mutex
	otherClose        []string
}

func (u *wsCounter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	defer c.CloseNow()
	u.live.Add(1)
	defer u.live.Add(-1)
	ctx := r.Context()
	for {
		typ, data, err := c.Read(ctx)
		if err != nil {
			if websocket.CloseStatus(err) == websocket.StatusNormalClosure {
				u.normalClose.Add(1)
			} else {
				u.mu.Lock()
				u.otherClose = append(u.otherClose, err.Error())
				u.mu.Unlock()
			}
			return
		}
		if err := c.Write(ctx, typ, data); err != nil {
			return
		}
	}
}

// holdSockets opens n WebSockets to url (at most 100 dials at a time);
// each sends a message and reads its echo; all stay open until all n have
// echoed (and the upstream holds n at once); then each closes with
// StatusNormalClosure.
func holdSockets(t *testing.T, up *wsCounter, url, host string, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	baseNormal := up.normalClose.Load()

	dials := make(chan struct{}, 100)
	release := make(chan struct{})
	var echoed, closed sync.WaitGroup
	echoed.Add(n)
	openErrs := make([]error, n)
	closeErrs := make([]error, n)
	start := time.Now()
	for i := range n {
		closed.Go(func() {
			once := sync.OnceFunc(echoed.Done)
			defer once()
			dials <- struct{}{}
			c, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPClient: hc, Host: host})
			<-dials
			if err != nil {
				openErrs[i] = fmt.Errorf("socket %d: dial: %w", i, err)
				return
			}
			defer c.CloseNow()
			msg := fmt.Sprintf("hello from socket %d", i)
			if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
				openErrs[i] = fmt.Errorf("socket %d: write: %w", i, err)
				return
			}
			typ, got, err := c.Read(ctx)
			if err != nil {
				openErrs[i] = fmt.Errorf("socket %d: read: %w", i, err)
				return
			}
			if typ != websocket.MessageText || string(got) != msg {
				openErrs[i] = fmt.Errorf("socket %d: echo %v %q, want text %q", i, typ, got, msg)
				return
			}
			once()
			select {
			case <-release:
			case <-ctx.Done():
				closeErrs[i] = fmt.Errorf("socket %d: never released: %w", i, ctx.Err())
				return
			}
			closeErrs[i] = c.Close(websocket.StatusNormalClosure, "done")
		})
	}
	allEchoed := make(chan struct{})
	go func() { echoed.Wait(); close(allEchoed) }()
	select {
	case <-allEchoed:
	case <-ctx.Done():
	}
	openTook := time.Since(start)
	liveAtUpstream, goroutines := up.live.Load(), runtime.NumGoroutine()
	close(release)
	closed.Wait()
	<-allEchoed
	failed := 0
	for _, err := range openErrs {
		if err != nil {
			if failed < 10 {
				t.Error(err)
			}
			failed++
		}
	}
	require.Zero(t, failed, "%d of %d sockets failed to open and echo", failed, n)
	require.EqualValues(t, n, liveAtUpstream, "all %d sockets open at the upstream at once", n)
	for _, err := range closeErrs {
		require.NoError(t, err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for up.normalClose.Load()-baseNormal < int64(n) || up.live.Load() > 0 {
		if time.Now().After(deadline) {
			up.mu.Lock()
			other := up.otherClose
			up.mu.Unlock()
			t.Fatalf("the upstream saw %d of %d normal closures (%d still open); other endings: %.5q",
				up.normalClose.Load()-baseNormal, n, up.live.Load(), other)
		}
		waitTick()
	}
	t.Logf("%d sockets opened and echoed in %v; %d goroutines in the test process at the peak; all closed normally in %v",
		n, openTook.Round(time.Millisecond), goroutines, (time.Since(start) - openTook).Round(time.Millisecond))
}

// TestThousandWebSocketsThroughTheTunnel holds 1000 WebSockets open at once
// through the reverse tunnel, then 500 through the forward one.
//
// Not parallel: 1000 sockets at both ends are about 4000 goroutines in the
// test process, and the race detector allows 8128.
func TestThousandWebSocketsThroughTheTunnel(t *testing.T) {
	raiseNoFile(t, 8192)
	up := &wsCounter{}
	url := upstream(t, up)
	// A thousand sockets from one address, on purpose: the per-source
	// stream cap is lifted on both sides.
	lift := "limits:\n  max_streams_per_source: -1\n"
	e := startEnv(t, envOpts{nearClient: url, nearServer: url, serverYAML: lift, clientYAML: lift})
	e.waitReady(t)
	for _, tg := range []struct {
		name, url, host string
		n               int
	}{
		{"reverse", "ws://" + e.public + "/ws", appHost, 1000},
		{"forward", "ws://" + e.forward + "/ws", "", 500},
	} {
		t.Run(tg.name, func(t *testing.T) { holdSockets(t, up, tg.url, tg.host, tg.n) })
	}
	up.mu.Lock()
	require.Empty(t, up.otherClose, "every socket ended with a normal closure at the upstream")
	up.mu.Unlock()
	stopEnv(t, e)
}

// TestCurlHTTP2OverTLSAndPriorKnowledge runs curl with HTTP/2 over TLS
// (ALPN) against the server's public_https listener and a client's
// listen_tls forward listener, and with HTTP/2 prior knowledge over plain
// HTTP through both tunnels; the upstreams speak HTTP/1.1.
func TestCurlHTTP2OverTLSAndPriorKnowledge(t *testing.T) {
	t.Parallel()
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("curl is not installed (.ci/run installs it)")
	}
	dir := t.TempDir()
	cert, err := transport.SelfSigned(appHost)
	require.NoError(t, err)
	ca, key := filepath.Join(dir, "app.pem"), filepath.Join(dir, "app-key.pem")
	require.NoError(t, transport.WritePEM(cert, ca, key))
	answer := func(name string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "%s answered %s %s", name, r.Proto, r.URL.Path)
		})
	}
	publicTLS, forwardTLS := e2etest.FreeAddr(t, "tcp"), e2etest.FreeAddr(t, "tcp")
	e := startEnv(t, envOpts{
		nearClient: upstream(t, answer("near-client")),
		nearServer: upstream(t, answer("near-server")),
		extraRules: fmt.Sprintf(`  - id: fwd-tls
    client: %s
    direction: forward
    listen: %q
    listen_tls: true
    upstream: %q
`, clientID, forwardTLS, upstream(t, answer("near-server-tls"))),
		serverYAML: fmt.Sprintf("public_https: %q\npublic_tls:\n  - cert_file: %q\n    key_file: %q\n", publicTLS, ca, key),
		clientYAML: fmt.Sprintf("forward_tls:\n  - cert_file: %q\n    key_file: %q\n", ca, key),
	})
	e.server.waitFor(`msg="server started".* public_https=`+publicTLS, 5*time.Second)
	e.waitReady(t)
	port := func(addr string) string {
		_, p, err := net.SplitHostPort(addr)
		require.NoError(t, err)
		return p
	}
	viaName := func(scheme, addr, path string) []string {
		return []string{"--resolve", appHost + ":" + port(addr) + ":127.0.0.1", scheme + "://" + appHost + ":" + port(addr) + path}
	}
	tlsArgs := []string{"--http2", "--cacert", ca}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"reverse h2 over tls", slices.Concat(tlsArgs, viaName("https", publicTLS, "/x")), "near-client answered HTTP/1.1 /x"},
		{"forward h2 over tls", slices.Concat(tlsArgs, viaName("https", forwardTLS, "/x")), "near-server-tls answered HTTP/1.1 /x"},
		{"reverse h2 prior knowledge", append([]string{"--http2-prior-knowledge"}, viaName("http", e.public, "/p")...), "near-client answered HTTP/1.1 /p"},
		{"forward h2 prior knowledge", []string{"--http2-prior-knowledge", "http://" + e.forward + "/p"}, "near-server answered HTTP/1.1 /p"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"-sS", "--fail-with-body", "--max-time", "20", "-w", `\n%{http_version}`}, tt.args...)
			out, err := exec.Command(curl, args...).CombinedOutput()
			require.NoError(t, err, "curl %s:\n%s", strings.Join(args, " "), out)
			body, version, ok := strings.Cut(string(out), "\n")
			require.True(t, ok, "curl printed %q", out)
			require.Equal(t, tt.want, body, "the upstream's answer")
			require.Equal(t, "2", version, "curl's HTTP version to the tunnel")
		})
	}
	// The certificate is really checked: without the CA, curl refuses.
	out, err := exec.Command(curl, append([]string{"-sS", "--max-time", "20"}, viaName("https", publicTLS, "/x")...)...).CombinedOutput()
	require.Error(t, err, "curl accepted the self-signed certificate without --cacert: %s", out)
	stopEnv(t, e)
}
