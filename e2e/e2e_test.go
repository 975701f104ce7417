package e2e_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
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

// slowUpstream answers after d, counting the requests it holds.
type slowUpstream struct {
	d      time.Duration
	inside atomic.Int32
}

func (s *slowUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.inside.Add(1)
	timer := time.NewTimer(s.d) // the upstream's own slow work, not synchronisation
	defer timer.Stop()
	select {
	case <-timer.C:
		fmt.Fprint(w, "slow ok")
	case <-r.Context().Done():
	}
}

// TestSIGTERMDrainsRequestsInFlight sends SIGTERM to the side that accepted
// 200 slow requests (about 1 s each) while they are in flight: all 200
// complete with 200 OK, new connections are refused after the signal, and
// the process exits 0 within the grace period.
func TestSIGTERMDrainsRequestsInFlight(t *testing.T) {
	t.Parallel()
	for _, side := range []string{"server", "client"} {
		t.Run(side, func(t *testing.T) {
			t.Parallel()
			slow := &slowUpstream{d: time.Second}
			url := upstream(t, slow)
			e := startEnv(t, envOpts{nearClient: url, nearServer: url, grace: "10s"})
			e.waitReady(t)
			target, host, victim := "http://"+e.public+"/slow", appHost, e.server
			if side == "client" {
				target, host, victim = "http://"+e.forward+"/slow", "", e.client
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
			deadline := time.Now().Add(20 * time.Second)
			for slow.inside.Load() < n {
				require.True(t, time.Now().Before(deadline), "only %d of %d requests reached the upstream", slow.inside.Load(), n)
				waitTick()
			}
			signalled := time.Now()
			victim.signal(syscall.SIGTERM)
			// New connections are refused once the listener is closed,
			// while the 200 are still being served.
			addr := strings.TrimPrefix(strings.TrimSuffix(target, "/slow"), "http://")
			refused := false
			for time.Since(signalled) < 900*time.Millisecond {
				conn, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
				if err != nil {
					refused = true
					break
				}
				conn.Close()
				waitTick()
			}
			require.True(t, refused, "the %s still accepts connections after SIGTERM", side)
			require.Equal(t, 0, victim.wait(15*time.Second), "exit code")
			took := victim.exited.Sub(signalled)
			require.Less(t, took, 10*time.Second, "exit within the grace period")
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
// ends the process at once instead of waiting out the grace period.
func TestSecondSignalForcesExit(t *testing.T) {
	t.Parallel()
	slow := &slowUpstream{d: time.Minute}
	url := upstream(t, slow)
	e := startEnv(t, envOpts{nearClient: url, nearServer: url, grace: "60s"})
	e.waitReady(t)
	go func() {
		resp, err := newClient(t).Do(request(t, http.MethodGet, "http://"+e.public+"/hold", appHost, nil))
		if err == nil {
			resp.Body.Close()
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for slow.inside.Load() < 1 {
		require.True(t, time.Now().Before(deadline))
		waitTick()
	}
	e.server.signal(syscall.SIGTERM)
	e.server.waitFor(`signal again to force`, 5*time.Second)
	start := time.Now()
	e.server.signal(syscall.SIGTERM)
	require.Equal(t, 130, e.server.wait(5*time.Second))
	require.Less(t, time.Since(start), 5*time.Second)
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
