package e2e_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/control"
	"github.com/qtunnel/qtunnel/internal/e2etest"
	"github.com/qtunnel/qtunnel/transport"
)

var tunnelBin string

func TestMain(m *testing.M) { e2etest.Main(m, &tunnelBin) }

// proc is a running tunnel process.
type proc struct {
	t      *testing.T
	name   string
	cmd    *exec.Cmd
	out    *e2etest.SyncBuffer
	done   chan struct{}
	err    error
	exited time.Time
}

func start(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	return startArgv(t, name, append([]string{tunnelBin}, args...))
}

// startArgv starts argv[0] with the rest as arguments, such as the tunnel
// binary behind "ip netns exec".
func startArgv(t *testing.T, name string, argv []string) *proc {
	t.Helper()
	p := &proc{t: t, name: name, out: &e2etest.SyncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(argv[0], argv[1:]...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.Env = append(os.Environ(), "QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING=true")
	require.NoError(t, p.cmd.Start())
	go func() {
		p.err = p.cmd.Wait()
		p.exited = time.Now()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("--- %s output ---\n%s", p.name, p.out.String())
		}
	})
	return p
}

// waitFor polls the process output for re until d passes, returning the
// submatches of the first match.
func (p *proc) waitFor(re string, d time.Duration) []string {
	p.t.Helper()
	rx := regexp.MustCompile(re)
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if m := rx.FindStringSubmatch(p.out.String()); m != nil {
			return m
		}
		select {
		case <-deadline.C:
			p.t.Fatalf("%s: no output matching %q within %v; output:\n%s", p.name, re, d, p.out.String())
		case <-p.done:
			if m := rx.FindStringSubmatch(p.out.String()); m != nil {
				return m
			}
			p.t.Fatalf("%s exited (%v) before printing %q; output:\n%s", p.name, p.err, re, p.out.String())
		case <-tick.C:
		}
	}
}

// wait waits up to d for the process to exit and returns its exit code.
func (p *proc) wait(d time.Duration) int {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(d):
		p.t.Fatalf("%s did not exit within %v; output:\n%s", p.name, d, p.out.String())
	}
	if p.err == nil {
		return 0
	}
	if ee, ok := p.err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	p.t.Fatalf("%s: %v", p.name, p.err)
	return -1
}

func (p *proc) signal(s syscall.Signal) {
	p.t.Helper()
	require.NoError(p.t, p.cmd.Process.Signal(s))
}

// peakRSS returns the process's peak resident set (VmHWM) in bytes.
func (p *proc) peakRSS() int64 {
	p.t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	require.NoError(p.t, err)
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			require.NoError(p.t, err)
			return kb << 10
		}
	}
	p.t.Fatal("no VmHWM in /proc status")
	return 0
}

// env is a server and a client process with their addresses.
type env struct {
	dir                     string
	tunnel, public, forward string
	server, client          *proc
	pin                     string
	serverConf, clientConf  string
	o                       envOpts
	certFile, keyFile       string
}

type envOpts struct {
	nearClient, nearServer string // upstream base URLs
	grace                  string
	token                  string // the client's token; default the right one
	pin                    string // the client's pin; default the server's
	// extraRules are more server rules, YAML list items indented by two
	// spaces; serverYAML and clientYAML are more top-level settings.
	extraRules, serverYAML, clientYAML string
}

const (
	clientID = "e2e-client"
	theToken = "e2e-token-0123456789"
	appHost  = "app.e2e.test"
)

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	require.NoError(t, os.WriteFile(path, []byte(content), 0o600))
}

// writeCert writes a self-signed certificate for host and its key into dir
// and returns the two files and the certificate's pin.
func writeCert(t *testing.T, dir, host string) (certFile, keyFile, pin string) {
	t.Helper()
	cert, err := transport.SelfSigned(host)
	require.NoError(t, err)
	pin, err = transport.CertificatePin(cert)
	require.NoError(t, err)
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	require.NoError(t, transport.WritePEM(cert, certFile, keyFile))
	return certFile, keyFile, pin
}

// startEnv writes the configs, starts the server and the client processes,
// and waits until the client applied its rules.
func startEnv(t *testing.T, o envOpts) *env {
	t.Helper()
	e := &env{dir: t.TempDir(), tunnel: e2etest.FreeAddr(t, "udp"), public: e2etest.FreeAddr(t, "tcp"), forward: e2etest.FreeAddr(t, "tcp")}
	if o.grace == "" {
		o.grace = "10s"
	}
	e.certFile, e.keyFile, e.pin = writeCert(t, e.dir, "127.0.0.1")
	e.serverConf = filepath.Join(e.dir, "server.yaml")
	e.o = o
	e.writeServerConfig(t, o.extraRules)
	token, pin := theToken, e.pin
	if o.token != "" {
		token = o.token
	}
	if o.pin != "" {
		pin = o.pin
	}
	e.clientConf = filepath.Join(e.dir, "client.yaml")
	writeFile(t, e.clientConf, fmt.Sprintf(`id: %s
token: %q
server: %q
server_pin: %q
shutdown_grace: %s
reconnect:
  base: 50ms
  max: 500ms
%s`, clientID, token, e.tunnel, pin, o.grace, o.clientYAML))
	e.server = start(t, "server", "server", "-config", e.serverConf)
	e.server.waitFor(`msg="server started"`, 20*time.Second)
	e.client = start(t, "client", "client", "-config", e.clientConf)
	return e
}

// writeServerConfig (re)writes the server's configuration file with the
// built-in rules and extraRules: the server watches the file.
func (e *env) writeServerConfig(t *testing.T, extraRules string) {
	t.Helper()
	o := e.o
	writeFile(t, e.serverConf, fmt.Sprintf(`listen: %q
public_http: %q
tls:
  cert_file: %q
  key_file: %q
clients:
  - id: %s
    token_sha256: %s
rules:
  - id: rev
    client: %s
    direction: reverse
    host: %s
    upstream: %q
  - id: fwd
    client: %s
    direction: forward
    listen: %q
    upstream: %q
%sshutdown_grace: %s
log:
  level: info
%s`, e.tunnel, e.public, e.certFile, e.keyFile, clientID, control.HashToken(theToken), clientID, appHost, o.nearClient,
		clientID, e.forward, o.nearServer, extraRules, o.grace, o.serverYAML))
}

func (e *env) waitReady(t *testing.T) {
	t.Helper()
	e.client.waitFor(`msg="rules applied"`, 20*time.Second)
}

// upstream is the test's upstream server, in the test process.
func upstream(t *testing.T, h http.Handler) string {
	t.Helper()
	s := httptest.NewServer(h)
	t.Cleanup(s.Close)
	return s.URL
}

func newClient(t *testing.T) *http.Client {
	tr := &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 256}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 120 * time.Second}
}

func request(t *testing.T, method, url, host string, body io.Reader) *http.Request {
	t.Helper()
	req, err := http.NewRequestWithContext(context.Background(), method, url, body)
	require.NoError(t, err)
	if host != "" {
		req.Host = host
	}
	return req
}
