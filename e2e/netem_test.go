package e2e_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/interop"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"

	"github.com/qtunnel/qtunnel/control"
	"github.com/qtunnel/qtunnel/internal/e2etest"
)

// netnsPair makes two network namespaces joined by a veth pair whose both
// ends delay every packet by delay and drop loss of them, and returns their
// names. The host's own network is not touched: the pair is created inside
// the namespaces. It skips the test, saying why, where namespaces cannot be
// made (not root, no iproute2, no netem in the kernel).
func netnsPair(t *testing.T, netem string) (a, b string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skipf("skipped: creating network namespaces needs root (euid %d)", os.Geteuid())
	}
	for _, tool := range []string{"ip", "tc"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("skipped: %s not found (Debian package iproute2): %v", tool, err)
		}
	}
	id := fmt.Sprintf("%d", os.Getpid()%100000)
	a, b = "qtA"+id, "qtB"+id
	run := func(args ...string) error {
		out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
		}
		return nil
	}
	for _, ns := range []string{a, b} {
		if err := run("ip", "netns", "add", ns); err != nil {
			t.Skipf("skipped: cannot create a network namespace: %v", err)
		}
		t.Cleanup(func() {
			if err := run("ip", "netns", "del", ns); err != nil {
				t.Logf("removing namespace: %v", err)
			}
		})
	}
	steps := [][]string{
		{"ip", "link", "add", "name", "vA" + id, "netns", a, "type", "veth", "peer", "name", "vB" + id, "netns", b},
		{"ip", "-n", a, "addr", "add", "10.213.0.1/24", "dev", "vA" + id},
		{"ip", "-n", b, "addr", "add", "10.213.0.2/24", "dev", "vB" + id},
		{"ip", "-n", a, "link", "set", "lo", "up"},
		{"ip", "-n", b, "link", "set", "lo", "up"},
		{"ip", "-n", a, "link", "set", "vA" + id, "up"},
		{"ip", "-n", b, "link", "set", "vB" + id, "up"},
	}
	for _, s := range steps {
		if err := run(s...); err != nil {
			t.Skipf("skipped: cannot set up the veth pair: %v", err)
		}
	}
	for _, dev := range [][2]string{{a, "vA" + id}, {b, "vB" + id}} {
		args := append([]string{"ip", "netns", "exec", dev[0], "tc", "qdisc", "add", "dev", dev[1], "root", "netem"}, strings.Fields(netem)...)
		if err := run(args...); err != nil {
			t.Skipf("skipped: tc netem is not available (kernel module sch_netem): %v", err)
		}
	}
	return a, b
}

// inNetns runs fn on a thread moved into the network namespace ns: the
// sockets fn creates (listeners, dialled connections) belong to ns for
// their whole life, whatever thread later serves them. With ns "" (the
// test's own namespace) it just runs fn.
func inNetns(ns string, fn func() error) error {
	if ns == "" {
		return fn()
	}
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	target, err := os.Open(filepath.Join("/var/run/netns", ns))
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("setns %s: %w", ns, err)
	}
	ferr := fn()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		// The thread stays locked: the runtime ends it with this
		// goroutine rather than reuse it in the wrong namespace.
		return fmt.Errorf("setns back: %w", err)
	}
	runtime.UnlockOSThread()
	return ferr
}

// nsDialer dials from inside ns ("" is the test's own namespace).
func nsDialer(ns string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := inNetns(ns, func() error {
			var err error
			c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

func nsListen(t *testing.T, ns string) net.Listener {
	t.Helper()
	var ln net.Listener
	require.NoError(t, inNetns(ns, func() error {
		var err error
		ln, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	}))
	return ln
}

// nsUpstreams starts an HTTP echo upstream and a gRPC interop upstream
// inside ns and returns their addresses.
func nsUpstreams(t *testing.T, ns string) (httpAddr, grpcAddr string) {
	t.Helper()
	hs := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body) // echo, once read whole: HTTP/1.1 handlers are not full duplex
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		_, _ = w.Write(b)
	}))
	hs.Listener = nsListen(t, ns)
	hs.Start()
	t.Cleanup(hs.Close)
	gl := nsListen(t, ns)
	gs := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(gs, interop.NewTestServer())
	go func() { _ = gs.Serve(gl) }()
	t.Cleanup(gs.Stop)
	return hs.Listener.Addr().String(), gl.Addr().String()
}

// TestLossyDelayedNetwork checks that HTTP bodies and grpc-go's interop
// cases (all but the large unary call) cross the tunnel intact in both directions over a link with 50 ms
// delay and 5% loss each way. Two ways to make that link:
//
//   - netem: the server and the client in two network namespaces joined by
//     a veth pair with tc netem on both ends (needs root and sch_netem);
//   - relay: the QUIC packets pass through a UDP relay in the test that
//     delays and drops them the same way; it runs everywhere.
func TestLossyDelayedNetwork(t *testing.T) {
	t.Run("relay", func(t *testing.T) {
		t.Parallel()
		server := e2etest.FreeAddr(t, "udp")
		relay := startLossyRelay(t, server, 50*time.Millisecond, 0.05)
		checkLossyTunnel(t, lossyNet{tunnelListen: server, clientDials: relay.addr,
			public: e2etest.FreeAddr(t, "tcp"), fwdHTTP: e2etest.FreeAddr(t, "tcp"), fwdGRPC: e2etest.FreeAddr(t, "tcp")})
		dropped, passed := relay.counts()
		t.Logf("relay: %d packets passed, %d dropped (%.1f%%)", passed, dropped, 100*float64(dropped)/float64(max(1, passed+dropped)))
		assert.Positive(t, dropped, "the relay dropped packets")
	})
	t.Run("netem", func(t *testing.T) {
		t.Parallel()
		a, b := netnsPair(t, "delay 50ms loss 5%")
		checkLossyTunnel(t, lossyNet{serverNS: a, clientNS: b, tunnelListen: "10.213.0.1:4443", clientDials: "10.213.0.1:4443",
			public: "127.0.0.1:8080", fwdHTTP: "127.0.0.1:9080", fwdGRPC: "127.0.0.1:9081"})
	})
}

// lossyNet says where the two sides run and how they meet. public is in
// the server's namespace, the forward listeners in the client's.
type lossyNet struct {
	serverNS, clientNS        string // "" is the test's own
	tunnelListen, clientDials string
	public, fwdHTTP, fwdGRPC  string
}

func (n lossyNet) argv(ns string, args ...string) []string {
	argv := append([]string{tunnelBin}, args...)
	if ns != "" {
		argv = append([]string{"ip", "netns", "exec", ns}, argv...)
	}
	return argv
}

func checkLossyTunnel(t *testing.T, n lossyNet) {
	nearServerHTTP, nearServerGRPC := nsUpstreams(t, n.serverNS)
	nearClientHTTP, nearClientGRPC := nsUpstreams(t, n.clientNS)

	dir := t.TempDir()
	host, _, err := net.SplitHostPort(n.tunnelListen)
	require.NoError(t, err)
	certFile, keyFile, pin := writeCert(t, dir, host)
	serverConf, clientConf := filepath.Join(dir, "server.yaml"), filepath.Join(dir, "client.yaml")
	writeFile(t, serverConf, fmt.Sprintf(`listen: %q
public_http: %q
tls: {cert_file: %q, key_file: %q}
clients: [{id: %s, token_sha256: %s}]
rules:
  - {id: rev, client: %[5]s, direction: reverse, host: %[7]s, upstream: "http://%[8]s"}
  - {id: rev-grpc, client: %[5]s, direction: reverse, host: grpc.e2e.test, upstream: "http://%[9]s", upstream_http2: true}
  - {id: fwd, client: %[5]s, direction: forward, listen: %[10]q, upstream: "http://%[11]s"}
  - {id: fwd-grpc, client: %[5]s, direction: forward, listen: %[12]q, upstream: "http://%[13]s", upstream_http2: true}
`, n.tunnelListen, n.public, certFile, keyFile, clientID, control.HashToken(theToken), appHost, nearClientHTTP, nearClientGRPC,
		n.fwdHTTP, nearServerHTTP, n.fwdGRPC, nearServerGRPC))
	writeFile(t, clientConf, fmt.Sprintf("id: %s\ntoken: %q\nserver: %q\nserver_pin: %q\nserver_name: %q\n", clientID, theToken, n.clientDials, pin, host))

	server := startArgv(t, "server", n.argv(n.serverNS, "server", "-config", serverConf))
	server.waitFor(`msg="server started"`, 30*time.Second)
	client := startArgv(t, "client", n.argv(n.clientNS, "client", "-config", clientConf))
	client.waitFor(`msg="rules applied"`, 30*time.Second)

	// Users of the reverse tunnel sit beside the server, users of the
	// forward tunnel beside the client.
	for _, d := range []struct {
		name, ns, httpAddr, httpHost, grpcAddr, grpcHost string
	}{
		{"reverse", n.serverNS, n.public, appHost, n.public, "grpc.e2e.test"},
		{"forward", n.clientNS, n.fwdHTTP, "", n.fwdGRPC, ""},
	} {
		t.Run(d.name+"/http", func(t *testing.T) {
			tr := &http.Transport{DialContext: nsDialer(d.ns), DisableCompression: true}
			defer tr.CloseIdleConnections()
			c := &http.Client{Transport: tr, Timeout: 60 * time.Second}
			// At 5% loss and 100 ms round trips a QUIC connection's
			// congestion window stays small (tens of KiB/s), so the
			// bodies are modest: 4 KiB to 32 KiB.
			for i := range 8 {
				body := make([]byte, 4<<10<<(i%4))
				_, _ = rand.Read(body)
				req := request(t, http.MethodPost, "http://"+d.httpAddr+"/echo", d.httpHost, bytes.NewReader(body))
				resp, err := c.Do(req)
				require.NoError(t, err)
				got, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				require.NoError(t, err)
				require.Equal(t, http.StatusOK, resp.StatusCode, "%s", got)
				require.Equal(t, sha256.Sum256(body), sha256.Sum256(got), "request %d: %d bytes sent, %d echoed", i, len(body), len(got))
			}
		})
		t.Run(d.name+"/grpc", func(t *testing.T) {
			opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
				return nsDialer(d.ns)(ctx, "tcp", addr)
			})}
			if d.grpcHost != "" {
				opts = append(opts, grpc.WithAuthority(d.grpcHost))
			}
			cc, err := grpc.NewClient("passthrough:///"+d.grpcAddr, opts...)
			require.NoError(t, err)
			defer cc.Close()
			tc := testgrpc.NewTestServiceClient(cc)
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			// grpc-go's interop cases check every message and fail the
			// process on a mismatch.
			interop.DoEmptyUnaryCall(ctx, tc)
			interop.DoClientStreaming(ctx, tc)
			interop.DoServerStreaming(ctx, tc)
			interop.DoPingPong(ctx, tc)
			interop.DoCustomMetadata(ctx, tc)
			interop.DoStatusCodeAndMessage(ctx, tc)
		})
	}
	assert.NotContains(t, client.out.String(), "connection to server lost")
}

// lossyRelay carries UDP datagrams between one client and a server,
// holding each for a fixed delay and dropping a share of them at random,
// in each direction: what netem does, for machines without it.
type lossyRelay struct {
	addr            string
	passed, dropped atomic.Int64
	front, back     *net.UDPConn
	client          atomic.Pointer[net.UDPAddr]
	server          *net.UDPAddr
	delay           time.Duration
	loss            float64
	wg              sync.WaitGroup
}

type heldPacket struct {
	due  time.Time
	data []byte
}

func startLossyRelay(t *testing.T, server string, delay time.Duration, loss float64) *lossyRelay {
	t.Helper()
	sa, err := net.ResolveUDPAddr("udp", server)
	require.NoError(t, err)
	r := &lossyRelay{server: sa, delay: delay, loss: loss}
	r.front, err = net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	r.back, err = net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	r.addr = r.front.LocalAddr().String()
	up, down := make(chan heldPacket, 8192), make(chan heldPacket, 8192)
	r.wg.Go(func() { r.read(r.front, up, true) })
	r.wg.Go(func() { r.read(r.back, down, false) })
	r.wg.Go(func() { r.deliver(up, func(b []byte) { _, _ = r.back.WriteToUDP(b, r.server) }) })
	r.wg.Go(func() {
		r.deliver(down, func(b []byte) {
			if c := r.client.Load(); c != nil {
				_, _ = r.front.WriteToUDP(b, c)
			}
		})
	})
	t.Cleanup(func() {
		r.front.Close()
		r.back.Close()
		r.wg.Wait()
	})
	return r
}

// read takes datagrams from c and queues the ones that are not lost; a
// full queue drops, as a router's would. It closes q when c closes.
func (r *lossyRelay) read(c *net.UDPConn, q chan<- heldPacket, fromClient bool) {
	defer close(q)
	buf := make([]byte, 64<<10)
	for {
		n, from, err := c.ReadFromUDP(buf)
		if err != nil {
			return
		}
		if fromClient {
			r.client.Store(from)
		}
		if mrand.Float64() < r.loss {
			r.dropped.Add(1)
			continue
		}
		select {
		case q <- heldPacket{due: time.Now().Add(r.delay), data: bytes.Clone(buf[:n])}:
			r.passed.Add(1)
		default:
			r.dropped.Add(1)
		}
	}
}

// deliver sends each queued datagram when it is due; the delay is the
// same for all, so the queue is in due order.
func (r *lossyRelay) deliver(q <-chan heldPacket, send func([]byte)) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for p := range q {
		if wait := time.Until(p.due); wait > 0 {
			timer.Reset(wait)
			<-timer.C
		}
		send(p.data)
	}
}

func (r *lossyRelay) counts() (dropped, passed int64) { return r.dropped.Load(), r.passed.Load() }
