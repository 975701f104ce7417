package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"

	"github.com/qtunnel/qtunnel/control"
	"github.com/qtunnel/qtunnel/transport"
)

// env is the system under test: the sample upstream in this process, and a
// tunnel server and client as separate processes.
type env struct {
	dir      string
	upstream *http.Server
	upAddr   string
	public   string // server's public listener
	forward  string // client's forward listener

	grpcAddr, grpcFwd string // gRPC upstream (h2c) and the client's listener for it
	tcpAddr           string // TCP upstream
	tcpRev, tcpFwd    string // the server's and the client's TCP rule listeners
	grpcSrv           *grpc.Server
	tcpLn             net.Listener
	server            *exec.Cmd
	client            *exec.Cmd
	logs              map[string]*bytes.Buffer
	extraEnv          []string // added to the tunnel processes' environment
	mu                sync.Mutex
	upWG              sync.WaitGroup
}

const (
	benchClient = "bench-client"
	benchToken  = "bench-token-not-secret"
	benchHost   = "bench.test"
)

type lockedBuffer struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (l lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func freeAddr(network string) (string, error) {
	if network == "udp" {
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			return "", err
		}
		defer c.Close()
		return c.LocalAddr().String(), nil
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// startEnv starts the upstream, the server and the client and waits until
// a request crosses each tunnel. profileDir, if set, makes both processes
// write CPU and allocation profiles there when they stop.
func startEnv(ctx context.Context, binary, profileDir string, extraEnv []string) (*env, error) {
	dir, err := os.MkdirTemp("", "qtunnel-bench-")
	if err != nil {
		return nil, err
	}
	e := &env{dir: dir, logs: map[string]*bytes.Buffer{}, extraEnv: extraEnv}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	e.upAddr = ln.Addr().String()
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true) // the h2 scenario's direct baseline
	e.upstream = &http.Server{Handler: upstreamHandler(), ReadHeaderTimeout: 10 * time.Second, Protocols: &protos}
	e.upWG.Go(func() { _ = e.upstream.Serve(ln) })

	if err := e.startProtocolUpstreams(); err != nil {
		e.close()
		return nil, err
	}
	tunnel, err := freeAddr("udp")
	for _, a := range []*string{&e.public, &e.forward, &e.grpcFwd, &e.tcpRev, &e.tcpFwd} {
		if err == nil {
			*a, err = freeAddr("tcp")
		}
	}
	if err != nil {
		e.close()
		return nil, err
	}
	cert, err := transport.SelfSigned("127.0.0.1")
	if err != nil {
		e.close()
		return nil, err
	}
	pin, _ := transport.CertificatePin(cert)
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := transport.WritePEM(cert, certFile, keyFile); err != nil {
		e.close()
		return nil, err
	}
	upstream := "http://" + e.upAddr
	serverConf := fmt.Sprintf(`listen: %q
public_http: %q
tls: {cert_file: %q, key_file: %q}
clients: [{id: %s, token_sha256: %s}]
rules:
  - {id: rev, client: %[7]s, direction: reverse, host: %[8]s, upstream: %[9]q}
  - {id: fwd, client: %[7]s, direction: forward, listen: %[10]q, upstream: %[9]q}
  - {id: rev-grpc, client: %[7]s, direction: reverse, host: %[11]s, upstream: "http://%[12]s", upstream_http2: true}
  - {id: fwd-grpc, client: %[7]s, direction: forward, listen: %[13]q, upstream: "http://%[12]s", upstream_http2: true}
  - {id: rev-tcp, client: %[7]s, direction: reverse, protocol: tcp, listen: %[14]q, upstream: %[15]q}
  - {id: fwd-tcp, client: %[7]s, direction: forward, protocol: tcp, listen: %[16]q, upstream: %[15]q}
limits: {max_concurrent_streams: 4096, max_body_size: unlimited}
egress: {max_idle_per_upstream: 1024}
log: {level: info}
`, tunnel, e.public, certFile, keyFile, benchClient, control.HashToken(benchToken), benchClient, benchHost, upstream,
		e.forward, grpcHost, e.grpcAddr, e.grpcFwd, e.tcpRev, e.tcpAddr, e.tcpFwd)
	clientConf := fmt.Sprintf(`id: %s
token: %q
server: %q
server_pin: %q
limits: {max_concurrent_streams: 4096, max_body_size: unlimited}
egress: {max_idle_per_upstream: 1024}
log: {level: info}
`, benchClient, benchToken, tunnel, pin)
	sc, cc := filepath.Join(dir, "server.yaml"), filepath.Join(dir, "client.yaml")
	if err := os.WriteFile(sc, []byte(serverConf), 0o600); err != nil {
		e.close()
		return nil, err
	}
	if err := os.WriteFile(cc, []byte(clientConf), 0o600); err != nil {
		e.close()
		return nil, err
	}
	if e.server, err = e.spawn(binary, "server", sc, profileDir); err != nil {
		e.close()
		return nil, err
	}
	if e.client, err = e.spawn(binary, "client", cc, profileDir); err != nil {
		e.close()
		return nil, err
	}
	for _, t := range e.targets()[1:] {
		if err := waitOK(ctx, t, 20*time.Second); err != nil {
			e.close()
			return nil, fmt.Errorf("%s tunnel not ready: %w\n%s", t.Name, err, e.logText())
		}
	}
	return e, nil
}

func (e *env) spawn(binary, role, conf, profileDir string) (*exec.Cmd, error) {
	cmd := exec.Command(binary, role, "-config", conf)
	buf := &bytes.Buffer{}
	e.logs[role] = buf
	cmd.Stdout, cmd.Stderr = lockedBuffer{&e.mu, buf}, lockedBuffer{&e.mu, buf}
	cmd.Env = append(os.Environ(), "QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING=true")
	cmd.Env = append(cmd.Env, e.extraEnv...)
	if profileDir != "" {
		cmd.Env = append(cmd.Env, "QTUNNEL_PROFILE="+filepath.Join(profileDir, role))
	}
	return cmd, cmd.Start()
}

// writeLogs saves each process's output as dir/<role>.log.
func (e *env) writeLogs(dir string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for role, l := range e.logs {
		_ = os.WriteFile(filepath.Join(dir, role+".log"), l.Bytes(), 0o644)
	}
}

func (e *env) logText() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var b strings.Builder
	for role, l := range e.logs {
		fmt.Fprintf(&b, "--- %s ---\n%s", role, l.String())
	}
	return b.String()
}

// target is one way to reach the upstream.
type target struct {
	Name string // direct, reverse, forward
	Base string // http://addr
	Host string
}

func (e *env) targets() []target {
	return []target{
		{"direct", "http://" + e.upAddr, ""},
		{"reverse", "http://" + e.public, benchHost},
		{"forward", "http://" + e.forward, ""},
	}
}

func waitOK(ctx context.Context, t target, d time.Duration) error {
	deadline := time.Now().Add(d)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var last error
	for time.Now().Before(deadline) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, t.Base+"/1k", nil)
		req.Host = t.Host
		resp, err := http.DefaultTransport.RoundTrip(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		last = err
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
	return last
}

func (e *env) pids() (server, client int) { return e.server.Process.Pid, e.client.Process.Pid }

// close stops the client, then the server (SIGTERM, as an operator would),
// then the upstream.
func (e *env) close() error {
	var errs []error
	for _, c := range []*exec.Cmd{e.client, e.server} {
		if c == nil || c.Process == nil {
			continue
		}
		_ = c.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- c.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", c.Args[1], err))
			}
		case <-time.After(15 * time.Second):
			_ = c.Process.Kill()
			<-done
			errs = append(errs, fmt.Errorf("%s did not stop within 15s", c.Args[1]))
		}
	}
	if e.upstream != nil {
		_ = e.upstream.Close()
	}
	if e.grpcSrv != nil {
		e.grpcSrv.Stop()
	}
	if e.tcpLn != nil {
		_ = e.tcpLn.Close()
	}
	e.upWG.Wait()
	_ = os.RemoveAll(e.dir)
	return errors.Join(errs...)
}
