package e2e_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/internal/e2etest"
	"github.com/qtunnel/qtunnel/transport"
)

func hello(name string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s: %s %s %s", name, r.Proto, r.Method, r.URL.RequestURI())
	})
}

// TestCurlBothDirections runs curl, HTTP/1.1 and HTTP/2 (prior knowledge),
// through both tunnels between real server and client processes.
func TestCurlBothDirections(t *testing.T) {
	t.Parallel()
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("curl is not installed (.ci/run installs it): the Go-client tests below cover the same paths")
	}
	e := startEnv(t, envOpts{nearClient: upstream(t, hello("near-client")), nearServer: upstream(t, hello("near-server"))})
	e.waitReady(t)
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"reverse http1", []string{"-H", "Host: " + appHost, "http://" + e.public + "/r?a=1"}, "hello from near-client: HTTP/1.1 GET /r?a=1"},
		{"reverse http2", []string{"--http2-prior-knowledge", "-H", "Host: " + appHost, "http://" + e.public + "/r2"}, "hello from near-client: HTTP/1.1 GET /r2"},
		{"forward http1", []string{"http://" + e.forward + "/f?b=2"}, "hello from near-server: HTTP/1.1 GET /f?b=2"},
		{"forward http2", []string{"--http2-prior-knowledge", "http://" + e.forward + "/f2"}, "hello from near-server: HTTP/1.1 GET /f2"},
		{"reverse post", []string{"-H", "Host: " + appHost, "--data-binary", "abc", "http://" + e.public + "/p"}, "hello from near-client: HTTP/1.1 POST /p"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := exec.Command(curl, append([]string{"-sS", "--fail-with-body", "--max-time", "20"}, tt.args...)...).CombinedOutput()
			require.NoError(t, err, string(out))
			require.Equal(t, tt.want, string(out))
		})
	}
	out, err := exec.Command(curl, "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "20", "-H", "Host: nobody.test", "http://"+e.public+"/").CombinedOutput()
	require.NoError(t, err)
	require.Equal(t, "404", string(out))
	e.client.signal(syscall.SIGTERM)
	require.Equal(t, 0, e.client.wait(15*time.Second))
	e.server.signal(syscall.SIGTERM)
	require.Equal(t, 0, e.server.wait(15*time.Second))
}

// slowUpstream holds each request until letGo is called (or the request
// goes away), counting the requests it holds, then answers "slow ok".
type slowUpstream struct {
	inside  atomic.Int32
	release chan struct{}
	once    sync.Once
}

func newSlowUpstream() *slowUpstream { return &slowUpstream{release: make(chan struct{})} }

// letGo answers the requests held and those still to come.
func (s *slowUpstream) letGo() { s.once.Do(func() { close(s.release) }) }

func (s *slowUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.inside.Add(1)
	select {
	case <-s.release:
		fmt.Fprint(w, "slow ok")
	case <-r.Context().Done():
	}
}

// TestSIGTERMDrainsRequestsInFlight sends SIGTERM to the side that accepted
// 200 slow requests while they are in flight: new connections are refused
// after the signal, all 200 complete with 200 OK, and the process exits 0,
// which it does only if they finished within the grace period. The
// upstream holds the 200 until the refusal has been seen, so they are in
// flight throughout whatever the machine's speed, and the grace period (2
// minutes) is far more than finishing them takes.
func TestSIGTERMDrainsRequestsInFlight(t *testing.T) {
	t.Parallel()
	// server: reverse requests through the server's public listener;
	// client: forward requests through the client's listener; client,
	// reverse: reverse requests the client serves (the server's public
	// listener stays open; the client's drain must answer them).
	for _, side := range []string{"server", "client", "client, reverse"} {
		t.Run(side, func(t *testing.T) {
			t.Parallel()
			slow := newSlowUpstream()
			url := upstream(t, slow)
			t.Cleanup(slow.letGo) // before the upstream's Close, which waits for its handlers
			// The 200 come from one address: lift the per-source cap on
			// tunnel streams (100 by default), which would refuse half.
			const uncapped = "limits:\n  max_streams_per_source: -1\n"
			e := startEnv(t, envOpts{nearClient: url, nearServer: url, grace: "2m", serverYAML: uncapped, clientYAML: uncapped})
			e.waitReady(t)
			target, host, victim := "http://"+e.public+"/slow", appHost, e.server
			switch side {
			case "client":
				target, host, victim = "http://"+e.forward+"/slow", "", e.client
			case "client, reverse":
				victim = e.client
			}
			const n = 200
			c := newClient(t)
			var wg sync.WaitGroup
			results := make(chan string, n)
			for range n {
				wg.Go(func() {
					resp, err := c.Do(request(t, http.MethodGet, target, host, nil))
					if err != nil {
						results <- err.Error()
						return
					}
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					results <- fmt.Sprintf("%d %s", resp.StatusCode, b)
				})
			}
			deadline := time.Now().Add(time.Minute)
			for slow.inside.Load() < n {
				require.True(t, time.Now().Before(deadline), "only %d of %d requests reached the upstream", slow.inside.Load(), n)
				waitTick()
			}
			signalled := time.Now()
			victim.signal(syscall.SIGTERM)
			// New connections are refused once the listener is closed,
			// while the 200 are still held; through a draining client, new
			// requests are refused with 503.
			addr := strings.TrimPrefix(strings.TrimSuffix(target, "/slow"), "http://")
			deadline = time.Now().Add(time.Minute)
			for side == "client, reverse" {
				// A request that reached the client before it read the
				// signal is in flight like the 200, and held as they are:
				// each try gives up after a few seconds and tries again.
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				resp, err := c.Do(request(t, http.MethodGet, "http://"+e.public+"/new", host, nil).WithContext(ctx))
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode == http.StatusServiceUnavailable {
						cancel()
						break
					}
				}
				cancel()
				require.True(t, time.Now().Before(deadline), "new requests still reach the client a minute after its SIGTERM")
				waitTick()
			}
			for side != "client, reverse" {
				conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
				if err == nil {
					conn.Close()
				} else if errors.Is(err, syscall.ECONNREFUSED) {
					break
				}
				require.True(t, time.Now().Before(deadline), "the %s still accepts connections a minute after SIGTERM (last dial: %v)", side, err)
				waitTick()
			}
			select {
			case <-victim.done:
				t.Fatalf("the %s exited with %d requests still in flight", side, n)
			default:
			}
			slow.letGo()
			require.Equal(t, 0, victim.wait(3*time.Minute), "exit code (1 had the grace period run out)")
			took := victim.exited.Sub(signalled)
			wg.Wait()
			close(results)
			ok := 0
			for r := range results {
				require.Equal(t, "200 slow ok", r)
				ok++
			}
			require.Equal(t, n, ok)
			t.Logf("%s: %d slow requests completed; exit %v after SIGTERM", side, ok, took.Round(time.Millisecond))
		})
	}
}

func waitTick() { <-time.After(10 * time.Millisecond) }

// TestSecondSignalForcesExit: with a request held open, a second SIGTERM
// ends the process at once (exit code 130) instead of waiting out the
// grace period, ten minutes here: the test gives up a minute after the
// second signal.
func TestSecondSignalForcesExit(t *testing.T) {
	t.Parallel()
	slow := newSlowUpstream()
	url := upstream(t, slow)
	t.Cleanup(slow.letGo)
	e := startEnv(t, envOpts{nearClient: url, nearServer: url, grace: "10m"})
	e.waitReady(t)
	go func() {
		resp, err := newClient(t).Do(request(t, http.MethodGet, "http://"+e.public+"/hold", appHost, nil))
		if err == nil {
			resp.Body.Close()
		}
	}()
	deadline := time.Now().Add(time.Minute)
	for slow.inside.Load() < 1 {
		require.True(t, time.Now().Before(deadline))
		waitTick()
	}
	e.server.signal(syscall.SIGTERM)
	e.server.waitFor(`signal again to force`, time.Minute)
	e.server.signal(syscall.SIGTERM)
	require.Equal(t, 130, e.server.wait(time.Minute), "the forced exit's code")
}

// blockReader yields size bytes of a repeatable pattern fast: random 64 KiB
// blocks, each stamped with its index so that a reordered or repeated block
// changes the hash.
type blockReader struct {
	block []byte
	left  int64
	n     uint64
	off   int
}

func newBlockReader(size int64) *blockReader {
	b := make([]byte, 64<<10)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return &blockReader{block: b, left: size}
}

func (r *blockReader) Read(p []byte) (int, error) {
	if r.left == 0 {
		return 0, io.EOF
	}
	if r.off == 0 {
		binary.LittleEndian.PutUint64(r.block, r.n)
		r.n++
	}
	n := copy(p, r.block[r.off:])
	if int64(n) > r.left {
		n = int(r.left)
	}
	r.off = (r.off + n) % len(r.block)
	r.left -= int64(n)
	return n, nil
}

func sumOf(size int64) string {
	h := sha256.New()
	_, _ = io.Copy(h, newBlockReader(size))
	return fmt.Sprintf("%x", h.Sum(nil))
}

// TestGigabyteBothWaysBoundedMemory moves 1 GiB up and 1 GiB down through
// each tunnel, checks SHA-256 sums, and checks that neither process's peak
// memory grew with the transfer.
func TestGigabyteBothWaysBoundedMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skips moving 4 GiB through the tunnels")
	}
	const size = 1 << 30
	const rssBound = 96 << 20
	want := sumOf(size)
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
			_, _ = io.Copy(w, newBlockReader(size))
		}
	})
	url := upstream(t, h)
	// A 1 GiB upload is far over the default body limit (10 MiB).
	unlimited := "limits:\n  max_body_size: unlimited\n"
	e := startEnv(t, envOpts{nearClient: url, nearServer: url, serverYAML: unlimited, clientYAML: unlimited})
	e.waitReady(t)
	c := newClient(t)
	for _, dir := range []struct{ name, base, host string }{
		{"reverse", "http://" + e.public, appHost},
		{"forward", "http://" + e.forward, ""},
	} {
		start := time.Now()
		req := request(t, http.MethodPost, dir.base+"/up", dir.host, newBlockReader(size))
		req.ContentLength = -1
		resp, err := c.Do(req)
		require.NoError(t, err)
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.Equal(t, fmt.Sprintf("%d %s", size, want), string(b), "%s upload", dir.name)
		up := time.Since(start)

		start = time.Now()
		resp, err = c.Do(request(t, http.MethodGet, dir.base+"/down", dir.host, nil))
		require.NoError(t, err)
		hs := sha256.New()
		n, err := io.Copy(hs, resp.Body)
		resp.Body.Close()
		require.NoError(t, err)
		require.EqualValues(t, size, n)
		require.Equal(t, want, fmt.Sprintf("%x", hs.Sum(nil)), "%s download", dir.name)
		t.Logf("%s: 1 GiB up in %v (%.0f MiB/s), down in %v (%.0f MiB/s)", dir.name,
			up.Round(time.Millisecond), 1024/up.Seconds(), time.Since(start).Round(time.Millisecond), 1024/time.Since(start).Seconds())
	}
	srv, cl := e.server.peakRSS(), e.client.peakRSS()
	t.Logf("peak RSS after 4 GiB: server %d MiB, client %d MiB (bound %d MiB)", srv>>20, cl>>20, rssBound>>20)
	require.Less(t, srv, int64(rssBound), "server memory must not grow with the transfer")
	require.Less(t, cl, int64(rssBound), "client memory must not grow with the transfer")
}

// TestRefusedClientExits: a wrong token or a wrong server pin makes the
// client process exit non-zero with a message that says why, at once.
func TestRefusedClientExits(t *testing.T) {
	t.Parallel()
	other, err := transport.SelfSigned("127.0.0.1")
	require.NoError(t, err)
	otherPin, err := transport.CertificatePin(other)
	require.NoError(t, err)
	tests := []struct {
		name       string
		o          envOpts
		clientSays string
		serverSays string
	}{
		{"wrong token", envOpts{token: "not-the-token"}, "server rejected this client: unknown client id or invalid token", `msg="failed logins" side=server kind=tunnel`},
		{"wrong pin", envOpts{pin: otherPin}, "server key does not match the pinned key", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.o.nearClient, tt.o.nearServer = "http://127.0.0.1:1", "http://127.0.0.1:1"
			e := startEnv(t, tt.o)
			require.Equal(t, 1, e.client.wait(15*time.Second))
			require.Contains(t, e.client.out.String(), tt.clientSays)
			require.NotContains(t, e.client.out.String(), `msg="rules applied"`)
			if tt.serverSays != "" {
				e.server.waitFor(tt.serverSays, 5*time.Second)
			}
			e.server.signal(syscall.SIGTERM)
			require.Equal(t, 0, e.server.wait(15*time.Second))
		})
	}
}

// TestDemoPrintsWorkingCurlLines runs 'tunnel demo' and every curl line it
// prints.
func TestDemoPrintsWorkingCurlLines(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl is not installed (.ci/run installs it)")
	}
	d := start(t, "demo", "demo", "-public", e2etest.FreeAddr(t, "tcp"), "-forward", e2etest.FreeAddr(t, "tcp"), "-tunnel", e2etest.FreeAddr(t, "udp"))
	d.waitFor(`Press Ctrl-C`, 30*time.Second)
	lines := regexp.MustCompile(`(?m)^\s+(curl .*)$`).FindAllStringSubmatch(d.out.String(), -1)
	require.Len(t, lines, 2, "one curl line per direction:\n%s", d.out.String())
	wants := []string{"hello from the upstream near the client", "hello from the upstream near the server"}
	for i, l := range lines {
		out, err := exec.Command("sh", "-c", l[1]+" -sS --max-time 20").CombinedOutput()
		require.NoError(t, err, string(out))
		require.True(t, bytes.HasPrefix(out, []byte(wants[i])), "%s printed:\n%s", l[1], out)
	}
	d.signal(syscall.SIGINT)
	require.Equal(t, 0, d.wait(15*time.Second))
	require.Contains(t, d.out.String(), "demo stopped")
}
